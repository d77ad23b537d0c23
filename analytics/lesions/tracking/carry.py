"""Radiologists' decisions carried over re-segmentation. Decisions are recorded on
segmentation candidates ((segmentation, component label)); when a series is segmented
again (new images, ``process --force``), every link, review and hand-chosen target made on
the earlier segmentation moves to the candidate of the newest one that pairs with it
(`candidates_pair`) and is re-keyed there, and one that cannot is listed in the
`TrackingSummary` (``stale_*``), never dropped silently."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from analytics.lesions.responses import finite_or_none
from analytics.lesions.tracking.chain import StudyInput
from analytics.lesions.tracking.summary import (
    REVIEW_FIELDS,
    RowsByCandidate,
    TrackingSummary,
    link_keys,
    link_stale_entry,
    measurement_keys,
    review_stale_entry,
    review_values,
    row_components,
    row_key,
    target_stale_entry,
)
from imaging.models import LesionLink, LesionMeasurement, Segmentation
from patients.models import Patient

#: Two candidates of one series' segmentations are the same finding when their
#: centroids are at most max(this, half the longer of their longest diameters) apart.
CARRY_MIN_DISTANCE_MM = 5.0

#: (segmentation, set of component labels) a decision now applies to
CandidateSet = tuple[int, frozenset[int]]


def candidates_pair(
    *, old: Sequence[dict[str, Any]], new: Sequence[dict[str, Any]]
) -> dict[int, tuple[int, float]]:
    """Pair the lesion candidates of two segmentations of one series.

    Both lists are `Segmentation.lesions` entries, with centroids in the series' own
    LPS (mm), so no registration is involved. Two candidates may pair when they are in
    the same organ and their centroids are at most max(5 mm, half the longer of their
    longest diameters) apart; of those, the pairing that pairs the most candidates with
    the least total distance is taken (Hungarian algorithm). Returns old component
    label -> (new component label, centroid distance in mm); an old candidate with no
    partner is absent.
    """
    if not old or not new:
        return {}
    centres_old = np.array([c["centroid_lps_mm"] for c in old], dtype=float)
    centres_new = np.array([c["centroid_lps_mm"] for c in new], dtype=float)
    distance = np.linalg.norm(centres_old[:, None, :] - centres_new[None, :, :], axis=2)
    longest_old = np.array([finite_or_none(c.get("longest_diameter_mm")) or 0.0 for c in old])
    longest_new = np.array([finite_or_none(c.get("longest_diameter_mm")) or 0.0 for c in new])
    gate = np.maximum(
        CARRY_MIN_DISTANCE_MM, 0.5 * np.maximum(longest_old[:, None], longest_new[None, :])
    )
    same_organ = np.array([[a["organ"] == b["organ"] for b in new] for a in old])
    allowed = same_organ & np.isfinite(distance) & (distance <= gate)
    if not allowed.any():
        return {}
    # A forbidden pair costs more than every allowed pair together, so the pairing
    # first pairs as many candidates as it can, then minimises the distance.
    forbidden = float(np.nansum(np.where(allowed, distance, 0.0))) + 1e6
    cost = np.where(allowed, distance, forbidden)
    pairs: dict[int, tuple[int, float]] = {}
    for i, j in zip(*linear_sum_assignment(cost), strict=True):
        if allowed[i, j]:
            pairs[int(old[i]["component_label"])] = (
                int(new[j]["component_label"]),
                float(distance[i, j]),
            )
    return pairs


class _Carry:
    """Where a decision on a candidate lands in this rebuild: the same candidate if its
    segmentation is the one tracked for its study, else the paired candidate of the
    newest segmentation of its series (`candidates_pair`), else nowhere (``why`` says)."""

    def __init__(self, inputs: list[StudyInput], segmentation_ids: set[int]) -> None:
        self.tracked = {e.segmentation.pk: e.segmentation for e in inputs}
        self.components = {
            pk: {int(c["component_label"]) for c in seg.lesions} for pk, seg in self.tracked.items()
        }
        newest = {e.segmentation.series_id: e.segmentation for e in inputs}
        self.newest_of: dict[int, Segmentation | None] = {}
        self.pairs: dict[int, dict[int, tuple[int, float]]] = {}
        superseded = Segmentation.objects.filter(pk__in=segmentation_ids - set(self.tracked)).only(
            "pk", "series_id", "lesions"
        )
        for old in superseded:
            new = newest.get(old.series_id)
            self.newest_of[old.pk] = new
            if new is not None:
                self.pairs[old.pk] = candidates_pair(old=old.lesions, new=new.lesions)

    def candidate(
        self, segmentation_id: int | None, component: int | None
    ) -> tuple[int, int, float] | None:
        """(segmentation, component, distance mm) now, or None."""
        if segmentation_id is None or component is None:
            return None
        if segmentation_id in self.tracked:
            return (
                (segmentation_id, component, 0.0)
                if component in self.components[segmentation_id]
                else None
            )
        pair = self.pairs.get(segmentation_id, {}).get(component)
        if pair is None:
            return None
        return (self.newest_of[segmentation_id].pk, pair[0], pair[1])

    def why(self, segmentation_id: int | None, component: int | None) -> str:
        if segmentation_id in self.tracked:
            return f"candidate {component} is not in segmentation {segmentation_id}"
        if self.newest_of.get(segmentation_id) is None:
            return (
                f"segmentation {segmentation_id} is no longer tracked (its series is not the "
                "study's analysed series, or the study waits for a registration)"
            )
        return (
            f"segmentation {segmentation_id} was replaced by segmentation "
            f"{self.newest_of[segmentation_id].pk}, which has no candidate in the same organ "
            f"within max({CARRY_MIN_DISTANCE_MM:g} mm, half its longest diameter) of "
            f"candidate {component}"
        )

    def candidates(
        self, segmentation_id: int | None, components: Sequence[int]
    ) -> tuple[CandidateSet, float] | tuple[None, str]:
        """(segmentation, frozenset of components) now, the largest distance (mm) moved,
        or (None, why) when any of them cannot be carried."""
        if segmentation_id is None or not components:
            return None, "the row has no segmentation candidate to carry it by"
        moved = [self.candidate(segmentation_id, c) for c in components]
        for c, m in zip(components, moved, strict=True):
            if m is None:
                return None, self.why(segmentation_id, c)
        return (moved[0][0], frozenset(m[1] for m in moved)), max(m[2] for m in moved)


@dataclass
class CarriedDecisions:
    """The radiologists' decisions in force for one rebuild, keyed by the candidates of
    the segmentations it tracks."""

    #: the rows before the rebuild by candidate, for the stable keys of link entries
    row_of: RowsByCandidate
    #: links by the segmentation they apply to, oldest decision first
    links: dict[int, list[LesionLink]]
    #: review fields and the old row, by the candidates the review was made on
    reviews: dict[CandidateSet, tuple[dict[str, Any], LesionMeasurement]]
    #: review fields and the old row of a lesion not found at a study (confirmed gone,
    #: too small to measure), by (study pk, Tracking UID): no candidate to key it by
    absences: dict[tuple[int, str], tuple[dict[str, Any], LesionMeasurement]]
    #: the old baseline row of each target a radiologist chose, by its candidates
    manual_targets: dict[CandidateSet, LesionMeasurement]
    #: (segmentation, component) of an old identity's first sighting -> (uid, label)
    first_sightings: dict[tuple[int, int], tuple[str, str]]


def decisions_carry(
    *, patient: Patient, inputs: list[StudyInput], summary: TrackingSummary
) -> CarriedDecisions:
    """Every decision on ``patient``'s candidates, carried to the segmentations tracked
    now (``inputs``): links re-keyed and saved, reviews and target choices keyed for the
    rebuilt rows, and the first sightings that keep each identity's Tracking UID."""
    old_measurements = list(
        LesionMeasurement.objects.filter(lesion__patient=patient).select_related("lesion", "study")
    )
    link_rows = list(LesionLink.objects.filter(patient=patient).order_by("at", "pk"))
    carry = _Carry(
        inputs,
        {m.segmentation_id for m in old_measurements if m.segmentation_id is not None}
        | {link.segmentation_id for link in link_rows}
        | {link.anchor_segmentation_id for link in link_rows if link.anchor_segmentation_id},
    )
    row_of = {(m.segmentation_id, c): m for m in old_measurements for c in row_components(m)}
    links = _links_carry(links=link_rows, carry=carry, row_of=row_of, summary=summary)
    on_candidates = [m for m in old_measurements if row_components(m)]
    reviews = _reviews_carry(on_candidates, carry, summary)
    manual_targets = _manual_targets_carry(old_measurements, carry, summary)
    return CarriedDecisions(
        row_of=row_of,
        links=links,
        reviews=reviews,
        absences={
            (m.study_id, m.lesion.tracking_uid): ({f: getattr(m, f) for f in REVIEW_FIELDS}, m)
            for m in old_measurements
            if not row_components(m)
            and m.manual_finding_id is None
            and m.review_state != LesionMeasurement.Review.PENDING
        },
        manual_targets=manual_targets,
        first_sightings=_first_sightings(old_measurements, carry),
    )


