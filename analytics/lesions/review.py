"""A radiologist's review of the tracked lesions: accept, reject, relink, merge, split,
choose targets, override a measurement.

Every service takes the acting ``user`` (checked here: `patients.permissions.can_review`)
and a reason, and in one ``transaction.atomic()``:

1. records the decision where re-tracking keeps it: review fields on the measurement
   (carried to the rebuilt row by its segmentation candidate), a `LesionLink` for an
   identity change, ``target_by_hand`` for a target choice;
2. rebuilds the patient's identities and measurements (`patient_track`), which
   reselects targets and recomputes every response assessment;
3. rescores the patient with the current risk model (features are computed from the
   measurements in force, so they follow too);
4. writes a `ReviewEvent` with who, when, why and the state before and after, with
   the stable keys of what it was about under ``before["subject"]`` (Tracking UID,
   Study Instance UID, segmentation and candidates: the measurement rows themselves are
   rebuilt on every re-track), and any decision the rebuild had to drop (``stale_*``).

Automated values are never changed: overrides sit beside them, and the event keeps
what was in force before. Rejected candidates stay in the database (review state
"rejected") and out of every response, feature and score.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone

from analytics.lesions.core.recist import MAX_TARGETS_PER_ORGAN, MAX_TARGETS_TOTAL, is_measurable
from analytics.lesions.selectors import response_rows
from analytics.lesions.tracking import TrackingSummary, measurement_keys, patient_track
from analytics.risk.selectors import current_model_version
from analytics.risk.services import risk_scores_compute
from imaging.models import Lesion, LesionLink, LesionMeasurement, ReviewEvent, study_order
from patients.models import Patient
from patients.permissions import can_review

logger = logging.getLogger(__name__)

REASON_MAX_CHARS = 500


class ReviewError(ValueError):
    """A review request that cannot be applied; the message says which field and why."""


# --------------------------------------------------------------------------- helpers
def _reviewer_require(user) -> None:
    if not can_review(user):
        raise PermissionDenied(
            "Your account may not review lesions (the radiologist or admin group is needed)."
        )


def _reason_clean(reason: str | None, *, required: bool, action: str) -> str:
    text = (reason or "").strip()
    if required and not text:
        raise ReviewError(f"reason: give a reason to {action}; it goes into the review record")
    if len(text) > REASON_MAX_CHARS:
        raise ReviewError(f"reason: at most {REASON_MAX_CHARS} characters, not {len(text)}")
    return text


def _patient_lock(patient_pk: int) -> Patient:
    """The patient row, locked until the transaction ends: one review at a time per patient."""
    return Patient.objects.select_for_update().get(pk=patient_pk)


def _measurement_fresh(measurement: LesionMeasurement) -> LesionMeasurement:
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


def _measurement_state(m: LesionMeasurement) -> dict[str, Any]:
    return {
        **measurement_keys(m),
        "status": m.status,
        "review_state": m.review_state,
        "is_target": m.is_target,
        "volume_ml": m.volume_ml,
        "longest_diameter_mm": m.longest_diameter_mm,
        "short_axis_mm": m.short_axis_mm,
        "override_volume_ml": m.override_volume_ml,
        "override_longest_diameter_mm": m.override_longest_diameter_mm,
        "override_short_axis_mm": m.override_short_axis_mm,
    }


def _responses_state(patient: Patient) -> list[dict[str, Any]]:
    return [
        {
            "study_instance_uid": r.study_instance_uid,
            "sum_diameters_mm": r.sum_diameters_mm,
            "total_volume_ml": r.total_volume_ml,
            "recist_response": r.recist_response,
            "volumetric_response": r.volumetric_response,
            "new_lesions": r.new_lesions,
        }
        for r in response_rows(patient=patient)
    ]


def _targets_state(patient: Patient) -> list[str]:
    return sorted(
        set(
            LesionMeasurement.objects.filter(lesion__patient=patient, is_target=True).values_list(
                "lesion__tracking_uid", flat=True
            )
        )
    )


def _candidate_row(segmentation_id: int | None, component: int | None) -> LesionMeasurement | None:
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


def _first_sighting(lesion: Lesion) -> LesionMeasurement:
    row = (
        LesionMeasurement.objects.filter(lesion=lesion)
        .exclude(status=LesionMeasurement.Status.RESOLVED)
        .select_related("study", "lesion")
        .order_by(*study_order("study__"))
        .first()
    )
    if row is None or row.segmentation_id is None or row.component_label is None:
        raise ReviewError(
            f"lesion: {lesion.label} has no measured sighting in a segmentation to link to"
        )
    return row


def _components(m: LesionMeasurement) -> list[int]:
    if m.segmentation_id is None or m.component_label is None:
        raise ReviewError(
            "measurement: it has no segmentation candidate (resolved, or not from a "
            "segmentation), so it cannot be relinked or split"
        )
    return list(m.component_labels or [m.component_label])


def _recompute(patient: Patient) -> tuple[TrackingSummary, int]:
    """Rebuild identities, targets and responses, then rescore the patient. Decisions
    the rebuild carries or drops go into the action's own event (`_event_write`)."""
    summary = patient_track(patient=patient, record_event=False)
    version = current_model_version()
    scored = 0
    if version is not None:
        scored = risk_scores_compute(model_version=version, patient_ids=[patient.patient_id])
    return summary, scored


