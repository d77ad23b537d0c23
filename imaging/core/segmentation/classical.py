"""Classical baseline segmenter: HU thresholds and seeded region growing inside organ masks.

No learning; it exists to show what the U-Net adds (benchmarks/segmentation.py runs
both through the same post-processing and measurement). On the model grid (LPS,
1.5 mm, HU), after a Gaussian smoothing of ``smooth_sigma_mm``:

- body: `body.body_mask` (above -500 HU, largest component, slices filled);
- lungs: air below ``lung_air_hu`` inside the body, components of at least
  ``min_lung_ml``; the lung region is that air with its 3D holes filled. A nodule is
  tissue completely enclosed by lung air, so it is a hole; the dome of the liver under
  the lung is not (it opens downwards into the abdomen), which is why the filling is
  3D and not slice by slice;
- nodules: holes of the lung region grown from seeds above ``nodule_seed_hu`` over
  voxels above ``nodule_grow_hu`` (connected components that hold a seed);
- liver: dense tissue within ``liver_hu`` at least ``liver_depth_mm`` inside the body,
  opened to cut thin bridges to the spleen and heart, the largest component, its 3D
  holes filled (hypodense lesions are holes in it);
- liver lesions: inside the filled liver, grown from seeds ``liver_seed_drop_hu`` below
  the liver's median HU over voxels ``liver_grow_drop_hu`` below it.

The output is a pseudo-probability map with the segmenter's classes, so both go
through the same `postprocess.postprocess_run` and `measure.lesions_measure`: a lesion
voxel's value is its partial-volume fraction estimated from HU, ``(HU - background) /
(lesion - background)`` clipped to 0..1 (background: the organ's median HU; lesion:
the component's 90th-percentile contrast), within one voxel of the grown region, and
0 below 0.15 (in noise, clipped fractions would only ever add volume).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import scipy
from scipy import ndimage

from imaging.core.geometry.preprocess import StepRecord
from imaging.core.geometry.volume import Volume
from imaging.core.segmentation.body import body_mask, largest_component

_CUBE = np.ones((3, 3, 3), dtype=bool)
FRACTION_FLOOR = 0.15


@dataclass(frozen=True)
class ClassicalSettings:
    """Thresholds and sizes of the classical steps (see the module docs; recorded per run)."""

    smooth_sigma_mm: float = 1.0
    lung_air_hu: float = -400.0
    min_lung_ml: float = 100.0
    nodule_seed_hu: float = -300.0
    nodule_grow_hu: float = -500.0
    liver_hu: tuple[float, float] = (42.0, 110.0)
    liver_depth_mm: float = 20.0
    liver_opening_voxels: int = 2
    liver_smooth_sigma_mm: float = 2.0
    liver_seed_drop_hu: float = 18.0
    liver_grow_drop_hu: float = 9.0
    max_lesion_ml: float = 80.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class ClassicalOutput:
    """Pseudo-probabilities (classes, k, j, i; float16) on ``image``'s grid, plus masks."""

    image: Volume
    probabilities: np.ndarray
    lung: np.ndarray
    liver: np.ndarray
    seconds: float
    records: tuple[StepRecord, ...] = field(default_factory=tuple)


