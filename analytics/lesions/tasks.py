"""Celery tasks of lesion tracking: thin, they load rows by key and call one service."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

from analytics.lesions.refresh import patient_update
from imaging.pipeline.device import device_resolve
from patients.models import Patient
from radtrack.celery import radtrack_task

logger = logging.getLogger(__name__)


@radtrack_task(queue="cpu")
def patients_retrack_task(patient_pks: list[int]) -> int:
    """Track these patients' lesions again and recompute their responses and scores
    (`refresh.patient_update`); the number of patients done (one gone since is skipped)."""
    done = 0
    for pk in patient_pks:
        patient = Patient.objects.filter(pk=pk).first()
        if patient is None:
            continue
        patient_update(patient=patient, device=device_resolve(None))
        done += 1
    logger.info("lesions tracked again for %d patients after studies moved", done)
    return done


def patients_retrack_receive(
    sender: Any, *, patient_pks: frozenset[int], using: str, moved: bool = False, **_signal: object
) -> None:
    """A study moved to another date or patient, or removed (an administrator's
    correction of a misfiled study): both patients' lesions were linked across studies,
    and their responses measured, in an order or for a patient that no longer holds.
    They are tracked again once the change commits (a queued task)."""
    if not moved:
        return
    pks = sorted(patient_pks)
    transaction.on_commit(lambda: patients_retrack_task.delay(pks), using=using)
