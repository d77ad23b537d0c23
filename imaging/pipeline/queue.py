"""Sending stored studies to the workers: a study or series marked queued and its task
sent once the transaction commits, and a user's series override applied.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.db import transaction
from django.utils import timezone

from imaging.models import ANALYSED_MODALITIES, ProcessingRun, Series, Study
from imaging.pipeline.choice import study_series_choose
from imaging.pipeline.run import device_resolve
from imaging.pipeline.signals import patient_results_announce
from imaging.pipeline.tasks import series_process_task, study_process_task


def series_queue(*, series: Series, device: str | None = None) -> ProcessingRun:
    """Mark ``series`` queued and send it to the workers once the transaction commits."""

    run = ProcessingRun.objects.create(
        series=series, status=ProcessingRun.Status.QUEUED, device=device or ""
    )
    series.state = Series.State.QUEUED
    series.state_detail = ""
    series.save(update_fields=["state", "state_detail", "updated_at"])
    transaction.on_commit(lambda: series_process_task.delay(series.pk, device or ""))
    return run


def study_queue(
    *, study: Study, series: Sequence[Series] | None = None, device: str | None = None
) -> None:
    """Queue ``study``: a worker chooses its series and processes the chosen one.

    ``series`` are the series that got new images (default: all of the study's): only
    they are marked queued, so a series already processed and untouched stays
    processed and is not run again (its review decisions stay where they are). The
    choice reads every series' headers, so it is made by the worker, not here.
    """

    queued = study.series.filter(modality__in=ANALYSED_MODALITIES)
    if series is not None:
        queued = queued.filter(pk__in=[s.pk for s in series])
    queued.update(state=Series.State.QUEUED, state_detail="", updated_at=timezone.now())
    transaction.on_commit(lambda: study_process_task.delay(study.pk, device or ""))


def study_series_override(
    *, study: Study, series: Series, reason: str, user, device: str | None = None
) -> Series:
    """A user's choice of the series to analyse, recorded, and that series queued."""
    chosen = study_series_choose(study=study, override_series=series, reason=reason, user=user)
    if chosen.state != Series.State.PROCESSED:
        series_queue(series=chosen, device=device)
    else:
        # Already analysed: only the patient's lesions need linking from the new choice.
        patient_results_announce(patient=study.patient, device=device_resolve(device))
    return chosen
