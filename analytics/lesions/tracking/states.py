"""What a rebuild says of each finding beyond its numbers: the rows of lesions not seen
(not found, merged, or what a radiologist said of them), the lesions measured by hand,
and every row's finding state (`analytics.lesions.core.findings`) with its reason."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from analytics.lesions.core.findings import (
    Sighting,
    cut_state,
    finding_states,
    size_measured_by_radiologist,
)
from analytics.lesions.core.identities import TrackedLesion
from analytics.lesions.core.landmarks import point_inside_volume
from analytics.lesions.tracking.chain import Chain, StudyInput
from analytics.lesions.tracking.summary import TrackingSummary, review_stale_entry
from analytics.lesions.tracking.transforms import study_mapping
from imaging.models import Lesion, LesionMeasurement, ManualFinding, Study
from patients.models import Patient

Status = LesionMeasurement.Status
#: Review decisions on lesions not seen, by (study pk, Tracking UID): (fields, old row).
Absences = dict[tuple[int, str], tuple[dict[str, Any], LesionMeasurement]]


# --------------------------------------------------------------------------- not seen
def absent_row(
    lesion: Lesion,
    entry: StudyInput,
    *,
    merged_into: Lesion | None,
    identity: TrackedLesion | None,
) -> LesionMeasurement:
    """The row of an identity not seen at this study: ``merged`` into another lesion, or
    ``not_found`` (its stored numbers are 0 and stand for nothing). A lesion whose last
    position lies outside the study's scanned volume is marked so (``_outside_range``)."""
    row = LesionMeasurement(
        lesion=lesion,
        study=entry.study,
        segmentation=entry.segmentation,
        status=Status.MERGED if merged_into is not None else Status.NOT_FOUND,
        merged_into=merged_into,
        volume_ml=0.0,
        longest_diameter_mm=0.0,
        short_axis_mm=0.0,
        link_provisional=bool(entry.provisional),
    )
    if merged_into is None and identity is not None:
        # Through the full registration: the affine part alone can put a lung or liver
        # lesion a centimetre off, inside the scan when it is not, or out when it is in.
        point = study_mapping(entry).from_baseline(np.asarray(identity.centroid_baseline_mm))
        row._outside_range = (
            point_inside_volume(point_lps_mm=point.tolist(), geometry=entry.geometry) is False
        )
    return row


def absences_apply(
    *, rows: list[LesionMeasurement], absences: Absences, summary: TrackingSummary
) -> None:
    """A radiologist's word on a lesion not found at a study, carried by (study, lesion):
    confirmed gone (accepted: ``resolved``) or present but too small to measure (counts
    5 mm, RECIST 1.1 section 4.3.2: ``tracked``). A decision whose lesion is found there
    now, or merged, no longer applies and is listed for re-review."""
    for row in rows:
        if row.status != Status.NOT_FOUND:
            continue
        decision = absences.pop((row.study_id, row.lesion.tracking_uid), None)
        if decision is None:
            continue
        for name, value in decision[0].items():
            setattr(row, name, value)
        if row.too_small:
            row.status = Status.TRACKED
        elif row.review_state == LesionMeasurement.Review.ACCEPTED:
            row.status = Status.RESOLVED
    for _, old in absences.values():
        summary.stale_reviews.append(
            review_stale_entry(
                measurement=old,
                why="the lesion is found (or merged into another) at this study now",
            )
        )


# --------------------------------------------------------------------------- by hand
def manual_identities(*, patient: Patient) -> dict[str, ManualFinding]:
    """The Tracking UID of each lesion measured by hand, with its first finding."""
    first: dict[str, ManualFinding] = {}
    for finding in ManualFinding.objects.filter(patient=patient).select_related("study"):
        old = first.get(finding.lesion_uid)
        if old is None or finding.study.chronological_key < old.study.chronological_key:
            first[finding.lesion_uid] = finding
    return first


