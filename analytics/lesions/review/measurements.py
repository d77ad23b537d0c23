"""A radiologist's decisions on one measurement: accept the automated finding, reject it
as a false positive (it stays stored, out of every response, feature and score), or
override its values beside the automated ones, which are never changed. Each is kept in
the row's review fields, which re-tracking carries to the rebuilt row by its candidate."""

from __future__ import annotations

import math
from typing import Any

from django.db import transaction
from django.utils import timezone

from analytics.lesions.review.common import (
    Reviewer,
    ReviewError,
    candidate_row,
    measurement_before,
    measurement_fresh,
    measurement_state,
    patient_lock,
    patient_recompute,
    reason_clean,
    review_event_write,
    reviewer_require,
)
from analytics.lesions.tracking.summary import measurement_keys
from imaging.models import LesionMeasurement, ReviewEvent


def measurement_accept(
    *, user: Reviewer, measurement: LesionMeasurement, reason: str = ""
) -> ReviewEvent:
    """Accept the automated finding as a true lesion with its automated values.

    An override in force is withdrawn (the event keeps it under ``before``).
    """
    reviewer_require(user)
    reason = reason_clean(reason, required=False, action="accept")
    with transaction.atomic():
        return _decision_record(
            user=user,
            measurement=measurement,
            action="accept",
            reason=reason,
            changes={
                "review_state": LesionMeasurement.Review.ACCEPTED,
                "override_volume_ml": None,
                "override_longest_diameter_mm": None,
                "override_short_axis_mm": None,
            },
        )


def measurement_reject(
    *, user: Reviewer, measurement: LesionMeasurement, reason: str
) -> ReviewEvent:
    """Reject the finding as a false positive: it leaves every response, target and score."""
    reviewer_require(user)
    reason = reason_clean(reason, required=True, action="reject a finding")
    with transaction.atomic():
        return _decision_record(
            user=user,
            measurement=measurement,
            action="reject",
            reason=reason,
            changes={"review_state": LesionMeasurement.Review.REJECTED},
        )


def measurement_override(
    *,
    user: Reviewer,
    measurement: LesionMeasurement,
    reason: str,
    volume_ml: float | str | None = None,
    longest_diameter_mm: float | str | None = None,
    short_axis_mm: float | str | None = None,
) -> ReviewEvent:
    """Override one or more of the measured values (ml, mm), keeping the automated ones.

    Values not given keep their automated value; the short axis may not exceed the
    longest diameter in force (both are axial diameters of the same lesion).
    """
    reviewer_require(user)
    reason = reason_clean(reason, required=True, action="override a measurement")
    values = {
        "override_volume_ml": _override_value("volume_ml", volume_ml),
        "override_longest_diameter_mm": _override_value("longest_diameter_mm", longest_diameter_mm),
        "override_short_axis_mm": _override_value("short_axis_mm", short_axis_mm),
    }
    if all(v is None for v in values.values()):
        raise ReviewError(
            "volume_ml, longest_diameter_mm, short_axis_mm: give at least one value to override"
        )
    with transaction.atomic():
        # The patient first, as on every other path: two locks taken in opposite
        # orders by two reviews deadlock on PostgreSQL.
        patient_lock(measurement.lesion.patient_id)
        current = measurement_fresh(measurement)
        longest = values["override_longest_diameter_mm"] or current.longest_diameter_mm
        short = values["override_short_axis_mm"] or current.short_axis_mm
        if short > longest:
            raise ReviewError(
                f"short_axis_mm: {short:g} mm is longer than the longest diameter in force "
                f"({longest:g} mm)"
            )
        return _decision_record(
            user=user,
            measurement=measurement,
            action="override",
            reason=reason,
            changes={"review_state": LesionMeasurement.Review.EDITED, **values},
        )


def _override_value(name: str, value: float | str | None) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ReviewError(f"{name}: {value!r} is not a number") from None
    if not math.isfinite(number) or number <= 0:
        raise ReviewError(f"{name}: must be a positive number, not {value}")
    return number


def _decision_record(
    *,
    user: Reviewer,
    measurement: LesionMeasurement,
    action: str,
    reason: str,
    changes: dict[str, Any],
) -> ReviewEvent:
    """Shared path of accept, reject and override: save the review fields, rebuild."""
    patient = patient_lock(measurement.lesion.patient_id)
    m = measurement_fresh(measurement)
    if m.manual_finding_id is not None:
        raise ReviewError(
            f"measurement: {m.lesion.label} was measured by hand at this study; its values "
            "are the radiologist's own (measure it again by hand to change them)"
        )
    if not m.is_found:
        raise ReviewError(
            f"measurement: {m.lesion.label} was not found at this study ({m.get_status_display()}"
            f"); only a found lesion can be {action}ed: confirm it gone, mark it too small "
            "to measure, or measure it by hand instead"
        )
    before = measurement_before(m, patient)
    for name, value in changes.items():
        setattr(m, name, value)
    m.review_reason = reason
    m.reviewed_by = user
    m.reviewed_at = timezone.now()
    m.save()
    summary, scored = patient_recompute(patient, trigger=f"review: {action} {m.lesion.label}")
    rebuilt = candidate_row(m.segmentation_id, m.component_label)
    after = {"measurement": measurement_state(rebuilt) if rebuilt else None}
    return review_event_write(
        patient=patient,
        user=user,
        action=action,
        reason=reason,
        before=before,
        after=after,
        measurement=rebuilt,
        summary=summary,
        scored=scored,
        subject=measurement_keys(m),
    )
