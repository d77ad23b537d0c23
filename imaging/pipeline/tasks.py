"""Celery tasks of the pipeline: thin, they load a row by key and run it.

Runs are declared on the ``gpu`` queue, which `radtrack.celery.task_queue` maps to
``RADTRACK_GPU_QUEUE``. Each is safe to deliver twice: a processed series is not run
again unless a run of it was queued anew (`imaging.pipeline.queue.series_queue`), only
its lesions tracked when a lost worker left that undone (`tracking_resume`), and an
interrupted run is taken over by the repeat (`imaging.pipeline.record`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.utils import timezone

from imaging.models import ProcessingRun, Series, Study
from imaging.pipeline.queue import queued_resend
from imaging.pipeline.record import RunBusy
from imaging.pipeline.run import series_process, study_process, tracking_resume
from imaging.pipeline.stale import stale_runs_close, tracking_unfinished_resume
from radtrack.celery import TRANSIENT_ERRORS, radtrack_task

logger = logging.getLogger(__name__)

#: Seconds between looks when another worker is on the same series.
BUSY_RETRY_S = 30


@radtrack_task(queue="gpu", bind=True)
def series_process_task(self: Any, series_id: int, device: str = "") -> None:
    series = Series.objects.filter(pk=series_id).first()
    if series is None:  # deleted since it was queued
        return
    with _last_attempt_closes_run(self):
        queued = series.processing_runs.filter(status=ProcessingRun.Status.QUEUED)
        if series.state == Series.State.PROCESSED and not queued.exists():
            # A repeat delivery of a task whose run succeeded: no second run (asking
            # again queues a run, `series_queue`); only tracking, if left unfinished.
            tracking_resume(series=series)
            return
        series_process(series=series, device=device or None)


@radtrack_task(queue="gpu", bind=True)
def study_process_task(self: Any, study_id: int, device: str = "") -> None:
    study = Study.objects.filter(pk=study_id).first()
    if study is None:  # deleted since it was queued
        return
    with _last_attempt_closes_run(self):
        study_process(study=study, device=device or None)


@radtrack_task(queue="cpu")
def queued_resend_task() -> int:
    """Send again the work queued while the broker was unreachable (on beat's schedule)."""
    return queued_resend()


@radtrack_task(queue="cpu")
def stale_runs_close_task() -> int:
    """Close the runs left running by a killed or lost attempt (on beat's schedule)."""
    return stale_runs_close()


@radtrack_task(queue="cpu")
def tracking_unfinished_resume_task() -> int:
    """Track again the series whose run was killed during its tracking (beat's schedule)."""
    return tracking_unfinished_resume()


@contextmanager
def _last_attempt_closes_run(task: Any) -> Iterator[None]:
    """When a transient error outlasts the retries, the run this task claimed is closed
    as failed with the reason, rather than left running (when the database answers)."""
    try:
        yield
    except RunBusy as exc:
        # Another worker is on the series (the study was queued twice): wait for it,
        # for as long as a run may last, then see whether anything is left to do.
        if task.request.is_eager:
            raise
        patience = settings.RADTRACK_TASK_TIME_LIMIT_S // BUSY_RETRY_S + 2
        raise task.retry(exc=exc, countdown=BUSY_RETRY_S, max_retries=patience) from exc
    except TRANSIENT_ERRORS as exc:
        if task.request.retries < task.max_retries:
            raise
        error = f"gave up after {task.request.retries + 1} attempts: {type(exc).__name__}: {exc}"
        try:
            runs = ProcessingRun.objects.filter(
                task_id=task.request.id or "-", status=ProcessingRun.Status.RUNNING
            )
            for run in runs:
                run.status, run.error, run.finished_at = run.Status.FAILED, error, timezone.now()
                run.save(update_fields=["status", "error", "finished_at"])
                Series.objects.filter(pk=run.series_id).update(
                    state=Series.State.FAILED, state_detail=error, updated_at=timezone.now()
                )
        except TRANSIENT_ERRORS:
            logger.warning("task %s: could not close its run after the last attempt", task.name)
        raise
