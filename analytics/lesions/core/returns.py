"""Baseline lesions back after they were gone (`analytics.lesions.core.assess`): a return
not yet confirmed is held (read as still gone, followed as pending), and a confirmed one
after a complete response is PD (RECIST 1.1 section 4.3.1 and the 2016 clarifications).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, replace

from analytics.lesions.core.findings import node_normal
from analytics.lesions.core.readings import EQUIVOCAL, LesionReading, StudyReading
from analytics.lesions.core.recist import (
    reappearance_after_complete_response,
    reappearance_counts,
)
from analytics.lesions.core.response_notes import PendingLesion

__all__ = ["Reappearance", "lesion_present", "reappeared", "returns_held"]


def lesion_present(r: LesionReading, is_node: bool) -> bool:
    """Disease there: a lesion seen, or a node of 10 mm or more in short axis (RECIST 1.1
    section 4.3.1, a node under 10 mm counts as normal for a complete response)."""
    if r.merged_into:
        return True
    if is_node:
        return r.present and not node_normal(r.size_mm)
    return r.present


def returns_held(
    study: StudyReading, baseline_present: frozenset[str], back_since: dict[str, dt.date]
) -> tuple[StudyReading, tuple[PendingLesion, ...]]:
    """A baseline lesion seen again after it was confirmed gone, while that finding is
    equivocal (`analytics.lesions.core.findings`): read as still gone, and followed as
    pending, as an equivocal new lesion is (RECIST 1.1 section 4.3.5). Once confirmed
    its state is confirmed at every sighting of its return, and it counts from the
    first. ``back_since`` (each return's first sighting) is kept across the studies."""
    readings: list[LesionReading] = []
    held: list[PendingLesion] = []
    for r in study.lesions:
        if r.lesion_uid in baseline_present and r.state == EQUIVOCAL and r.present:
            first = back_since.setdefault(r.lesion_uid, study.study_date)
            held.append(PendingLesion(r.lesion_uid, r.name, first, r.size_mm, back=True))
            r = replace(r, longest_diameter_mm=0.0, volume_ml=0.0, short_axis_mm=0.0)
        elif r.evaluated and not r.present:
            back_since.pop(r.lesion_uid, None)
        readings.append(r)
    if not held:
        return study, ()
    return replace(study, lesions=tuple(readings)), tuple(held)


@dataclass(frozen=True)
class Reappearance:
    """After a complete response (``since``): the baseline lesions back that make PD, and
    the non-target lymph nodes back at 10 mm or more, left to review
    (`reappearance_counts`)."""

    lesions: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()
    since: dt.date | None = None


def reappeared(
    study: StudyReading,
    *,
    gone: set[str],
    is_node: Mapping[str, bool],
    targets: tuple[str, ...],
    labels: Mapping[str, str],
    last_category: tuple[str, dt.date] | None,
) -> Reappearance:
    """Baseline lesions ``gone`` at the latest evaluated study, when that was a complete
    response (``last_category``), and present again now
    (`reappearance_after_complete_response`)."""
    previous, since = last_category or (None, None)
    lesions: list[str] = []
    nodes: list[str] = []
    for uid in sorted(gone):
        r = study.reading(uid)
        node = is_node.get(uid, False)
        if r is None or not r.evaluated or not lesion_present(r, node):
            continue
        counts = reappearance_counts(is_node=node, is_target=uid in targets)
        (lesions if counts else nodes).append(labels[uid])
    if not reappearance_after_complete_response(
        previous_overall=previous, reappeared=bool(lesions or nodes)
    ):
        return Reappearance()
    return Reappearance(tuple(lesions), tuple(nodes), since)
