"""Writing a rebuild: the identities (`Lesion`, keeping their Tracking UID and label when
first seen in the same candidate), one measurement row per identity per study with the
review decisions that fit it, and the RECIST 1.1 targets marked on those rows.

An identity not seen at a study gets a ``not_found`` row (or ``merged``, with the lesion
that absorbed it), never a "resolved" one: only a radiologist's confirmation makes it
gone (`analytics.lesions.tracking.states`)."""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

from pydicom.uid import generate_uid

from analytics.lesions.core.identities import LesionAssignment, fragments_combine
from analytics.lesions.core.readings import LesionReading
from analytics.lesions.core.recist import lesion_measurable, targets_select
from analytics.lesions.core.timepoints import time_point_readings
from analytics.lesions.tracking.carry import CandidateSet
from analytics.lesions.tracking.chain import Chain, StudyInput, candidate_observation
from analytics.lesions.tracking.states import absent_row
from analytics.lesions.tracking.summary import (
    TrackingSummary,
    review_stale_entry,
    row_key,
    target_stale_entry,
)
from imaging.models import Lesion, LesionMeasurement
from patients.models import Patient

#: A review decision carried to the candidates it was made on: (review fields, old row)
Reviews = dict[CandidateSet, tuple[dict[str, Any], LesionMeasurement]]


# --------------------------------------------------------------------------- identities
def identities_resolve(
    *,
    chain: Chain,
    first_sightings: dict[tuple[int, int], tuple[str, str]],
    reserved: set[str] = frozenset(),
) -> dict[str, tuple[str, str]]:
    """Map each identity of this rebuild to a (Tracking UID, label): the old identity's
    when it was first seen in the same candidate, otherwise a new UID and a free label
    (never one of the ``reserved`` labels: those of lesions measured by hand)."""
    resolved: dict[str, tuple[str, str]] = {}
    labels_taken: set[str] = set(reserved)
    fresh: list[tuple[str, str, str]] = []
    for entry, result in chain:
        for assignment in result.assignments:
            if assignment.lesion_uid in resolved or assignment.status != "new":
                continue
            # Every candidate of an old first sighting names its identity; a split-off
            # candidate comes after the identity it left, which claims the label first.
            old = next(
                (
                    first_sightings[(entry.segmentation.pk, int(key))]
                    for key in assignment.observation_keys
                    if (entry.segmentation.pk, int(key)) in first_sightings
                ),
                None,
            )
            if old is not None and _organ_of_label(old[1]) != _organ_of_label(assignment.label):
                # refiled under another organ by a radiologist: same UID, a new label
                resolved[assignment.lesion_uid] = ("", "")
                fresh.append((assignment.lesion_uid, assignment.label, old[0]))
            elif old is not None and old[1] not in labels_taken:
                resolved[assignment.lesion_uid] = old
                labels_taken.add(old[1])
            else:
                resolved[assignment.lesion_uid] = ("", "")
                fresh.append((assignment.lesion_uid, assignment.label, ""))
    for temp_uid, label, uid in fresh:
        label = _label_free(label, labels_taken)
        labels_taken.add(label)
        resolved[temp_uid] = (uid or str(generate_uid()), label)
    return resolved


def _organ_of_label(label: str) -> str:
    """A label's organ, without its side: "lung" of "Right lung 2" (a side read again
    from a changed mask does not relabel a lesion; a change of organ does)."""
    stem = label.rsplit(" ", 1)[0].lower()
    return stem.removeprefix("left ").removeprefix("right ")


def _label_free(label: str, taken: set[str]) -> str:
    """``label``, or the lowest "<stem> <n>" not taken when it is."""
    if label not in taken:
        return label
    stem = label.rsplit(" ", 1)[0]
    n = 1
    while f"{stem} {n}" in taken:
        n += 1
    return f"{stem} {n}"


