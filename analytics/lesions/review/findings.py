"""A radiologist's word on what the rules cannot decide alone: a lesion not found is gone
or present but too small to measure (RECIST 1.1 section 4.3.2); a lesion measured by
hand (a lymph node the segmenter does not find, or one it missed); the links proposed
for a follow-up that could not be registered are right; non-target disease has or has
not progressed unequivocally (section 4.3.4). Each is kept where re-tracking finds it
again, rebuilds and rescores the patient, and writes a `ReviewEvent`."""

from __future__ import annotations

import math

from django.db import transaction
from django.utils import timezone
from pydicom.uid import generate_uid

from analytics.lesions.core.identities import lesion_label
from analytics.lesions.review.common import (
    Reviewer,
    ReviewError,
    first_sighting,
    measurement_before,
    measurement_fresh,
    measurement_state,
    patient_lock,
    patient_recompute,
    reason_clean,
    responses_state,
    review_event_write,
    reviewer_require,
    targets_state,
)
from analytics.lesions.tracking.summary import measurement_keys
from analytics.models import StudyResponseReview
from imaging.models import (
    Lesion,
    LesionLink,
    LesionMeasurement,
    ManualFinding,
    ReviewEvent,
    Study,
)

Status = LesionMeasurement.Status


# --------------------------------------------------------------------------- not found
def measurement_gone(*, user: Reviewer, measurement: LesionMeasurement, reason: str) -> ReviewEvent:
    """Confirm that a lesion not found at this study has gone: it counts 0 mm there
    (RECIST 1.1 section 4.3.2), and only now."""
    return _absence_decide(
        user=user,
        measurement=measurement,
        reason=reason,
        action="gone",
        changes={"review_state": LesionMeasurement.Review.ACCEPTED, "too_small": False},
    )


def measurement_too_small(
    *, user: Reviewer, measurement: LesionMeasurement, reason: str
) -> ReviewEvent:
    """Say the lesion is present at this study but too small to measure: it counts 5 mm
    (RECIST 1.1 section 4.3.2 and the working group's clarification: a lesion that can
    be measured keeps its measurement, even below 5 mm). Found or not found."""
    if measurement.status in (Status.RESOLVED, Status.MERGED):
        raise ReviewError(
            f"measurement: {measurement.lesion.label} is {measurement.get_status_display().lower()} "
            "at this study; it cannot be too small to measure there"
        )
    return _absence_decide(
        user=user,
        measurement=measurement,
        reason=reason,
        action="too_small",
        changes={"review_state": LesionMeasurement.Review.EDITED, "too_small": True},
        found_too=True,
    )


def _absence_decide(
    *,
    user: Reviewer,
    measurement: LesionMeasurement,
    reason: str,
    action: str,
    changes: dict,
    found_too: bool = False,
) -> ReviewEvent:
    reviewer_require(user)
    reason = reason_clean(reason, required=True, action="record this decision")
    with transaction.atomic():
        patient = patient_lock(measurement.lesion.patient_id)
        m = measurement_fresh(measurement)
        if m.manual_finding_id is not None:
            raise ReviewError(
                f"measurement: {m.lesion.label} was measured by hand at this study; its values "
                "are the radiologist's own"
            )
        if m.status != Status.NOT_FOUND and not (found_too and m.is_found):
            raise ReviewError(
                f"measurement: {m.lesion.label} is {m.get_status_display().lower()} at this "
                "study; this decision is for a lesion not found there"
            )
        before = measurement_before(m, patient)
        for name, value in changes.items():
            setattr(m, name, value)
        m.review_reason, m.reviewed_by, m.reviewed_at = reason, user, timezone.now()
        m.save()
        summary, scored = patient_recompute(patient, trigger=f"review: {action} {m.lesion.label}")
        rebuilt = (
            LesionMeasurement.objects.filter(
                lesion__tracking_uid=m.lesion.tracking_uid, study=m.study
            )
            .select_related("lesion", "study")
            .first()
        )
        return review_event_write(
            patient=patient,
            user=user,
            action=action,
            reason=reason,
            before=before,
            after={"measurement": measurement_state(rebuilt) if rebuilt else None},
            measurement=rebuilt,
            summary=summary,
            scored=scored,
            subject=measurement_keys(m),
        )


