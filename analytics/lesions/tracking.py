"""Lesion identities across a patient's studies, and the responses that follow from them.

`patient_track` rebuilds a patient's identities from the latest segmentation of each
study's analysed series, matched in the baseline frame through each follow-up's stored
registration (`imaging.core.matching`). Identities keep their Tracking UID and label
across rebuilds when their first sighting is unchanged, and a radiologist's decisions
about a lesion candidate (accept, reject, override) stay with that candidate. A
radiologist's links (`LesionLink`: this candidate belongs to that lesion, or to a lesion
of its own) are applied study by study before the next study is matched, so a relinked
lesion is followed from where the radiologist put it. Targets are chosen at baseline by
the RECIST 1.1 rules unless a radiologist chose them, and every response assessment is
recomputed in the same transaction.

Decisions are recorded on segmentation candidates ((segmentation, component label)).
When a series is segmented again (new images, ``process --force``), every decision made
on the earlier segmentation is carried to the candidate of the newest one that pairs
with it (`candidates_pair`) and re-keyed there; a decision that cannot be carried, or
whose lesion no longer has the same candidates, is never dropped silently: it is listed
in the `TrackingSummary` (``stale_*``) and, unless the caller records it itself, in a
`ReviewEvent` ("carry_over") with the values that were in force.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from django.db import transaction
from django.db.models import F
from pydicom.uid import generate_uid
from scipy.optimize import linear_sum_assignment

from analytics.lesions.core.matching import (
    LesionAssignment,
    LesionObservation,
    MatchResult,
    TrackedLesion,
    fragments_combine,
    lesion_label,
    lesions_match,
)
from analytics.lesions.core.recist import LesionReading, targets_select
from analytics.lesions.responses import _finite, responses_recompute
from imaging.models import (
    Lesion,
    LesionLink,
    LesionMeasurement,
    Registration,
    ReviewEvent,
    Segmentation,
    Study,
)
from patients.models import Patient

logger = logging.getLogger(__name__)


#: Review fields carried over from one rebuild to the next, per lesion candidate.
REVIEW_FIELDS = (
    "review_state",
    "override_volume_ml",
    "override_longest_diameter_mm",
    "override_short_axis_mm",
    "review_reason",
    "reviewed_by_id",
    "reviewed_at",
)


#: Two candidates of one series' segmentations are the same finding when their
#: centroids are at most max(this, half the longer of their longest diameters) apart.
CARRY_MIN_DISTANCE_MM = 5.0


@dataclass
class TrackingSummary:
    """What one rebuild did, JSON-ready for the caller to store (`as_dict`).

    Every ``stale_*`` and ``carried`` entry is a dict with ``kind`` ("link", "review",
    "target"), ``message`` (one sentence for a person) and the stable keys of what it is
    about: ``segmentation``, ``component_labels``, ``study_instance_uid``, ``study_date``,
    ``lesion_uid``, ``lesion_label`` (and ``decision``: the values of a review or link).
    """

    studies_tracked: int = 0
    lesions: int = 0
    waiting: list[str] = field(default_factory=list)
    #: radiologists' links that no longer apply (their candidate or anchor is gone); the
    #: links themselves stay stored, so they are listed again on every rebuild
    stale_links: list[dict[str, Any]] = field(default_factory=list)
    #: review decisions (accept, reject, override) dropped by this rebuild: the candidate
    #: is gone or the lesion's set of candidates changed; "needs re-review"
    stale_reviews: list[dict[str, Any]] = field(default_factory=list)
    #: hand-chosen targets dropped by this rebuild (the rest of the choice stays)
    stale_targets: list[dict[str, Any]] = field(default_factory=list)
    #: decisions moved from a superseded segmentation of a series to its newest one
    carried: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stale(self) -> list[dict[str, Any]]:
        """Every decision that no longer applies: links, reviews, targets."""
        return [*self.stale_links, *self.stale_reviews, *self.stale_targets]

    def as_dict(self) -> dict[str, Any]:
        return {
            "studies_tracked": self.studies_tracked,
            "lesions": self.lesions,
            "waiting": list(self.waiting),
            "stale_links": list(self.stale_links),
            "stale_reviews": list(self.stale_reviews),
            "stale_targets": list(self.stale_targets),
            "carried": list(self.carried),
        }


@dataclass(frozen=True)
class _StudyInput:
    study: Study
    segmentation: Segmentation
    to_baseline: np.ndarray


def _study_inputs(patient: Patient, summary: TrackingSummary) -> list[_StudyInput]:
    """Studies with a segmentation of their analysed series, in date order, up to the
    first follow-up that has no usable registration to the baseline."""
    inputs: list[_StudyInput] = []
    studies = (
        Study.objects.filter(patient=patient)
        .select_related("chosen_series")
        # undated studies last on every database, as `imaging.services.review` orders them
        .order_by(F("study_date").asc(nulls_last=True), F("study_time").asc(nulls_last=True), "pk")
    )
    baseline_series = None
    for study in studies:
        series = study.chosen_series
        segmentation = (
            Segmentation.objects.filter(series=series).order_by("-created_at", "-pk").first()
            if series is not None
            else None
        )
        if segmentation is None:
            continue
        if baseline_series is None:
            baseline_series = series
            inputs.append(_StudyInput(study, segmentation, np.eye(4)))
            continue
        registration = (
            Registration.objects.filter(moving_series=series, fixed_series=baseline_series)
            .order_by("-created_at")
            .first()
        )
        if registration is None or registration.failed:
            why = "failed" if registration is not None else "is missing"
            summary.waiting.append(
                f"study of {study.study_date}: its registration to the baseline {why}; "
                "lesions are not linked from here on until it is redone or reviewed"
            )
            break
        fixed_to_moving = np.asarray(registration.matrix_fixed_to_moving, dtype=float)
        inputs.append(_StudyInput(study, segmentation, np.linalg.inv(fixed_to_moving)))
    return inputs


def _observations(segmentation: Segmentation) -> list[LesionObservation]:
    return [
        LesionObservation(
            key=str(c["component_label"]),
            organ=c["organ"],
            centroid_lps_mm=tuple(c["centroid_lps_mm"]),
            volume_ml=c["volume_ml"],
            longest_diameter_mm=c["longest_diameter_mm"],
            short_axis_mm=c["short_axis_mm"],
        )
        for c in segmentation.lesions
    ]


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
    longest_old = np.array([_finite(c.get("longest_diameter_mm")) or 0.0 for c in old])
    longest_new = np.array([_finite(c.get("longest_diameter_mm")) or 0.0 for c in new])
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

    def __init__(self, inputs: list[_StudyInput], segmentation_ids: set[int]) -> None:
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

    def candidate(self, segmentation_id: int | None, component: int | None):
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

    def candidates(self, segmentation_id: int | None, components: Sequence[int]):
        """(segmentation, frozenset of components) now, the largest distance (mm) moved,
        or (None, why) when any of them cannot be carried."""
        if segmentation_id is None or not components:
            return None, "the row has no segmentation candidate to carry it by"
        moved = [self.candidate(segmentation_id, c) for c in components]
        for c, m in zip(components, moved, strict=True):
            if m is None:
                return None, self.why(segmentation_id, c)
        return (moved[0][0], frozenset(m[1] for m in moved)), max(m[2] for m in moved)


def _row_components(m: LesionMeasurement) -> list[int]:
    if m.component_label is None:
        return []
    return [int(c) for c in (m.component_labels or [m.component_label])]


def measurement_keys(m: LesionMeasurement) -> dict[str, Any]:
    """The stable keys of an old row: they outlive the row (rebuilt on every track)."""
    return {
        "lesion_uid": m.lesion.tracking_uid,
        "lesion_label": m.lesion.label,
        "study_instance_uid": m.study.study_instance_uid,
        "study_date": m.study.study_date.isoformat() if m.study.study_date else None,
        "segmentation": m.segmentation_id,
        "component_labels": _row_components(m),
    }


def _review_values(m: LesionMeasurement) -> dict[str, Any]:
    values = {f: getattr(m, f) for f in REVIEW_FIELDS}
    values["reviewed_at"] = m.reviewed_at.isoformat() if m.reviewed_at else None
    return values


def _links_carry(
    *,
    links: list[LesionLink],
    carry: _Carry,
    row_of: dict[tuple[int, int], LesionMeasurement],
    summary: TrackingSummary,
) -> dict[int, list[LesionLink]]:
    """Re-key links on superseded segmentations to the newest one (saved), and list the
    ones that cannot be carried (kept as they are). Returns the links in force by
    segmentation. Of two links that land on one candidate, the later decision stands
    and the earlier is deleted (listed under ``carried`` as superseded)."""
    standing: dict[tuple[int, int], LesionLink] = {}
    moved: dict[int, tuple[tuple[int, int], tuple[int, int] | None, float]] = {}
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
            summary.stale_links.append(_link_stale(link, why, row_of))
            continue
        key = (here[0], here[1])
        earlier = standing.get(key)
        if earlier is not None:
            summary.carried.append(
                {
                    "kind": "link",
                    "message": (
                        f"a radiologist's link of candidate {earlier.component_label} in "
                        f"segmentation {earlier.segmentation_id} was superseded by a later "
                        "decision on the same candidate"
                    ),
                    "superseded": True,
                    **_link_keys(earlier, row_of),
                }
            )
            moved.pop(earlier.pk, None)
            earlier.delete()
        standing[key] = link
        new_anchor = (anchor[0], anchor[1]) if anchor is not None else None
        old_anchor = (
            (link.anchor_segmentation_id, link.anchor_component_label)
            if link.anchor_segmentation_id is not None
            else None
        )
        if key != (link.segmentation_id, link.component_label) or new_anchor != old_anchor:
            moved[link.pk] = (key, new_anchor, max(here[2], anchor[2] if anchor else 0.0))
    for link in standing.values():
        if link.pk not in moved:
            continue
        key, anchor, distance_mm = moved[link.pk]
        before = _link_keys(link, row_of)
        link.segmentation_id, link.component_label = key
        link.anchor_segmentation_id, link.anchor_component_label = anchor or (None, None)
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
                    f"{key[1]} of segmentation {key[0]} ({distance_mm:.1f} mm away)"
                ),
                **before,
                "to": {"segmentation": key[0], "component_labels": [key[1]]},
                "distance_mm": distance_mm,
            }
        )
    by_segmentation: dict[int, list[LesionLink]] = {}
    for link in sorted(standing.values(), key=lambda link: (link.at, link.pk)):
        by_segmentation.setdefault(link.segmentation_id, []).append(link)
    return by_segmentation


def _link_keys(link: LesionLink, row_of: dict[tuple[int, int], LesionMeasurement]) -> dict:
    row = row_of.get((link.segmentation_id, link.component_label))
    keys = measurement_keys(row) if row is not None else {}
    return {
        **keys,
        "segmentation": link.segmentation_id,
        "component_labels": [link.component_label],
        "decision": {
            "anchor_segmentation": link.anchor_segmentation_id,
            "anchor_component_label": link.anchor_component_label,
            "reason": link.reason,
            "user": link.user_id,
            "at": link.at.isoformat() if link.at else None,
        },
    }


def _link_stale(link, why: str, row_of) -> dict[str, Any]:
    return {"kind": "link", "message": _link_describe(link, why), **_link_keys(link, row_of)}


def patient_track(*, patient: Patient, record_event: bool = True) -> TrackingSummary:
    """Rebuild ``patient``'s lesion identities and measurements, then their responses.

    Decisions made on superseded segmentations are carried to the newest ones, and the
    ones that cannot be are listed in the returned summary (module docstring). With
    ``record_event`` (default) a carry or a dropped decision is also written as a
    `ReviewEvent` ("carry_over", no user); the review services record it in their own
    event instead.
    """
    summary = TrackingSummary()
    inputs = _study_inputs(patient, summary)
    with transaction.atomic():
        old_measurements = list(
            LesionMeasurement.objects.filter(lesion__patient=patient).select_related(
                "lesion", "study"
            )
        )
        link_rows = list(LesionLink.objects.filter(patient=patient).order_by("at", "pk"))
        carry = _Carry(
            inputs,
            {m.segmentation_id for m in old_measurements if m.segmentation_id is not None}
            | {link.segmentation_id for link in link_rows}
            | {link.anchor_segmentation_id for link in link_rows if link.anchor_segmentation_id},
        )
        row_of = {
            (m.segmentation_id, c): m
            for m in old_measurements
            if m.status != LesionMeasurement.Status.RESOLVED
            for c in _row_components(m)
        }
        links = _links_carry(links=link_rows, carry=carry, row_of=row_of, summary=summary)
        reviews = _reviews_carry(old_measurements, carry, summary)
        manual_targets = _manual_targets_carry(old_measurements, carry, summary)
        first_seen_of_old = _first_sightings(old_measurements, carry)

        chain: list[tuple[_StudyInput, MatchResult]] = []
        previous: list[TrackedLesion] = []
        temporary = iter(f"pending-{n}" for n in range(1_000_000))
        owner: dict[tuple[int, int], str] = {}  # (segmentation, component) -> identity so far
        for entry in inputs:
            result = lesions_match(
                previous=previous,
                current=_observations(entry.segmentation),
                to_baseline=entry.to_baseline,
                uid_factory=lambda: next(temporary),
            )
            result = _links_apply(
                result=result,
                previous=previous,
                entry=entry,
                links=links.pop(entry.segmentation.pk, []),
                owner=owner,
                uid_factory=lambda: next(temporary),
                summary=summary,
                row_of=row_of,
            )
            for assignment in result.assignments:
                for key in assignment.observation_keys:
                    owner[(entry.segmentation.pk, int(key))] = assignment.lesion_uid
            chain.append((entry, result))
            previous = list(result.identities)
        for stale in links.values():  # links on segmentations no longer in the chain
            summary.stale_links.extend(
                _link_stale(link, "its segmentation is no longer tracked", row_of) for link in stale
            )

        uid_of: dict[str, tuple[str, str]] = _identities_resolve(chain, first_seen_of_old, patient)

        LesionMeasurement.objects.filter(lesion__patient=patient).delete()
        kept = {uid for uid, _ in uid_of.values()}
        Lesion.objects.filter(patient=patient).exclude(tracking_uid__in=kept).delete()
        lesions = {lesion.tracking_uid: lesion for lesion in Lesion.objects.filter(patient=patient)}
        organ_of = {i.lesion_uid: i.organ for _, r in chain for i in r.identities}
        for temp_uid, (uid, label) in uid_of.items():
            lesion = lesions.get(uid)
            if lesion is None:
                lesions[uid] = Lesion.objects.create(
                    patient=patient, tracking_uid=uid, label=label, organ=organ_of[temp_uid]
                )
            elif lesion.label != label:
                lesion.label = label
                lesion.save(update_fields=["label"])

        rows = []
        candidates_by_key = {
            (entry.segmentation.pk, str(c["component_label"])): c
            for entry, _ in chain
            for c in entry.segmentation.lesions
        }
        for entry, result in chain:
            for assignment in result.assignments:
                lesion = lesions[uid_of[assignment.lesion_uid][0]]
                if assignment.status in ("resolved", "merged"):
                    rows.append(
                        LesionMeasurement(
                            lesion=lesion,
                            study=entry.study,
                            segmentation=entry.segmentation,
                            status=LesionMeasurement.Status.RESOLVED,
                            volume_ml=0.0,
                            longest_diameter_mm=0.0,
                            short_axis_mm=0.0,
                        )
                    )
                    continue
                parts = [
                    candidates_by_key[(entry.segmentation.pk, key)]
                    for key in assignment.observation_keys
                ]
                rows.append(_measurement(lesion, entry, assignment.status, parts, reviews))
        for _, old in reviews.values():  # decisions no rebuilt row took up
            summary.stale_reviews.append(
                _review_stale(
                    old,
                    "the lesion's candidates at this study changed (a merge, split, relink or "
                    "a new segmentation), so its review no longer fits the measurement",
                )
            )
        _targets_mark(rows, chain[0][0].segmentation.pk if chain else None, manual_targets, summary)
        LesionMeasurement.objects.bulk_create(rows)
        responses_recompute(patient=patient)
        summary.studies_tracked = len(chain)
        summary.lesions = len(uid_of)
        if record_event and (summary.carried or summary.stale_reviews or summary.stale_targets):
            _carry_event_write(patient, summary)
    for entry in summary.stale:
        logger.warning("patient pk %s: %s", patient.pk, entry["message"])
    return summary


def _carry_event_write(patient: Patient, summary: TrackingSummary) -> ReviewEvent:
    """The rebuild's own record of decisions it moved or dropped (no user made it)."""
    return ReviewEvent.objects.create(
        patient=patient,
        user=None,
        action="carry_over",
        reason="lesions re-tracked: radiologists' decisions carried to the newest "
        "segmentations, and the ones that no longer apply listed for re-review",
        before={},
        after={
            "carried": summary.carried,
            "stale_reviews": summary.stale_reviews,
            "stale_targets": summary.stale_targets,
            "stale_links": summary.stale_links,
        },
    )


