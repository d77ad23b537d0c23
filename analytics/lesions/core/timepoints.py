"""Studies of one date read as one time point (RECIST 1.1 reads a patient's disease at
each assessment, whatever the number of scans it took).

A chest CT and an abdomen CT made the same day are one time point. Read as two, the
second would be a follow-up on day 0: its lesions (the abdomen's, never seen by the
chest scan) "new", confirmed when seen again at the next study, and PD at both. Here
each date's readings become one: for each lesion, the reading that saw it (present),
else one that measured it (evaluated), else the first; why a study cannot be assessed
is kept from every study of the date; the coarsest slice thickness governs
measurability (the conservative choice when a lesion's own study is not known here).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from analytics.lesions.core.readings import LesionReading, StudyReading

__all__ = ["time_points_merge"]


def time_points_merge(
    timeline: Sequence[StudyReading],
) -> tuple[list[StudyReading], dict[str, tuple[str, ...]]]:
    """One reading per date (sorted by date, each under its date's first study's UID),
    and for each, the UIDs of the studies it stands for (in the timeline's order)."""
    by_date: dict[dt.date, list[StudyReading]] = {}
    for reading in timeline:
        by_date.setdefault(reading.study_date, []).append(reading)
    merged, members = [], {}
    for date in sorted(by_date):
        group = by_date[date]
        point = group[0] if len(group) == 1 else _merged(group)
        merged.append(point)
        members[point.study_uid] = tuple(r.study_uid for r in group)
    return merged, members


def _merged(group: list[StudyReading]) -> StudyReading:
    first = group[0]
    lesions: dict[str, LesionReading] = {}
    for reading in group:
        for lesion in reading.lesions:
            held = lesions.get(lesion.lesion_uid)
            if held is None or _rank(lesion) > _rank(held):
                lesions[lesion.lesion_uid] = lesion
    thicknesses = [r.slice_thickness_mm for r in group if r.slice_thickness_mm is not None]
    verdicts = [
        r.non_target_unequivocal_progression
        for r in group
        if r.non_target_unequivocal_progression is not None
    ]
    return StudyReading(
        study_uid=first.study_uid,
        study_date=first.study_date,
        lesions=tuple(lesions.values()),
        # A radiologist's verdict of progression on any study of the date stands.
        non_target_unequivocal_progression=any(verdicts) if verdicts else None,
        not_evaluable=tuple(dict.fromkeys(why for r in group for why in r.not_evaluable)),
        slice_thickness_mm=max(thicknesses) if thicknesses else None,
    )


def _rank(lesion: LesionReading) -> int:
    return 2 if lesion.present else 1 if lesion.evaluated else 0
