"""Add a lesion the segmenter missed with one click, and follow it through every study.

`lesion_add_at_seed` segments the lesion at the click (`imaging.core.segmentation.
interactive.click_segment`), then looks for it at each other study of the patient
around the click's lesion mapped through the stored registrations to the baseline (their
full transforms, B-spline included: `analytics.lesions.tracking.transforms`; or,
without one, the landmark placement tracking uses: `analytics.lesions.tracking.chain`),
and segments it there (`interactive_search.lesion_search`). Each study where it is found and not already
segmented gets a new version of its segmentation with the lesion added (its candidate's
``source`` says who added it, how, with which parameters; a propagated one is
"propagated, awaiting review"); where the segmenter had found it already, that
candidate is linked instead. Links (`LesionLink`) put every sighting in one identity
(one Tracking UID). Where it is not found, the study says so and why: tracking gives it
a ``not_found`` row after the first sighting, never 0 mm. Then tracking, responses and
the risk score are recomputed in one transaction, and a `ReviewEvent` names the user.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.db import transaction

from analytics.lesions.review.common import (
    Reviewer,
    ReviewError,
    candidate_row,
    measurement_state,
    patient_lock,
    patient_recompute,
    reason_clean,
    responses_state,
    review_event_write,
    reviewer_require,
    targets_state,
)
from analytics.lesions.review.versions import (
    StudySegmentation,
    candidate_of,
    decisions_rekey,
    label_at,
    label_map_read,
    mask_paste,
    next_label,
    region_read,
    segmentation_newest_require,
    segmentation_version_write,
    source_entry,
    study_segmentation_require,
    version_file_remove,
)
from analytics.lesions.tracking.chain import StudyInput, study_inputs
from analytics.lesions.tracking.summary import TrackingSummary
from analytics.lesions.tracking.transforms import study_mapping
from imaging.core.geometry.volume import Volume
from imaging.core.segmentation.interactive import ClickSegmentation, click_segment
from imaging.core.segmentation.interactive_region import ClickRefused, ClickSettings
from imaging.core.segmentation.interactive_search import lesion_search
from imaging.models import Lesion, LesionLink, LesionMeasurement, ReviewEvent, Segmentation, Study

#: How far around a mapped click the lesion is looked for (mm): registered, and placed
#: by landmarks (no registration: placements can be off by a centimetre or two).
SEARCH_REGISTERED_MM = 15.0
SEARCH_PROVISIONAL_MM = 30.0
#: Share of the found lesion's voxels already in one segmenter candidate that make it
#: that candidate (the segmenter found it there: linked, not drawn again).
SAME_CANDIDATE_SHARE = 0.3

#: What each study says about the added lesion (`StudyOutcome.status`).
STATUS_TEXT = {
    "added": "added by {user}",
    "propagated": "propagated, awaiting review",
    "linked": "found by the segmenter, linked",
    "not_found": "not found",
    "not_searched": "not searched (no segmentation)",
}


@dataclass
class StudyOutcome:
    """What became of the added lesion at one study, before it is stored."""

    entry: StudyInput
    status: str
    reason: str = ""
    point_lps_mm: list[float] | None = None
    found: ClickSegmentation | None = None
    existing_label: int | None = None
    images: StudySegmentation | None = None
    label_map: Volume | None = None
    label: int | None = None
    version: Segmentation | None = None


@dataclass
class LesionAddition:
    """The added lesion, its measurement at every study of the patient, the event."""

    lesion: Lesion
    event: ReviewEvent
    studies: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------- requests
def _point(value: Any, name: str) -> np.ndarray:
    try:
        point = np.asarray(value, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise ReviewError(f"{name}: three numbers [x, y, z] in LPS mm, not {value!r}") from None
    if point.shape != (3,) or not np.all(np.isfinite(point)):
        raise ReviewError(f"{name}: three finite numbers [x, y, z] in LPS mm, not {value!r}")
    return point


def _box(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    try:
        box = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        box = np.zeros(0)
    if box.size != 6 or not np.all(np.isfinite(box)):
        raise ReviewError(
            f"box_lps_mm: two corners [[x0, y0, z0], [x1, y1, z1]] in LPS mm, not {value!r}"
        )
    return box.reshape(2, 3)


# --------------------------------------------------------------------------- segmenting
def _clicked(
    entry: StudyInput, seed: np.ndarray, box: np.ndarray | None, organ: str | None
) -> StudyOutcome:
    """The lesion segmented at the click, on the clicked study's own grid."""
    images = study_segmentation_require(study=entry.study)
    label_map = label_map_read(images)
    here = label_at(label_map, seed)
    if here:
        label = _label_of(images.segmentation, here, entry.study)
        raise ReviewError(
            f"seed_lps_mm: the click is on {label}, already a lesion at this study; edit "
            "its mask instead"
        )
    settings = ClickSettings()
    half = settings.reach_mm + 10.0
    if box is not None:
        half = float(np.max(np.abs(box - seed))) + 10.0
    region = region_read(images, seed, half)
    try:
        found = click_segment(
            study=region, seed_lps_mm=seed, box_lps_mm=box, organ=organ, settings=settings
        )
    except ClickRefused as refused:
        raise ReviewError(str(refused)) from None
    outcome = StudyOutcome(entry, "added", point_lps_mm=seed.tolist(), found=found)
    outcome.images, outcome.label_map = images, label_map
    _place(outcome)
    if outcome.status != "added":
        raise ReviewError(
            f"seed_lps_mm: the region found at the click is mostly {outcome.reason}, "
            "already a lesion at this study; edit its mask instead"
        )
    return outcome