def _review_stale(m: LesionMeasurement, why: str) -> dict[str, Any]:
    return {
        "kind": "review",
        "message": (
            f"the {m.review_state} review of {m.lesion.label} at the study of "
            f"{m.study.study_date} no longer applies and needs re-review: {why}"
        ),
        **measurement_keys(m),
        "decision": _review_values(m),
    }


def _reviews_carry(old_measurements, carry: _Carry, summary: TrackingSummary) -> dict:
    """(segmentation, frozenset of components) now -> (review fields, old row) of every
    reviewed row; a row whose candidates cannot all be carried is listed as stale."""
    reviews: dict[tuple[int, frozenset[int]], tuple[dict[str, Any], LesionMeasurement]] = {}
    for m in old_measurements:
        if m.review_state == LesionMeasurement.Review.PENDING:
            continue
        key, moved_or_why = carry.candidates(m.segmentation_id, _row_components(m))
        if key is None:
            summary.stale_reviews.append(_review_stale(m, moved_or_why))
            continue
        reviews[key] = ({f: getattr(m, f) for f in REVIEW_FIELDS}, m)
        if key[0] != m.segmentation_id:
            summary.carried.append(
                {
                    "kind": "review",
                    "message": (
                        f"the {m.review_state} review of {m.lesion.label} at the study of "
                        f"{m.study.study_date} was carried to candidates "
                        f"{', '.join(map(str, sorted(key[1])))} of segmentation {key[0]} "
                        f"({moved_or_why:.1f} mm away at most)"
                    ),
                    **measurement_keys(m),
                    "to": {"segmentation": key[0], "component_labels": sorted(key[1])},
                    "distance_mm": moved_or_why,
                    "decision": _review_values(m),
                }
            )
    return reviews