def lesions_write(
    *,
    patient: Patient,
    chain: Chain,
    uid_of: dict[str, tuple[str, str]],
    also_keep: set[str] = frozenset(),
) -> dict[str, Lesion]:
    """Replace ``patient``'s measurement rows and identities by this rebuild's: identities
    that end are deleted (but not those in ``also_keep``: lesions measured by hand),
    kept ones relabelled (and refiled, when a radiologist changed the organ), new ones
    created. Returns them by UID."""
    LesionMeasurement.objects.filter(lesion__patient=patient).delete()
    kept = {uid for uid, _ in uid_of.values()} | set(also_keep)
    Lesion.objects.filter(patient=patient).exclude(tracking_uid__in=kept).delete()
    lesions = {lesion.tracking_uid: lesion for lesion in Lesion.objects.filter(patient=patient)}
    organ_of = {i.lesion_uid: i.organ for _, r in chain for i in r.identities}
    for temp_uid, (uid, label) in uid_of.items():
        lesion = lesions.get(uid)
        if lesion is None:
            lesions[uid] = Lesion.objects.create(
                patient=patient, tracking_uid=uid, label=label, organ=organ_of[temp_uid]
            )
        elif (lesion.label, lesion.organ) != (label, organ_of[temp_uid]):
            lesion.label, lesion.organ = label, organ_of[temp_uid]
            lesion.save(update_fields=["label", "organ"])
    return lesions


# --------------------------------------------------------------------------- measurements
def measurement_rows_build(
    *,
    chain: Chain,
    uid_of: dict[str, tuple[str, str]],
    lesions: dict[str, Lesion],
    reviews: Reviews,
    summary: TrackingSummary,
    provisional_keys: dict[int, set[str]] | None = None,
) -> list[LesionMeasurement]:
    """One unsaved row per identity per study of the chain. A review decision goes to
    the row with exactly the candidates it was made on (and is taken from ``reviews``);
    one that no row takes up is listed in ``summary.stale_reviews``. A row whose
    candidates are in ``provisional_keys`` (segmentation pk -> candidate keys linked
    without a registration) is marked ``link_provisional``; an identity not seen gets an
    absent row (`analytics.lesions.tracking.states.absent_row`)."""
    provisional_keys = provisional_keys or {}
    candidates_by_key = {
        (entry.segmentation.pk, str(c["component_label"])): c
        for entry, _ in chain
        for c in entry.segmentation.lesions
    }
    rows = []
    for entry, result in chain:
        loose = provisional_keys.get(entry.segmentation.pk, set())
        identities = {i.lesion_uid: i for i in result.identities}
        for assignment in result.assignments:
            lesion = lesions[uid_of[assignment.lesion_uid][0]]
            if assignment.status in ("resolved", "merged"):
                into = uid_of.get(assignment.merged_into, ("", ""))[0]
                row = absent_row(
                    lesion,
                    entry,
                    merged_into=lesions.get(into),
                    identity=identities.get(assignment.lesion_uid),
                )
                # Not seen here because of links still proposed: as provisional as they.
                row.link_provisional = bool(loose)
                rows.append(row)
                continue
            parts = [
                candidates_by_key[(entry.segmentation.pk, key)]
                for key in assignment.observation_keys
            ]
            row = _measurement(lesion, entry, assignment, parts, reviews)
            row.link_provisional = bool(loose & set(assignment.observation_keys))
            rows.append(row)
    for _, old in reviews.values():  # decisions no rebuilt row took up
        summary.stale_reviews.append(
            review_stale_entry(
                measurement=old,
                why="the lesion's candidates at this study changed (a merge, split, relink or "
                "a new segmentation), so its review no longer fits the measurement",
            )
        )
    return rows


