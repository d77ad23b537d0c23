"""iRECIST switched on from the EHR: an immune checkpoint inhibitor in the medications an
EHR import brought (`patients.ehr.medications`) applies iRECIST (Seymour L et al., Lancet
Oncol 2017;18:e143-e152) to the patient's responses, as a clinician's choice would
(`analytics.lesions.review.irecist`).

The import never decides against a clinician: a patient whose iRECIST setting a person
made (on or off: it has a reason, `ResponseSettings.reason`) keeps it, and the import's
report says so; the import never switches iRECIST off. Switching on keeps the reason with
the drug, its date and the file (``iRECIST on: pembrolizumab started 2024-03-01 (EHR
import bundle.json)``) on the setting and on a `ReviewEvent` without a user, and
recomputes the patient's responses at once (`patient_recompute`), inside the import's
transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db.models import F
from django.utils import timezone

from analytics.lesions.review.common import (
    patient_lock,
    patient_recompute,
    responses_state,
    review_event_write,
)
from analytics.models import ResponseSettings
from patients.ehr.medications import TREATED_STATUSES
from patients.models import Patient, PatientMedication

__all__ = ["irecist_from_medications", "irecist_from_medications_receive"]


def _first_checkpoint_inhibitor(patient: Patient) -> PatientMedication | None:
    """The patient's earliest checkpoint inhibitor taken, given or ordered (undated last)."""
    return (
        PatientMedication.objects.filter(patient=patient, status__in=TREATED_STATUSES)
        .exclude(checkpoint_inhibitor="")
        .order_by(F("started_on").asc(nulls_last=True), "pk")
        .first()
    )


def _irecist_switch_on(patient: Patient, medication: PatientMedication) -> str:
    """Apply iRECIST to ``patient`` because of ``medication``; the reason recorded."""
    reason = f"iRECIST on: {medication.summary} (EHR import {medication.source or 'unnamed'})"
    before = {"irecist": False, "responses": responses_state(patient)}
    ResponseSettings.objects.update_or_create(
        patient=patient,
        defaults={"irecist": True, "reason": reason, "set_by": None, "set_at": timezone.now()},
    )
    summary, scored = patient_recompute(patient, trigger="iRECIST applied from the EHR import")
    review_event_write(
        patient=patient,
        user=None,
        action="irecist",
        reason=reason,
        before=before,
        after={
            "irecist": True,
            "source": medication.source,
            "medication": {
                "name": medication.name,
                "checkpoint_inhibitor": medication.checkpoint_inhibitor,
                "kind": medication.kind,
                "status": medication.status,
                "started_on": medication.started_on.isoformat() if medication.started_on else None,
                "codes": medication.codes,
            },
        },
        measurement=None,
        summary=summary,
        scored=scored,
        subject={"patient": patient.pk, "medication": medication.pk},
    )
    return reason


def irecist_from_medications(*, patient_pks: Iterable[int]) -> list[str]:
    """Switch iRECIST on for each of these patients who had a checkpoint inhibitor and
    whose setting no person made (module docstring); the notes for the import's report."""
    notes: list[str] = []
    for pk in sorted(patient_pks):
        patient = patient_lock(pk)
        medication = _first_checkpoint_inhibitor(patient)
        if medication is None:
            continue
        setting = ResponseSettings.objects.filter(patient=patient).first()
        if setting is not None and setting.irecist:
            continue
        if setting is not None and (setting.set_by_id is not None or setting.reason.strip()):
            notes.append(
                f"patient {patient.patient_id}: iRECIST left off although {medication.summary}: "
                f"switched off by a clinician on {setting.set_at:%Y-%m-%d} "
                f"({setting.reason.strip() or 'no reason given'}); change it on the patient page"
            )
            continue
        notes.append(f"patient {patient.patient_id}: {_irecist_switch_on(patient, medication)}")
    return notes


def irecist_from_medications_receive(
    sender: Any, *, patient_pks: frozenset[int], using: str, **kwargs: Any
) -> list[str]:
    """`patients.signals.checkpoint_inhibitors_imported`: `irecist_from_medications`."""
    return irecist_from_medications(patient_pks=patient_pks)