# --------------------------------------------------------------------------- by hand
def _size(name: str, value: float | str | None, *, required: bool) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ReviewError(f"{name}: give it in mm")
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ReviewError(f"{name}: {value!r} is not a number") from None
    if not math.isfinite(number) or number <= 0:
        raise ReviewError(f"{name}: must be a positive number, not {value}")
    return number


def lesion_add(
    *,
    user: Reviewer,
    study: Study,
    organ: str,
    longest_diameter_mm: float | str | None,
    short_axis_mm: float | str | None,
    reason: str,
    volume_ml: float | str | None = None,
    lesion: Lesion | None = None,
) -> ReviewEvent:
    """Measure a lesion by hand at ``study``: a new lesion (``lesion`` None; a lymph
    node is organ ``lymph_node``, measured by its short axis, RECIST 1.1 section 3.1.1)
    or ``lesion`` where the segmentation did not find it. The short axis may not exceed
    the longest diameter. It stays through every rebuild (`ManualFinding`)."""
    reviewer_require(user)
    reason = reason_clean(reason, required=True, action="add a lesion by hand")
    if organ not in Lesion.Organ.values:
        raise ReviewError(f"organ: one of {', '.join(Lesion.Organ.values)}, not {organ!r}")
    longest = _size("longest_diameter_mm", longest_diameter_mm, required=True)
    short = _size("short_axis_mm", short_axis_mm, required=True)
    volume = _size("volume_ml", volume_ml, required=False)
    if short > longest:
        raise ReviewError(
            f"short_axis_mm: {short:g} mm is longer than the longest diameter ({longest:g} mm)"
        )
    with transaction.atomic():
        patient = patient_lock(study.patient_id)
        uid, label = _manual_identity(patient, study, organ, lesion)
        before = {"responses": responses_state(patient), "targets": targets_state(patient)}
        finding = ManualFinding.objects.create(
            patient=patient,
            study=study,
            lesion_uid=uid,
            label=label,
            organ=organ if lesion is None else lesion.organ,
            longest_diameter_mm=longest,
            short_axis_mm=short,
            volume_ml=volume,
            user=user,
            reason=reason,
        )
        if lesion is None:
            Lesion.objects.create(patient=patient, tracking_uid=uid, label=label, organ=organ)
        summary, scored = patient_recompute(patient, trigger=f"review: {label} measured by hand")
        rebuilt = LesionMeasurement.objects.filter(manual_finding=finding).first()
        return review_event_write(
            patient=patient,
            user=user,
            action="add",
            reason=reason,
            before=before,
            after={"measurement": measurement_state(rebuilt) if rebuilt else None},
            measurement=rebuilt,
            summary=summary,
            scored=scored,
            subject={
                "lesion_uid": uid,
                "lesion_label": label,
                "study_instance_uid": study.study_instance_uid,
                "study_date": study.study_date.isoformat() if study.study_date else None,
                "segmentation": None,
                "component_labels": [],
            },
        )


def _manual_identity(patient, study: Study, organ: str, lesion: Lesion | None) -> tuple[str, str]:
    """The (Tracking UID, label) a finding by hand belongs to; a `ReviewError` when the
    lesion is another patient's or already found at this study."""
    if lesion is None:
        labels = list(Lesion.objects.filter(patient=patient).values_list("label", flat=True))
        return str(generate_uid()), lesion_label(
            organ=organ, centroid_baseline_mm=(0.0, 0.0, 0.0), existing_labels=labels
        )
    lesion = Lesion.objects.filter(pk=lesion.pk, patient=patient).first()
    if lesion is None:
        raise ReviewError("lesion: choose one of this patient's lesions")
    here = LesionMeasurement.objects.filter(lesion=lesion, study=study).first()
    if here is not None and here.is_found:
        raise ReviewError(
            f"lesion: {lesion.label} is found at this study already; override its measurement "
            "instead"
        )
    if ManualFinding.objects.filter(study=study, lesion_uid=lesion.tracking_uid).exists():
        raise ReviewError(f"lesion: {lesion.label} is already measured by hand at this study")
    return lesion.tracking_uid, lesion.label


