"""Studies of one date read as one time point (RECIST 1.1 reads a patient's disease at
each assessment, whatever the number of scans it took).

A chest CT and an abdomen CT made the same day are one time point. Read as two, the
second would be a follow-up on day 0: its lesions (the abdomen's, never seen by the
chest scan) "new", confirmed when seen again at the next study, and PD at both. Here
each date's readings become one: for each lesion, the reading that saw it (present),
else one that measured it (evaluated), else the first; of two that saw it, the larger
(`time_point_reading`), and when they disagree materially the time point says so
(`time_point_notes`); why a study cannot be assessed is kept from every study of the
date; the coarsest slice thickness governs measurability (the conservative choice when
a lesion's own study is not known here). The baseline's targets are chosen over the
whole time point (`analytics.lesions.tracking.write.targets_mark`).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Sequence

from analytics.lesions.core.readings import LesionReading, StudyReading

__all__ = [
    "READINGS_DISAGREE_MM",
    "READINGS_DISAGREE_PCT",
    "time_point_notes",
    "time_point_reading",
    "time_point_readings",
    "time_points_merge",
]

#: Two readings of one lesion on one date disagree materially when they differ by more
#: than this share of the larger or by more than `READINGS_DISAGREE_MM`: the margins of
#: RECIST 1.1 progression (section 4.3.1: 20 % and 5 mm); past either, which of the two
#: is used can change a response.
READINGS_DISAGREE_PCT = 20.0
READINGS_DISAGREE_MM = 5.0


def time_points_merge(
    timeline: Sequence[StudyReading],
) -> tuple[list[StudyReading], dict[str, tuple[str, ...]]]:
    """One reading per date (sorted by date, each under its date's first study's UID),
    and for each, the UIDs of the studies it stands for (in the timeline's order)."""
    merged, members = [], {}
    for group in _dates(timeline):
        point = group[0] if len(group) == 1 else _merged(group)
        merged.append(point)
        members[point.study_uid] = tuple(r.study_uid for r in group)
    return merged, members


def time_point_notes(timeline: Sequence[StudyReading]) -> dict[str, tuple[str, ...]]:
    """For each time point of several studies (by its UID, as `time_points_merge` names
    it), one sentence per lesion seen on more than one of its studies with sizes that
    disagree materially (`READINGS_DISAGREE_PCT`, `READINGS_DISAGREE_MM`): one scan may
    cut the lesion, or the two were not read alike, and a person should look."""
    notes: dict[str, tuple[str, ...]] = {}
    for group in _dates(timeline):
        by_lesion: dict[str, list[LesionReading]] = {}
        for reading in group:
            for lesion in reading.lesions:
                by_lesion.setdefault(lesion.lesion_uid, []).append(lesion)
        said = tuple(note for readings in by_lesion.values() if (note := _disagreement(readings)))
        if said:
            notes[group[0].study_uid] = said
    return notes


def time_point_reading(readings: Sequence[LesionReading]) -> LesionReading:
    """The reading that speaks for one lesion at a time point of several studies: one
    that saw it (present), else one that measured it (evaluated), else the first. Of
    several that saw it, one whose size is known before one whose is not (a study that
    reaches only part of the lesion may read it as seen, size unknown), then the largest
    (`LesionReading.size_mm`; the first of equals): a scan that ends across a lesion
    (the liver dome at the foot of a chest CT) shortens its diameter, never lengthens
    it."""
    return max(readings, key=_rank)  # max keeps the first of equals


def time_point_readings(readings: Iterable[LesionReading]) -> list[LesionReading]:
    """Each lesion once, by `time_point_reading`, in the order first read."""
    by_lesion: dict[str, list[LesionReading]] = {}
    for reading in readings:
        by_lesion.setdefault(reading.lesion_uid, []).append(reading)
    return [time_point_reading(group) for group in by_lesion.values()]


def _dates(timeline: Sequence[StudyReading]) -> list[list[StudyReading]]:
    """The timeline's readings grouped by date, dates in order, each in timeline order."""
    by_date: dict[dt.date, list[StudyReading]] = {}
    for reading in timeline:
        by_date.setdefault(reading.study_date, []).append(reading)
    return [by_date[date] for date in sorted(by_date)]


def _merged(group: list[StudyReading]) -> StudyReading:
    first = group[0]
    lesions = time_point_readings(lesion for reading in group for lesion in reading.lesions)
    thicknesses = [r.slice_thickness_mm for r in group if r.slice_thickness_mm is not None]
    verdicts = [
        r.non_target_unequivocal_progression
        for r in group
        if r.non_target_unequivocal_progression is not None
    ]
    return StudyReading(
        study_uid=first.study_uid,
        study_date=first.study_date,
        lesions=tuple(lesions),
        # A radiologist's verdict of progression on any study of the date stands.
        non_target_unequivocal_progression=any(verdicts) if verdicts else None,
        not_evaluable=tuple(dict.fromkeys(why for r in group for why in r.not_evaluable)),
        slice_thickness_mm=max(thicknesses) if thicknesses else None,
    )


def _rank(lesion: LesionReading) -> tuple[int, float]:
    if lesion.present:
        return 2, _seen_size_mm(lesion)
    return (1 if lesion.evaluated else 0), -math.inf


def _seen_size_mm(lesion: LesionReading) -> float:
    """The size of a reading that saw the lesion; -inf when not known there (a node
    without its short axis, a lesion seen but not measured), so that any known size
    speaks before it."""
    return -math.inf if math.isnan(lesion.size_mm) else lesion.size_mm


def _disagreement(readings: list[LesionReading]) -> str:
    """A sentence when the sizes of the readings that saw one lesion disagree materially,
    else ''."""
    sizes = [_seen_size_mm(r) for r in readings if r.present]
    sizes = [s for s in sizes if s > -math.inf]
    if len(sizes) < 2:
        return ""
    small, large = min(sizes), max(sizes)
    if not _disagree(small, large):
        return ""
    return (
        f"{readings[0].name}: the studies of this date measure {small:.1f} mm and "
        f"{large:.1f} mm; the {large:.1f} mm reading is used (a scan that ends across a "
        "lesion shortens it): check which study images it whole"
    )


def _disagree(small_mm: float, large_mm: float) -> bool:
    difference = large_mm - small_mm
    return difference > READINGS_DISAGREE_MM or difference > large_mm * READINGS_DISAGREE_PCT / 100