def _manual_targets_carry(old_measurements, carry: _Carry, summary: TrackingSummary) -> dict:
    """(segmentation, frozenset of components) now -> old row, for each target a
    radiologist chose at the old baseline."""
    found = [m for m in old_measurements if m.status != LesionMeasurement.Status.RESOLVED]
    if not found:
        return {}
    baseline = min((m.study for m in found), key=lambda s: s.chronological_key)
    manual: dict[tuple[int, frozenset[int]], LesionMeasurement] = {}
    for m in found:
        if m.study_id != baseline.pk or not (m.target_by_hand and m.is_target):
            continue
        key, moved_or_why = carry.candidates(m.segmentation_id, _row_components(m))
        if key is None:
            summary.stale_targets.append(_target_stale(m, moved_or_why))
            continue
        manual[key] = m
        if key[0] != m.segmentation_id:
            summary.carried.append(
                {
                    "kind": "target",
                    "message": (
                        f"the choice of {m.lesion.label} as a target was carried to candidates "
                        f"{', '.join(map(str, sorted(key[1])))} of segmentation {key[0]} "
                        f"({moved_or_why:.1f} mm away at most)"
                    ),
                    **measurement_keys(m),
                    "to": {"segmentation": key[0], "component_labels": sorted(key[1])},
                    "distance_mm": moved_or_why,
                    "decision": {"is_target": True, "target_by_hand": True},
                }
            )
    return manual


