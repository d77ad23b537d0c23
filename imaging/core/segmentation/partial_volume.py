"""Partial-volume volumetry: a lesion's volume from the HU of the study's own voxels.

Each voxel of the lesion's region counts for the fraction of lesion it holds, read from
its HU between the lesion's core and the surrounding tissue; blurring by the scanner
and by thick slices moves HU across the edge but keeps their sum (see `measure`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from imaging.core.geometry.triples import vec3
from imaging.core.geometry.volume import Volume
from imaging.core.segmentation.two_level import TWO_LEVEL_READ_MM, TwoLevel, two_level_measure

#: The rules of `partial_volume_measure` (recorded with every run).
PARTIAL_VOLUME_RULES = {
    "region": "candidate grown by 2 model voxels (3 mm), on the study's own voxels",
    "core": "the deeper half of the candidate's study voxels (distance from its edge), "
    "at least one voxel spacing deep; median HU; at least 4 voxels",
    "background": "study voxels 1-2 voxels outside the region, away from every candidate; "
    "median HU; at least 8",
    "fraction": "(HU - background) / (core - background), clipped to -1..2",
    "air": "none when the region or its ring holds air (below -500 HU) or padding while "
    "neither core nor background is air: the isosurface's volume",
    "min_contrast_hu": 10.0,
    "max_relative_noise": "sqrt(region voxels) x background noise / contrast <= 10 % of "
    "the volume, else the isosurface's volume",
}
PV_MIN_CORE_VOXELS = 4
PV_MIN_RING_VOXELS = 8
PV_MIN_CONTRAST_HU = 10.0
PV_MAX_RELATIVE_NOISE = 0.1
#: Below this a voxel holds mostly air (lung, bowel gas, outside the body: -1000 HU).
AIR_BELOW_HU = -500.0


@dataclass(frozen=True)
class PartialVolume:
    """A lesion's partial-volume volume and the two HU levels it was read between."""

    volume_ml: float
    core_hu: float
    background_hu: float
    n_region_voxels: int
    noise_ml: float


def partial_volume_measure(
    *,
    hu: np.ndarray,
    spacing_kji_mm: tuple[float, float, float],
    region: np.ndarray,
    inner: np.ndarray,
    others: np.ndarray,
    outside: np.ndarray | None = None,
) -> PartialVolume | None:
    """Volume of one lesion from the partial volume of the study's own voxels.

    ``hu`` is a box of the study in HU (voxel spacing ``spacing_kji_mm``, array order);
    ``region`` (bool) the lesion's region there,
    ``inner`` its candidate voxels, ``others`` every candidate's region (the background
    ring avoids them). Each region voxel holds the fraction f = (HU - background) /
    (core - background) of lesion (hypo- or hyperdense alike), unclipped in the middle
    so noise averages out, clipped to -1..2 against outliers (a vessel, a rib). Returns
    None without a core of at least `PV_MIN_CORE_VOXELS` voxels, a ring of at least
    `PV_MIN_RING_VOXELS`, or `PV_MIN_CONTRAST_HU` of contrast, and when the sum's own
    noise (each region voxel adds the background's noise over the contrast) exceeds
    `PV_MAX_RELATIVE_NOISE` of the volume: small lesions in thick, noisy slices.

    Also None when the region or its ring holds air (under `AIR_BELOW_HU`) or a voxel of
    ``outside`` (bool: not imaged, `Volume.padding`) while neither the core nor the
    background is air: a voxel of air, or of air and tissue, is not read between those
    two levels, and beside a lesion darker than its background it would count as up to
    two voxels of lesion. (Beside a lung nodule, whose background is lung, air lies
    beyond the background and reads as none.)
    """
    # The core is the deeper half of the candidate (by distance in mm from its edge):
    # a candidate drawn a little wide would otherwise lend the core its blurred rim.
    depth = ndimage.distance_transform_edt(np.pad(inner, 1), sampling=spacing_kji_mm)[
        1:-1, 1:-1, 1:-1
    ]
    core = inner & (depth >= max(0.5 * float(depth.max()), max(spacing_kji_mm) + 1e-6))
    ring = ndimage.binary_dilation(region, iterations=2) & ~others
    if core.sum() < PV_MIN_CORE_VOXELS or ring.sum() < PV_MIN_RING_VOXELS:
        return None
    values = hu.astype(np.float64)
    background = float(np.median(values[ring]))
    core_hu = float(np.median(values[core]))
    if abs(core_hu - background) < PV_MIN_CONTRAST_HU:
        return None
    if min(core_hu, background) >= AIR_BELOW_HU:
        foreign = values < AIR_BELOW_HU
        if outside is not None:
            foreign |= outside
        if foreign[region | ring].any():
            return None
    voxel_ml = float(np.prod(spacing_kji_mm)) / 1000.0
    fraction = np.clip((values[region] - background) / (core_hu - background), -1.0, 2.0)
    volume_ml = max(float(fraction.sum()) * voxel_ml, 0.0)
    # The sum's own noise: each region voxel adds noise / contrast of a voxel.
    noise_hu = 1.4826 * float(np.median(np.abs(values[ring] - background)))
    noise_ml = np.sqrt(region.sum()) * noise_hu / abs(core_hu - background) * voxel_ml
    if volume_ml <= 0 or noise_ml > PV_MAX_RELATIVE_NOISE * volume_ml:
        return None
    return PartialVolume(
        volume_ml=volume_ml,
        core_hu=core_hu,
        background_hu=background,
        n_region_voxels=int(region.sum()),
        noise_ml=float(noise_ml),
    )


def volume_readings(
    study: Volume, native, number: int
) -> tuple[PartialVolume | None, TwoLevel | None]:
    """The one-level partial volume and the two-level reading of lesion ``number``.

    ``study`` is the study in HU (with its padding), ``native`` what `measure.lesions_measure`
    resampled onto its grid: every candidate's region, every candidate, and the regions'
    bounding boxes (`ndimage.find_objects`).
    """
    region_native, inner_native, boxes = native
    found = boxes[number - 1] if number - 1 < len(boxes) else None
    if found is None:
        return None, None
    # The two-level reading looks TWO_LEVEL_READ_MM beyond the region; volumetry 3 voxels.
    margins = np.ceil(TWO_LEVEL_READ_MM / np.asarray(study.spacing_mm[::-1]))
    margins = np.maximum(margins, 3).astype(int)
    box = tuple(
        slice(max(0, s.start - margin), min(size, s.stop + margin))
        for s, size, margin in zip(found, region_native.shape, margins, strict=True)
    )
    reading: dict[str, Any] = {
        "hu": study.array[box],
        "spacing_kji_mm": vec3(study.spacing_mm[::-1]),
        "region": region_native[box] == number,
        "inner": inner_native[box] == number,
        "others": region_native[box] > 0,
        "outside": study.padding[box] if study.padding is not None else None,
    }
    return partial_volume_measure(**reading), two_level_measure(**reading)
