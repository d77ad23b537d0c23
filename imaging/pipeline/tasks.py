"""Celery tasks of the pipeline (``gpu`` queue): thin, they load a row by key and run it."""

from __future__ import annotations

from imaging.models import Series, Study
from imaging.pipeline.run import series_process, study_process
from radtrack.celery import radtrack_task


@radtrack_task(queue="gpu")
def series_process_task(series_id: int, device: str = "") -> None:
    series = Series.objects.filter(pk=series_id).first()
    if series is None:  # deleted since it was queued
        return
    series_process(series=series, device=device or None)


@radtrack_task(queue="gpu")
def study_process_task(study_id: int, device: str = "") -> None:
    study = Study.objects.filter(pk=study_id).first()
    if study is None:  # deleted since it was queued
        return
    study_process(study=study, device=device or None)