def _label_of(segmentation: Segmentation, component: int, study: Study) -> str:
    row = (
        LesionMeasurement.objects.filter(
            segmentation=segmentation, component_label=component, study=study
        )
        .select_related("lesion")
        .first()
    )
    return row.lesion.label if row is not None else f"candidate {component}"


def _place(outcome: StudyOutcome) -> None:
    """Decide between a new candidate and one the segmenter already drew there."""
    assert outcome.found is not None and outcome.label_map is not None
    mask = mask_paste(outcome.label_map, outcome.found.mask)
    labels = outcome.label_map.array[mask]
    taken = labels[labels > 0]
    if taken.size:
        values, counts = np.unique(taken, return_counts=True)
        best = int(values[np.argmax(counts)])
        if counts.max() >= SAME_CANDIDATE_SHARE * mask.sum():
            outcome.status = "linked"
            outcome.existing_label = best
            outcome.reason = _label_of(outcome.images.segmentation, best, outcome.entry.study)
            return
    outcome.label = next_label(outcome.images.segmentation, outcome.label_map)


def _mapped(point: np.ndarray, source: StudyInput, target: StudyInput) -> np.ndarray:
    """A point of ``source`` (its LPS mm) in ``target``'s LPS mm, through the baseline
    and each study's full registration (B-spline included: `study_mapping`), as
    tracking places them: the affine part alone can eat most of the search radius."""
    at_baseline = study_mapping(source).to_baseline(np.asarray(point, dtype=float))
    return np.asarray(study_mapping(target).from_baseline(at_baseline), dtype=float).reshape(3)


def _propagated(clicked: StudyOutcome, entry: StudyInput) -> StudyOutcome:
    """The added lesion looked for at another study of the chain."""
    assert clicked.found is not None
    centroid = np.asarray(clicked.found.measurement.centroid_lps_mm, dtype=float)
    point = _mapped(centroid, clicked.entry, entry)
    provisional = bool(entry.provisional or clicked.entry.provisional)
    search_mm = SEARCH_PROVISIONAL_MM if provisional else SEARCH_REGISTERED_MM
    outcome = StudyOutcome(entry, "not_found", point_lps_mm=[round(float(v), 2) for v in point])
    images = study_segmentation_require(study=entry.study)
    settings = ClickSettings(search_mm=search_mm)
    try:
        region = region_read(images, point, search_mm + settings.reach_mm + 10.0)
    except ReviewError:
        outcome.reason = "the mapped point is outside this study's images"
        return outcome
    searched = lesion_search(
        study=region, centre_lps_mm=point, look=clicked.found.look, settings=settings
    )
    if searched.found is None:
        outcome.reason = searched.reason
        return outcome
    outcome.status, outcome.found = "propagated", searched.found
    outcome.images, outcome.label_map = images, label_map_read(images)
    _place(outcome)
    return outcome


