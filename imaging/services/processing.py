"""Processing of a stored series: queueing, and the pipeline run with its record."""

from __future__ import annotations

from django.db import transaction

from imaging.models import ProcessingRun, Series


def series_queue(*, series: Series, device: str | None = None) -> ProcessingRun:
    """Mark ``series`` queued and send it to the workers once the transaction commits."""
    from imaging.tasks import series_process_task

    run = ProcessingRun.objects.create(
        series=series, status=ProcessingRun.Status.QUEUED, device=device or ""
    )
    series.state = Series.State.QUEUED
    series.state_detail = ""
    series.save(update_fields=["state", "state_detail", "updated_at"])
    transaction.on_commit(lambda: series_process_task.delay(series.pk, device or ""))
    return run