# --------------------------------------------------------------------------- links
@dataclass(frozen=True)
class _LinkMove:
    """Where a link lands now: its candidate, its anchor's, and the farthest either moved."""

    key: tuple[int, int]
    anchor: tuple[int, int] | None
    distance_mm: float


def _links_carry(
    *,
    links: list[LesionLink],
    carry: _Carry,
    row_of: RowsByCandidate,
    summary: TrackingSummary,
) -> dict[int, list[LesionLink]]:
    """Re-key links on superseded segmentations to the newest one (saved), and list the
    ones that cannot be carried (kept as they are). Returns the links in force by
    segmentation. Of two links that land on one candidate, the later decision stands
    and the earlier is deleted (listed under ``carried`` as superseded)."""
    standing, moved = _links_standing(links=links, carry=carry, row_of=row_of, summary=summary)
    for link in standing.values():
        if link.pk in moved:
            _link_move_save(link, moved[link.pk], row_of, summary)
    by_segmentation: dict[int, list[LesionLink]] = {}
    for link in sorted(standing.values(), key=lambda link: (link.at, link.pk)):
        by_segmentation.setdefault(link.segmentation_id, []).append(link)
    return by_segmentation


def _links_standing(
    *,
    links: list[LesionLink],
    carry: _Carry,
    row_of: RowsByCandidate,
    summary: TrackingSummary,
) -> tuple[dict[tuple[int, int], LesionLink], dict[int, _LinkMove]]:
    """The link in force on each candidate now (the latest decision), and where each
    link that moves lands (by link pk). Links that cannot land are listed as stale."""
    standing: dict[tuple[int, int], LesionLink] = {}
    moved: dict[int, _LinkMove] = {}
    for link in sorted(links, key=lambda link: (link.at, link.pk)):
        here = carry.candidate(link.segmentation_id, link.component_label)
        anchor = None
        if link.anchor_segmentation_id is not None:
            anchor = carry.candidate(link.anchor_segmentation_id, link.anchor_component_label)
        if here is None or (link.anchor_segmentation_id is not None and anchor is None):
            why = (
                carry.why(link.segmentation_id, link.component_label)
                if here is None
                else "its anchor: "
                + carry.why(link.anchor_segmentation_id, link.anchor_component_label)
            )
            summary.stale_links.append(link_stale_entry(link=link, why=why, row_of=row_of))
            continue
        key = (here[0], here[1])
        earlier = standing.get(key)
        if earlier is not None:
            moved.pop(earlier.pk, None)
            _link_supersede(earlier, row_of, summary)
        standing[key] = link
        new_anchor = (anchor[0], anchor[1]) if anchor is not None else None
        old_anchor = (
            (link.anchor_segmentation_id, link.anchor_component_label)
            if link.anchor_segmentation_id is not None
            else None
        )
        if key != (link.segmentation_id, link.component_label) or new_anchor != old_anchor:
            moved[link.pk] = _LinkMove(key, new_anchor, max(here[2], anchor[2] if anchor else 0.0))
    return standing, moved


