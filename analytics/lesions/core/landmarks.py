"""Registration-free placement of a follow-up in the baseline frame, and field-of-view checks.

When a follow-up cannot be registered to the baseline, its lesions are still linked to
the patient's lesions, provisionally, through anatomical landmarks that both studies'
anatomy gives (`imaging.core.registration.anatomy.anatomy_landmarks`: the body, lungs,
liver, heart and spine centroids and the lungs' base, in each study's own LPS). The
follow-up is moved by a translation:

- left-right and anterior-posterior: the median difference of every centroid both
  studies have (these stay put in the axial plane whatever part of the trunk is
  scanned);
- head-foot: the first of these both studies have, in this order: the liver's centroid,
  the lungs' base, the lungs' centroid, the body's centroid, each only when the organ
  (or body) has a similar volume in both (`VOLUME_AGREEMENT`: the same part of it was
  scanned, so the landmark is the same point of anatomy).

No head-foot landmark: no placement (the caller says so and compares positions in the
scanner's coordinates as a last resort). A placement is a proposal for review, never a
registration: rotations and deformation are not modelled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "LandmarkPlacement",
    "VOLUME_AGREEMENT",
    "landmark_placement",
    "point_inside_volume",
]

#: Two volumes of one organ "agree" when the smaller is at least this share of the larger.
VOLUME_AGREEMENT = 0.75

_IN_PLANE = (
    "body_centroid_lps_mm",
    "lung_centroid_lps_mm",
    "liver_centroid_lps_mm",
    "heart_centroid_lps_mm",
    "spine_centroid_lps_mm",
)


@dataclass(frozen=True)
class LandmarkPlacement:
    """Follow-up LPS -> baseline LPS as a translation (4x4 ``to_baseline``), and the
    landmarks it rests on, in words."""

    to_baseline: np.ndarray
    basis: str


def _point(values: Any) -> np.ndarray | None:
    if values is None:
        return None
    point = np.asarray(values, dtype=float).reshape(-1)
    return point if point.size == 3 and np.all(np.isfinite(point)) else None


def _agree(a: float | None, b: float | None) -> bool:
    if not a or not b or a <= 0 or b <= 0:
        return False
    return min(a, b) / max(a, b) >= VOLUME_AGREEMENT


def _head_foot(
    baseline: Mapping[str, Any], follow_up: Mapping[str, Any]
) -> tuple[float, str] | None:
    """The head-foot shift (baseline minus follow-up, mm) and its landmark (module
    docstring), or None."""
    for key, volume_key, name in (
        ("liver_centroid_lps_mm", "liver_volume_ml", "the liver's centroid"),
        ("lung_base_s_mm", "lung_volume_ml", "the lungs' base"),
        ("lung_centroid_lps_mm", "lung_volume_ml", "the lungs' centroid"),
        ("body_centroid_lps_mm", "body_volume_ml", "the body's centroid"),
    ):
        if not _agree(baseline.get(volume_key), follow_up.get(volume_key)):
            continue
        if key == "lung_base_s_mm":
            a, b = baseline.get(key), follow_up.get(key)
            if a is not None and b is not None:
                return float(a) - float(b), name
            continue
        a, b = _point(baseline.get(key)), _point(follow_up.get(key))
        if a is not None and b is not None:
            return float(a[2] - b[2]), name
    return None


def landmark_placement(
    *, baseline: Mapping[str, Any] | None, follow_up: Mapping[str, Any] | None
) -> LandmarkPlacement | None:
    """The translation that puts ``follow_up`` on ``baseline`` by their landmarks (two
    `AnatomyLandmarks.as_dict()` mappings), or None when there is no head-foot landmark
    or no centroid both have (module docstring)."""
    if not baseline or not follow_up:
        return None
    shifts, names = [], []
    for key in _IN_PLANE:
        a, b = _point(baseline.get(key)), _point(follow_up.get(key))
        if a is not None and b is not None:
            shifts.append(a[:2] - b[:2])
            names.append(key.removesuffix("_centroid_lps_mm"))
    head_foot = _head_foot(baseline, follow_up)
    if not shifts or head_foot is None:
        return None
    matrix = np.eye(4)
    matrix[:2, 3] = np.median(np.asarray(shifts), axis=0)
    matrix[2, 3] = head_foot[0]
    basis = (
        f"in-plane from the {', '.join(names)} centroid{'s' if len(names) > 1 else ''}, "
        f"head-foot from {head_foot[1]}"
    )
    return LandmarkPlacement(to_baseline=matrix, basis=basis)


def point_inside_volume(
    *, point_lps_mm: Sequence[float], geometry: Mapping[str, Any] | None, margin_voxels: float = 0.5
) -> bool | None:
    """Whether a point (LPS mm) lies inside a stored volume's grid (`ProcessingRun.
    volume_geometry`: shape_ijk, spacing_mm, origin_mm, direction), at least
    ``margin_voxels`` from its edge; None when the geometry is not known."""
    if not geometry:
        return None
    try:
        shape = np.asarray(geometry["shape_ijk"], dtype=float)
        spacing = np.asarray(geometry["spacing_mm"], dtype=float)
        origin = np.asarray(geometry["origin_mm"], dtype=float)
        direction = np.asarray(geometry["direction"], dtype=float).reshape(3, 3)
    except (KeyError, TypeError, ValueError):
        return None
    point = np.asarray(point_lps_mm, dtype=float)
    if not np.all(np.isfinite(point)):
        return None
    index = np.linalg.solve(direction * spacing, point - origin)
    low, high = -0.5 + margin_voxels, shape - 0.5 - margin_voxels
    return bool(np.all(index >= low) and np.all(index <= high)) and not math.isnan(index.sum())
