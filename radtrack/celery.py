"""The Celery application and the one decorator every RadTrack task goes through.

Without ``CELERY_BROKER_URL`` tasks run eagerly in-process (the embedded default);
with it they go to Redis-backed queues: ``cpu`` for ingest and bookkeeping, ``gpu``
for model inference. The modules that define tasks are listed in settings
(``CELERY_IMPORTS``).
"""

import os
from collections.abc import Callable
from typing import Any

import kombu.exceptions
import redis.exceptions
import requests
from celery import Celery
from django.db import InterfaceError, OperationalError

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "radtrack.settings")

app = Celery("radtrack")
app.config_from_object("django.conf:settings", namespace="CELERY")

#: Errors that say "not now" rather than "never": the database, the broker or a peer
#: (the PACS, a FHIR server) went away for a moment or timed out, or a row lock was
#: held too long (PostgreSQL reports that as an OperationalError). Anything else is a
#: defect or bad data, and retrying would only repeat it.
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
)


def radtrack_task(
    *, queue: str = "cpu", max_retries: int = 3
) -> Callable[[Callable[..., Any]], Any]:
    """Register a task with RadTrack's common policy.

    ``acks_late`` so that a worker dying mid-task leaves the message for another
    worker; tasks are written to be idempotent, so a repeat is safe. A transient error
    (`TRANSIENT_ERRORS`) is retried up to ``max_retries`` times with exponential backoff
    and jitter (at most ten minutes apart); any other error fails the task at once.
    """

    def decorate(func: Callable[..., Any]) -> Any:
        name = f"{func.__module__}.{func.__name__}"
        routes = dict(app.conf.task_routes or {})
        routes[name] = {"queue": queue}
        app.conf.task_routes = routes
        return app.task(
            name=name,
            acks_late=True,
            reject_on_worker_lost=True,
            autoretry_for=TRANSIENT_ERRORS,
            max_retries=max_retries,
            retry_backoff=True,
            retry_backoff_max=600,
            retry_jitter=True,
        )(func)

    return decorate
