"""A clinician's choice of iRECIST for a patient on immunotherapy (Seymour L et al.,
Lancet Oncol 2017;18:e143-e152), shown beside RECIST 1.1. It is kept with who, when and
why, and the patient's responses are recomputed at once. An EHR import that brings an
immune checkpoint inhibitor switches it on where no person has decided
(`analytics.lesions.review.irecist_ehr`); the clinician's choice, on or off, stands."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone

from analytics.lesions.review.common import (
    Reviewer,
    patient_lock,
    patient_recompute,
    reason_clean,
    responses_state,
    review_event_write,
)
from analytics.models import ResponseSettings
from imaging.models import ReviewEvent
from patients.models import Patient
from patients.permissions import can_review

SETTINGS_PERMISSION = "analytics.change_responsesettings"


def can_set_irecist(user: Reviewer) -> bool:
    """Whether ``user`` may switch iRECIST on or off for a patient: the permission on
    `ResponseSettings`, or a radiologist's review permission."""
    if user is None or not user.is_authenticated:
        return False
    return user.has_perm(SETTINGS_PERMISSION) or can_review(user)


def irecist_set(*, user: Reviewer, patient: Patient, enabled: bool, reason: str) -> ReviewEvent:
    """Apply iRECIST to ``patient``'s responses (``enabled``) or stop applying it."""
    if not can_set_irecist(user):
        raise PermissionDenied(
            "Your account may not change how this patient's responses are assessed."
        )
    reason = reason_clean(reason, required=True, action="change the iRECIST setting")
    with transaction.atomic():
        patient = patient_lock(patient.pk)
        old = ResponseSettings.objects.filter(patient=patient).first()
        before = {"irecist": bool(old and old.irecist), "responses": responses_state(patient)}
        ResponseSettings.objects.update_or_create(
            patient=patient,
            defaults={
                "irecist": enabled,
                "reason": reason,
                "set_by": user,
                "set_at": timezone.now(),
            },
        )
        summary, scored = patient_recompute(
            patient, trigger=f"iRECIST {'applied' if enabled else 'no longer applied'}"
        )
        return review_event_write(
            patient=patient,
            user=user,
            action="irecist",
            reason=reason,
            before=before,
            after={"irecist": enabled},
            measurement=None,
            summary=summary,
            scored=scored,
            subject={"patient": patient.pk},
        )