def _target_stale(m: LesionMeasurement, why: str) -> dict[str, Any]:
    return {
        "kind": "target",
        "message": (
            f"{m.lesion.label}, chosen by hand as a target at the baseline of "
            f"{m.study.study_date}, is no longer a target: {why}"
        ),
        **measurement_keys(m),
        "decision": {"is_target": True, "target_by_hand": True},
    }


def _first_sightings(
    measurements: list[LesionMeasurement], carry: _Carry
) -> dict[tuple, tuple[str, str]]:
    """(segmentation, component label) now of every candidate of each old identity's
    first sighting -> (uid, label)."""
    first: dict[str, LesionMeasurement] = {}
    for m in sorted(measurements, key=lambda m: (m.study.chronological_key, m.pk)):
        if m.status != LesionMeasurement.Status.RESOLVED:
            first.setdefault(m.lesion.tracking_uid, m)
    sightings: dict[tuple, tuple[str, str]] = {}
    for uid, m in first.items():
        for component in _row_components(m):
            now = carry.candidate(m.segmentation_id, component)
            if now is not None:
                sightings.setdefault((now[0], now[1]), (uid, m.lesion.label))
    return sightings


def _identities_resolve(chain, first_seen_of_old, patient) -> dict[str, tuple[str, str]]:
    """Map each identity of this rebuild to a (Tracking UID, label): the old identity's
    when it was first seen in the same candidate, otherwise a new UID and a free label."""
    resolved: dict[str, tuple[str, str]] = {}
    labels_taken: set[str] = set()
    fresh: list[tuple[str, str]] = []
    for entry, result in chain:
        for assignment in result.assignments:
            if assignment.lesion_uid in resolved or assignment.status != "new":
                continue
            # Every candidate of an old first sighting names its identity; a split-off
            # candidate comes after the identity it left, which claims the label first.
            old = next(
                (
                    first_seen_of_old[(entry.segmentation.pk, int(key))]
                    for key in assignment.observation_keys
                    if (entry.segmentation.pk, int(key)) in first_seen_of_old
                ),
                None,
            )
            if old is not None and old[1] not in labels_taken:
                resolved[assignment.lesion_uid] = old
                labels_taken.add(old[1])
            else:
                resolved[assignment.lesion_uid] = ("", "")
                fresh.append((assignment.lesion_uid, assignment.label))
    for temp_uid, label in fresh:
        if label in labels_taken:
            stem = label.rsplit(" ", 1)[0]
            n = 1
            while f"{stem} {n}" in labels_taken:
                n += 1
            label = f"{stem} {n}"
        labels_taken.add(label)
        resolved[temp_uid] = (str(generate_uid()), label)
    return resolved


