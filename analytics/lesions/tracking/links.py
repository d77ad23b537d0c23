"""A radiologist's links (`LesionLink`: this candidate belongs to that lesion, or to a
lesion of its own) applied to one study's match before the next study is matched, so a
relinked lesion is followed from where the radiologist put it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from analytics.lesions.core.identities import (
    LesionAssignment,
    MatchResult,
    TrackedLesion,
    lesion_label,
)
from analytics.lesions.tracking.chain import StudyInput
from analytics.lesions.tracking.summary import RowsByCandidate, TrackingSummary, link_stale_entry
from analytics.lesions.tracking.transforms import BaselineMapping, study_mapping
from imaging.models import LesionLink


@dataclass(frozen=True)
class _Candidates:
    """One study's candidates by observation key, and how its LPS mm cross to the
    baseline's (the full registration, B-spline included: `study_mapping`)."""

    by_key: dict[str, dict[str, Any]]
    mapping: BaselineMapping

    def placed(self, identity: TrackedLesion, keys: list[str]) -> TrackedLesion:
        """``identity`` re-placed in the baseline frame from the candidates ``keys``."""
        parts = [self.by_key[k] for k in keys]
        volumes = [max(float(c["volume_ml"]), 0.0) for c in parts]
        centres = np.array([c["centroid_lps_mm"] for c in parts], dtype=float)
        centres = np.atleast_2d(self.mapping.to_baseline(centres))
        weights = volumes if sum(volumes) > 0 else None
        return replace(
            identity,
            centroid_baseline_mm=tuple(np.average(centres, axis=0, weights=weights)),
            volume_ml=sum(volumes) if sum(volumes) > 0 else identity.volume_ml,
            mask_points_baseline_mm=None,
            resolved=False,
            merged_into="",
        )


def links_apply(
    *,
    result: MatchResult,
    previous: list[TrackedLesion],
    entry: StudyInput,
    links: list[LesionLink],
    owner: dict[tuple[int, int], str],
    uid_factory: Callable[[], str],
    summary: TrackingSummary,
    row_of: RowsByCandidate,
) -> MatchResult:
    """Move this study's candidates to the lesions a radiologist put them in.

    A link with an anchor moves the candidate to the identity that owns the anchor
    candidate (an earlier study's, through ``owner``, or this study's); one without
    starts a new identity. Identities left with no candidate are resolved here (or, if
    new at this study, never existed); changed identities are re-placed in the baseline
    frame from their candidates (through the study's full registration, as matching
    placed them) so that the next study is matched against them.
    """
    if not links:
        return result
    here = _Candidates(
        by_key={str(c["component_label"]): c for c in entry.segmentation.lesions},
        mapping=study_mapping(entry),
    )
    keys_of: dict[str, list[str]] = {
        a.lesion_uid: list(a.observation_keys) for a in result.assignments
    }
    fresh = _candidates_regroup(
        links=links,
        keys_of=keys_of,
        here=here,
        segmentation_id=entry.segmentation.pk,
        owner=owner,
        uid_factory=uid_factory,
        summary=summary,
        row_of=row_of,
    )
    labels = [p.label for p in previous]
    identity_of = {i.lesion_uid: i for i in result.identities}
    assignments: list[LesionAssignment] = []
    identities: list[TrackedLesion] = []
    for a in result.assignments:
        keys = keys_of[a.lesion_uid]
        outcome = _assignment_regrouped(a, keys, identity_of[a.lesion_uid], here)
        if outcome is not None:
            assignments.append(outcome[0])
            identities.append(outcome[1])
        if a.status == "new" and keys:
            labels.append(a.label)
    for uid in fresh:
        if keys_of[uid]:
            assignment, identity = _identity_started(uid, keys_of[uid], here, labels)
            assignments.append(assignment)
            identities.append(identity)
    by_key = {key: a.lesion_uid for a in assignments for key in a.observation_keys}
    return MatchResult(assignments=tuple(assignments), identities=tuple(identities), _by_key=by_key)


def _candidates_regroup(
    *,
    links: list[LesionLink],
    keys_of: dict[str, list[str]],
    here: _Candidates,
    segmentation_id: int,
    owner: dict[tuple[int, int], str],
    uid_factory: Callable[[], str],
    summary: TrackingSummary,
    row_of: RowsByCandidate,
) -> list[str]:
    """Move each linked candidate's key in ``keys_of`` (identity -> its candidates) to
    the identity its link names; links without an anchor come first, each starting a
    new identity. Returns the new identities' uids; links that cannot apply are stale."""
    fresh: list[str] = []
    for link in sorted(links, key=lambda link: (link.anchor_segmentation_id is not None, link.pk)):
        key = str(link.component_label)
        current = next((uid for uid, keys in keys_of.items() if key in keys), None)
        if key not in here.by_key or current is None:
            why = f"candidate {key} is not in this segmentation"
            summary.stale_links.append(link_stale_entry(link=link, why=why, row_of=row_of))
            continue
        if link.anchor_segmentation_id is None:
            target = uid_factory()
            fresh.append(target)
            keys_of[target] = []
        elif link.anchor_segmentation_id == segmentation_id:
            anchor = str(link.anchor_component_label)
            target = next((uid for uid, keys in keys_of.items() if anchor in keys), None)
        else:
            target = owner.get((link.anchor_segmentation_id, link.anchor_component_label))
        if target is None:
            why = "its anchor candidate is not in a tracked study"
            summary.stale_links.append(link_stale_entry(link=link, why=why, row_of=row_of))
            continue
        if target != current:
            keys_of[current].remove(key)
            keys_of[target].append(key)
    return fresh


def _assignment_regrouped(
    a: LesionAssignment, keys: list[str], identity: TrackedLesion, here: _Candidates
) -> tuple[LesionAssignment, TrackedLesion] | None:
    """What matching made of an identity, given the candidates it has after the links:
    unchanged, re-placed on its new candidates, resolved (it lost its only candidates to
    another lesion), or None (new at this study and left with nothing: never existed)."""
    if keys == list(a.observation_keys):
        return a, identity
    if keys:
        was_seen = a.status != "new"
        regrouped = replace(
            a,
            status="tracked" if was_seen else "new",
            observation_keys=tuple(keys),
            reappeared=a.reappeared or (was_seen and a.status in ("resolved", "merged")),
            merged_into="",
        )
        return regrouped, here.placed(identity, keys)
    if a.status != "new":
        resolved = LesionAssignment(
            lesion_uid=a.lesion_uid, label=a.label, organ=a.organ, status="resolved"
        )
        return resolved, replace(identity, resolved=True, merged_into="")
    return None


def _identity_started(
    uid: str, keys: list[str], here: _Candidates, labels: list[str]
) -> tuple[LesionAssignment, TrackedLesion]:
    """A new identity a radiologist started on ``keys``, with a free label (added to
    ``labels``)."""
    organ = str(here.by_key[keys[0]]["organ"])
    identity = here.placed(
        TrackedLesion(
            lesion_uid=uid,
            label="",
            organ=organ,
            centroid_baseline_mm=(0.0, 0.0, 0.0),
            volume_ml=0.0,
        ),
        keys,
    )
    label = lesion_label(
        organ=organ, centroid_baseline_mm=identity.centroid_baseline_mm, existing_labels=labels
    )
    labels.append(label)
    assignment = LesionAssignment(
        lesion_uid=uid, label=label, organ=organ, status="new", observation_keys=tuple(keys)
    )
    return assignment, replace(identity, label=label)
