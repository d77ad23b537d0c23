"""Lesions with an outer layer of their own: part-solid and ground-glass nodules, cystic lesions.

The network outlines what stands out most: of a part-solid nodule its solid core and the
densest ground glass next to it, of a cystic metastasis its fluid and the inner part of
its wall. The outer layer beyond (ground glass between lung and soft tissue; a wall
between the fluid and the liver) is neither core nor background, so the one-level
partial volume of `partial_volume` reads it as background (its ring lies in the layer)
or as half a lesion, and such lesions came out at a third to a half of their volume.

Here a lesion surrounded by such a layer is measured on two levels. The background B is
read 5-10 mm beyond the lesion's region (lung, where most of them are under -500 HU and
those have a median under -700 HU; else soft tissue: voxels over -200 HU within 100 HU of
their median). A voxel is of
the layer when it lies beyond the background by a step (lung: denser by max(150 HU,
4 noise SDs) and under -200 HU, not solid; soft tissue, for a lesion darker than it:
darker after smoothing by max(15 HU, 2 noise SDs of the smoothed tissue) and over -20
HU, not fat). The lesion counts as surrounded when a share of the voxels just outside its
region (`LUNG.min_surround`, `SOFT_TISSUE.min_surround`) are of the layer. The layer is
then grown from the candidate through such voxels, within a reach of the region (lung:
max(equivalent radius, 5 mm); soft tissue: 5 mm, so that it cannot run on through the
organ's own darker parts), opened once so that blurred edges of vessels and airways do
not carry it away; its level G is the median of its voxels, and every voxel of the grown
lesion and one voxel around it counts for clip((HU - B) / (G - B), -1, 1) of a voxel:
the layer and anything beyond it count whole, the blurred edge by its share,
background as none.

A lesion with no layer is left to the one-level volume: around a solid nodule at most
0.26 of the voxels just outside the region were ground glass (a lobulated nodule beside
a bronchus) in the evaluation cohorts, 0.35 and more around every part-solid nodule whose
ground glass reaches past the region; in the liver the gate is lower (0.25: the wall is
thinner and the smoothed step smaller), and no lesion of the training generator's
cohorts (one layer each) passed either gate. A layer that ends within about 3 mm of the
outline lies inside the region, and the one-level volume counts it by its HU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

BACKGROUND_SHELL_MM = (5.0, 10.0)
MIN_BACKGROUND_VOXELS = 50
MIN_LAYER_VOXELS = 8
#: How far beyond a lesion's region `two_level_measure` reads (the study box's margin).
TWO_LEVEL_READ_MM = BACKGROUND_SHELL_MM[1] + 1.0


@dataclass(frozen=True)
class LayerRules:
    """What the layer is in one background: the steps, the gate and the reach."""

    name: str
    min_step_hu: float
    noise_steps: float
    min_surround: float
    reach_mm: float
    reach_by_radius: bool
    smooth_mm: float


LUNG = LayerRules(
    name="ground_glass", min_step_hu=150.0, noise_steps=4.0, min_surround=0.35,
    reach_mm=5.0, reach_by_radius=True, smooth_mm=0.0,
)  # fmt: skip
SOFT_TISSUE = LayerRules(
    name="hypodense_wall", min_step_hu=15.0, noise_steps=2.0, min_surround=0.25,
    reach_mm=5.0, reach_by_radius=False, smooth_mm=0.8,
)  # fmt: skip
LUNG_BELOW_HU = -700.0
GLASS_SOLID_FROM_HU = -200.0
WALL_FAT_BELOW_HU = -20.0
#: A lesion is darker than its soft tissue by at least this (its candidate's median).
WALL_MIN_LESION_STEP_HU = 20.0

#: The rules of `two_level_measure` (recorded with every run).
TWO_LEVEL_RULES = {
    "background": f"median of study voxels {BACKGROUND_SHELL_MM[0]:g}-"
    f"{BACKGROUND_SHELL_MM[1]:g} mm beyond the region, away from every candidate, at least "
    f"{MIN_BACKGROUND_VOXELS}: lung (under -500 HU, median under {LUNG_BELOW_HU:g}) or soft "
    "tissue (over -200 HU, within 100 HU of their median)",
    "ground_glass": f"lung + max({LUNG.min_step_hu:g} HU, {LUNG.noise_steps:g} noise SDs) < "
    f"HU < {GLASS_SOLID_FROM_HU:g}; surrounded: at least {LUNG.min_surround:g} of the voxels "
    "just outside the region; reach max(equivalent radius, 5 mm) beyond the region",
    "hypodense_wall": f"for a candidate at least {WALL_MIN_LESION_STEP_HU:g} HU darker than "
    f"its tissue: {WALL_FAT_BELOW_HU:g} < HU smoothed by {SOFT_TISSUE.smooth_mm:g} mm < "
    f"tissue - max({SOFT_TISSUE.min_step_hu:g} HU, {SOFT_TISSUE.noise_steps:g} noise SDs of "
    f"the smoothed tissue); surrounded: at least {SOFT_TISSUE.min_surround:g}; reach "
    f"{SOFT_TISSUE.reach_mm:g} mm beyond the region",
    "grown": f"from the candidate through layer voxels within the reach, opened once; at "
    f"least {MIN_LAYER_VOXELS} beyond the candidate; layer level = their median HU",
    "volume": "sum of clip((HU - background) / (layer - background), -1, 1) over the grown "
    "lesion and one voxel around it",
}


@dataclass(frozen=True)
class TwoLevel:
    """A lesion measured with its outer layer: volume and the two levels read."""

    volume_ml: float
    layer: str
    background_hu: float
    layer_hu: float
    surround: float
    n_grown_voxels: int


def two_level_measure(
    *,
    hu: np.ndarray,
    spacing_kji_mm: tuple[float, float, float],
    region: np.ndarray,
    inner: np.ndarray,
    others: np.ndarray,
    outside: np.ndarray | None = None,
) -> TwoLevel | None:
    """The lesion's volume with its outer layer, or None when no layer surrounds it.

    ``hu``: a box of the study in HU reaching `TWO_LEVEL_READ_MM` beyond the region
    (array order, voxel spacing ``spacing_kji_mm``); ``region`` (bool) the lesion's
    region, ``inner`` its candidate voxels, ``others`` every candidate's region (this
    one's included), ``outside`` (bool) voxels not imaged (`Volume.padding`), never read
    as background. See the module's docstring for the rules.
    """
    values = hu.astype(np.float64)
    spacing = np.asarray(spacing_kji_mm, dtype=float)
    foreign = others & ~region
    if outside is not None:
        foreign = foreign | outside
    beyond = ndimage.distance_transform_edt(~region, sampling=spacing)
    shell = (beyond >= BACKGROUND_SHELL_MM[0]) & (beyond <= BACKGROUND_SHELL_MM[1]) & ~foreign
    found = _layer_voxels(values, spacing, shell, inner)
    if found is None:
        return None
    rules, background, layer = found
    just_outside = ndimage.binary_dilation(region) & ~region & ~foreign
    if not just_outside.any():
        return None
    surround = float(layer[just_outside].mean())
    if surround < rules.min_surround:
        return None
    voxel_ml = float(np.prod(spacing)) / 1000.0
    reach = rules.reach_mm
    if rules.reach_by_radius:
        radius = (3.0 * region.sum() * voxel_ml * 1000.0 / (4.0 * np.pi)) ** (1 / 3)
        reach = max(radius, reach)
    paths = ndimage.binary_opening(layer & (beyond <= reach) & ~foreign)
    labels, _ = ndimage.label(paths | inner)
    touching = np.unique(labels[inner])
    grown = np.isin(labels, touching[touching > 0])
    beyond_inner = grown & ~inner
    if beyond_inner.sum() < MIN_LAYER_VOXELS:
        return None
    level = float(np.median(values[beyond_inner]))
    counted = ndimage.binary_dilation(grown) & ~foreign
    fraction = np.clip((values[counted] - background) / (level - background), -1.0, 1.0)
    volume_ml = float(fraction.sum()) * voxel_ml
    if volume_ml <= 0:
        return None
    return TwoLevel(
        volume_ml=volume_ml,
        layer=rules.name,
        background_hu=background,
        layer_hu=level,
        surround=surround,
        n_grown_voxels=int(grown.sum()),
    )


def _layer_voxels(
    values: np.ndarray, spacing: np.ndarray, shell: np.ndarray, inner: np.ndarray
) -> tuple[LayerRules, float, np.ndarray] | None:
    """The rules, the background's level and the layer's voxels, or None (no layer kind)."""
    lung, tissue = shell & (values < -500.0), shell & (values > -200.0)
    if (
        lung.sum() >= max(MIN_BACKGROUND_VOXELS, tissue.sum())
        and np.median(values[lung]) < LUNG_BELOW_HU
    ):
        level = float(np.median(values[lung]))
        noise = 1.4826 * float(np.median(np.abs(values[lung] - level)))
        step = max(LUNG.min_step_hu, LUNG.noise_steps * noise)
        return LUNG, level, (values > level + step) & (values < GLASS_SOLID_FROM_HU)
    if tissue.sum() < MIN_BACKGROUND_VOXELS or not inner.any():
        return None
    tissue &= np.abs(values - np.median(values[tissue])) < 100.0
    if tissue.sum() < MIN_BACKGROUND_VOXELS:
        return None
    level = float(np.median(values[tissue]))
    if level - float(np.median(values[inner])) < WALL_MIN_LESION_STEP_HU:
        return None
    smoothed = ndimage.gaussian_filter(values, SOFT_TISSUE.smooth_mm / spacing)
    noise = 1.4826 * float(np.median(np.abs(smoothed[tissue] - np.median(smoothed[tissue]))))
    step = max(SOFT_TISSUE.min_step_hu, SOFT_TISSUE.noise_steps * noise)
    return SOFT_TISSUE, level, (smoothed < level - step) & (smoothed > WALL_FAT_BELOW_HU)
