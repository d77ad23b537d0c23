"""What follows for a patient from new imaging results, in one place and one order.

registrations to the baseline -> lesion tracking -> responses -> the risk score, under
a lock on the patient's row so two workers never track one patient at once. The
pipeline announces new results (`imaging.pipeline.signals.patient_results_changed`);
`analytics.apps` connects `patient_results_changed_receive` to it.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from analytics.lesions.review.carry_forward import (
    CarryForward,
    carried_files_remove,
    corrections_carry_forward,
)
from analytics.lesions.tracking.track import patient_track
from analytics.risk.selectors import current_model_version
from analytics.risk.services import risk_scores_compute
from imaging.pipeline.registrations import patient_registrations_ensure
from patients.models import Patient


def patient_update(*, patient: Patient, device: str = "cpu") -> dict[str, Any]:
    """After a study is processed: registrations to the baseline, radiologists'
    corrections carried onto new automated segmentations
    (`analytics.lesions.review.carry_forward`), lesion tracking, responses, and the
    patient's risk score under the current model."""
    registered = patient_registrations_ensure(patient=patient, device=device)
    carried = CarryForward()
    try:
        with transaction.atomic():
            Patient.objects.select_for_update().get(pk=patient.pk)
            # A radiologist's corrections go onto a new automated segmentation first.
            carried = corrections_carry_forward(patient=patient)
            summary = patient_track(patient=patient, trigger="new imaging results were processed")
            model = current_model_version()
            scored = 0
            if model is not None:
                scored = risk_scores_compute(model_version=model, patient_ids=[patient.patient_id])
    except Exception:
        carried_files_remove(carried)
        raise
    details = summary.as_dict()
    return {
        # Corrections re-applied on the new automated segmentation, and the ones that
        # could not be (with the reason): the run is flagged for those.
        "corrections_carried_forward": carried.carried,
        "corrections_not_carried": [entry["message"] for entry in carried.not_carried],
        "registrations_added": registered,
        "studies_tracked": summary.studies_tracked,
        "lesions": summary.lesions,
        # Follow-ups linked without a registration, and studies not followed: shown on
        # the run as warnings, never as a plain success.
        "provisional": details["provisional"],
        "not_followed": details["not_followed"],
        # Radiologists' decisions that no longer apply: shown, never dropped silently.
        "stale_links": list(summary.stale),
        "stale_manual": details["stale_manual"],
        "risk_scores": scored,
    }


def patient_results_changed_receive(
    *, patient: Patient, device: str, **_signal: object
) -> dict[str, Any]:
    """The pipeline's announcement of new results, answered with `patient_update`."""
    return patient_update(patient=patient, device=device)