def _conflicts(outcomes: list[StudyOutcome], clicked: StudyOutcome) -> None:
    """A segmenter candidate found by propagation whose lesion is also seen at the
    clicked study is another lesion: the added one is not found there."""
    seen_here = set(
        LesionMeasurement.objects.filter(
            study=clicked.entry.study, status__in=LesionMeasurement.FOUND
        ).values_list("lesion_id", flat=True)
    )
    for outcome in outcomes:
        if outcome.status != "linked":
            continue
        row = LesionMeasurement.objects.filter(
            segmentation=outcome.images.segmentation, component_label=outcome.existing_label
        ).first()
        if row is not None and row.lesion_id in seen_here:
            outcome.status = "not_found"
            outcome.reason = (
                f"the lesion found there is {row.lesion.label}, which is also seen at the "
                "clicked study: another lesion"
            )
            outcome.found = None


# --------------------------------------------------------------------------- storing
def _version_write(outcome: StudyOutcome, organ: str, user: Reviewer, reason: str) -> None:
    """The study's new segmentation version with the lesion added (in ``organ``, the
    organ given or read at the click, at every study); decisions re-keyed."""
    assert outcome.found is not None and outcome.label is not None
    images, label_map = outcome.images, outcome.label_map
    mask = mask_paste(label_map, outcome.found.mask) & (label_map.array == 0)
    array = label_map.array.astype(np.uint16 if outcome.label > 255 else label_map.array.dtype)
    array = array.copy()
    array[mask] = outcome.label
    kind = "added" if outcome.status == "added" else "propagated"
    source = source_entry(
        kind=kind,
        user=user,
        record=outcome.found.record,
        study_instance_uid=outcome.entry.study.study_instance_uid,
        reason=reason,
    )
    candidate = candidate_of(outcome.found.measurement, outcome.label, source)
    candidate["organ"] = organ
    lesions = [*images.segmentation.lesions, candidate]
    outcome.version = segmentation_version_write(
        images=images,
        label_map=label_map.with_array(array, kind="label"),
        lesions=lesions,
        user=user,
        correction={
            "action": "add" if kind == "added" else "propagate",
            "component_label": outcome.label,
            "method": source["method"],
            "parameters": source["parameters"],
            "reason": reason,
        },  # fmt: skip
    )
    decisions_rekey(old=images.segmentation, new=outcome.version, labels={})


def _links_write(outcomes: list[StudyOutcome], user: Reviewer, reason: str) -> None:
    """One identity for every sighting: the earliest starts it (or is the segmenter's
    own), each later one is linked to it."""
    sightings = [o for o in outcomes if o.status in ("added", "propagated", "linked")]
    first = sightings[0]
    anchor_segmentation = first.version or first.images.segmentation
    anchor_label = first.label if first.label is not None else first.existing_label
    why = reason or "a lesion added with one click, followed through the patient's studies"
    for o in sightings:
        segmentation = o.version or o.images.segmentation
        label = o.label if o.label is not None else o.existing_label
        own = o is first
        if own and o.status == "linked":
            continue  # the segmenter's own identity; the others join it
        LesionLink.objects.update_or_create(
            segmentation=segmentation,
            component_label=label,
            defaults={
                "patient_id": o.entry.study.patient_id,
                "anchor_segmentation": None if own else anchor_segmentation,
                "anchor_component_label": None if own else anchor_label,
                "user": user if getattr(user, "pk", None) else None,
                "reason": why,
            },
        )


def _still_newest(outcomes: list[StudyOutcome]) -> None:
    for o in outcomes:
        if o.images is not None:
            segmentation_newest_require(o.images.segmentation)


# --------------------------------------------------------------------------- the service
def lesion_add_at_seed(
    *,
    user: Reviewer,
    study: Study,
    seed_lps_mm: Any,
    organ: str | None = None,
    box_lps_mm: Any = None,
    reason: str = "",
) -> LesionAddition:
    """Add the lesion at ``seed_lps_mm`` (LPS mm, ``study``'s own frame) and follow it
    through every study of the patient (module docs). ``organ`` overrides the one read
    from the tissue around it; ``box_lps_mm`` (two corners) bounds the segmentation.
    Raises `ReviewError` (the field and why) when it cannot be added; nothing is stored
    then."""
    reviewer_require(user)
    reason = reason_clean(reason, required=False, action="add a lesion")
    seed = _point(seed_lps_mm, "seed_lps_mm")
    box = _box(box_lps_mm)
    if organ is not None and organ not in Lesion.Organ.values:
        raise ReviewError(f"organ: one of {', '.join(Lesion.Organ.values)}, not {organ!r}")
    chain = study_inputs(patient=study.patient, summary=TrackingSummary())
    entry = next((e for e in chain if e.study.pk == study.pk), None)
    if entry is None:
        raise ReviewError(
            "study: it has no segmentation yet (not processed, or its series could not be "
            "analysed); add the lesion once it is"
        )
    clicked = _clicked(entry, seed, box, organ)
    outcomes = [clicked if e is entry else _propagated(clicked, e) for e in chain]
    _conflicts(outcomes, clicked)
    return _store(study, clicked, outcomes, user, reason)


