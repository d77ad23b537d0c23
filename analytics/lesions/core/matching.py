"""Lesion identities across time: link each new study's lesions to the patient's earlier ones.

Every comparison happens in the *baseline frame*: the LPS coordinates (mm) of the
patient's first study. A follow-up's lesion centroids (and mask points) are mapped there
through the stored registration (``to_baseline``: follow-up LPS -> baseline LPS; the
registration module stores the other direction, baseline -> follow-up, so pass the
inverse of its matrix, or a callable for a deformable transform).

`lesions_match` pairs the known identities (`TrackedLesion`) with the new study's
lesions (`LesionObservation`) by an optimal assignment (Hungarian algorithm,
``scipy.optimize.linear_sum_assignment``) and then reads what is left over:

- cost of a pair (lower is better), only for lesions of the same organ::

      distance / gate  +  SIZE_WEIGHT * min(|ln(V_now / V_before)| / ln 8, 1)
                       -  OVERLAP_WEIGHT * Dice(masks)

  with the size-aware gate ``gate = max(GATE_MIN_MM, GATE_RADIUS_FACTOR * (r_before +
  r_now))`` (r: radius of the sphere of the lesion's volume). A pair farther apart
  than the gate is impossible unless the masks overlap. Growth or shrinkage is only a
  weak preference (a lesion may double in volume several times between studies): the
  distance relative to size decides.
- leaving a lesion unpaired costs ``UNMATCHED_COST`` per side, so any possible pair
  (cost below 2 x that) is preferred over two unpaired lesions.
- an unpaired current lesion touching a previous identity that is already paired is
  a *split* (a fragment of that identity); otherwise it is *new*.
- an unpaired previous identity touching a current lesion paired with another
  identity has *merged* into it; otherwise it is *resolved* (volume 0 at this study).
- "touching": with masks, at least `CONTACT_OVERLAP` of the smaller mask lies inside
  the other; without, the equivalent spheres overlap (distance <= r_before + r_now).

Masks are optional and simple: an (N, 3) array of voxel centres (LPS mm, the study's
own coordinates; `mask_points_lps` makes one from a label `Volume`). Both point sets are
mapped to the baseline frame and binned onto cubes of ``overlap_grid_mm`` (default 4 mm,
at least the coarsest voxel spacing so that binned masks stay solid); Dice is computed
on the sets of occupied cubes.

Resolved identities stay candidates: a lesion that reappears where one resolved is the
same lesion (``reappeared``), not a new one. A split identity's measurement at this
study combines its fragments (`fragments_combine`: volumes and longest diameters add,
RECIST 1.1 section 4.3.2); a merged identity's volume is counted in the lesion that
absorbed it.

Readable labels are "<Organ> <n>" ("Liver 2"), with the side for paired organs taken
from the sign of x in the baseline frame (LPS: +x is the patient's left): "Right lung 1".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from pydicom.uid import generate_uid
from scipy.optimize import linear_sum_assignment

from imaging.core.geometry.volume import Volume

__all__ = [
    "CONTACT_OVERLAP",
    "GATE_MIN_MM",
    "GATE_RADIUS_FACTOR",
    "OVERLAP_WEIGHT",
    "PAIRED_ORGANS",
    "SIZE_WEIGHT",
    "UNMATCHED_COST",
    "LesionAssignment",
    "LesionObservation",
    "MatchResult",
    "Merge",
    "Split",
    "TrackedLesion",
    "equivalent_radius_mm",
    "fragments_combine",
    "lesion_label",
    "lesions_match",
    "mask_points_lps",
    "match_gate_mm",
]

GATE_MIN_MM = 10.0
GATE_RADIUS_FACTOR = 1.5
SIZE_WEIGHT = 0.25
OVERLAP_WEIGHT = 0.5
UNMATCHED_COST = 1.0
CONTACT_OVERLAP = 0.1
OVERLAP_GRID_MM = 4.0
# Organs that come in pairs get a side in their label.
PAIRED_ORGANS = frozenset({"lung", "kidney", "adrenal", "breast", "ovary"})

_IMPOSSIBLE = 1e6
_SIZE_SATURATION = math.log(8.0)  # a volume ratio of 8 (diameter x2) saturates the size term

LesionStatus = Literal["tracked", "new", "resolved", "merged"]
PointMap = Callable[[np.ndarray], np.ndarray]


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


def _point_map(to_baseline: np.ndarray | PointMap | None) -> PointMap:
    """Accept None (identity), a 4x4 homogeneous matrix or a callable on (N, 3) arrays."""
    if to_baseline is None:
        return lambda points: np.asarray(points, dtype=float).reshape(-1, 3)
    if callable(to_baseline):
        return lambda points: np.asarray(
            to_baseline(np.asarray(points, dtype=float).reshape(-1, 3)), dtype=float
        ).reshape(-1, 3)
    matrix = np.asarray(to_baseline, dtype=float)
    if matrix.shape != (4, 4) or not np.allclose(matrix[3], [0.0, 0.0, 0.0, 1.0]):
        raise ValueError("to_baseline must be a 4x4 homogeneous matrix or a callable")
    return lambda points: (
        np.asarray(points, dtype=float).reshape(-1, 3) @ matrix[:3, :3].T + matrix[:3, 3]
    )


def equivalent_radius_mm(volume_ml: float) -> float:
    """Radius (mm) of the sphere of this volume; 0 for a volume that is 0 or unknown."""
    if not volume_ml > 0:
        return 0.0
    return float(np.cbrt(3.0 * volume_ml * 1000.0 / (4.0 * math.pi)))


def match_gate_mm(*, volume_before_ml: float, volume_now_ml: float) -> float:
    """How far apart (mm, baseline frame) two centroids may be and still be one lesion.

    ``max(GATE_MIN_MM, GATE_RADIUS_FACTOR * (r_before + r_now))``: a 10 mm floor covers
    registration and centroid error for small lesions; beyond it, half again the sum of
    the equivalent radii lets a large lesion's centroid wander as it grows unevenly.
    """
    radii = equivalent_radius_mm(volume_before_ml) + equivalent_radius_mm(volume_now_ml)
    return max(GATE_MIN_MM, GATE_RADIUS_FACTOR * radii)


def _cells(points: np.ndarray | None, grid_mm: float) -> set[tuple[int, int, int]] | None:
    if points is None or len(points) == 0:
        return None
    return set(map(tuple, np.floor(points / grid_mm).astype(np.int64).tolist()))


def _dice(a: set | None, b: set | None) -> float:
    if not a or not b:
        return math.nan
    return 2.0 * len(a & b) / (len(a) + len(b))


def _overlap_of_smaller(a: set | None, b: set | None) -> float:
    if not a or not b:
        return math.nan
    return len(a & b) / min(len(a), len(b))


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


def mask_points_lps(*, mask: Volume, label: int | None = None) -> np.ndarray:
    """Voxel centres (LPS mm, (N, 3)) of a label volume's foreground, or of one label value."""
    selected = mask.array != 0 if label is None else mask.array == label
    kji = np.argwhere(selected)
    return mask.index_to_lps(kji[:, ::-1].astype(float))


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