def _link_supersede(earlier: LesionLink, row_of: RowsByCandidate, summary: TrackingSummary) -> None:
    """A later decision landed on the same candidate: the earlier link is deleted."""
    summary.carried.append(
        {
            "kind": "link",
            "message": (
                f"a radiologist's link of candidate {earlier.component_label} in "
                f"segmentation {earlier.segmentation_id} was superseded by a later "
                "decision on the same candidate"
            ),
            "superseded": True,
            **link_keys(link=earlier, row_of=row_of),
        }
    )
    earlier.delete()


def _link_move_save(
    link: LesionLink, move: _LinkMove, row_of: RowsByCandidate, summary: TrackingSummary
) -> None:
    """Re-key a link to where it lands now, saved and listed under ``carried``."""
    before = link_keys(link=link, row_of=row_of)
    link.segmentation_id, link.component_label = move.key
    link.anchor_segmentation_id, link.anchor_component_label = move.anchor or (None, None)
    # auto_now would make the carried link look like a newer decision than it is
    LesionLink.objects.filter(pk=link.pk).update(
        segmentation_id=link.segmentation_id,
        component_label=link.component_label,
        anchor_segmentation_id=link.anchor_segmentation_id,
        anchor_component_label=link.anchor_component_label,
    )
    summary.carried.append(
        {
            "kind": "link",
            "message": (
                f"a radiologist's link of candidate {before['component_labels'][0]} in "
                f"segmentation {before['segmentation']} was carried to candidate "
                f"{move.key[1]} of segmentation {move.key[0]} ({move.distance_mm:.1f} mm away)"
            ),
            **before,
            "to": {"segmentation": move.key[0], "component_labels": [move.key[1]]},
            "distance_mm": move.distance_mm,
        }
    )