def _grow(region: np.ndarray, grow: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Connected components of ``region & grow`` that hold a seed (seeded region growing)."""
    labels, n = ndimage.label(region & grow, structure=_CUBE)
    if n == 0:
        return np.zeros_like(region)
    seeded = np.unique(labels[seeds & (labels > 0)])
    keep = np.zeros(n + 1, dtype=bool)
    keep[seeded] = True
    keep[0] = False
    return keep[labels]


def _fractions(
    mask: np.ndarray, smoothed: np.ndarray, background_hu: float, *, brighter: bool
) -> np.ndarray:
    """Partial-volume fraction from HU around each grown component (0 elsewhere)."""
    out = np.zeros(mask.shape, dtype=np.float32)
    labels, n = ndimage.label(mask, structure=_CUBE)
    for number, found in enumerate(ndimage.find_objects(labels), start=1):
        if found is None:
            continue
        box = tuple(slice(max(0, s.start - 3), min(size, s.stop + 3))
                    for s, size in zip(found, mask.shape, strict=True))  # fmt: skip
        component = labels[box] == number
        values = smoothed[box][component]
        contrast = values - background_hu if brighter else background_hu - values
        lesion_contrast = max(float(np.percentile(contrast, 90)), 1.0)
        near = ndimage.binary_dilation(component, _CUBE, iterations=1)
        sign = 1.0 if brighter else -1.0
        f = np.clip(sign * (smoothed[box] - background_hu) / lesion_contrast, 0.0, 1.0)
        f[f < FRACTION_FLOOR] = 0.0  # clipped noise would only ever add volume
        out[box] = np.where(near, np.maximum(out[box], f), out[box])
    return out


def classical_segment(
    *, image: Volume, settings: ClassicalSettings | None = None
) -> ClassicalOutput:
    """Segment lungs, liver, nodules and liver lesions on ``image`` (HU, model grid)."""
    settings = settings or ClassicalSettings()
    started = time.perf_counter()
    hu = image.array.astype(np.float32)
    spacing = np.asarray(image.spacing_mm)[::-1]  # [k, j, i]
    voxel_ml = image.voxel_volume_ml
    smoothed = ndimage.gaussian_filter(hu, settings.smooth_sigma_mm / spacing)
    body = body_mask(hu)

    air = (smoothed < settings.lung_air_hu) & body
    labels, n = ndimage.label(air, structure=_CUBE)
    sizes = np.bincount(labels.ravel(), minlength=n + 1) * voxel_ml
    sizes[0] = 0
    keep = (sizes >= settings.min_lung_ml) & (sizes >= 0.1 * sizes.max(initial=0))
    lung_air = keep[labels]
    lung = ndimage.binary_fill_holes(lung_air)
    holes = lung & ~lung_air
    nodules = _grow(holes, smoothed > settings.nodule_grow_hu, smoothed > settings.nodule_seed_hu)
    lung_hu = float(np.median(hu[lung_air])) if lung_air.any() else -850.0

    depth = ndimage.distance_transform_edt(body, sampling=spacing)
    liver_smooth = ndimage.gaussian_filter(hu, settings.liver_smooth_sigma_mm / spacing)
    low, high = settings.liver_hu
    tissue = (liver_smooth >= low) & (liver_smooth <= high) & (depth >= settings.liver_depth_mm)
    tissue &= ~lung
    if settings.liver_opening_voxels:
        tissue = ndimage.binary_opening(tissue, _CUBE, iterations=settings.liver_opening_voxels)
    liver_tissue = largest_component(tissue)
    liver = ndimage.binary_fill_holes(liver_tissue)
    liver_hu = float(np.median(hu[liver_tissue])) if liver_tissue.any() else 60.0
    lesions = _grow(
        liver,
        liver_smooth < liver_hu - settings.liver_grow_drop_hu,
        liver_smooth < liver_hu - settings.liver_seed_drop_hu,
    )

    def too_big(mask: np.ndarray) -> np.ndarray:
        labels, n = ndimage.label(mask, structure=_CUBE)
        sizes = np.bincount(labels.ravel(), minlength=n + 1) * voxel_ml
        ok = sizes <= settings.max_lesion_ml
        ok[0] = False
        return ok[labels]

    nodules = too_big(nodules)
    lesions = too_big(lesions)
    f_nodule = _fractions(nodules, smoothed, lung_hu, brighter=True) * lung
    f_liver = _fractions(lesions, liver_smooth, liver_hu, brighter=False) * liver
    probs = np.zeros((5, *hu.shape), dtype=np.float16)
    lesion_f = np.clip(f_nodule + f_liver, 0.0, 1.0)
    probs[3] = f_nodule
    probs[4] = f_liver
    probs[1] = lung * (1.0 - lesion_f)
    probs[2] = liver * ~lung * (1.0 - lesion_f)
    probs[0] = np.clip(1.0 - probs[1:].astype(np.float32).sum(axis=0), 0.0, 1.0)
    seconds = time.perf_counter() - started
    record = StepRecord(
        name="segment_classical",
        parameters=settings.as_dict(),
        versions={"scipy": scipy.__version__, "numpy": np.__version__},
        seconds=seconds,
        details={
            "lung_ml": float(lung.sum() * voxel_ml),
            "liver_ml": float(liver.sum() * voxel_ml),
            "lung_median_hu": lung_hu,
            "liver_median_hu": liver_hu,
        },
    )
    return ClassicalOutput(
        image=image,
        probabilities=probs,
        lung=lung,
        liver=liver,
        seconds=seconds,
        records=(record,),
    )
