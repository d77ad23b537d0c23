"""The sentences a RECIST 1.1 time point rests on (`analytics.lesions.core.assess`): what
is pending, what reappeared, what continues, what could not be a target. One sentence
each, for a person reading the patient page, the exports and the FHIR report."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass

from analytics.lesions.core.readings import LesionReading

__all__ = [
    "PendingLesion",
    "continuing_note",
    "not_measurable_note",
    "pending_note",
    "reappearance_notes",
]


@dataclass(frozen=True)
class PendingLesion:
    """An equivocal new lesion at one study, or (``back``) a baseline lesion seen again
    after it was confirmed gone, not yet confirmed: what it is and since when."""

    lesion_uid: str
    label: str
    first_seen: dt.date
    size_mm: float
    back: bool = False


def not_measurable_note(r: LesionReading, slice_thickness_mm: float | None) -> str:
    """Why a lesion chosen as a target is followed as a non-target (section 3.1.1)."""
    if r.is_node:
        size = f"a short axis of {r.short_axis_mm:.1f} mm (a node needs 15 mm)"
    else:
        minimum = (
            10.0 if not slice_thickness_mm or slice_thickness_mm <= 5 else 2 * slice_thickness_mm
        )
        size = f"{r.longest_diameter_mm:.1f} mm (it needs {minimum:g} mm"
        size += f" with {slice_thickness_mm:g} mm slices)" if slice_thickness_mm else ")"
    return (
        f"{r.name} was chosen as a target but measures {size}: not measurable, so it is "
        "followed as a non-target (RECIST 1.1 section 3.1.1)"
    )


def pending_note(pending: Sequence[PendingLesion], *, progression: bool) -> str:
    """'PD pending confirmation of one equivocal new lesion: Liver 3 (4.0 mm), first seen
    on 2024-03-01' (section 4.3.5); "also ... awaiting confirmation" when the time point
    is PD anyway. A lesion back after it was confirmed gone is named as such: until it
    is confirmed it is read as still gone."""
    parts = []
    for back, what in ((False, "new lesion"), (True, "lesion back after it was confirmed gone")):
        group = [p for p in pending if p.back == back]
        if not group:
            continue
        count = f"one equivocal {what}" if len(group) == 1 else f"{len(group)} equivocal {what}s"
        seen = "first seen again on" if back else "first seen on"
        which = ", ".join(
            f"{p.label} ({p.size_mm:.1f} mm), {seen} {p.first_seen}"
            if not math.isnan(p.size_mm)
            else f"{p.label}, {seen} {p.first_seen}"
            for p in group
        )
        parts.append(
            f"{count} awaiting confirmation: {which}" if progression else f"{count}: {which}"
        )
    if progression:
        return "also " + "; ".join(parts)
    return "PD pending confirmation of " + "; ".join(parts)


def reappearance_notes(
    *, lesions: Sequence[str], nodes: Sequence[str], since: dt.date | None
) -> list[str]:
    """Disease back after the complete response of ``since``: ``lesions`` make PD, the
    non-target lymph ``nodes`` back at 10 mm or more are for a radiologist to decide."""
    notes = []
    if lesions:
        notes.append(f"{', '.join(lesions)} reappeared after the complete response of {since}: PD")
    if nodes:
        notes.append(
            f"possible non-target progression: lymph node {', '.join(nodes)} is 10 mm or "
            f"more again after the complete response of {since}; a non-target node counts "
            "as reappeared only if it progressed unequivocally, which a radiologist decides "
            "(RECIST working group, abnormal lymph nodes)"
        )
    return notes


def continuing_note(*, pct_change_baseline: float, since: dt.date) -> str:
    """A confirmed PR read on although the sum is short of -30% from baseline."""
    return (
        f"continuing PR: the targets' sum is {pct_change_baseline:+.0f}% from baseline, "
        f"short of PR, but the response confirmed on {since} stands until PD from the "
        "nadir (RECIST working group's clarification of SD)"
    )
