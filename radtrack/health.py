"""``/healthz/``: whether this web process can serve, for load balancers and process
supervisors (docs/deploy.md). No login and no patient data: the database must answer
(503 otherwise); the broker is reported but never fails the check, because pages keep
working while it is away and queued work is sent again when it is back."""

from __future__ import annotations

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from radtrack.celery import TRANSIENT_ERRORS, app


@never_cache
@require_GET
def health_view(request: HttpRequest) -> JsonResponse:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        database = "ok"
    except TRANSIENT_ERRORS:
        database = "unreachable"
    return JsonResponse(
        {"database": database, "broker": broker_state()},
        status=200 if database == "ok" else 503,
    )


def broker_state() -> str:
    """``ok``, ``unreachable``, or ``in-process`` (no broker: tasks run in the caller)."""
    if app.conf.task_always_eager:
        return "in-process"
    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=2)
    except TRANSIENT_ERRORS:
        return "unreachable"
    return "ok"
