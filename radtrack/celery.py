"""The Celery application and the one decorator every RadTrack task goes through.

Without ``CELERY_BROKER_URL`` tasks run eagerly in-process (the embedded default); with
it they go to Redis-backed queues (settings ``RADTRACK_TASK_QUEUES``): ``ingest``,
``cpu``, ``gpu`` (pipeline runs, sent to ``RADTRACK_GPU_QUEUE``) and ``export``. The
modules that define tasks are listed in settings (``CELERY_IMPORTS``); docs/deploy.md
says which worker reads which queue.
"""

import logging
import os
from collections.abc import Callable
from typing import Any

import kombu.exceptions
import redis.exceptions
import requests
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_ready
from django.db import InterfaceError, OperationalError

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "radtrack.settings")

logger = logging.getLogger(__name__)

app = Celery("radtrack")
app.config_from_object("django.conf:settings", namespace="CELERY")


class Contention(Exception):
    """Someone else holds what this task needs (a row lock, a run another worker is on):
    try again later. Subclasses name what was held."""


#: Errors that say "not now" rather than "never": the database, the broker or a peer
#: (the PACS, a FHIR server) went away for a moment or timed out, or a lock was held
#: (PostgreSQL reports a lock timeout as an OperationalError; RadTrack's own claims
#: raise `Contention`). Anything else is a defect or bad data, and retrying would only
#: repeat it.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    kombu.exceptions.OperationalError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    requests.ConnectionError,
    requests.Timeout,
    ConnectionError,
    TimeoutError,
    Contention,
)

#: Errors that say "stop now": the task's soft time limit (settings
#: ``CELERY_TASK_SOFT_TIME_LIMIT``; the hard limit ends the process a minute later). Not
#: retried, since a run that outlasted the limit would only outlast it again: the run
#: is closed as failed with the reason while there is time.
TERMINATING_ERRORS: tuple[type[BaseException], ...] = (SoftTimeLimitExceeded,)

#: What a catch-all that keeps work going must let through (``except NEVER_SWALLOWED:
#: raise`` before ``except Exception``): the transient errors, which the task's retry
#: handles, and the terminating ones, which end the task.
NEVER_SWALLOWED: tuple[type[BaseException], ...] = TRANSIENT_ERRORS + TERMINATING_ERRORS

#: The queue class each registered task was declared with, by task name.
_TASK_QUEUES: dict[str, str] = {}


def task_queue(*, task_name: str) -> str:
    """The queue ``task_name`` is sent to: its declared one, except that ``gpu`` tasks go
    to ``RADTRACK_GPU_QUEUE`` (``cpu`` unless a GPU worker reads ``gpu``)."""
    from django.conf import settings

    _task_modules_import(task_name)
    declared = _TASK_QUEUES.get(task_name, settings.CELERY_TASK_DEFAULT_QUEUE)
    return settings.RADTRACK_GPU_QUEUE if declared == "gpu" else declared


def registered_task(name: str) -> Any:
    """The task registered as ``name``, its module imported first when this process has
    not yet (a producer sending by name need not import the module that defines it)."""
    _task_modules_import(name)
    return app.tasks[name]


def _task_modules_import(name: str) -> None:
    """Import the task modules (settings ``CELERY_IMPORTS``) when ``name`` is not yet
    registered here: a process sending by name (beat, the web) may never have."""
    if name not in _TASK_QUEUES:
        app.loader.import_default_modules()


def _route(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> dict:
    return {"queue": task_queue(task_name=name)}


app.conf.task_routes = (_route,)


def radtrack_task(
    *, queue: str = "cpu", max_retries: int = 3, bind: bool = False
) -> Callable[[Callable[..., Any]], Any]:
    """Register a task with RadTrack's common policy.

    ``queue`` is one of settings ``RADTRACK_TASK_QUEUES``; ``gpu`` marks work that runs
    the networks (`task_queue`). ``acks_late`` so that a worker dying mid-task leaves the
    message for another worker; tasks are written to be idempotent, so a repeat is safe.
    A transient error (`TRANSIENT_ERRORS`) is retried up to ``max_retries`` times with
    exponential backoff and jitter (at most ten minutes apart); any other error fails the
    task at once. ``bind`` passes the task itself first (its request: id, retries).
    """
    from django.conf import settings

    if queue not in settings.RADTRACK_TASK_QUEUES:
        raise ValueError(f"queue must be one of {settings.RADTRACK_TASK_QUEUES}, not {queue!r}")

    def decorate(func: Callable[..., Any]) -> Any:
        name = f"{func.__module__}.{func.__name__}"
        _TASK_QUEUES[name] = queue
        return app.task(
            name=name,
            bind=bind,
            acks_late=True,
            reject_on_worker_lost=True,
            autoretry_for=TRANSIENT_ERRORS,
            max_retries=max_retries,
            retry_backoff=True,
            retry_backoff_max=600,
            retry_jitter=True,
        )(func)

    return decorate


@worker_ready.connect
def _worker_queues_check(sender: Any = None, **kwargs: Any) -> None:
    """Warn at start-up when a worker that reads ``gpu`` will get nothing from it (the
    senders' RADTRACK_GPU_QUEUE is ``cpu``), or will run the networks without a GPU."""
    from django.conf import settings

    if sender is None:
        return
    queues = {q.name for q in sender.app.amqp.queues.consume_from.values()}
    if "gpu" not in queues:
        return
    if settings.RADTRACK_GPU_QUEUE != "gpu":
        if "cpu" not in queues:
            logger.warning(
                "this worker reads only the gpu queue but RADTRACK_GPU_QUEUE is %r here: "
                "pipeline runs go to the cpu queue (set RADTRACK_GPU_QUEUE=gpu for every process)",
                settings.RADTRACK_GPU_QUEUE,
            )
        return
    import torch

    if not torch.cuda.is_available():
        logger.warning(
            "this worker reads the gpu queue but torch sees no CUDA GPU: runs use the CPU"
        )