# --------------------------------------------------------------------------- links
def study_links_confirm(*, user: Reviewer, study: Study, reason: str) -> ReviewEvent:
    """Confirm the links proposed for a follow-up that could not be registered: each
    candidate linked provisionally becomes a radiologist's link (`LesionLink`) to the
    lesion it was proposed for (a new lesion: a lesion of its own), so the study can be
    assessed. Lesions not found there still need their own decision."""
    reviewer_require(user)
    reason = reason_clean(reason, required=True, action="confirm the proposed links")
    with transaction.atomic():
        patient = patient_lock(study.patient_id)
        rows = list(
            LesionMeasurement.objects.filter(study=study, link_provisional=True)
            .filter(status__in=LesionMeasurement.FOUND, component_label__isnull=False)
            .select_related("lesion", "study")
        )
        if not rows:
            raise ReviewError("study: no link of this study is waiting for confirmation")
        before = {
            "measurements": [measurement_state(m) for m in rows],
            "responses": responses_state(patient),
            "targets": targets_state(patient),
        }
        for m in rows:
            anchor = first_sighting(m.lesion)
            own = anchor.pk == m.pk
            for component in m.component_labels or [m.component_label]:
                LesionLink.objects.update_or_create(
                    segmentation_id=m.segmentation_id,
                    component_label=component,
                    defaults={
                        "patient": patient,
                        "anchor_segmentation_id": None if own else anchor.segmentation_id,
                        "anchor_component_label": None if own else anchor.component_label,
                        "user": user,
                        "reason": reason,
                    },
                )
        summary, scored = patient_recompute(patient, trigger="review: proposed links confirmed")
        return review_event_write(
            patient=patient,
            user=user,
            action="links_confirm",
            reason=reason,
            before=before,
            after={"confirmed": [m.lesion.label for m in rows]},
            measurement=None,
            summary=summary,
            scored=scored,
            subject={
                "study_instance_uid": study.study_instance_uid,
                "lesion_labels": sorted(m.lesion.label for m in rows),
            },
        )


# --------------------------------------------------------------------------- non-targets
def non_target_progression_decide(
    *, user: Reviewer, study: Study, progression: bool | None, reason: str
) -> ReviewEvent:
    """A radiologist's verdict on non-target disease at ``study``: unequivocal
    progression (True) or not (False); None withdraws it (the rules decide again:
    RECIST 1.1 section 4.3.4, `analytics.lesions.core.recist.non_target_unequivocal`)."""
    reviewer_require(user)
    reason = reason_clean(reason, required=True, action="decide non-target progression")
    with transaction.atomic():
        patient = patient_lock(study.patient_id)
        old = StudyResponseReview.objects.filter(study=study).first()
        before = {
            "non_target_progression": old.non_target_progression if old else None,
            "responses": responses_state(patient),
        }
        if progression is None:
            StudyResponseReview.objects.filter(study=study).delete()
        else:
            StudyResponseReview.objects.update_or_create(
                study=study,
                defaults={
                    "non_target_progression": progression,
                    "reason": reason,
                    "user": user,
                    "at": timezone.now(),
                },
            )
        summary, scored = patient_recompute(
            patient, trigger="review: non-target progression decided"
        )
        return review_event_write(
            patient=patient,
            user=user,
            action="non_target_verdict",
            reason=reason,
            before=before,
            after={"non_target_progression": progression},
            measurement=None,
            summary=summary,
            scored=scored,
            subject={
                "study_instance_uid": study.study_instance_uid,
                "study_date": study.study_date.isoformat() if study.study_date else None,
            },
        )
