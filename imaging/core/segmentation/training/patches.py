"""Training patches: where they are centred, how they are augmented, and their soft targets.

A patch of ``size`` voxels is centred on a lesion (chosen uniformly among the case's
lesions, so small ones count as much as large ones) with probability ``lesion_bias``,
on a candidate a radiologist rejected or the network was found to make (a share of the
rest, each organ that has such hard negatives taking an equal part), on a lung or liver
voxel a quarter of what is left, else anywhere; a left-right mirror, a
HU offset and extra noise augment it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from imaging.core.segmentation.network import SegmenterSpec, model_input_array
from imaging.core.segmentation.training.cases import N_CLASSES, TrainingCase
from imaging.core.segmentation.training.settings import TrainingSettings

#: The default share of the patches not centred on a lesion that a reviewed study centres
#: on one of its rejected candidates (``meta["hard_negatives_kji"]``): what the network
#: wrongly saw as a lesion is what it most needs to unlearn.
HARD_NEGATIVE_SHARE = TrainingSettings.hard_negative_share


def _crop(array: np.ndarray, start: np.ndarray, size: int, fill: float) -> np.ndarray:
    out = np.full((size, size, size), fill, dtype=array.dtype)
    lo = np.maximum(start, 0)
    hi = np.minimum(start + size, array.shape)
    if np.any(hi <= lo):
        return out
    dst = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start, strict=True))
    out[dst] = array[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
    return out


def soft_target(
    organ: np.ndarray, lesion_fraction: np.ndarray, lesion_code: np.ndarray
) -> np.ndarray:
    """(classes, ...) float32: the organ's class takes 1 - occupancy, the lesion's class the rest."""
    fraction = lesion_fraction.astype(np.float32)
    target = np.zeros((N_CLASSES, *organ.shape), dtype=np.float32)
    for c in range(3):
        target[c] = (organ == c) * (1.0 - fraction)
    for c in (3, 4):
        target[c] = (lesion_code == c) * fraction
    # Occupancy with no lesion class recorded (cannot happen for phantom truth) stays organ.
    missing = (lesion_code == 0) & (fraction > 0)
    if missing.any():
        for c in range(3):
            target[c][missing] = organ[missing] == c
    return target


def hard_negative_organs(case: TrainingCase, hard: Sequence[Sequence[int]]) -> list[int]:
    """The organ code (0 outside lung and liver, 1 lung, 2 liver) at each hard negative."""
    top = np.asarray(case.organ.shape) - 1
    return [int(case.organ[tuple(np.clip(np.asarray(p), 0, top))]) for p in hard]


def _hard_negative(
    case: TrainingCase, hard: Sequence[Sequence[int]], rng: np.random.Generator
) -> np.ndarray:
    """One of the case's hard negatives, the organs taking equal turns: a network's false
    candidates are mostly in the lung (vessels, fissures), and the few in the liver would
    otherwise get almost none of the patches that unlearn them."""
    organs = hard_negative_organs(case, hard)
    groups = sorted(set(organs))
    if len(groups) > 1:
        pick = groups[int(rng.integers(len(groups)))]
        hard = [p for p, organ in zip(hard, organs, strict=True) if organ == pick]
    return np.asarray(hard[int(rng.integers(len(hard)))])


def _patch_centre(
    case: TrainingCase,
    rng: np.random.Generator,
    size: int,
    lesion_bias: float,
    hard_negative_share: float = HARD_NEGATIVE_SHARE,
) -> np.ndarray:
    """On a lesion (``lesion_bias``); on a hard negative of a reviewed study (a candidate
    a radiologist rejected, or one mined: ``hard_negative_share`` of the rest, each organ
    with hard negatives an equal share of those), on lung or liver (a quarter of what is
    left), else anywhere."""
    roll = rng.random()
    centre = None
    hard = case.meta.get("hard_negatives_kji") or []
    hard_share = hard_negative_share * (1 - lesion_bias) if hard else 0.0
    if roll < lesion_bias and case.lesions:
        which = int(rng.integers(len(case.lesions))) + 1
        voxels = np.argwhere(case.lesion_index == which)
        if len(voxels):
            centre = voxels[rng.integers(len(voxels))] + rng.integers(-size // 4, size // 4 + 1, 3)
    elif roll < lesion_bias + hard_share:
        centre = _hard_negative(case, hard, rng) + rng.integers(-size // 4, size // 4 + 1, 3)
    elif roll < lesion_bias + hard_share + (1 - lesion_bias - hard_share) / 4:
        organ = 1 if rng.random() < 0.5 else 2
        flat = np.flatnonzero(case.organ.ravel()[::97] == organ)
        if len(flat):
            centre = np.array(np.unravel_index(flat[rng.integers(len(flat))] * 97, case.hu.shape))
    if centre is None:
        centre = (rng.random(3) * np.asarray(case.hu.shape)).astype(int)
    return centre


def patch_sample(
    case: TrainingCase,
    rng: np.random.Generator,
    *,
    spec: SegmenterSpec,
    size: int,
    lesion_bias: float,
    augment: bool = True,
    hard_negative_share: float = HARD_NEGATIVE_SHARE,
) -> tuple[np.ndarray, np.ndarray]:
    """One training patch: inputs (C, s, s, s) and soft targets (classes, s, s, s)."""
    start = _patch_centre(case, rng, size, lesion_bias, hard_negative_share) - size // 2
    hu = _crop(case.hu, start, size, -1024).astype(np.float32)
    organ = _crop(case.organ, start, size, 0)
    fraction = _crop(case.lesion_fraction, start, size, 0)
    code = _crop(case.lesion_code, start, size, 0)
    if augment:
        if rng.random() < 0.5:  # left-right mirror (i is the last axis)
            hu, organ, fraction, code = (a[..., ::-1] for a in (hu, organ, fraction, code))
        hu = hu + float(rng.normal(0.0, 8.0))
        if rng.random() < 0.5:
            hu = hu + rng.normal(0.0, float(rng.uniform(0.0, 10.0)), hu.shape).astype(np.float32)
    inputs = model_input_array(np.ascontiguousarray(hu), spec)
    return inputs, soft_target(organ, fraction, code)


def patch_batch(
    *,
    cases: Sequence[TrainingCase],
    rng: np.random.Generator,
    spec: SegmenterSpec,
    count: int,
    size: int,
    lesion_bias: float,
    hard_negative_share: float = HARD_NEGATIVE_SHARE,
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` patches of randomly chosen cases, stacked: inputs and soft targets."""
    batch = [
        patch_sample(
            cases[int(rng.integers(len(cases)))],
            rng,
            spec=spec,
            size=size,
            lesion_bias=lesion_bias,
            hard_negative_share=hard_negative_share,
        )  # fmt: skip
        for _ in range(count)
    ]
    return np.stack([b[0] for b in batch]), np.stack([b[1] for b in batch])