# --------------------------------------------------------------------------- matching
@dataclass
class _Current:
    observation: LesionObservation
    centre: np.ndarray  # baseline frame
    points: np.ndarray | None  # baseline frame
    cells: set | None


def lesions_match(
    *,
    previous: Sequence[TrackedLesion],
    current: Sequence[LesionObservation],
    to_baseline: np.ndarray | PointMap | None = None,
    uid_factory: Callable[[], str] | None = None,
    overlap_grid_mm: float = OVERLAP_GRID_MM,
    midline_x_mm: float = 0.0,
) -> MatchResult:
    """Attribute the lesions of a new study to the patient's identities (module docstring).

    ``previous``: every identity known before this study (resolved ones included), in
    the baseline frame; empty at the baseline study. ``current``: this study's lesions in
    its own LPS. ``to_baseline``: this study's LPS -> baseline LPS, as a 4x4 homogeneous
    matrix or a callable on (N, 3) arrays; None for the baseline study itself.
    ``uid_factory`` makes a DICOM Tracking UID (0062,0021) for each new identity
    (default ``pydicom.uid.generate_uid``). New identities are labelled in order of
    decreasing volume.
    """
    make_uid = uid_factory or (lambda: str(generate_uid()))
    keys = [o.key for o in current]
    if len(set(keys)) != len(keys):
        raise ValueError("observation keys must be unique within a study")
    mapped = _point_map(to_baseline)
    cur = []
    for obs in current:
        points = None if obs.mask_points_lps_mm is None else mapped(obs.mask_points_lps_mm)
        cur.append(
            _Current(obs, mapped(obs.centroid_lps_mm)[0], points, _cells(points, overlap_grid_mm))
        )
    prev = list(previous)
    prev_cells = [_cells(p.mask_points_baseline_mm, overlap_grid_mm) for p in prev]
    prev_centres = np.array([p.centroid_baseline_mm for p in prev]).reshape(-1, 3)

    n, m = len(prev), len(cur)
    cost = np.full((n, m), _IMPOSSIBLE)
    distance = np.full((n, m), math.nan)
    dice = np.full((n, m), math.nan)
    for i, p in enumerate(prev):
        for j, c in enumerate(cur):
            if p.organ != c.observation.organ:
                continue
            d = float(np.linalg.norm(c.centre - prev_centres[i]))
            overlap = _dice(prev_cells[i], c.cells)
            distance[i, j], dice[i, j] = d, overlap
            gate = match_gate_mm(
                volume_before_ml=p.volume_ml, volume_now_ml=c.observation.volume_ml
            )
            overlaps = not math.isnan(overlap) and overlap > 0
            if d > gate and not overlaps:
                continue
            cost[i, j] = min(d / gate, 1.0) + _size_term(p.volume_ml, c.observation.volume_ml)
            if overlaps:
                cost[i, j] -= OVERLAP_WEIGHT * overlap

    pairs = _assign(cost)
    prev_to_cur = dict(pairs)
    cur_to_prev = {j: i for i, j in pairs}

    # Leftovers: splits (extra current pieces of a paired identity) and merges.
    split_parts: dict[int, list[int]] = {i: [j] for i, j in pairs}
    unpaired_cur = []
    for j in range(m):
        if j in cur_to_prev:
            continue
        owner = _touching(
            j, [i for i in prev_to_cur], prev, prev_cells, prev_centres, cur, distance, by="cur"
        )
        if owner is None:
            unpaired_cur.append(j)
        else:
            split_parts[owner].append(j)
    merged_into: dict[int, int] = {}
    for i in range(n):
        if i in prev_to_cur:
            continue
        j = _touching(
            i, list(cur_to_prev), prev, prev_cells, prev_centres, cur, distance, by="prev"
        )
        if j is not None:
            merged_into[i] = j

    assignments: list[LesionAssignment] = []
    identities: list[TrackedLesion] = []
    by_key: dict[str, str] = {}
    splits, merges = [], []
    for i, p in enumerate(prev):
        if i in prev_to_cur:
            parts = sorted(split_parts[i])
            obs = fragments_combine([cur[j].observation for j in parts])
            pts = [cur[j].points for j in parts if cur[j].points is not None]
            centre = np.average(
                [cur[j].centre for j in parts],
                axis=0,
                weights=_weights([cur[j].observation.volume_ml for j in parts]),
            )
            j0 = prev_to_cur[i]
            assignments.append(
                LesionAssignment(
                    lesion_uid=p.lesion_uid,
                    label=p.label,
                    organ=p.organ,
                    status="tracked",
                    observation_keys=tuple(cur[j].observation.key for j in parts),
                    distance_mm=float(np.linalg.norm(centre - prev_centres[i])),
                    dice=float(dice[i, j0]) if len(parts) == 1 else math.nan,
                    reappeared=p.resolved or bool(p.merged_into),
                )
            )
            identities.append(
                replace(
                    p,
                    centroid_baseline_mm=tuple(centre),
                    volume_ml=obs.volume_ml if obs.volume_ml > 0 else p.volume_ml,
                    mask_points_baseline_mm=np.concatenate(pts) if pts else None,
                    resolved=False,
                    merged_into="",
                )
            )
            for j in parts:
                by_key[cur[j].observation.key] = p.lesion_uid
            if len(parts) > 1:
                splits.append(Split(p.lesion_uid, tuple(cur[j].observation.key for j in parts)))
        elif i in merged_into:
            kept = prev[cur_to_prev[merged_into[i]]]
            assignments.append(
                LesionAssignment(
                    lesion_uid=p.lesion_uid,
                    label=p.label,
                    organ=p.organ,
                    status="merged",
                    distance_mm=float(distance[i, merged_into[i]]),
                    merged_into=kept.lesion_uid,
                )
            )
            identities.append(replace(p, resolved=False, merged_into=kept.lesion_uid))
        else:
            assignments.append(
                LesionAssignment(
                    lesion_uid=p.lesion_uid, label=p.label, organ=p.organ, status="resolved"
                )
            )
            identities.append(replace(p, resolved=True, merged_into=""))

    for j in sorted(set(merged_into.values())):
        absorbed = [prev[i].lesion_uid for i in sorted(merged_into) if merged_into[i] == j]
        kept_uid = prev[cur_to_prev[j]].lesion_uid
        merges.append(Merge(cur[j].observation.key, (kept_uid, *absorbed), kept_uid))

    labels = [p.label for p in prev]
    unpaired_cur.sort(
        key=lambda j: (-max(cur[j].observation.volume_ml, 0.0), cur[j].observation.key)
    )
    for j in unpaired_cur:
        c = cur[j]
        label = lesion_label(
            organ=c.observation.organ,
            centroid_baseline_mm=c.centre,
            existing_labels=labels,
            midline_x_mm=midline_x_mm,
        )
        labels.append(label)
        uid = str(make_uid())
        assignments.append(
            LesionAssignment(
                lesion_uid=uid,
                label=label,
                organ=c.observation.organ,
                status="new",
                observation_keys=(c.observation.key,),
            )
        )
        identities.append(
            TrackedLesion(
                lesion_uid=uid,
                label=label,
                organ=c.observation.organ,
                centroid_baseline_mm=tuple(c.centre),
                volume_ml=c.observation.volume_ml,
                mask_points_baseline_mm=c.points,
            )
        )
        by_key[c.observation.key] = uid
    return MatchResult(
        assignments=tuple(assignments),
        identities=tuple(identities),
        merges=tuple(merges),
        splits=tuple(splits),
        _by_key=by_key,
    )


