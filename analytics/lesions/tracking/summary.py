"""What a rebuild of a patient's lesions reports: the `TrackingSummary`, and one entry
for each radiologist's decision that was carried to a new segmentation or no longer
applies, keyed by what outlives the rebuilt rows (Tracking UID, Study Instance UID,
segmentation and candidates)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imaging.models import LesionLink, LesionMeasurement

#: Review fields carried over from one rebuild to the next, per lesion candidate.
REVIEW_FIELDS = (
    "review_state",
    "too_small",
    "override_volume_ml",
    "override_longest_diameter_mm",
    "override_short_axis_mm",
    "review_reason",
    "reviewed_by_id",
    "reviewed_at",
)

#: (segmentation, component label) -> the row that held that candidate before a rebuild
RowsByCandidate = dict[tuple[int, int], LesionMeasurement]


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
    #: follow-ups linked without a registration to the baseline, one sentence each
    provisional: list[str] = field(default_factory=list)
    #: studies with images to analyse but no segmentation (`chain.StudyGap`)
    gaps: list[Any] = field(default_factory=list)
    #: measurements by hand that no row could take (their study is not followed, or the
    #: segmentation found the lesion there itself)
    stale_manual: list[dict[str, Any]] = field(default_factory=list)
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
            "provisional": list(self.provisional),
            "not_followed": [
                f"study of {g.study.study_date or 'an undated study'}: {g.reason}"
                for g in self.gaps
            ],
            "stale_manual": list(self.stale_manual),
            "stale_links": list(self.stale_links),
            "stale_reviews": list(self.stale_reviews),
            "stale_targets": list(self.stale_targets),
            "carried": list(self.carried),
        }


def row_components(m: LesionMeasurement) -> list[int]:
    """The segmentation candidates (component labels) a row was measured from."""
    if m.component_label is None:
        return []
    return [int(c) for c in (m.component_labels or [m.component_label])]


def row_key(m: LesionMeasurement) -> tuple[int, frozenset[int]]:
    """What a decision on a row is kept by: (segmentation, its candidates), or, for a
    lesion measured by hand, (minus the `ManualFinding`'s pk, no candidate)."""
    if m.manual_finding_id is not None:
        return (-m.manual_finding_id, frozenset())
    return (m.segmentation_id, frozenset(row_components(m)))


def measurement_keys(m: LesionMeasurement) -> dict[str, Any]:
    """The stable keys of an old row: they outlive the row (rebuilt on every track)."""
    return {
        "lesion_uid": m.lesion.tracking_uid,
        "lesion_label": m.lesion.label,
        "study_instance_uid": m.study.study_instance_uid,
        "study_date": m.study.study_date.isoformat() if m.study.study_date else None,
        "segmentation": m.segmentation_id,
        "component_labels": row_components(m),
    }


def review_values(m: LesionMeasurement) -> dict[str, Any]:
    """The review decision in force on a row, JSON-ready."""
    values = {f: getattr(m, f) for f in REVIEW_FIELDS}
    values["reviewed_at"] = m.reviewed_at.isoformat() if m.reviewed_at else None
    return values


def review_stale_entry(*, measurement: LesionMeasurement, why: str) -> dict[str, Any]:
    """The entry of a review decision (accept, reject, override) that needs re-review."""
    m = measurement
    return {
        "kind": "review",
        "message": (
            f"the {m.review_state} review of {m.lesion.label} at the study of "
            f"{m.study.study_date} no longer applies and needs re-review: {why}"
        ),
        **measurement_keys(m),
        "decision": review_values(m),
    }


def target_stale_entry(*, measurement: LesionMeasurement, why: str) -> dict[str, Any]:
    """The entry of a hand-chosen target that is a target no more."""
    m = measurement
    return {
        "kind": "target",
        "message": (
            f"{m.lesion.label}, chosen by hand as a target at the baseline of "
            f"{m.study.study_date}, is no longer a target: {why}"
        ),
        **measurement_keys(m),
        "decision": {"is_target": True, "target_by_hand": True},
    }


def link_keys(*, link: LesionLink, row_of: RowsByCandidate) -> dict[str, Any]:
    """The stable keys of a link's candidate (and its lesion, if a row held it) and the
    link's own values under ``decision``."""
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


def link_stale_entry(*, link: LesionLink, why: str, row_of: RowsByCandidate) -> dict[str, Any]:
    """The entry of a radiologist's link that no longer applies."""
    return {
        "kind": "link",
        "message": (
            f"a radiologist's link of candidate {link.component_label} in segmentation "
            f"{link.segmentation_id} no longer applies: {why}"
        ),
        **link_keys(link=link, row_of=row_of),
    }
