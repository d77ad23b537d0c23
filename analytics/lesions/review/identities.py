"""A radiologist's decisions on lesion identities: relink a finding to another lesion,
merge two lesions, split a candidate off into a lesion of its own. Each is kept as
`LesionLink` rows on the candidates, which re-tracking applies study by study."""

from __future__ import annotations

from collections.abc import Sequence

from django.db import transaction

from analytics.lesions.review.common import (
    Reviewer,
    ReviewError,
    candidate_components,
    candidate_row,
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
from imaging.models import Lesion, LesionLink, LesionMeasurement, ReviewEvent, Study
from patients.models import Patient


def lesion_relink(
    *, user: Reviewer, measurement: LesionMeasurement, lesion: Lesion, reason: str
) -> ReviewEvent:
    """Say that this finding is ``lesion`` ("this follow-up lesion is that baseline lesion").

    The finding's candidates join ``lesion`` at this study; later studies are matched
    against it from its new position. ``lesion`` must have been seen by this study.
    """
    reviewer_require(user)
    reason = reason_clean(reason, required=True, action="relink a lesion")
    with transaction.atomic():
        patient = patient_lock(measurement.lesion.patient_id)
        m = measurement_fresh(measurement)
        target = Lesion.objects.filter(pk=lesion.pk).first()
        if target is None:
            raise ReviewError("lesion: it was rebuilt since the page was loaded; reload")
        _same_patient_and_organ(m.lesion, target, field_name="lesion")
        components = candidate_components(m)
        anchor = first_sighting(target)
        if anchor.study.chronological_key > m.study.chronological_key:
            raise ReviewError(
                f"lesion: {target.label} was first seen on {anchor.study.study_date}, after "
                f"this study ({m.study.study_date}); relink the later finding to the earlier "
                "lesion instead"
            )
        before = measurement_before(m, patient)
        _links_save(
            patient=patient,
            user=user,
            reason=reason,
            segmentation_id=m.segmentation_id,
            components=components,
            anchor=anchor,
        )
        summary, scored = patient_recompute(patient)
        rebuilt = candidate_row(m.segmentation_id, components[0])
        return review_event_write(
            patient=patient,
            user=user,
            action="relink",
            reason=reason,
            before=before,
            after={
                "measurement": measurement_state(rebuilt) if rebuilt else None,
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


def lesion_merge(*, user: Reviewer, lesion: Lesion, into: Lesion, reason: str) -> ReviewEvent:
    """Merge two identities that are one lesion: every sighting of ``lesion`` joins ``into``.

    Where both were seen at one study, the candidates combine into one measurement
    (volumes add). ``into`` must be the one seen first; ``lesion``'s Tracking UID ends.
    """
    reviewer_require(user)
    reason = reason_clean(reason, required=True, action="merge lesions")
    with transaction.atomic():
        patient = patient_lock(lesion.patient_id)
        source = Lesion.objects.filter(pk=lesion.pk).first()
        target = Lesion.objects.filter(pk=into.pk).first()
        if source is None or target is None:
            raise ReviewError("lesion: it was rebuilt since the page was loaded; reload")
        _same_patient_and_organ(source, target, field_name="into")
        anchor = first_sighting(target)
        first_of_source = first_sighting(source)
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
            "measurements": [measurement_state(m) for m in sightings],
            "responses": responses_state(patient),
            "targets": targets_state(patient),
        }
        for m in sightings:
            _links_save(
                patient=patient,
                user=user,
                reason=reason,
                segmentation_id=m.segmentation_id,
                components=candidate_components(m),
                anchor=anchor,
            )
        summary, scored = patient_recompute(patient)
        rebuilt = candidate_row(anchor.segmentation_id, anchor.component_label)
        return review_event_write(
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
    *,
    user: Reviewer,
    measurement: LesionMeasurement,
    component_label: int | None = None,
    reason: str,
) -> ReviewEvent:
    """Split a candidate off into a lesion of its own (a new Tracking UID).

    ``component_label`` names one of the measurement's candidates (default: its largest);
    a fragment wrongly joined to a lesion, or a follow-up finding wrongly tracked as an
    earlier lesion, becomes a new lesion from this study on.
    """
    reviewer_require(user)
    reason = reason_clean(reason, required=True, action="split a lesion")
    with transaction.atomic():
        patient = patient_lock(measurement.lesion.patient_id)
        m = measurement_fresh(measurement)
        component = _split_component(m, component_label)
        before = measurement_before(m, patient)
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
        moved = _followers_move(followers, m, component, user=user, reason=reason)
        summary, scored = patient_recompute(patient)
        rebuilt = candidate_row(m.segmentation_id, component)
        return review_event_write(
            patient=patient,
            user=user,
            action="split",
            reason=reason,
            before=before,
            after={
                "measurement": measurement_state(rebuilt) if rebuilt else None,
                "later_links_moved": moved,
            },
            measurement=rebuilt,
            summary=summary,
            scored=scored,
            subject={**measurement_keys(m), "split_component_label": component},
        )


def _split_component(m: LesionMeasurement, component_label: int | None) -> int:
    """The candidate to split off (default the row's largest), checked: one of the row's,
    and not a lesion's only candidate at its first sighting (that is a lesion already)."""
    components = candidate_components(m)
    component = m.component_label if component_label is None else int(component_label)
    if component not in components:
        raise ReviewError(
            f"component_label: {component} is not one of this measurement's candidates "
            f"({', '.join(map(str, components))})"
        )
    first = first_sighting(m.lesion)
    if first.pk == m.pk and len(components) == 1:
        raise ReviewError(
            f"measurement: {m.lesion.label} is first seen here as one candidate; "
            "it is already a lesion of its own"
        )
    return component


def _followers_move(
    followers: list[LesionLink],
    m: LesionMeasurement,
    component: int,
    *,
    user: Reviewer,
    reason: str,
) -> list[dict]:
    """The later sightings that joined the lesion in the same decision (a merge) follow
    the split-off candidate now, not the lesion it leaves. Returns what moved."""
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
    return moved


def _links_save(
    *,
    patient: Patient,
    user: Reviewer,
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


def _links_joined_with(
    prior: LesionLink | None, *, lesion: Lesion, after_study: Study
) -> list[LesionLink]:
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