def _size_term(volume_before_ml: float, volume_now_ml: float) -> float:
    if not (volume_before_ml > 0 and volume_now_ml > 0):
        return SIZE_WEIGHT
    change = abs(math.log(volume_now_ml / volume_before_ml)) / _SIZE_SATURATION
    return SIZE_WEIGHT * min(change, 1.0)


def _nanmax(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(max(finite)) if finite else math.nan


def _weights(volumes: Sequence[float]) -> np.ndarray:
    w = np.array([max(v, 0.0) for v in volumes])
    return w if w.sum() > 0 else np.ones(len(w))


def _assign(cost: np.ndarray) -> list[tuple[int, int]]:
    """Optimal pairs allowing either side to stay unpaired at `UNMATCHED_COST` each.

    The (n + m) square problem: real costs top-left, a diagonal of "leave previous i
    unpaired" top-right, "leave current j unpaired" bottom-left, zeros bottom-right.
    """
    n, m = cost.shape
    if n == 0 or m == 0:
        return []
    big = np.full((n + m, n + m), _IMPOSSIBLE)
    big[:n, :m] = cost
    big[:n, m:][np.diag_indices(n)] = UNMATCHED_COST
    big[n:, :m][np.diag_indices(m)] = UNMATCHED_COST
    big[n:, m:] = 0.0
    rows, cols = linear_sum_assignment(big)
    return [
        (int(r), int(c))
        for r, c in zip(rows, cols, strict=True)
        if r < n and c < m and cost[r, c] < _IMPOSSIBLE
    ]


def _touching(
    index: int,
    candidates: list[int],
    prev: list[TrackedLesion],
    prev_cells: list,
    prev_centres: np.ndarray,
    cur: list[_Current],
    distance: np.ndarray,
    *,
    by: Literal["cur", "prev"],
) -> int | None:
    """The closest candidate in contact with ``index`` (a current lesion when ``by`` is
    "cur", candidates being paired previous identities; the reverse for "prev")."""
    best, best_distance = None, math.inf
    for other in candidates:
        i, j = (other, index) if by == "cur" else (index, other)
        if prev[i].organ != cur[j].observation.organ:
            continue
        d = float(distance[i, j])
        overlap = _overlap_of_smaller(prev_cells[i], cur[j].cells)
        if math.isnan(overlap):
            reach = equivalent_radius_mm(prev[i].volume_ml) + equivalent_radius_mm(
                cur[j].observation.volume_ml
            )
            touching = d <= reach
        else:
            touching = overlap >= CONTACT_OVERLAP
        if touching and d < best_distance:
            best, best_distance = other, d
    return best