def manual_labels(*, patient: Patient, uids: set[str]) -> set[str]:
    """The labels of the lesions measured by hand, which no other lesion may take."""
    return set(
        Lesion.objects.filter(patient=patient, tracking_uid__in=uids).values_list(
            "label", flat=True
        )
    ) | set(
        ManualFinding.objects.filter(patient=patient, lesion_uid__in=uids).values_list(
            "label", flat=True
        )
    )


def manual_rows_apply(
    *,
    patient: Patient,
    rows: list[LesionMeasurement],
    chain: Chain,
    lesions: dict[str, Lesion],
    summary: TrackingSummary,
) -> list[LesionMeasurement]:
    """``rows`` with each lesion measured by hand in place: the finding replaces the
    lesion's not-found row at its study, and a lesion only ever measured by hand gets a
    not-found row at every later study of the chain (expected there, not measured yet).
    A finding at a study the chain does not follow, or where the segmentation found
    the lesion itself, is listed in ``summary.stale_manual``."""
    entries = {entry.study.pk: entry for entry, _ in chain}
    by_key = {(r.study_id, r.lesion.tracking_uid): r for r in rows}
    findings = sorted(
        ManualFinding.objects.filter(patient=patient).select_related("study", "user"),
        key=lambda f: (f.study.chronological_key, f.pk),
    )
    first_study: dict[str, Study] = {}
    for finding in findings:
        entry = entries.get(finding.study_id)
        existing = by_key.get((finding.study_id, finding.lesion_uid))
        if entry is None or (existing is not None and existing.is_found):
            summary.stale_manual.append(_manual_stale(finding, followed=entry is not None))
            continue
        lesion = lesions.get(finding.lesion_uid) or _manual_lesion(patient, finding, lesions)
        seen_before = finding.lesion_uid in first_study or any(
            r.lesion.tracking_uid == finding.lesion_uid and r.is_found for r in rows
        )
        first_study.setdefault(finding.lesion_uid, finding.study)
        by_key[(finding.study_id, finding.lesion_uid)] = _manual_row(
            finding, lesion, entry, new=not seen_before
        )
    for uid, study in first_study.items():  # lesions known only by hand
        for entry, _ in chain:
            key = (entry.study.pk, uid)
            if key not in by_key and entry.study.chronological_key > study.chronological_key:
                by_key[key] = absent_row(lesions[uid], entry, merged_into=None, identity=None)
    return list(by_key.values())


def _manual_row(
    finding: ManualFinding, lesion: Lesion, entry: StudyInput, *, new: bool
) -> LesionMeasurement:
    return LesionMeasurement(
        lesion=lesion,
        study=entry.study,
        segmentation=None,
        manual_finding=finding,
        status=Status.NEW if new else Status.TRACKED,
        volume_ml=finding.volume_ml,
        longest_diameter_mm=finding.longest_diameter_mm,
        short_axis_mm=finding.short_axis_mm,
        review_state=LesionMeasurement.Review.ACCEPTED,
        review_reason=finding.reason,
        reviewed_by=finding.user,
        reviewed_at=finding.at,
    )


def _manual_lesion(patient: Patient, finding: ManualFinding, lesions: dict[str, Lesion]) -> Lesion:
    """The `Lesion` of a finding measured by hand, made again (with a free label) if a
    rebuild removed it."""
    taken = {lesion.label for lesion in lesions.values()}
    label, n = finding.label, 1
    while label in taken:
        n += 1
        label = f"{finding.label.rsplit(' ', 1)[0]} {n}"
    lesion = Lesion.objects.create(
        patient=patient, tracking_uid=finding.lesion_uid, label=label, organ=finding.organ
    )
    lesions[finding.lesion_uid] = lesion
    return lesion


def _manual_stale(finding: ManualFinding, *, followed: bool) -> dict[str, Any]:
    why = (
        "the segmentation found this lesion at that study: override its measurement instead"
        if followed
        else "its study is not followed (no segmentation)"
    )
    return {
        "kind": "manual",
        "message": f"the measurement by hand of {finding.label} at the study of "
        f"{finding.study.study_date} is not used: {why}",
        "lesion_uid": finding.lesion_uid,
        "lesion_label": finding.label,
        "study_instance_uid": finding.study.study_instance_uid,
    }


