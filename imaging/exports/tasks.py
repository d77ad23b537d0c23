"""Celery task for DICOM exports: a patient's SEG and SR written (and sent), off the
web processes, on the ``export`` queue.
"""

from __future__ import annotations

from imaging.exports.services import patient_dicom_export
from patients.models import Patient
from radtrack.celery import radtrack_task


@radtrack_task(queue="export")
def patient_dicom_export_task(patient_id: int, send: bool = False, username: str = "") -> int:
    """Export (and send) a patient's SEG and SR; returns the number of studies exported."""

    patient = Patient.objects.filter(pk=patient_id).first()
    if patient is None:  # deleted since it was queued
        return 0
    return len(patient_dicom_export(patient=patient, send=send, username=username).exports)
