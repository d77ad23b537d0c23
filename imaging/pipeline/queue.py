"""Sending stored studies to the workers: a study or series marked queued and its task
sent once the transaction commits, and a user's series override applied.

When the broker cannot be reached the work stays marked queued, with `UNSENT_DETAIL` on
its series, and `queued_resend` (beat, every few minutes) sends it again, so a Redis
restart never loses work and never fails the page or the import that queued it.
`queue_depths` tells the pipeline page how much waits in each queue.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from imaging.models import ANALYSED_MODALITIES, ProcessingRun, Series, Study
from imaging.pipeline.choice import study_series_choose
from imaging.pipeline.device import device_resolve
from imaging.pipeline.signals import patient_results_announce
from radtrack.celery import TRANSIENT_ERRORS, app, registered_task

logger = logging.getLogger(__name__)

#: The tasks are sent by name, as a producer on another machine would: their module
#: runs the pipeline, which queues again, so this one does not import it.
SERIES_TASK = "imaging.pipeline.tasks.series_process_task"
STUDY_TASK = "imaging.pipeline.tasks.study_process_task"

#: The series detail while its task could not be sent (shown on the pipeline page).
UNSENT_DETAIL = "waiting for the task queue, which could not be reached; sent again when it is back"


def series_queue(*, series: Series, device: str | None = None) -> ProcessingRun:
    """Mark ``series`` queued and send it to the workers once the transaction commits."""

    run = ProcessingRun.objects.create(
        series=series, status=ProcessingRun.Status.QUEUED, device=device or ""
    )
    series.state = Series.State.QUEUED
    series.state_detail = ""
    series.save(update_fields=["state", "state_detail", "updated_at"])
    transaction.on_commit(lambda: _send(SERIES_TASK, series.pk, device or "", series=[series.pk]))
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
    queued_pks = list(queued.values_list("pk", flat=True))
    queued.update(state=Series.State.QUEUED, state_detail="", updated_at=timezone.now())
    transaction.on_commit(lambda: _send(STUDY_TASK, study.pk, device or "", series=queued_pks))


def _send(task_name: str, *args, series: list[int]) -> None:
    """Send the task ``task_name``; when the broker is unreachable, mark ``series`` for
    `queued_resend`."""
    task = registered_task(task_name)
    try:
        task.delay(*args)
    except TRANSIENT_ERRORS as exc:
        logger.warning(
            "task queue unreachable (%s): %s for %s left queued",
            type(exc).__name__,
            task.name,
            args,
        )
        Series.objects.filter(pk__in=series, state=Series.State.QUEUED).update(
            state_detail=UNSENT_DETAIL
        )


def queued_resend() -> int:
    """Send again each study or series whose task could not be sent; how many were."""
    unsent = Series.objects.filter(state=Series.State.QUEUED, state_detail=UNSENT_DETAIL)
    sent = 0
    for study in Study.objects.filter(series__in=unsent).distinct():
        waiting = list(unsent.filter(study=study))
        for one in [s for s in waiting if _has_queued_run(s)]:  # a user's override
            Series.objects.filter(pk=one.pk).update(state_detail="")
            transaction.on_commit(lambda pk=one.pk: _send(SERIES_TASK, pk, "", series=[pk]))
            sent += 1
        rest = [s for s in waiting if not _has_queued_run(s)]
        if rest:
            study_queue(study=study, series=rest)
            sent += 1
    return sent


def _has_queued_run(series: Series) -> bool:
    return series.processing_runs.filter(status=ProcessingRun.Status.QUEUED).exists()


def queue_depths() -> dict[str, int] | None:
    """Messages waiting in each queue (settings.RADTRACK_TASK_QUEUES); None when tasks run
    in-process (no broker). Raises one of `TRANSIENT_ERRORS` when the broker is down."""
    if app.conf.task_always_eager:
        return None
    from kombu.exceptions import ChannelError

    depths: dict[str, int] = {}
    with app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=2)
        channel = conn.default_channel
        for name in settings.RADTRACK_TASK_QUEUES:
            try:
                depths[name] = channel.queue_declare(queue=name, passive=True).message_count
            except ChannelError:  # never declared: nothing was ever sent there
                depths[name] = 0
    return depths


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