def _measurement(lesion, entry, status, parts, reviews) -> LesionMeasurement:
    """One measurement row from one candidate, or from several (a lesion seen as
    fragments: a split, a merge, a relink) combined by `fragments_combine` (RECIST 1.1
    section 4.3.2: the fragments' longest diameters add up; so do their volumes).

    A review decision applies only to a row with exactly the candidates it was made on.
    """
    parts = sorted(parts, key=lambda c: (-c["volume_ml"], int(c["component_label"])))
    main = parts[0]
    combined = fragments_combine(
        [
            LesionObservation(
                key=str(c["component_label"]),
                organ=c["organ"],
                centroid_lps_mm=tuple(c["centroid_lps_mm"]),
                volume_ml=c["volume_ml"],
                longest_diameter_mm=c["longest_diameter_mm"],
                short_axis_mm=c["short_axis_mm"],
            )
            for c in parts
        ]
    )
    row = LesionMeasurement(
        lesion=lesion,
        study=entry.study,
        segmentation=entry.segmentation,
        component_label=int(main["component_label"]),
        component_labels=[int(c["component_label"]) for c in parts],
        status=LesionMeasurement.Status.NEW
        if status == "new"
        else LesionMeasurement.Status.TRACKED,
        volume_ml=float(combined.volume_ml),
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
    )
    decision = reviews.pop((entry.segmentation.pk, frozenset(row.component_labels)), None)
    if decision is not None:
        for name, value in decision[0].items():
            setattr(row, name, value)
    return row