# --------------------------------------------------------------------------- reviews, targets
def _reviews_carry(
    old_measurements: list[LesionMeasurement], carry: _Carry, summary: TrackingSummary
) -> dict[CandidateSet, tuple[dict[str, Any], LesionMeasurement]]:
    """(segmentation, frozenset of components) now -> (review fields, old row) of every
    reviewed row; a row whose candidates cannot all be carried is listed as stale."""
    reviews: dict[CandidateSet, tuple[dict[str, Any], LesionMeasurement]] = {}
    for m in old_measurements:
        if m.review_state == LesionMeasurement.Review.PENDING:
            continue
        key, moved_or_why = carry.candidates(m.segmentation_id, row_components(m))
        if key is None:
            summary.stale_reviews.append(review_stale_entry(measurement=m, why=moved_or_why))
            continue
        reviews[key] = ({f: getattr(m, f) for f in REVIEW_FIELDS}, m)
        if key[0] != m.segmentation_id:
            summary.carried.append(
                _carried_entry(
                    m,
                    key,
                    moved_or_why,
                    kind="review",
                    what=f"the {m.review_state} review of {m.lesion.label} at the study of "
                    f"{m.study.study_date}",
                    decision=review_values(m),
                )
            )
    return reviews


def _manual_targets_carry(
    old_measurements: list[LesionMeasurement], carry: _Carry, summary: TrackingSummary
) -> dict[CandidateSet, LesionMeasurement]:
    """(segmentation, frozenset of components) now -> old row, for each target a
    radiologist chose at the old baseline (any study of its date: one time point)."""
    found = [m for m in old_measurements if m.is_found]
    if not found:
        return {}
    baseline = min((m.study for m in found), key=lambda s: s.chronological_key)
    manual: dict[CandidateSet, LesionMeasurement] = {}
    for m in found:
        at_baseline = m.study_id == baseline.pk or (
            baseline.study_date is not None and m.study.study_date == baseline.study_date
        )
        if not (at_baseline and m.target_by_hand and m.is_target):
            continue
        if m.manual_finding_id is not None:  # measured by hand: kept by its finding
            manual[row_key(m)] = m
            continue
        key, moved_or_why = carry.candidates(m.segmentation_id, row_components(m))
        if key is None:
            summary.stale_targets.append(target_stale_entry(measurement=m, why=moved_or_why))
            continue
        manual[key] = m
        if key[0] != m.segmentation_id:
            summary.carried.append(
                _carried_entry(
                    m,
                    key,
                    moved_or_why,
                    kind="target",
                    what=f"the choice of {m.lesion.label} as a target",
                    decision={"is_target": True, "target_by_hand": True},
                )
            )
    return manual


def _carried_entry(
    m: LesionMeasurement,
    key: CandidateSet,
    distance_mm: float,
    *,
    kind: str,
    what: str,
    decision: dict[str, Any],
) -> dict[str, Any]:
    """The ``carried`` entry of a row's decision (``what``) moved to ``key``."""
    return {
        "kind": kind,
        "message": (
            f"{what} was carried to candidates {', '.join(map(str, sorted(key[1])))} of "
            f"segmentation {key[0]} ({distance_mm:.1f} mm away at most)"
        ),
        **measurement_keys(m),
        "to": {"segmentation": key[0], "component_labels": sorted(key[1])},
        "distance_mm": distance_mm,
        "decision": decision,
    }


def _first_sightings(
    measurements: list[LesionMeasurement], carry: _Carry
) -> dict[tuple[int, int], tuple[str, str]]:
    """(segmentation, component label) now of every candidate of each old identity's
    first sighting -> (uid, label)."""
    first: dict[str, LesionMeasurement] = {}
    for m in sorted(measurements, key=lambda m: (m.study.chronological_key, m.pk)):
        if row_components(m):
            first.setdefault(m.lesion.tracking_uid, m)
    sightings: dict[tuple[int, int], tuple[str, str]] = {}
    for uid, m in first.items():
        for component in row_components(m):
            now = carry.candidate(m.segmentation_id, component)
            if now is not None:
                sightings.setdefault((now[0], now[1]), (uid, m.lesion.label))
    return sightings