def _measurement(
    lesion: Lesion,
    entry: StudyInput,
    assignment: LesionAssignment,
    parts: list[dict[str, Any]],
    reviews: Reviews,
) -> LesionMeasurement:
    """One measurement row from one candidate, or from several (a lesion seen as
    fragments: a split, a merge, a relink) combined by `fragments_combine` (RECIST 1.1
    section 4.3.2: the fragments' longest diameters add up; so do their volumes).

    A review decision applies only to a row with exactly the candidates it was made on.
    """
    parts = sorted(parts, key=lambda c: (-c["volume_ml"], int(c["component_label"])))
    main = parts[0]
    combined = fragments_combine([candidate_observation(c) for c in parts])
    row = LesionMeasurement(
        lesion=lesion,
        study=entry.study,
        segmentation=entry.segmentation,
        component_label=int(main["component_label"]),
        component_labels=[int(c["component_label"]) for c in parts],
        status=LesionMeasurement.Status.NEW
        if assignment.status == "new"
        else LesionMeasurement.Status.TRACKED,
        volume_ml=float(combined.volume_ml),
        volume_core_ml=_core_volume_ml(parts),
        longest_diameter_mm=float(combined.longest_diameter_mm),
        short_axis_mm=float(combined.short_axis_mm),
        # the largest fragment's: a 3D extent does not add up over fragments
        max_3d_diameter_mm=main.get("max_3d_diameter_mm"),
        centroid_x_mm=float(combined.centroid_lps_mm[0]),
        centroid_y_mm=float(combined.centroid_lps_mm[1]),
        centroid_z_mm=float(combined.centroid_lps_mm[2]),
        mean_hu=main.get("mean_hu"),
        sd_hu=main.get("sd_hu"),
        sphericity=main.get("sphericity"),
        confidence=main.get("confidence"),
        uncertainty=main.get("uncertainty"),
        origin=candidate_origin(main),
        # a lesion cut by an edge of the scan in any of its fragments is cut
        edges_reached=list(dict.fromkeys(e for c in parts for e in c.get("edges_reached") or ())),
    )
    decision = reviews.pop((entry.segmentation.pk, frozenset(row.component_labels)), None)
    if decision is not None:
        for name, value in decision[0].items():
            setattr(row, name, value)
    return row


def _core_volume_ml(parts: list[dict[str, Any]]) -> float | None:
    """The candidates' volumes without their outer layers, when any was measured with one
    (`imaging.core.segmentation.two_level`: ``volume_layer``, ``volume_core_ml``); None
    when none was."""
    if not any(c.get("volume_layer") for c in parts):
        return None
    return float(
        sum(
            c["volume_core_ml"]
            if c.get("volume_layer") and c.get("volume_core_ml") is not None
            else c["volume_ml"]
            for c in parts
        )
    )


def candidate_origin(candidate: dict[str, Any]) -> str:
    """Who drew a candidate (`LesionMeasurement.Origin`): its ``source`` entry, written
    when a radiologist added, propagated or edited it (`analytics.lesions.review`), else
    the segmentation step that proposed it (``found_by``: the network, or a second
    reader, `imaging.core.segmentation.liver_reader` and `lung_reader`)."""
    kind = (candidate.get("source") or {}).get("kind", "")
    origins = LesionMeasurement.Origin
    if kind in origins.values:
        return kind
    if candidate.get("found_by") in ("liver_second_reader", "lung_second_reader"):
        return origins.SECOND_READER
    return origins.AUTOMATED