def _targets_mark(
    rows: list[LesionMeasurement],
    baseline_segmentation,
    manual: dict[tuple[int, frozenset[int]], LesionMeasurement],
    summary: TrackingSummary,
) -> None:
    """RECIST 1.1 targets at baseline (a radiologist's choice wins), marked on every row.

    ``manual``: (segmentation, set of components) -> old row, of each lesion a radiologist
    chose as a target (`imaging.services.review.targets_set`). A choice holds for a
    baseline row with exactly those candidates, found and not rejected; the others are
    listed in ``summary.stale_targets``. The choice stays in force, and every row says so
    (``target_by_hand``), as long as one chosen lesion remains.
    """
    at_baseline = {
        (r.segmentation_id, frozenset(r.component_labels)): r
        for r in rows
        if r.segmentation_id == baseline_segmentation
        and r.status != LesionMeasurement.Status.RESOLVED
    }
    baseline = [
        r for r in at_baseline.values() if r.review_state != LesionMeasurement.Review.REJECTED
    ]
    chosen_by_hand: set[str] = set()
    for key, old in manual.items():
        row = at_baseline.get(key)
        if row is None:
            why = (
                "the baseline changed"
                if key[0] != baseline_segmentation
                else "its candidates at baseline changed (a merge, split, relink or a new "
                "segmentation)"
            )
        elif row.review_state == LesionMeasurement.Review.REJECTED:
            why = "it was rejected as a false positive at baseline"
        else:
            chosen_by_hand.add(row.lesion.tracking_uid)
            continue
        summary.stale_targets.append(_target_stale(old, why))
    if chosen_by_hand:
        targets = chosen_by_hand
    else:
        targets = set(
            targets_select(
                lesions=[
                    LesionReading(
                        lesion_uid=r.lesion.tracking_uid,
                        organ=r.lesion.organ,
                        longest_diameter_mm=r.effective_longest_diameter_mm,
                        volume_ml=r.effective_volume_ml,
                    )
                    for r in baseline
                ]
            )
        )
    for row in rows:
        row.is_target = row.lesion.tracking_uid in targets
        row.target_by_hand = bool(chosen_by_hand)


