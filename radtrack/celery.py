"""The Celery application and the one decorator every RadTrack task goes through.

Without ``CELERY_BROKER_URL`` tasks run eagerly in-process (the embedded default);
with it they go to Redis-backed queues: ``cpu`` for ingest and bookkeeping, ``gpu``
for model inference.
"""

import os
from collections.abc import Callable
from typing import Any

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "radtrack.settings")

app = Celery("radtrack")
app.config_from_object("django.conf:settings", namespace="CELERY")


def radtrack_task(
    *, queue: str = "cpu", max_retries: int = 3
) -> Callable[[Callable[..., Any]], Any]:
    """Register a task with RadTrack's common policy.

    ``acks_late`` so that a worker dying mid-task leaves the message for another
    worker; tasks are written to be idempotent, so a repeat is safe.
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
            max_retries=max_retries,
            retry_backoff=True,
        )(func)

    return decorate