# --------------------------------------------------------------------------- targets
def targets_mark(
    *,
    rows: list[LesionMeasurement],
    baseline_segmentations: Collection[int],
    manual: dict[CandidateSet, LesionMeasurement],
    summary: TrackingSummary,
    baseline_studies: Collection[int] = (),
    slice_thickness_mm: float | None = None,
) -> None:
    """RECIST 1.1 targets at baseline (a radiologist's choice wins), marked on every row.

    The baseline is one time point: ``baseline_studies`` are the studies of its date (a
    chest CT and an abdomen CT the same day, `analytics.lesions.core.timepoints`), and
    the targets are chosen among the lesions of all of them, each lesion once.
    ``manual``: (segmentation, set of components) -> old row, of each lesion a radiologist
    chose as a target (`analytics.lesions.review.targets.targets_set`; a lesion measured
    by hand is keyed by its finding, `row_key`). A choice holds for a baseline row with
    exactly those candidates, found and not rejected; the others are listed in
    ``summary.stale_targets``. The choice stays in force, and every row says so
    (``target_by_hand``), as long as one chosen lesion remains. Without a choice the
    rules choose, measurability judged with the baseline's ``slice_thickness_mm``
    (RECIST 1.1 section 3.1.1); a lesion whose size is not assessable at baseline (it
    reaches the edge of what was imaged: finding state ``not_assessable``) is never a
    target. Run after the finding states are marked.
    """
    at_baseline = {row_key(r): r for r in rows if r.study_id in baseline_studies and r.is_found}
    chosen_by_hand = _targets_chosen_by_hand(
        at_baseline, baseline_segmentations, manual, summary, slice_thickness_mm
    )
    if chosen_by_hand:
        targets = chosen_by_hand
    else:
        baseline = [
            r
            for r in at_baseline.values()
            if r.finding_state != LesionMeasurement.FindingState.REJECTED
        ]
        targets = _targets_by_the_rules(baseline, slice_thickness_mm)
    for row in rows:
        row.is_target = row.lesion.tracking_uid in targets
        row.target_by_hand = bool(chosen_by_hand)


def _targets_chosen_by_hand(
    at_baseline: dict[CandidateSet, LesionMeasurement],
    baseline_segmentations: Collection[int],
    manual: dict[CandidateSet, LesionMeasurement],
    summary: TrackingSummary,
    slice_thickness_mm: float | None = None,
) -> set[str]:
    """The Tracking UIDs of the hand-chosen targets that still hold at baseline; the
    others are listed in ``summary.stale_targets`` with the reason. One that is not
    measurable (RECIST 1.1 section 3.1.1) is not a target, so it is not marked one:
    what the exports and messages call targets is what the sum adds up."""
    chosen: set[str] = set()
    for key, old in manual.items():
        row = at_baseline.get(key)
        if row is None:
            why = (
                "the baseline changed"
                if key[0] not in baseline_segmentations
                else "its candidates at baseline changed (a merge, split, relink or a new "
                "segmentation)"
            )
        elif row.finding_state == LesionMeasurement.FindingState.REJECTED:
            why = "it was rejected as a false positive"
        elif row.finding_state == LesionMeasurement.FindingState.NOT_ASSESSABLE:
            why = (
                "it reaches the edge of what was imaged at baseline, so its size is not "
                "assessable (RECIST 1.1 section 3.1.1): a non-target"
            )
        elif not lesion_measurable(_reading(row), slice_thickness_mm=slice_thickness_mm):
            why = "it is not measurable at baseline (RECIST 1.1 section 3.1.1): a non-target"
        else:
            chosen.add(row.lesion.tracking_uid)
            continue
        summary.stale_targets.append(target_stale_entry(measurement=old, why=why))
    return chosen


def _targets_by_the_rules(
    baseline: list[LesionMeasurement], slice_thickness_mm: float | None
) -> set[str]:
    """The targets RECIST 1.1 section 4.2 selects among the baseline rows (`targets_select`),
    with the values in force (a radiologist's override wins) and the baseline's slice
    thickness (section 3.1.1). A lesion seen by two studies of the baseline's date is
    read once, as its time point reads it (`time_point_readings`)."""
    lesions = time_point_readings(_reading(r) for r in baseline)
    return set(targets_select(lesions=lesions, slice_thickness_mm=slice_thickness_mm))


def _reading(r: LesionMeasurement) -> LesionReading:
    """A baseline row as the rules read it: the values in force, and no size where it
    is not assessable (the lesion reaches the edge of what was imaged)."""
    return LesionReading(
        lesion_uid=r.lesion.tracking_uid,
        organ=r.lesion.organ,
        longest_diameter_mm=r.effective_longest_diameter_mm,
        volume_ml=_or_nan(r.effective_volume_ml),
        short_axis_mm=r.effective_short_axis_mm,
        too_small=r.too_small,
        size_assessable=r.finding_state != LesionMeasurement.FindingState.NOT_ASSESSABLE,
    )


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value
