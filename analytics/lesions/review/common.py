"""What every review service shares. Each takes the acting ``user`` (checked here:
`patients.permissions.can_review`) and a reason, records the decision where re-tracking
keeps it, rebuilds and rescores the patient (`patient_recompute`), and writes a
`ReviewEvent` with who, when, why and the state before and after (`review_event_write`).
"""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import PermissionDenied
from django.dispatch import Signal

from analytics.lesions.selectors import response_rows
from analytics.lesions.tracking.summary import TrackingSummary, measurement_keys
from analytics.lesions.tracking.track import patient_track
from analytics.risk.selectors import current_model_version
from analytics.risk.services import risk_scores_compute
from imaging.models import Lesion, LesionMeasurement, ReviewEvent, study_order
from patients.models import Patient
from patients.permissions import can_review

logger = logging.getLogger(__name__)

#: Sent inside the transaction of every radiologist's review event, after it is written,
#: with ``patient_pks`` (a frozenset) and ``using``: what reads "a radiologist has acted
#: since" (the worklist's flags, `analytics.dashboard.flags`) follows at once.
review_recorded = Signal()

REASON_MAX_CHARS = 500

#: The account acting; `reviewer_require` turns away one that may not review.
Reviewer = AbstractBaseUser | AnonymousUser


class ReviewError(ValueError):
    """A review request that cannot be applied; the message says which field and why."""


# --------------------------------------------------------------------------- requests
def reviewer_require(user: Reviewer) -> None:
    """Raise `PermissionDenied` unless ``user`` may review lesions."""
    if not can_review(user):
        raise PermissionDenied(
            "Your account may not review lesions (the radiologist or admin group is needed)."
        )


def reason_clean(reason: str | None, *, required: bool, action: str) -> str:
    """The reason stripped; a `ReviewError` if it is missing where ``required`` or too long."""
    text = (reason or "").strip()
    if required and not text:
        raise ReviewError(f"reason: give a reason to {action}; it goes into the review record")
    if len(text) > REASON_MAX_CHARS:
        raise ReviewError(f"reason: at most {REASON_MAX_CHARS} characters, not {len(text)}")
    return text


def patient_lock(patient_pk: int) -> Patient:
    """The patient row, locked until the transaction ends: one review at a time per patient."""
    return Patient.objects.select_for_update().get(pk=patient_pk)


def measurement_fresh(measurement: LesionMeasurement) -> LesionMeasurement:
    """The measurement row as stored now, locked; a `ReviewError` if it was rebuilt."""
    fresh = (
        LesionMeasurement.objects.select_for_update(of=("self",))
        .select_related("lesion", "study")
        .filter(pk=measurement.pk)
        .first()
    )
    if fresh is None:
        raise ReviewError(
            "measurement: it was rebuilt since the page was loaded (lesions are re-tracked "
            "after every review and every new study); reload the page and review again"
        )
    return fresh


# --------------------------------------------------------------------------- lookups
def candidate_row(segmentation_id: int | None, component: int | None) -> LesionMeasurement | None:
    """The rebuilt row that now holds this segmentation candidate, if any."""
    if segmentation_id is None or component is None:
        return None
    rows = LesionMeasurement.objects.select_related("lesion", "study").filter(
        segmentation_id=segmentation_id
    )
    for row in rows:
        if component in (row.component_labels or [row.component_label]):
            return row
    return None


def first_sighting(lesion: Lesion) -> LesionMeasurement:
    """The lesion's first row where it was found in a segmentation (a link's anchor)."""
    row = (
        LesionMeasurement.objects.filter(lesion=lesion, component_label__isnull=False)
        .filter(status__in=LesionMeasurement.FOUND)
        .select_related("study", "lesion")
        .order_by(*study_order("study__"))
        .first()
    )
    if row is None or row.segmentation_id is None or row.component_label is None:
        raise ReviewError(
            f"lesion: {lesion.label} has no measured sighting in a segmentation to link to"
        )
    return row


def candidate_components(m: LesionMeasurement) -> list[int]:
    """The segmentation candidates a row was measured from; a `ReviewError` if none."""
    if m.segmentation_id is None or m.component_label is None:
        raise ReviewError(
            "measurement: it has no segmentation candidate (resolved, or not from a "
            "segmentation), so it cannot be relinked or split"
        )
    return list(m.component_labels or [m.component_label])