# --------------------------------------------------------------------------- states
def finding_states_mark(*, rows: list[LesionMeasurement], chain: Chain) -> None:
    """Every row's ``finding_state`` and ``state_reason`` (`finding_states`).

    Studies of one date are one time point (`analytics.lesions.core.timepoints`): a
    lesion first seen in the second study of the baseline's date (an abdomen CT the day
    of the chest CT) is a baseline lesion, not a new one, and a second sighting the same
    day does not confirm a new lesion. Of a lesion's rows at one time point, one that
    saw it speaks for the time point (`_speaks_first`: as `time_point_reading` chooses,
    one whose size can be read before one that reaches the edge of what was imaged,
    then the larger). Each row that saw the lesion keeps its own word on its edges: the
    chest CT's reading cut by its last slice is ``not_assessable`` while the abdomen
    CT's whole reading that day keeps its state and size, so the lesion can be a
    target; a row that did not see it takes the state of the one that speaks."""
    # in chain order (by date); an undated study is a time point of its own
    point: dict[object, int] = {}
    for entry, _ in chain:
        point.setdefault(_point_key(entry.study), len(point))
    index_of = {entry.study.pk: point[_point_key(entry.study)] for entry, _ in chain}
    thickness = {entry.study.pk: entry.slice_thickness_mm for entry, _ in chain}
    sightings = {id(row): _sighting(row, index_of, thickness) for row in rows}
    speaks: dict[tuple[str, int], Sighting] = {}
    for s in sightings.values():
        key = (s.lesion_uid, s.study_index)
        if key not in speaks or _speaks_first(s) > _speaks_first(speaks[key]):
            speaks[key] = s
    # The states as if whole; the edges each row reached are said row by row below.
    whole = finding_states(sightings=[replace(s, edges_reached=()) for s in speaks.values()])
    for row in rows:
        s = sightings[id(row)]
        key = (s.lesion_uid, s.study_index)
        teller = s if s.found else speaks[key]
        state = whole[key]
        if teller.found and teller.edges_reached:
            state = cut_state(teller, state)
        row.finding_state, row.state_reason = state.state, state.reason


def _speaks_first(s: Sighting) -> tuple[bool, bool, float]:
    """How a row's sighting ranks to speak for its lesion at its time point (max wins;
    the first of equals): found, then its size readable (whole, or measured by a
    radiologist), then its size (a node's short axis, another lesion's longest
    diameter; unknown last), as `analytics.lesions.core.timepoints.time_point_reading`
    ranks readings."""
    size = s.short_axis_mm if s.is_node else s.longest_diameter_mm
    readable = not s.edges_reached or size_measured_by_radiologist(s)
    return s.found, readable, -math.inf if math.isnan(size) else size


def _point_key(study: Study) -> object:
    return study.study_date if study.study_date is not None else ("undated", study.pk)


def _sighting(
    row: LesionMeasurement, index_of: dict[int, int], thickness: dict[int, float | None]
) -> Sighting:
    return Sighting(
        lesion_uid=row.lesion.tracking_uid,
        label=row.lesion.label,
        study_index=index_of[row.study_id],
        study_date=row.study.study_date,
        organ=row.lesion.organ,
        found=row.is_found,
        gone_confirmed=row.status == Status.RESOLVED,
        merged_into_label=row.merged_into.label if row.merged_into is not None else "",
        too_small=row.too_small,
        outside_range=getattr(row, "_outside_range", False),
        longest_diameter_mm=row.effective_longest_diameter_mm,
        short_axis_mm=row.effective_short_axis_mm,
        confidence=row.confidence if row.confidence is not None else math.nan,
        review_state=row.review_state,
        reviewed_at=row.reviewed_at,
        review_reason=row.review_reason,
        by_hand=row.manual_finding is not None,
        provisional=row.link_provisional and row.is_found,
        slice_thickness_mm=thickness.get(row.study_id),
        edges_reached=tuple(row.edges_reached or ()) if row.is_found else (),
    )