def _event_write(
    *,
    patient: Patient,
    user,
    action: str,
    reason: str,
    before: dict[str, Any],
    after: dict[str, Any],
    measurement: LesionMeasurement | None,
    summary: TrackingSummary,
    scored: int,
    subject: dict[str, Any],
) -> ReviewEvent:
    before = {**before, "subject": subject}
    after = {
        **after,
        "responses": _responses_state(patient),
        "targets": _targets_state(patient),
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
    return event


def _decision_record(
    *, user, measurement: LesionMeasurement, action: str, reason: str, changes: dict[str, Any]
) -> ReviewEvent:
    """Shared path of accept, reject and override: save the review fields, rebuild."""
    patient = _patient_lock(measurement.lesion.patient_id)
    m = _measurement_fresh(measurement)
    if m.status == LesionMeasurement.Status.RESOLVED:
        raise ReviewError(
            f"measurement: {m.lesion.label} is resolved at this study (nothing was found "
            f"there); only a found lesion can be {action}ed"
        )
    before = {
        "measurement": _measurement_state(m),
        "responses": _responses_state(patient),
        "targets": _targets_state(patient),
    }
    for name, value in changes.items():
        setattr(m, name, value)
    m.review_reason = reason
    m.reviewed_by = user
    m.reviewed_at = timezone.now()
    m.save()
    summary, scored = _recompute(patient)
    rebuilt = _candidate_row(m.segmentation_id, m.component_label)
    after = {"measurement": _measurement_state(rebuilt) if rebuilt else None}
    return _event_write(
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


# --------------------------------------------------------------------------- services
def measurement_accept(*, user, measurement: LesionMeasurement, reason: str = "") -> ReviewEvent:
    """Accept the automated finding as a true lesion with its automated values.

    An override in force is withdrawn (the event keeps it under ``before``).
    """
    _reviewer_require(user)
    reason = _reason_clean(reason, required=False, action="accept")
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


def measurement_reject(*, user, measurement: LesionMeasurement, reason: str) -> ReviewEvent:
    """Reject the finding as a false positive: it leaves every response, target and score."""
    _reviewer_require(user)
    reason = _reason_clean(reason, required=True, action="reject a finding")
    with transaction.atomic():
        return _decision_record(
            user=user,
            measurement=measurement,
            action="reject",
            reason=reason,
            changes={"review_state": LesionMeasurement.Review.REJECTED},
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


def measurement_override(
    *,
    user,
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
    _reviewer_require(user)
    reason = _reason_clean(reason, required=True, action="override a measurement")
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
        _patient_lock(measurement.lesion.patient_id)
        current = _measurement_fresh(measurement)
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


def _links_save(
    *,
    patient: Patient,
    user,
    reason: str,
    segmentation_id: int,
    components: Sequence[int],
    anchor: LesionMeasurement | None,
) -> None:
    for component in components:
        LesionLink.objects.update_or_create(
            segmentation_id=segmentation_id,
            component_label=component,
            defaults={
                "patient": patient,
                "anchor_segmentation_id": anchor.segmentation_id if anchor else None,
                "anchor_component_label": anchor.component_label if anchor else None,
                "user": user,
                "reason": reason,
            },
        )


def _same_patient_and_organ(lesion: Lesion, other: Lesion, *, field_name: str) -> None:
    if lesion.patient_id != other.patient_id:
        raise ReviewError(f"{field_name}: that lesion belongs to another patient")
    if lesion.pk == other.pk:
        raise ReviewError(f"{field_name}: it is already {lesion.label}")
    if lesion.organ != other.organ:
        raise ReviewError(
            f"{field_name}: {other.label} is in the {other.get_organ_display().lower()}, "
            f"{lesion.label} in the {lesion.get_organ_display().lower()}; "
            "a lesion cannot change organ"
        )


def lesion_relink(
    *, user, measurement: LesionMeasurement, lesion: Lesion, reason: str
) -> ReviewEvent:
    """Say that this finding is ``lesion`` ("this follow-up lesion is that baseline lesion").

    The finding's candidates join ``lesion`` at this study; later studies are matched
    against it from its new position. ``lesion`` must have been seen by this study.
    """
    _reviewer_require(user)
    reason = _reason_clean(reason, required=True, action="relink a lesion")
    with transaction.atomic():
        patient = _patient_lock(measurement.lesion.patient_id)
        m = _measurement_fresh(measurement)
        target = Lesion.objects.filter(pk=lesion.pk).first()
        if target is None:
            raise ReviewError("lesion: it was rebuilt since the page was loaded; reload")
        _same_patient_and_organ(m.lesion, target, field_name="lesion")
        components = _components(m)
        anchor = _first_sighting(target)
        if anchor.study.chronological_key > m.study.chronological_key:
            raise ReviewError(
                f"lesion: {target.label} was first seen on {anchor.study.study_date}, after "
                f"this study ({m.study.study_date}); relink the later finding to the earlier "
                "lesion instead"
            )
        before = {
            "measurement": _measurement_state(m),
            "responses": _responses_state(patient),
            "targets": _targets_state(patient),
        }
        _links_save(
            patient=patient,
            user=user,
            reason=reason,
            segmentation_id=m.segmentation_id,
            components=components,
            anchor=anchor,
        )
        summary, scored = _recompute(patient)
        rebuilt = _candidate_row(m.segmentation_id, components[0])
        return _event_write(
            patient=patient,
            user=user,
            action="relink",
            reason=reason,
            before=before,
            after={
                "measurement": _measurement_state(rebuilt) if rebuilt else None,
                "linked_to": {"lesion_uid": target.tracking_uid, "lesion_label": target.label},
            },
            measurement=rebuilt,
            summary=summary,
            scored=scored,
            subject={
                **measurement_keys(m),
                "into_lesion_uid": target.tracking_uid,
                "into_lesion_label": target.label,
            },
        )


def lesion_merge(*, user, lesion: Lesion, into: Lesion, reason: str) -> ReviewEvent:
    """Merge two identities that are one lesion: every sighting of ``lesion`` joins ``into``.

    Where both were seen at one study, the candidates combine into one measurement
    (volumes add). ``into`` must be the one seen first; ``lesion``'s Tracking UID ends.
    """
    _reviewer_require(user)
    reason = _reason_clean(reason, required=True, action="merge lesions")
    with transaction.atomic():
        patient = _patient_lock(lesion.patient_id)
        source = Lesion.objects.filter(pk=lesion.pk).first()
        target = Lesion.objects.filter(pk=into.pk).first()
        if source is None or target is None:
            raise ReviewError("lesion: it was rebuilt since the page was loaded; reload")
        _same_patient_and_organ(source, target, field_name="into")
        anchor = _first_sighting(target)
        first_of_source = _first_sighting(source)
        if anchor.study.chronological_key > first_of_source.study.chronological_key:
            raise ReviewError(
                f"into: merge into the lesion seen first; {target.label} was first seen on "
                f"{anchor.study.study_date}, after {source.label} ({first_of_source.study.study_date})"
            )
        sightings = list(
            LesionMeasurement.objects.filter(lesion=source, segmentation__isnull=False)
            .exclude(status=LesionMeasurement.Status.RESOLVED)
            .exclude(component_label__isnull=True)
            .select_related("study", "lesion")
        )
        before = {
            "lesion": {"lesion_uid": source.tracking_uid, "lesion_label": source.label},
            "measurements": [_measurement_state(m) for m in sightings],
            "responses": _responses_state(patient),
            "targets": _targets_state(patient),
        }
        for m in sightings:
            _links_save(
                patient=patient,
                user=user,
                reason=reason,
                segmentation_id=m.segmentation_id,
                components=_components(m),
                anchor=anchor,
            )
        summary, scored = _recompute(patient)
        rebuilt = _candidate_row(anchor.segmentation_id, anchor.component_label)
        return _event_write(
            patient=patient,
            user=user,
            action="merge",
            reason=reason,
            before=before,
            after={
                "merged_into": {"lesion_uid": target.tracking_uid, "lesion_label": target.label}
            },
            measurement=rebuilt,
            summary=summary,
            scored=scored,
            subject={
                "lesion_uid": source.tracking_uid,
                "lesion_label": source.label,
                "into_lesion_uid": target.tracking_uid,
                "into_lesion_label": target.label,
                "sightings": [measurement_keys(m) for m in sightings],
            },
        )


def lesion_split(
    *, user, measurement: LesionMeasurement, component_label: int | None = None, reason: str
) -> ReviewEvent:
    """Split a candidate off into a lesion of its own (a new Tracking UID).

    ``component_label`` names one of the measurement's candidates (default: its largest);
    a fragment wrongly joined to a lesion, or a follow-up finding wrongly tracked as an
    earlier lesion, becomes a new lesion from this study on.
    """
    _reviewer_require(user)
    reason = _reason_clean(reason, required=True, action="split a lesion")
    with transaction.atomic():
        patient = _patient_lock(measurement.lesion.patient_id)
        m = _measurement_fresh(measurement)
        components = _components(m)
        component = m.component_label if component_label is None else int(component_label)
        if component not in components:
            raise ReviewError(
                f"component_label: {component} is not one of this measurement's candidates "
                f"({', '.join(map(str, components))})"
            )
        first = _first_sighting(m.lesion)
        if first.pk == m.pk and len(components) == 1:
            raise ReviewError(
                f"measurement: {m.lesion.label} is first seen here as one candidate; "
                "it is already a lesion of its own"
            )
        before = {
            "measurement": _measurement_state(m),
            "responses": _responses_state(patient),
            "targets": _targets_state(patient),
        }
        prior = LesionLink.objects.filter(
            segmentation_id=m.segmentation_id, component_label=component
        ).first()
        followers = _links_joined_with(prior, lesion=m.lesion, after_study=m.study)
        _links_save(
            patient=patient,
            user=user,
            reason=reason,
            segmentation_id=m.segmentation_id,
            components=[component],
            anchor=None,
        )
        # The later sightings that joined the lesion in the same decision (a merge)
        # follow the split-off candidate now, not the lesion it leaves.
        moved = []
        for link in followers:
            moved.append(
                {
                    "segmentation": link.segmentation_id,
                    "component_label": link.component_label,
                    "anchor_before": [link.anchor_segmentation_id, link.anchor_component_label],
                }
            )
            link.anchor_segmentation_id = m.segmentation_id
            link.anchor_component_label = component
            link.user = user
            link.reason = reason
            link.save()
        summary, scored = _recompute(patient)
        rebuilt = _candidate_row(m.segmentation_id, component)
        return _event_write(
            patient=patient,
            user=user,
            action="split",
            reason=reason,
            before=before,
            after={
                "measurement": _measurement_state(rebuilt) if rebuilt else None,
                "later_links_moved": moved,
            },
            measurement=rebuilt,
            summary=summary,
            scored=scored,
            subject={**measurement_keys(m), "split_component_label": component},
        )


def _links_joined_with(prior: LesionLink | None, *, lesion: Lesion, after_study) -> list:
    """The links made in the same decision as ``prior`` (same anchor, user and reason:
    one merge writes them together) on ``lesion``'s candidates at studies after
    ``after_study``. Links the radiologist made separately stay as they are."""
    if prior is None or prior.anchor_segmentation_id is None:
        return []
    later = {
        (r.segmentation_id, c)
        for r in LesionMeasurement.objects.filter(lesion=lesion, segmentation__isnull=False)
        .exclude(status=LesionMeasurement.Status.RESOLVED)
        .select_related("study")
        if r.study.chronological_key > after_study.chronological_key
        for c in (r.component_labels or [r.component_label])
    }
    same_decision = LesionLink.objects.filter(
        patient_id=prior.patient_id,
        anchor_segmentation_id=prior.anchor_segmentation_id,
        anchor_component_label=prior.anchor_component_label,
        user_id=prior.user_id,
        reason=prior.reason,
    ).exclude(pk=prior.pk)
    return [link for link in same_decision if (link.segmentation_id, link.component_label) in later]


def targets_set(*, user, patient: Patient, lesions: Sequence[Lesion], reason: str) -> ReviewEvent:
    """Choose the RECIST 1.1 target lesions by hand (an empty choice returns to the rules).

    Each target must be found at baseline, not rejected, and measurable (longest
    diameter in force >= 10 mm, RECIST 1.1 section 3.1.1); at most 5 in all and 2 per
    organ (section 4.2).
    """
    _reviewer_require(user)
    reason = _reason_clean(reason, required=True, action="change the target lesions")
    with transaction.atomic():
        patient = _patient_lock(patient.pk)
        rows = list(
            LesionMeasurement.objects.filter(lesion__patient=patient)
            .select_related("study", "lesion")
            .order_by(*study_order("study__"))
        )
        if not rows:
            raise ReviewError("lesions: this patient has no tracked lesions")
        baseline_study = rows[0].study_id
        baseline = {r.lesion_id: r for r in rows if r.study_id == baseline_study}
        wanted = {lesion.pk for lesion in lesions}
        per_organ: dict[str, int] = {}
        for pk in sorted(wanted):
            row = baseline.get(pk)
            if row is None or row.status == LesionMeasurement.Status.RESOLVED:
                raise ReviewError(
                    f"lesions: a target must be found at baseline; {_lesion_name(pk, rows)} is not"
                )
            if row.review_state == LesionMeasurement.Review.REJECTED:
                raise ReviewError(
                    f"lesions: {row.lesion.label} was rejected as a false positive at baseline"
                )
            if not is_measurable(longest_diameter_mm=row.effective_longest_diameter_mm):
                raise ReviewError(
                    f"lesions: {row.lesion.label} measures "
                    f"{row.effective_longest_diameter_mm:.1f} mm at baseline; a target must "
                    "be measurable (at least 10 mm, RECIST 1.1 section 3.1.1)"
                )
            per_organ[row.lesion.organ] = per_organ.get(row.lesion.organ, 0) + 1
        if len(wanted) > MAX_TARGETS_TOTAL:
            raise ReviewError(
                f"lesions: at most {MAX_TARGETS_TOTAL} targets (RECIST 1.1 section 4.2), "
                f"not {len(wanted)}"
            )
        crowded = [organ for organ, n in per_organ.items() if n > MAX_TARGETS_PER_ORGAN]
        if crowded:
            raise ReviewError(
                f"lesions: at most {MAX_TARGETS_PER_ORGAN} targets per organ (RECIST 1.1 "
                f"section 4.2); {', '.join(crowded)} has more"
            )
        before = {"responses": _responses_state(patient), "targets": _targets_state(patient)}
        for row in baseline.values():
            row.is_target = row.lesion_id in wanted
            row.target_by_hand = bool(wanted)
        LesionMeasurement.objects.bulk_update(baseline.values(), ["is_target", "target_by_hand"])
        summary, scored = _recompute(patient)
        return _event_write(
            patient=patient,
            user=user,
            action="targets" if wanted else "targets_automatic",
            reason=reason,
            before=before,
            after={"chosen_by_hand": bool(wanted)},
            measurement=None,
            summary=summary,
            scored=scored,
            subject={
                "lesion_uids": sorted(
                    baseline[pk].lesion.tracking_uid for pk in wanted if pk in baseline
                ),
                "lesion_labels": sorted(
                    baseline[pk].lesion.label for pk in wanted if pk in baseline
                ),
                "study_instance_uid": rows[0].study.study_instance_uid,
            },
        )


def _lesion_name(pk: int, rows: Sequence[LesionMeasurement]) -> str:
    for row in rows:
        if row.lesion_id == pk:
            return row.lesion.label
    return f"lesion {pk}"
