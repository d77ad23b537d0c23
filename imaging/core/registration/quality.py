"""How well a registration aligns two CTs, and when it counts as failed.

`registration_quality` warps the moving volume onto the fixed grid (about 4 mm) and
measures the normalised cross-correlation of HU inside the fixed body, the Dice overlap
of the body and lung masks, and how much of the fixed body the moving volume covers; a
registration below `QualityThresholds` is marked ``failed`` with the reasons, so a
caller never uses it silently.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from imaging.core.geometry.volume import Volume
from imaging.core.registration.anatomy import body_lung_arrays, volume_coarse
from imaging.core.registration.transforms import SpatialTransform, volume_warp

#: HU window for the registration metric: air to dense bone.
METRIC_HU = (-1000.0, 1000.0)


@dataclass(frozen=True)
class QualityThresholds:
    """Below (or outside) any of these a registration is marked failed.

    Set to flag gross failures, not to grade good ones: on the synthetic cohort the true
    transform scores NCC 0.99, body Dice 0.998, lung Dice 0.995; moved off it by 10 mm
    (or 10 degrees about the long axis) NCC 0.71-0.85, lung Dice 0.83-0.88; by 20 mm
    (20 degrees) NCC 0.44-0.67, body Dice 0.90-0.96, lung Dice 0.68-0.77. Real follow-ups
    differ more at the right alignment (breathing, bowel gas, contrast, weight), so the
    limits sit below the 10 mm values: a registration off by about 15 mm or more fails.
    """

    min_ncc: float = 0.6
    min_body_dice: float = 0.9
    min_lung_dice: float = 0.8
    min_overlap: float = 0.6
    max_rotation_deg: float = 30.0
    scale_range: tuple[float, float] = (0.8, 1.25)
    #: Lung Dice is only judged when either study shows at least this much lung.
    min_lung_ml: float = 200.0


@dataclass(frozen=True)
class RegistrationQuality:
    """How well the warped moving volume matches the fixed one, at about 4 mm.

    ``ncc``: Pearson correlation of HU (clipped to `METRIC_HU`) over fixed body voxels the
    moving volume covers; ``body_dice`` / ``lung_dice``: Dice of the masks there;
    ``overlap_fraction``: share of the fixed body the moving volume covers; ``score``:
    the mean of ncc, body Dice and lung Dice (when judged), 0..1.
    """

    ncc: float
    body_dice: float
    lung_dice: float | None
    overlap_fraction: float
    rotation_deg: float
    scales: tuple[float, float, float]
    score: float
    failed: bool
    reasons: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Overlap:
    """What the warped moving volume shares with the fixed one (lung Dice None: not judged)."""

    ncc: float
    body_dice: float
    lung_dice: float | None
    overlap_fraction: float


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2.0 * (a & b).sum() / total) if total else 0.0


def _overlap(
    fixed_coarse: Volume,
    moving_coarse: Volume,
    transform: SpatialTransform,
    thresholds: QualityThresholds,
    fixed_masks: tuple[np.ndarray, np.ndarray] | None,
) -> _Overlap:
    warped = volume_warp(
        moving=moving_coarse,
        reference=fixed_coarse,
        transform=transform,
        default_value=METRIC_HU[0],
    )
    inside = volume_warp(
        moving=moving_coarse.with_array(np.ones(moving_coarse.array.shape, np.uint8), kind="label"),
        reference=fixed_coarse,
        transform=transform,
    ).array.astype(bool)
    smooth_f = ndimage.gaussian_filter(fixed_coarse.array, 0.7)
    smooth_m = ndimage.gaussian_filter(warped.array, 0.7)
    voxel_ml = fixed_coarse.voxel_volume_ml
    body_f, lung_f = fixed_masks or body_lung_arrays(smooth_f, voxel_ml)
    body_m, lung_m = body_lung_arrays(smooth_m, voxel_ml)
    region = body_f & inside
    ncc = 0.0
    if region.sum() > 100:
        a = np.clip(fixed_coarse.array[region], *METRIC_HU)
        b = np.clip(warped.array[region], *METRIC_HU)
        if a.std() > 0 and b.std() > 0:
            ncc = float(np.corrcoef(a, b)[0, 1])
    lung_ml_f = (lung_f & inside).sum() * voxel_ml
    lung_ml_m = lung_m.sum() * voxel_ml
    lung_judged = lung_ml_f >= thresholds.min_lung_ml or lung_ml_m >= thresholds.min_lung_ml
    return _Overlap(
        ncc=ncc,
        body_dice=_dice(body_f & inside, body_m & inside),
        lung_dice=_dice(lung_f & inside, lung_m & inside) if lung_judged else None,
        overlap_fraction=float((body_f & inside).sum() / max(1, body_f.sum())),
    )


def _failure_reasons(
    overlap: _Overlap, rotation_deg: float, scales: np.ndarray, thresholds: QualityThresholds
) -> list[str]:
    reasons = []
    if overlap.lung_dice is not None and overlap.lung_dice < thresholds.min_lung_dice:
        reasons.append(f"lung Dice {overlap.lung_dice:.2f} < {thresholds.min_lung_dice}")
    if overlap.ncc < thresholds.min_ncc:
        reasons.append(f"NCC {overlap.ncc:.2f} < {thresholds.min_ncc}")
    if overlap.body_dice < thresholds.min_body_dice:
        reasons.append(f"body Dice {overlap.body_dice:.2f} < {thresholds.min_body_dice}")
    if overlap.overlap_fraction < thresholds.min_overlap:
        reasons.append(
            f"moving covers {overlap.overlap_fraction:.0%} of the fixed body "
            f"< {thresholds.min_overlap:.0%}"
        )
    if rotation_deg > thresholds.max_rotation_deg:
        reasons.append(f"rotation {rotation_deg:.1f} deg > {thresholds.max_rotation_deg}")
    lo, hi = thresholds.scale_range
    if scales.min() < lo or scales.max() > hi:
        reasons.append(f"scales {np.round(scales, 3).tolist()} outside [{lo}, {hi}]")
    return reasons


def coarse_registration_quality(
    *,
    fixed_coarse: Volume,
    moving_coarse: Volume,
    transform: SpatialTransform,
    thresholds: QualityThresholds,
    fixed_masks: tuple[np.ndarray, np.ndarray] | None = None,
) -> RegistrationQuality:
    """Quality of ``transform`` on coarse copies already made (``fixed_masks``: the fixed
    body and lung masks when the caller has them)."""
    overlap = _overlap(fixed_coarse, moving_coarse, transform, thresholds, fixed_masks)
    rotation = transform.rotation_deg
    scales = transform.scales
    reasons = _failure_reasons(overlap, rotation, scales, thresholds)
    lung_dice = overlap.lung_dice
    terms = [max(overlap.ncc, 0.0), overlap.body_dice] + (
        [lung_dice] if lung_dice is not None else []
    )
    return RegistrationQuality(
        ncc=round(overlap.ncc, 4),
        body_dice=round(overlap.body_dice, 4),
        lung_dice=None if lung_dice is None else round(lung_dice, 4),
        overlap_fraction=round(overlap.overlap_fraction, 4),
        rotation_deg=round(rotation, 3),
        scales=tuple(round(float(s), 4) for s in scales),
        score=round(float(np.mean(terms)), 4),
        failed=bool(reasons),
        reasons=tuple(reasons),
    )


def registration_quality(
    *,
    fixed: Volume,
    moving: Volume,
    transform: SpatialTransform,
    thresholds: QualityThresholds | None = None,
    spacing_mm: float = 4.0,
) -> RegistrationQuality:
    """Quality of ``transform`` (fixed -> moving) on coarse copies at ``spacing_mm``."""
    return coarse_registration_quality(
        fixed_coarse=volume_coarse(volume=fixed, spacing_mm=spacing_mm),
        moving_coarse=volume_coarse(volume=moving, spacing_mm=spacing_mm),
        transform=transform,
        thresholds=thresholds or QualityThresholds(),
    )
