"""What lesion matching reads and returns: a lesion found in one study
(`LesionObservation`), a lesion identity across studies (`TrackedLesion`), what became
of each identity at a study (`LesionAssignment`, `Merge`, `Split`, `MatchResult`), and
the identities' readable labels (`lesion_label`) and combined fragments
(`fragments_combine`).

Readable labels are "<Organ> <n>" ("Liver 2"), with the side for paired organs taken
from the sign of x in the baseline frame (LPS: +x is the patient's left): "Right lung 1".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

__all__ = [
    "PAIRED_ORGANS",
    "LesionAssignment",
    "LesionObservation",
    "LesionStatus",
    "MatchResult",
    "Merge",
    "Split",
    "TrackedLesion",
    "fragments_combine",
    "lesion_label",
]

# Organs that come in pairs get a side in their label.
PAIRED_ORGANS = frozenset({"lung", "kidney", "adrenal", "breast", "ovary"})

LesionStatus = Literal["tracked", "new", "resolved", "merged"]


# --------------------------------------------------------------------------- data
@dataclass(frozen=True, eq=False)
class LesionObservation:
    """One lesion found in one study, in that study's own LPS coordinates (mm).

    ``key`` is the caller's handle for it (a segmentation label, a row id) and comes back
    in the result. ``mask_points_lps_mm`` (optional) is an (N, 3) array of its voxel
    centres.
    """

    key: str
    organ: str
    centroid_lps_mm: tuple[float, float, float]
    volume_ml: float
    longest_diameter_mm: float = math.nan
    short_axis_mm: float = math.nan
    mask_points_lps_mm: np.ndarray | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "organ", _organ(self.organ))
        object.__setattr__(self, "centroid_lps_mm", _point(self.centroid_lps_mm))
        if self.mask_points_lps_mm is not None:
            object.__setattr__(self, "mask_points_lps_mm", _points(self.mask_points_lps_mm))


@dataclass(frozen=True, eq=False)
class TrackedLesion:
    """A lesion identity as last seen, in the baseline frame (LPS mm of the first study).

    ``volume_ml`` is the last volume measured above zero (it keeps sizing the gate after
    the lesion resolved); ``resolved`` says it was not seen at the latest study;
    ``merged_into`` names the identity whose lesion absorbed it, if any.
    """

    lesion_uid: str
    label: str
    organ: str
    centroid_baseline_mm: tuple[float, float, float]
    volume_ml: float
    mask_points_baseline_mm: np.ndarray | None = None
    resolved: bool = False
    merged_into: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "organ", _organ(self.organ))
        object.__setattr__(self, "centroid_baseline_mm", _point(self.centroid_baseline_mm))
        if self.mask_points_baseline_mm is not None:
            object.__setattr__(
                self, "mask_points_baseline_mm", _points(self.mask_points_baseline_mm)
            )


@dataclass(frozen=True)
class LesionAssignment:
    """What happened to one identity at this study.

    ``observation_keys``: the current lesions attributed to it: one when tracked or new,
    two or more for a split, none when resolved or merged. ``distance_mm`` (baseline
    frame, from its last position to the current centroid) and ``dice`` are NaN when not
    applicable.
    """

    lesion_uid: str
    label: str
    organ: str
    status: LesionStatus
    observation_keys: tuple[str, ...] = ()
    distance_mm: float = math.nan
    dice: float = math.nan
    reappeared: bool = False
    merged_into: str = ""


@dataclass(frozen=True)
class Merge:
    """Two or more earlier identities now form one lesion; ``kept_uid`` carries it on."""

    observation_key: str
    lesion_uids: tuple[str, ...]
    kept_uid: str


@dataclass(frozen=True)
class Split:
    """One earlier identity is now in two or more pieces, all attributed to it."""

    lesion_uid: str
    observation_keys: tuple[str, ...]


@dataclass(frozen=True)
class MatchResult:
    """The outcome for every identity, explicit merges and splits, and the updated identities.

    ``assignments`` has one entry per identity: the previous ones in the order given,
    then the new ones. ``identities`` is what to pass as ``previous`` for the next study.
    """

    assignments: tuple[LesionAssignment, ...]
    identities: tuple[TrackedLesion, ...]
    merges: tuple[Merge, ...] = ()
    splits: tuple[Split, ...] = ()
    _by_key: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def with_status(self, status: LesionStatus) -> tuple[LesionAssignment, ...]:
        return tuple(a for a in self.assignments if a.status == status)

    @property
    def tracked(self) -> tuple[LesionAssignment, ...]:
        return self.with_status("tracked")

    @property
    def new(self) -> tuple[LesionAssignment, ...]:
        return self.with_status("new")

    @property
    def resolved(self) -> tuple[LesionAssignment, ...]:
        return self.with_status("resolved")

    def lesion_uid_of(self, observation_key: str) -> str:
        """The identity a current observation was attributed to."""
        return self._by_key[observation_key]


# --------------------------------------------------------------------------- helpers
def _organ(organ: str) -> str:
    return str(organ).strip().lower()


def _point(values) -> tuple[float, float, float]:
    array = np.asarray(values, dtype=float).reshape(3)
    return (float(array[0]), float(array[1]), float(array[2]))


def _points(values) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"mask points must be an (N, 3) array; got shape {array.shape}")
    return array


def lesion_label(
    *,
    organ: str,
    centroid_baseline_mm: Sequence[float],
    existing_labels: Sequence[str] = (),
    midline_x_mm: float = 0.0,
) -> str:
    """A readable label "<Organ> <n>", n one more than the highest in use for that prefix.

    Paired organs (`PAIRED_ORGANS`) get the side from the baseline-frame x coordinate:
    DICOM LPS +x points to the patient's left, so x > midline is "Left", else "Right".
    ``midline_x_mm`` is the body's left-right centre if known (0 by default).
    """
    organ = _organ(organ)
    name = organ.replace("_", " ")
    if organ in PAIRED_ORGANS:
        side = "Left" if float(centroid_baseline_mm[0]) > midline_x_mm else "Right"
        prefix = f"{side} {name}"
    else:
        prefix = name.capitalize()
    used = [0]
    for label in existing_labels:
        head, _, number = label.rpartition(" ")
        if head == prefix and number.isdigit():
            used.append(int(number))
    return f"{prefix} {max(used) + 1}"


def fragments_combine(observations: Sequence[LesionObservation]) -> LesionObservation:
    """One measurement for a lesion seen as several fragments (a split).

    RECIST 1.1 (Eisenhauer EA et al., Eur J Cancer 2009;45:228-247, section 4.3.2,
    "lesions that split or coalesce on treatment"): the longest diameters of the
    fragmented portions are added together. Volumes add too; the centroid is the
    volume-weighted mean; the short axis is the largest fragment's; mask points are
    pooled. The key joins the fragments' keys with "+".
    """
    if not observations:
        raise ValueError("no fragments to combine")
    if len(observations) == 1:
        return observations[0]
    volumes = np.array([max(o.volume_ml, 0.0) for o in observations])
    centres = np.array([o.centroid_lps_mm for o in observations])
    weights = volumes if volumes.sum() > 0 else np.ones(len(observations))
    masks = [o.mask_points_lps_mm for o in observations if o.mask_points_lps_mm is not None]
    return LesionObservation(
        key="+".join(o.key for o in observations),
        organ=observations[0].organ,
        centroid_lps_mm=tuple(np.average(centres, axis=0, weights=weights)),
        volume_ml=float(volumes.sum()),
        longest_diameter_mm=float(sum(o.longest_diameter_mm for o in observations)),
        short_axis_mm=_nanmax([o.short_axis_mm for o in observations]),
        mask_points_lps_mm=np.concatenate(masks) if masks else None,
    )


def _nanmax(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(max(finite)) if finite else math.nan
