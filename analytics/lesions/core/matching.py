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
  An identity already resolved stays resolved (a neighbour grown into its place is
  not it) unless it is paired again (a reappearance).
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
absorbed it. What matching reads and returns is in `analytics.lesions.core.identities`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from pydicom.uid import generate_uid
from scipy.optimize import linear_sum_assignment

from analytics.lesions.core.identities import (
    LesionAssignment,
    LesionObservation,
    MatchResult,
    Merge,
    Split,
    TrackedLesion,
    fragments_combine,
    lesion_label,
)
from imaging.core.geometry.volume import Volume

__all__ = [
    "CONTACT_OVERLAP",
    "GATE_MIN_MM",
    "GATE_RADIUS_FACTOR",
    "OVERLAP_WEIGHT",
    "SIZE_WEIGHT",
    "UNMATCHED_COST",
    "equivalent_radius_mm",
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

_IMPOSSIBLE = 1e6
_SIZE_SATURATION = math.log(8.0)  # a volume ratio of 8 (diameter x2) saturates the size term

PointMap = Callable[[ArrayLike], np.ndarray]


# --------------------------------------------------------------------------- helpers
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


def match_gate_mm(
    *, volume_before_ml: float, volume_now_ml: float, gate_min_mm: float = GATE_MIN_MM
) -> float:
    """How far apart (mm, baseline frame) two centroids may be and still be one lesion.

    ``max(GATE_MIN_MM, GATE_RADIUS_FACTOR * (r_before + r_now))``: a 10 mm floor covers
    registration and centroid error for small lesions; beyond it, half again the sum of
    the equivalent radii lets a large lesion's centroid wander as it grows unevenly.
    A placement without registration (landmarks) passes a wider floor, ``gate_min_mm``.
    """
    radii = equivalent_radius_mm(volume_before_ml) + equivalent_radius_mm(volume_now_ml)
    return max(gate_min_mm, GATE_RADIUS_FACTOR * radii)


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


def mask_points_lps(*, mask: Volume, label: int | None = None) -> np.ndarray:
    """Voxel centres (LPS mm, (N, 3)) of a label volume's foreground, or of one label value."""
    selected = mask.array != 0 if label is None else mask.array == label
    kji = np.argwhere(selected)
    return mask.index_to_lps(kji[:, ::-1].astype(float))


# --------------------------------------------------------------------------- matching
@dataclass
class _Current:
    observation: LesionObservation
    centre: np.ndarray  # baseline frame
    points: np.ndarray | None  # baseline frame
    cells: set | None


@dataclass
class _Frame:
    """Both sides of one match in the baseline frame, with every pair's centroid distance
    (mm), mask Dice and cost (`_IMPOSSIBLE` for a pair that cannot be one lesion)."""

    prev: list[TrackedLesion]
    prev_cells: list[set | None]
    prev_centres: np.ndarray
    cur: list[_Current]
    distance: np.ndarray
    dice: np.ndarray
    cost: np.ndarray


def lesions_match(
    *,
    previous: Sequence[TrackedLesion],
    current: Sequence[LesionObservation],
    to_baseline: np.ndarray | PointMap | None = None,
    uid_factory: Callable[[], str] | None = None,
    overlap_grid_mm: float = OVERLAP_GRID_MM,
    midline_x_mm: float = 0.0,
    gate_min_mm: float = GATE_MIN_MM,
) -> MatchResult:
    """Attribute the lesions of a new study to the patient's identities (module docstring).

    ``previous``: every identity known before this study (resolved ones included), in
    the baseline frame; empty at the baseline study. ``current``: this study's lesions in
    its own LPS. ``to_baseline``: this study's LPS -> baseline LPS, as a 4x4 homogeneous
    matrix or a callable on (N, 3) arrays; None for the baseline study itself.
    ``uid_factory`` makes a DICOM Tracking UID (0062,0021) for each new identity
    (default ``pydicom.uid.generate_uid``). New identities are labelled in order of
    decreasing volume. ``gate_min_mm``: the gate's floor (`match_gate_mm`).
    """
    make_uid = uid_factory or (lambda: str(generate_uid()))
    frame = _frame_build(previous, current, to_baseline, overlap_grid_mm, gate_min_mm)
    pairs = _assign(frame.cost)
    prev_to_cur = dict(pairs)
    cur_to_prev = {j: i for i, j in pairs}
    split_parts, unpaired_cur = _splits_read(frame, prev_to_cur, cur_to_prev)
    merged_into = _merges_read(frame, prev_to_cur, cur_to_prev)
    outcomes: list[tuple[LesionAssignment, TrackedLesion]] = []
    for i, p in enumerate(frame.prev):
        if i in prev_to_cur:
            outcomes.append(_tracked(frame, i, sorted(split_parts[i]), prev_to_cur[i]))
        elif i in merged_into:
            kept = frame.prev[cur_to_prev[merged_into[i]]]
            outcomes.append(_merged(frame, i, merged_into[i], kept))
        else:
            resolved = LesionAssignment(
                lesion_uid=p.lesion_uid, label=p.label, organ=p.organ, status="resolved"
            )
            outcomes.append((resolved, replace(p, resolved=True, merged_into="")))
    labels = [p.label for p in frame.prev]
    unpaired_cur.sort(
        key=lambda j: (-max(frame.cur[j].observation.volume_ml, 0.0), frame.cur[j].observation.key)
    )
    for j in unpaired_cur:
        outcomes.append(_new(frame.cur[j], labels, str(make_uid()), midline_x_mm))
    assignments = tuple(a for a, _ in outcomes)
    return MatchResult(
        assignments=assignments,
        identities=tuple(identity for _, identity in outcomes),
        merges=_merges_list(frame, merged_into, cur_to_prev),
        splits=tuple(
            Split(a.lesion_uid, a.observation_keys)
            for a in assignments
            if a.status == "tracked" and len(a.observation_keys) > 1
        ),
        _by_key={key: a.lesion_uid for a in assignments for key in a.observation_keys},
    )


def _frame_build(
    previous: Sequence[TrackedLesion],
    current: Sequence[LesionObservation],
    to_baseline: np.ndarray | PointMap | None,
    overlap_grid_mm: float,
    gate_min_mm: float = GATE_MIN_MM,
) -> _Frame:
    """Both sides in the baseline frame, and the cost of every pair (module docstring):
    only lesions of one organ within the gate, or whose masks overlap, may pair."""
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
    n, m = len(prev), len(cur)
    frame = _Frame(
        prev=prev,
        prev_cells=[_cells(p.mask_points_baseline_mm, overlap_grid_mm) for p in prev],
        prev_centres=np.array([p.centroid_baseline_mm for p in prev]).reshape(-1, 3),
        cur=cur,
        distance=np.full((n, m), math.nan),
        dice=np.full((n, m), math.nan),
        cost=np.full((n, m), _IMPOSSIBLE),
    )
    for i, p in enumerate(prev):
        for j, c in enumerate(cur):
            if p.organ == c.observation.organ:
                _pair_cost(frame, i, j, gate_min_mm)
    return frame


def _pair_cost(frame: _Frame, i: int, j: int, gate_min_mm: float = GATE_MIN_MM) -> None:
    """Distance, Dice and cost of previous identity ``i`` with current lesion ``j``."""
    p, c = frame.prev[i], frame.cur[j]
    d = float(np.linalg.norm(c.centre - frame.prev_centres[i]))
    overlap = _dice(frame.prev_cells[i], c.cells)
    frame.distance[i, j], frame.dice[i, j] = d, overlap
    gate = match_gate_mm(
        volume_before_ml=p.volume_ml, volume_now_ml=c.observation.volume_ml, gate_min_mm=gate_min_mm
    )
    overlaps = not math.isnan(overlap) and overlap > 0
    if d > gate and not overlaps:
        return
    frame.cost[i, j] = min(d / gate, 1.0) + _size_term(p.volume_ml, c.observation.volume_ml)
    if overlaps:
        frame.cost[i, j] -= OVERLAP_WEIGHT * overlap


def _splits_read(
    frame: _Frame, prev_to_cur: dict[int, int], cur_to_prev: dict[int, int]
) -> tuple[dict[int, list[int]], list[int]]:
    """Each paired identity's current pieces (its pair, then every unpaired current
    lesion touching it: a split), and the current lesions touching none (new)."""
    split_parts: dict[int, list[int]] = {i: [j] for i, j in prev_to_cur.items()}
    unpaired_cur = []
    for j in range(len(frame.cur)):
        if j in cur_to_prev:
            continue
        owner = _touching(frame, j, list(prev_to_cur), by="cur")
        if owner is None:
            unpaired_cur.append(j)
        else:
            split_parts[owner].append(j)
    return split_parts, unpaired_cur


def _merges_read(
    frame: _Frame, prev_to_cur: dict[int, int], cur_to_prev: dict[int, int]
) -> dict[int, int]:
    """Unpaired previous identity -> the paired current lesion it touches (it merged).

    An identity already resolved (gone at an earlier study) cannot merge: a neighbour
    grown up to where it was is the neighbour's growth, and reading it as a merge would
    hand the gone lesion the neighbour's size (a target confirmed gone measured again)."""
    merged_into: dict[int, int] = {}
    for i in range(len(frame.prev)):
        if i in prev_to_cur or frame.prev[i].resolved:
            continue
        j = _touching(frame, i, list(cur_to_prev), by="prev")
        if j is not None:
            merged_into[i] = j
    return merged_into


def _tracked(
    frame: _Frame, i: int, parts: list[int], paired: int
) -> tuple[LesionAssignment, TrackedLesion]:
    """Identity ``i`` seen as the current lesions ``parts`` (more than one: a split,
    combined by `fragments_combine`), re-placed at their volume-weighted centre."""
    p, cur = frame.prev[i], frame.cur
    obs = fragments_combine([cur[j].observation for j in parts])
    pts = [points for points in (cur[j].points for j in parts) if points is not None]
    centre = np.average(
        [cur[j].centre for j in parts],
        axis=0,
        weights=_weights([cur[j].observation.volume_ml for j in parts]),
    )
    assignment = LesionAssignment(
        lesion_uid=p.lesion_uid,
        label=p.label,
        organ=p.organ,
        status="tracked",
        observation_keys=tuple(cur[j].observation.key for j in parts),
        distance_mm=float(np.linalg.norm(centre - frame.prev_centres[i])),
        dice=float(frame.dice[i, paired]) if len(parts) == 1 else math.nan,
        reappeared=p.resolved or bool(p.merged_into),
    )
    identity = replace(
        p,
        centroid_baseline_mm=tuple(centre),
        volume_ml=obs.volume_ml if obs.volume_ml > 0 else p.volume_ml,
        mask_points_baseline_mm=np.concatenate(pts) if pts else None,
        resolved=False,
        merged_into="",
    )
    return assignment, identity


def _merged(
    frame: _Frame, i: int, j: int, kept: TrackedLesion
) -> tuple[LesionAssignment, TrackedLesion]:
    """Identity ``i`` absorbed by current lesion ``j``, which ``kept`` carries on."""
    p = frame.prev[i]
    assignment = LesionAssignment(
        lesion_uid=p.lesion_uid,
        label=p.label,
        organ=p.organ,
        status="merged",
        distance_mm=float(frame.distance[i, j]),
        merged_into=kept.lesion_uid,
    )
    return assignment, replace(p, resolved=False, merged_into=kept.lesion_uid)


def _new(
    c: _Current, labels: list[str], uid: str, midline_x_mm: float
) -> tuple[LesionAssignment, TrackedLesion]:
    """A new identity for current lesion ``c``, with the next free label (added to
    ``labels``)."""
    label = lesion_label(
        organ=c.observation.organ,
        centroid_baseline_mm=tuple(c.centre),
        existing_labels=labels,
        midline_x_mm=midline_x_mm,
    )
    labels.append(label)
    assignment = LesionAssignment(
        lesion_uid=uid,
        label=label,
        organ=c.observation.organ,
        status="new",
        observation_keys=(c.observation.key,),
    )
    identity = TrackedLesion(
        lesion_uid=uid,
        label=label,
        organ=c.observation.organ,
        centroid_baseline_mm=tuple(c.centre),
        volume_ml=c.observation.volume_ml,
        mask_points_baseline_mm=c.points,
    )
    return assignment, identity


def _merges_list(
    frame: _Frame, merged_into: dict[int, int], cur_to_prev: dict[int, int]
) -> tuple[Merge, ...]:
    """One `Merge` per current lesion that absorbed identities, the paired one kept."""
    merges = []
    for j in sorted(set(merged_into.values())):
        absorbed = [frame.prev[i].lesion_uid for i in sorted(merged_into) if merged_into[i] == j]
        kept_uid = frame.prev[cur_to_prev[j]].lesion_uid
        merges.append(Merge(frame.cur[j].observation.key, (kept_uid, *absorbed), kept_uid))
    return tuple(merges)


def _size_term(volume_before_ml: float, volume_now_ml: float) -> float:
    if not (volume_before_ml > 0 and volume_now_ml > 0):
        return SIZE_WEIGHT
    change = abs(math.log(volume_now_ml / volume_before_ml)) / _SIZE_SATURATION
    return SIZE_WEIGHT * min(change, 1.0)


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
    frame: _Frame, index: int, candidates: list[int], *, by: Literal["cur", "prev"]
) -> int | None:
    """The closest candidate in contact with ``index`` (a current lesion when ``by`` is
    "cur", candidates being paired previous identities; the reverse for "prev")."""
    best, best_distance = None, math.inf
    for other in candidates:
        i, j = (other, index) if by == "cur" else (index, other)
        p, c = frame.prev[i], frame.cur[j]
        if p.organ != c.observation.organ:
            continue
        d = float(frame.distance[i, j])
        overlap = _overlap_of_smaller(frame.prev_cells[i], c.cells)
        if math.isnan(overlap):
            reach = equivalent_radius_mm(p.volume_ml) + equivalent_radius_mm(
                c.observation.volume_ml
            )
            touching = d <= reach
        else:
            touching = overlap >= CONTACT_OVERLAP
        if touching and d < best_distance:
            best, best_distance = other, d
    return best