def _link_describe(link: LesionLink, why: str = "that candidate or its anchor is gone") -> str:
    return (
        f"a radiologist's link of candidate {link.component_label} in segmentation "
        f"{link.segmentation_id} no longer applies: {why}"
    )


def _links_apply(
    *,
    result: MatchResult,
    previous: list[TrackedLesion],
    entry: _StudyInput,
    links: list[LesionLink],
    owner: dict[tuple[int, int], str],
    uid_factory,
    summary: TrackingSummary,
    row_of: dict[tuple[int, int], LesionMeasurement],
) -> MatchResult:
    """Move this study's candidates to the lesions a radiologist put them in.

    A link with an anchor moves the candidate to the identity that owns the anchor
    candidate (an earlier study's, through ``owner``, or this study's); one without
    starts a new identity. Identities left with no candidate are resolved here (or, if
    new at this study, never existed); changed identities are re-placed in the baseline
    frame from their candidates so that the next study is matched against them.
    """
    if not links:
        return result
    candidates = {str(c["component_label"]): c for c in entry.segmentation.lesions}
    keys_of: dict[str, list[str]] = {
        a.lesion_uid: list(a.observation_keys) for a in result.assignments
    }
    fresh: list[str] = []
    seg = entry.segmentation.pk
    for link in sorted(links, key=lambda link: (link.anchor_segmentation_id is not None, link.pk)):
        key = str(link.component_label)
        current = next((uid for uid, keys in keys_of.items() if key in keys), None)
        if key not in candidates or current is None:
            summary.stale_links.append(
                _link_stale(link, f"candidate {key} is not in this segmentation", row_of)
            )
            continue
        if link.anchor_segmentation_id is None:
            target = uid_factory()
            fresh.append(target)
            keys_of[target] = []
        elif link.anchor_segmentation_id == seg:
            anchor = str(link.anchor_component_label)
            target = next((uid for uid, keys in keys_of.items() if anchor in keys), None)
        else:
            target = owner.get((link.anchor_segmentation_id, link.anchor_component_label))
        if target is None:
            summary.stale_links.append(
                _link_stale(link, "its anchor candidate is not in a tracked study", row_of)
            )
            continue
        if target != current:
            keys_of[current].remove(key)
            keys_of[target].append(key)

    to_baseline = np.asarray(entry.to_baseline, dtype=float)

    def placed(identity: TrackedLesion, keys: list[str]) -> TrackedLesion:
        parts = [candidates[k] for k in keys]
        volumes = [max(float(c["volume_ml"]), 0.0) for c in parts]
        centres = np.array([c["centroid_lps_mm"] for c in parts], dtype=float)
        centres = centres @ to_baseline[:3, :3].T + to_baseline[:3, 3]
        weights = volumes if sum(volumes) > 0 else None
        return replace(
            identity,
            centroid_baseline_mm=tuple(np.average(centres, axis=0, weights=weights)),
            volume_ml=sum(volumes) if sum(volumes) > 0 else identity.volume_ml,
            mask_points_baseline_mm=None,
            resolved=False,
            merged_into="",
        )

    identity_of = {i.lesion_uid: i for i in result.identities}
    assignments: list[LesionAssignment] = []
    identities: list[TrackedLesion] = []
    labels = [p.label for p in previous]
    for a in result.assignments:
        keys = keys_of[a.lesion_uid]
        identity = identity_of[a.lesion_uid]
        if keys == list(a.observation_keys):
            assignments.append(a)
            identities.append(identity)
        elif keys:
            was_seen = a.status != "new"
            assignments.append(
                replace(
                    a,
                    status="tracked" if was_seen else "new",
                    observation_keys=tuple(keys),
                    reappeared=a.reappeared or (was_seen and a.status in ("resolved", "merged")),
                    merged_into="",
                )
            )
            identities.append(placed(identity, keys))
        elif a.status != "new":  # lost its only candidates to another lesion
            assignments.append(
                LesionAssignment(
                    lesion_uid=a.lesion_uid, label=a.label, organ=a.organ, status="resolved"
                )
            )
            identities.append(replace(identity, resolved=True, merged_into=""))
        if a.status == "new" and keys:
            labels.append(a.label)
    for uid in fresh:
        keys = keys_of[uid]
        if not keys:
            continue
        first = candidates[keys[0]]
        organ = str(first["organ"])
        identity = placed(
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
        identities.append(replace(identity, label=label))
        assignments.append(
            LesionAssignment(
                lesion_uid=uid, label=label, organ=organ, status="new", observation_keys=tuple(keys)
            )
        )
    by_key = {key: a.lesion_uid for a in assignments for key in a.observation_keys}
    return MatchResult(assignments=tuple(assignments), identities=tuple(identities), _by_key=by_key)
