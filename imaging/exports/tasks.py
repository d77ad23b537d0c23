"""Celery tasks for the PACS: thin, each calls one service.

``pacs_pull_task`` runs on the beat schedule (settings.CELERY_BEAT_SCHEDULE) when a
PACS is configured; the others run on demand. All go to the ``cpu`` queue, off the
web processes, so a slow or unreachable PACS never holds up a page.
"""

from __future__ import annotations

from imaging.exports.services import patient_dicom_export
from patients.models import Patient
from radtrack.celery import radtrack_task


@radtrack_task(queue="cpu")
def patient_dicom_export_task(patient_id: int, send: bool = False, username: str = "") -> int:
    """Export (and send) a patient's SEG and SR; returns the number of studies exported."""

    patient = Patient.objects.filter(pk=patient_id).first()
    if patient is None:  # deleted since it was queued
        return 0
    return len(patient_dicom_export(patient=patient, send=send, username=username).exports)