def _store(
    study: Study,
    clicked: StudyOutcome,
    outcomes: list[StudyOutcome],
    user: Reviewer,
    reason: str,
) -> LesionAddition:
    """Write the versions and links, rebuild, rescore and record, in one transaction."""
    try:
        with transaction.atomic():
            patient = patient_lock(study.patient_id)
            _still_newest(outcomes)
            before = {"responses": responses_state(patient), "targets": targets_state(patient)}
            for o in outcomes:
                if o.status in ("added", "propagated"):
                    _version_write(o, clicked.found.organ, user, reason)
            _links_write(outcomes, user, reason)
            summary, scored = patient_recompute(
                patient, trigger=f"review: lesion added at the study of {study.study_date}"
            )
            row = candidate_row(clicked.version.pk, clicked.label)
            if row is None:
                raise ReviewError("seed_lps_mm: the added lesion was not kept by tracking")
            studies = study_rows(lesion=row.lesion, outcomes=outcomes, user=user)
            event = review_event_write(
                patient=patient,
                user=user,
                action="lesion_add_click",
                reason=reason,
                before=before,
                after={
                    "measurement": measurement_state(row),
                    "studies": studies,
                    "method": clicked.found.record.as_dict(),
                },
                measurement=row,
                summary=summary,
                scored=scored,
                subject={
                    "lesion_uid": row.lesion.tracking_uid,
                    "lesion_label": row.lesion.label,
                    "study_instance_uid": study.study_instance_uid,
                    "study_date": study.study_date.isoformat() if study.study_date else None,
                    "segmentation": clicked.version.pk,
                    "component_labels": [clicked.label],
                },
            )
    except Exception:
        for o in outcomes:
            version_file_remove(o.version)
        raise
    return LesionAddition(lesion=row.lesion, event=event, studies=studies)


def _number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def study_rows(
    *, lesion: Lesion, outcomes: list[StudyOutcome], user: Reviewer
) -> list[dict[str, Any]]:
    """The added lesion at every study of the patient, oldest first: its values in force
    where it was found (ml, mm, centroid in that study's LPS mm) and its status; none
    where it was not ("not found", never 0 mm)."""
    rows = {
        m.study_id: m
        for m in LesionMeasurement.objects.filter(lesion=lesion).select_related("study")
    }
    by_study = {o.entry.study.pk: o for o in outcomes}
    out = []
    for study in Study.objects.filter(patient_id=lesion.patient_id).chronological():
        o, m = by_study.get(study.pk), rows.get(study.pk)
        found = m is not None and m.is_found
        if found:
            # found where the search did not: tracking linked a segmenter's candidate
            status = o.status if o is not None and o.status != "not_found" else "linked"
        else:
            status = "not_found" if o is not None else "not_searched"
        reason = ""
        if not found:
            reason = o.reason if o is not None else "no segmentation of this study"
        out.append(
            {
                "study_instance_uid": study.study_instance_uid,
                "study_date": study.study_date.isoformat() if study.study_date else None,
                "status": status,
                "status_text": STATUS_TEXT[status].format(user=user.get_username()),
                "reason": reason,
                "measurement_id": m.pk if m is not None else None,
                "review_state": m.review_state if m is not None else None,
                "volume_ml": _number(m.effective_volume_ml) if found else None,
                "longest_diameter_mm": _number(m.effective_longest_diameter_mm) if found else None,
                "short_axis_mm": _number(m.effective_short_axis_mm) if found else None,
                "centroid_lps_mm": [m.centroid_x_mm, m.centroid_y_mm, m.centroid_z_mm]
                if found
                else None,
                "searched_at_lps_mm": o.point_lps_mm if o is not None else None,
            }
        )
    return out