# --------------------------------------------------------------------------- states
def measurement_state(m: LesionMeasurement) -> dict[str, Any]:
    """A row's keys, status, review state and values, for a review event."""
    return {
        **measurement_keys(m),
        "status": m.status,
        "review_state": m.review_state,
        "finding_state": m.finding_state,
        "too_small": m.too_small,
        "is_target": m.is_target,
        "volume_ml": m.volume_ml,
        "longest_diameter_mm": m.longest_diameter_mm,
        "short_axis_mm": m.short_axis_mm,
        "override_volume_ml": m.override_volume_ml,
        "override_longest_diameter_mm": m.override_longest_diameter_mm,
        "override_short_axis_mm": m.override_short_axis_mm,
    }


def responses_state(patient: Patient) -> list[dict[str, Any]]:
    """The patient's responses in force, for a review event."""
    return [
        {
            "study_instance_uid": r.study_instance_uid,
            "sum_diameters_mm": r.sum_diameters_mm,
            "total_volume_ml": r.total_volume_ml,
            "recist_response": r.recist_response,
            "volumetric_response": r.volumetric_response,
            "irecist_response": r.irecist_response,
            "new_lesions": r.new_lesions,
            "response_note": r.response_note,
        }
        for r in response_rows(patient=patient)
    ]


def targets_state(patient: Patient) -> list[str]:
    """The Tracking UIDs of the patient's target lesions, for a review event."""
    return sorted(
        set(
            LesionMeasurement.objects.filter(lesion__patient=patient, is_target=True).values_list(
                "lesion__tracking_uid", flat=True
            )
        )
    )


def measurement_before(m: LesionMeasurement, patient: Patient) -> dict[str, Any]:
    """The ``before`` of an event about one row: it, the responses and the targets."""
    return {
        "measurement": measurement_state(m),
        "responses": responses_state(patient),
        "targets": targets_state(patient),
    }


# --------------------------------------------------------------------------- after
def patient_recompute(
    patient: Patient, *, trigger: str = "a radiologist's review"
) -> tuple[TrackingSummary, int]:
    """Rebuild identities, targets and responses, then rescore the patient. Decisions
    the rebuild carries or drops go into the action's own event (`review_event_write`);
    ``trigger`` goes on any response category the rebuild revises."""
    summary = patient_track(patient=patient, record_event=False, trigger=trigger)
    version = current_model_version()
    scored = 0
    if version is not None:
        try:
            scored = risk_scores_compute(model_version=version, patient_ids=[patient.patient_id])
        except FileNotFoundError:
            # the review would leave a stale score: refuse it whole, saying why
            raise ReviewError(
                f"risk model {version.name}: its file {version.artifact_path} is missing from "
                "the store, so the risk score cannot follow the change; nothing was saved "
                "(an administrator restores the file or fits the model again: "
                "manage.py fit_risk_model)"
            ) from None
    return summary, scored


def review_event_write(
    *,
    patient: Patient,
    user: Reviewer,
    action: str,
    reason: str,
    before: dict[str, Any],
    after: dict[str, Any],
    measurement: LesionMeasurement | None,
    summary: TrackingSummary,
    scored: int,
    subject: dict[str, Any],
) -> ReviewEvent:
    """The event of one review action, with the responses and targets after it.

    It keeps the stable keys of what it was about under ``before["subject"]`` (Tracking
    UID, Study Instance UID, segmentation and candidates: the measurement rows themselves
    are rebuilt on every re-track), and any decision the rebuild had to drop (``stale_*``).
    """
    before = {**before, "subject": subject}
    after = {
        **after,
        "responses": responses_state(patient),
        "targets": targets_state(patient),
        "risk_scores_recomputed": scored,
    }
    # A change of a lesion's candidates (merge, split, relink) clears the reviews and
    # target choices made on the old set: the event says which.
    for name in ("stale_links", "stale_reviews", "stale_targets", "carried"):
        if getattr(summary, name):
            after[name] = getattr(summary, name)
    event = ReviewEvent.objects.create(
        patient=patient,
        user=user,
        action=action,
        measurement=measurement,
        reason=reason,
        before=before,
        after=after,
    )
    logger.info("review %s (event %s) on patient pk %s", action, event.pk, patient.pk)
    review_recorded.send(
        sender=ReviewEvent, patient_pks=frozenset({patient.pk}), using=event._state.db
    )
    return event
