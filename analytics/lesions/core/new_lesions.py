"""New lesions at a RECIST 1.1 follow-up (`analytics.lesions.core.assess`): the confirmed
ones that count, the equivocal ones followed (section 4.3.5), and the ones counted at an
earlier time point that this study could not evaluate.

A new lesion counted before and confirmed gone since (0 mm: looked for and not there)
no longer counts, as RECIST 1.1 counts only the new lesions present. One not evaluated
here (no reading, state ``not_found``: outside the scanned range, not seen where it was
expected, its size unknown) is never read as gone (`analytics.lesions.core.readings`):
the time point cannot rest on its absence, so it is NE unless progression stands on
other grounds.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from analytics.lesions.core.findings import node_normal
from analytics.lesions.core.readings import CONFIRMED, EQUIVOCAL, LesionReading, StudyReading
from analytics.lesions.core.response_notes import PendingLesion

__all__ = ["NEW_NOT_EVALUATED_NE", "NewLesionsRead", "new_lesions_read"]

#: Said when a new lesion counted before and not evaluated now leaves the time point NE.
NEW_NOT_EVALUATED_NE = (
    "a new lesion counted before and not evaluated here is not known to be gone: the time "
    "point is NE until it is measured or a radiologist confirms it gone"
)


@dataclass(frozen=True)
class NewLesionsRead:
    """New lesions at one study: the confirmed ones present (``counted``), the equivocal
    ones (``pending``), and those counted before and not evaluated here
    (``not_evaluated``, their Tracking UIDs, and one note each saying why)."""

    counted: tuple[LesionReading, ...]
    pending: tuple[PendingLesion, ...]
    not_evaluated: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def new_lesions_read(
    study: StudyReading,
    *,
    baseline_present: frozenset[str],
    first_seen: Mapping[str, dt.date],
    counted_before: Mapping[str, str],
) -> NewLesionsRead:
    """RECIST 1.1 section 4.3.5: lesions absent at baseline and present now. A confirmed
    one counts; an equivocal one is followed (pending); a node under 10 mm in short axis
    is normal and not a lesion. A baseline lesion that disappeared and came back is not
    new (the 2016 clarifications). ``counted_before`` (Tracking UID: label): the new
    lesions counted at an earlier time point, each checked for a reading here."""
    counted, pending = [], []
    for r in study.lesions:
        if r.lesion_uid in baseline_present or not r.present:
            continue
        if r.is_node and node_normal(r.size_mm):
            continue
        if r.state == CONFIRMED:
            counted.append(r)
        elif r.state == EQUIVOCAL:
            first = first_seen.get(r.lesion_uid, study.study_date)
            pending.append(PendingLesion(r.lesion_uid, r.name, first, r.size_mm))
    not_evaluated, notes = [], []
    for uid, label in counted_before.items():
        reading = study.reading(uid)
        if reading is not None and reading.evaluated:
            continue
        why = (
            reading.note if reading is not None and reading.note else "no measurement at this study"
        )
        seen = f" (first seen on {first_seen[uid]})" if uid in first_seen else ""
        not_evaluated.append(uid)
        notes.append(f"new lesion {label}{seen} not evaluated: {why}")
    return NewLesionsRead(tuple(counted), tuple(pending), tuple(not_evaluated), tuple(notes))
