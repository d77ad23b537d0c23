"""Runs left "running" by an attempt that is gone, closed as failed (on beat's schedule).

A run's task that outlasts the hard time limit is killed and its message acknowledged:
nothing delivers it again, and the run would show "running", its series "processing",
for ever. Each attempt records a heartbeat with every step (`imaging.pipeline.record`),
and no attempt lives longer than the hard limit (settings ``CELERY_TASK_TIME_LIMIT``),
so a run whose heartbeat is older than that, plus `STALE_MARGIN_S`, has no attempt
left: it is marked failed with the reason, and its series too (the pipeline page and
the worklist's "processing failed" show it). Queueing it again is safe. A run killed
during its lesion tracking (after its results were committed) is tracked again
(`tracking_unfinished_resume`).
"""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from imaging.models import ProcessingRun, Series
from imaging.pipeline.record import tracking_unfinished

logger = logging.getLogger(__name__)

#: Seconds past the hard time limit before a silent run is closed: a step's heartbeat
#: is written when it starts and ends, never in between.
STALE_MARGIN_S = 600


def stale_after() -> dt.timedelta:
    """How long a running run may go without a heartbeat before it is closed."""
    return dt.timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + STALE_MARGIN_S)


def stale_runs_close(*, now: dt.datetime | None = None) -> int:
    """Mark failed each run still running with no heartbeat for `stale_after`, and its
    series when the series still shows it processing; how many runs were closed."""
    now = now or timezone.now()
    cutoff = now - stale_after()
    minutes = round(stale_after().total_seconds() / 60)
    error = (
        f"stopped without closing the run: no step recorded for over {minutes} minutes "
        "(killed at the time limit, or its worker was lost); processing it again is safe"
    )
    silent = (  # the last sign of an attempt: its heartbeat, else its start, its creation
        Q(heartbeat_at__lt=cutoff)
        | Q(heartbeat_at__isnull=True, started_at__lt=cutoff)
        | Q(heartbeat_at__isnull=True, started_at__isnull=True, created_at__lt=cutoff)
    )
    stale = ProcessingRun.objects.filter(silent, status=ProcessingRun.Status.RUNNING)
    closed = 0
    for pk, series_id in stale.order_by("pk").values_list("pk", "series_id"):
        with transaction.atomic():
            # Only if still running and silent: an attempt that wrote meanwhile keeps it.
            if not stale.filter(pk=pk).update(
                status=ProcessingRun.Status.FAILED, error=error, finished_at=now
            ):
                continue
            live = ProcessingRun.objects.filter(
                series_id=series_id, status=ProcessingRun.Status.RUNNING
            ).exists()
            if not live:  # the series shows this run, not a later one at work
                Series.objects.filter(pk=series_id, state=Series.State.PROCESSING).update(
                    state=Series.State.FAILED, state_detail=error, updated_at=now
                )
        closed += 1
        logger.warning("run %s of series %s closed as failed: no heartbeat", pk, series_id)
    return closed


#: How far back the resume looks for a success whose tracking never finished (each beat
#: looks again; older ones were looked at before).
RESUME_LOOKBACK = dt.timedelta(days=2)


def tracking_unfinished_resume(*, now: dt.datetime | None = None) -> int:
    """Track again the lesions of each series whose latest run succeeded, went silent
    past `stale_after` and never finished its tracking (the hard time limit killed its
    worker during tracking: the message was acknowledged and nothing delivers it again,
    so the run would show a plain success with no lesions linked, no responses); how
    many series were tracked again."""
    from imaging.pipeline.run import tracking_resume

    now = now or timezone.now()
    cutoff = now - stale_after()
    candidates = ProcessingRun.objects.filter(
        status=ProcessingRun.Status.SUCCEEDED,
        heartbeat_at__lt=cutoff,
        finished_at__gte=now - RESUME_LOOKBACK,
    ).only("pk", "series_id", "status", "steps")
    resumed = 0
    for run in candidates.order_by("pk"):
        if not tracking_unfinished(run=run):
            continue
        series = Series.objects.filter(pk=run.series_id).first()
        if series is not None and tracking_resume(series=series) is not None:
            resumed += 1
            logger.warning("run %s: tracking never finished; tracked again", run.pk)
    return resumed
