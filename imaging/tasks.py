"""Celery tasks for imaging: thin, they load a row by key and call one service."""

from imaging.models import Series
from radtrack.celery import radtrack_task


@radtrack_task(queue="gpu")
def series_process_task(series_id: int, device: str = "") -> None:
    from imaging.services.processing import series_process

    series = Series.objects.filter(pk=series_id).first()
    if series is None:  # deleted since it was queued
        return
    series_process(series=series, device=device or None)
