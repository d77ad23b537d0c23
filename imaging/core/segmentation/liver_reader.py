"""Hypodense focal liver lesions the network did not outline: a second, classical reader
inside the network's own liver.

A network trained on one contrast phase and one family of lesions misses small lesions
of another (the shipped model on the evaluation generator: 4 of 26 liver lesions of
0.5-2 ml found, every missed one inside the network's liver, at lesion probability 0).
What a radiologist looks for there needs no learning: a round region darker than the
liver around it. This step reads the network's liver (liver and liver-lesion
probabilities summed, at least 0.5; the largest component, holes filled) for it, on the
model grid, after the filters have judged the network's own candidates:

1. the image, clipped to ``liver_hu - clip_below_hu .. liver_hu + clip_above_hu``
   (``liver_hu``: the median of the liver's voxels; voxels under ``min_tissue_hu``,
   smoothed, fat or air where a network's liver reaches past the organ, are left out of
   the liver; the clip flattens enhanced vessels
   and keeps fat or air beyond the liver's edge from dominating), is turned dark side
   up and its scale-normalised Hessian taken at ``sigmas_mm``, at the voxels at least
   ``edge_mm`` inside the liver. The blob response is the mean magnitude of the three
   eigenvalues where all are negative and the smallest is at least ``min_roundness`` of
   the largest: a blob, not a tube (along an unenhanced portal vein, a dark tube, the
   smallest is near 0);
2. each local maximum of the response is a seed when the response and the smoothed
   drop under the liver reach both their floors (``min_blob_hu``, ``min_drop_hu``) and
   their multiples of the drop's own noise (``min_blob_noise``, ``min_drop_noise``
   times the robust SD of the smoothed drop over the liver). A search over a whole
   liver finds its darkest noise first: in a plain liver with 20-30 HU of correlated
   noise the floors alone let tens of noise blobs through, and the contrast filter
   keeps some of them (z up to 6); noise reaches 1.1 times the drop's noise in blob
   response and 4.1 times in drop;
3. its region is the connected set of liver voxels within ``reach_per_sigma`` times the
   seed's scale (at most ``reach_mm``) whose smoothed drop is at least ``region_level``
   of the seed's (0.5: the half-maximum outline; 0.3 took more of cysts' blurred edges,
   which the cyst rule then no longer read as water: 2.75 -> 3.50 false positives per
   study on evaluation seed 9191) and at least the seeds' floor, kept between
   ``min_volume_ml`` and ``max_volume_ml``; a
   region that touches a kept candidate of the network is left to the network's
   outline;
4. the regions join the candidates as liver lesions, with the network's highest lesion
   probability inside them as their confidence (near 0: equivocal, proposed for review,
   not the network's finding), after the same filters as the network's candidates on
   their own (contrast to noise on the study's voxels with its equivalent ellipsoid;
   simple cysts and fluid beside the liver). Measurement outlines them on their own
   region (`reader_outline_probability`), not on the network's probability.

The step record lists every region proposed (seed, response, scale, drop, volume), the
label values kept and each filter's verdicts on them, so that a reviewer sees which
lesions came from this reader and not from the network. Measured on both evaluation
seeds and the training generator in `benchmarks/README.md`. The half-maximum region
of a lesion with a near-isodense rim or a tissue wall is its dark centre only: such a
lesion is found but measured small, and a rim lesion whose centre is at water density
in an enhanced liver is read as a simple cyst.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import scipy
from scipy import ndimage

from imaging.core.geometry.preprocess import StepRecord
from imaging.core.geometry.volume import Volume
from imaging.core.segmentation.body import holes_filled, largest_component, network_liver
from imaging.core.segmentation.postprocess import PostprocessResult
from imaging.core.segmentation.reader_regions import add_regions, region_box

_CUBE = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class LiverReaderSettings:
    """Parameters of `liver_hypodense_candidates` (model grid, HU)."""

    enabled: bool = True
    sigmas_mm: tuple[float, ...] = (2.5, 3.5, 5.0, 7.0)
    min_blob_hu: float = 8.0
    min_blob_noise: float = 1.8
    min_roundness: float = 0.25
    reach_mm: float = 22.0
    reach_per_sigma: float = 3.5
    region_level: float = 0.5
    min_drop_hu: float = 12.0
    min_drop_noise: float = 5.0
    edge_mm: float = 4.5
    smooth_sigma_mm: float = 1.5
    clip_below_hu: float = 80.0
    clip_above_hu: float = 10.0
    min_tissue_hu: float = -30.0
    min_volume_ml: float = 0.2
    max_volume_ml: float = 40.0
    min_liver_ml: float = 200.0


def _liver(probabilities: np.ndarray) -> np.ndarray:
    """The network's liver with its lesions: the largest component, 3D holes filled."""
    return holes_filled(largest_component(network_liver(probabilities)))


def _ball(radius_mm: float, spacing_kji: np.ndarray) -> np.ndarray:
    """The voxels within ``radius_mm`` of a centre voxel, as a structuring element."""
    reach = np.floor(radius_mm / spacing_kji).astype(int)
    axes = [np.arange(-r, r + 1) * d for r, d in zip(reach, spacing_kji, strict=True)]
    k, j, i = np.meshgrid(*axes, indexing="ij", sparse=True)
    return (k**2 + j**2 + i**2) <= radius_mm**2


def _hessians(
    smoothed: np.ndarray, spacing_kji: np.ndarray, at: tuple[np.ndarray, ...]
) -> np.ndarray:
    """The Hessian (n, 3, 3) of ``smoothed`` at the voxels ``at`` (index arrays, at least
    one voxel from every face) by central differences: on an image smoothed at 1.7
    voxels and more, within a few per cent of the Gaussian derivatives, at the cost of one
    filter per scale instead of six."""
    hessian = np.empty((len(at[0]), 3, 3))
    centre = smoothed[at].astype(np.float64)

    def value(shift: tuple[int, int, int]) -> np.ndarray:
        return smoothed[tuple(a + d for a, d in zip(at, shift, strict=True))].astype(np.float64)

    unit = np.eye(3, dtype=int)
    for a in range(3):
        step = tuple(unit[a])
        back = tuple(-unit[a])
        hessian[:, a, a] = (value(step) - 2.0 * centre + value(back)) / spacing_kji[a] ** 2
        for b in range(a + 1, 3):
            pp, mm = tuple(unit[a] + unit[b]), tuple(-unit[a] - unit[b])
            pm, mp = tuple(unit[a] - unit[b]), tuple(unit[b] - unit[a])
            mixed = (value(pp) + value(mm) - value(pm) - value(mp)) / (
                4.0 * spacing_kji[a] * spacing_kji[b]
            )
            hessian[:, a, b] = hessian[:, b, a] = mixed
    return hessian


def _blob_map(
    image: np.ndarray, spacing_kji: np.ndarray, where: np.ndarray, settings: LiverReaderSettings
) -> tuple[np.ndarray, np.ndarray]:
    """The strongest blob response (HU) over the scales at each voxel of ``where``: the
    mean magnitude of the scale-normalised Hessian's eigenvalues where all three are
    negative (a bright blob of ``image``) and the smallest is at least ``min_roundness``
    of the largest (not a tube: along a tube the smallest is near 0); else 0. Also the
    scale (mm) that gave it."""
    at = np.nonzero(where)
    best = np.zeros(len(at[0]))
    scale = np.full(best.shape, settings.sigmas_mm[0])
    for sigma in settings.sigmas_mm:
        smoothed = ndimage.gaussian_filter(image, sigma / spacing_kji, mode="nearest")
        eigen = np.linalg.eigvalsh(_hessians(smoothed, spacing_kji, at) * sigma**2)
        eigen = np.take_along_axis(eigen, np.argsort(np.abs(eigen), axis=1), axis=1)
        round_blob = np.all(eigen < 0, axis=1) & (
            np.abs(eigen[:, 0]) >= settings.min_roundness * np.abs(eigen[:, 2])
        )
        response = np.where(round_blob, -eigen.mean(axis=1), 0.0)
        scale = np.where(response > best, sigma, scale)
        best = np.maximum(best, response)
    return best, scale


def _seeds(reading: _Reading, settings: LiverReaderSettings) -> list[tuple[int, ...]]:
    """Local maxima of the response (26-neighbourhood) that pass both thresholds, each
    the larger of its floor in HU and its multiple of the drop's noise, strongest first."""
    response, drop, noise = reading.response, reading.drop, reading.drop_noise_hu
    peak = (response > 0) & (response == ndimage.maximum_filter(response, size=3, mode="constant"))
    hit = (
        peak
        & (response >= max(settings.min_blob_hu, settings.min_blob_noise * noise))
        & (drop >= max(settings.min_drop_hu, settings.min_drop_noise * noise))
    )
    order = np.argsort(-response[hit])
    return [tuple(int(v) for v in kji) for kji in np.argwhere(hit)[order]]


@dataclass(frozen=True, eq=False)
class _Reading:
    """On the liver's box: the dark-blob response (HU), the scale that gave it (mm) and
    the drop of the smoothed image under the liver's median (HU)."""

    response: np.ndarray
    scale: np.ndarray
    drop: np.ndarray
    drop_noise_hu: float


def _read(
    image: Volume, liver: np.ndarray, settings: LiverReaderSettings
) -> tuple[tuple[slice, ...], _Reading, np.ndarray, float]:
    """The liver's box, what the reader sees on it, the liver inside the box and the
    liver's median HU."""
    spacing = np.asarray(image.spacing_mm, dtype=float)[::-1]
    margin = int(np.ceil(3 * max(settings.sigmas_mm) / spacing.min()))
    box = region_box(liver, margin)
    hu = image.array[box].astype(np.float32)
    smoothed = ndimage.gaussian_filter(hu, settings.smooth_sigma_mm / spacing)
    # Fat and air are no lesion of the liver's (a network's liver can reach the lung base
    # or the fat beside it): the reader looks at tissue and fluid only.
    liver_box = liver[box] & (smoothed >= settings.min_tissue_hu)
    if not liver_box.any():
        liver_box = liver[box]
    liver_hu = float(np.median(hu[liver_box]))
    drop = liver_hu - smoothed
    dark = np.clip(liver_hu - hu, -settings.clip_above_hu, settings.clip_below_hu)
    inside = ndimage.binary_erosion(liver_box, _ball(settings.edge_mm, spacing))
    values = drop[inside] if inside.any() else drop[liver_box]
    noise = 1.4826 * float(np.median(np.abs(values - np.median(values))))
    # Only where a seed could be: dark enough (the seed's own threshold on the drop).
    where = inside & (drop >= max(settings.min_drop_hu, settings.min_drop_noise * noise))
    response = np.zeros(hu.shape, dtype=np.float64)
    scale = np.zeros(hu.shape, dtype=np.float64)
    if where.any():
        response[where], scale[where] = _blob_map(dark, spacing, where, settings)
    return box, _Reading(response, scale, drop, noise), liver_box, liver_hu


def _grown(
    seed: tuple[int, ...], drop: np.ndarray, liver: np.ndarray, spacing_kji: np.ndarray,
    reach_mm: float, level: float, floor: float,
) -> np.ndarray:  # fmt: skip
    """The region of ``seed``: the connected liver voxels within ``reach_mm`` of it whose
    drop is at least ``level`` of the seed's and at least ``floor`` (a mask of
    ``drop``'s shape)."""
    reach = np.ceil(reach_mm / spacing_kji).astype(int)
    sub = tuple(slice(max(0, c - r), min(n, c + r + 1))
                for c, r, n in zip(seed, reach, drop.shape, strict=True))  # fmt: skip
    axes = [
        (np.arange(s.start, s.stop) - c) * d for s, c, d in zip(sub, seed, spacing_kji, strict=True)
    ]
    k, j, i = np.meshgrid(*axes, indexing="ij", sparse=True)
    near = (k**2 + j**2 + i**2) <= reach_mm**2
    dark = drop[sub] >= max(level * drop[seed], floor)
    labels, _ = ndimage.label(dark & liver[sub] & near, structure=_CUBE)
    local = tuple(c - s.start for c, s in zip(seed, sub, strict=True))
    region = np.zeros(drop.shape, dtype=bool)
    region[sub] = labels == labels[local]
    return region


def _regions(
    reading: _Reading, liver: np.ndarray, existing: np.ndarray, spacing_kji: np.ndarray,
    voxel_ml: float, settings: LiverReaderSettings,
) -> list[tuple[tuple[int, ...], np.ndarray]]:  # fmt: skip
    """(seed, region) of each region grown from a seed (`_grown`, at ``region_level``),
    within ``reach_per_sigma`` times the seed's scale (at most ``reach_mm``), that
    touches no network candidate and has a lesion's volume; the seeds a region holds
    start none of their own."""
    taken = existing.copy()
    out = []
    for seed in _seeds(reading, settings):
        if taken[seed]:
            continue
        reach = min(settings.reach_mm, settings.reach_per_sigma * float(reading.scale[seed]))
        floor = max(settings.min_drop_hu, settings.min_drop_noise * reading.drop_noise_hu)
        region = _grown(seed, reading.drop, liver, spacing_kji, reach, settings.region_level,
                        floor)  # fmt: skip
        taken |= region
        volume_ml = float(region.sum() * voxel_ml)
        if not np.any(region & existing) and (
            settings.min_volume_ml <= volume_ml <= settings.max_volume_ml
        ):
            out.append((seed, region))
    return out


def liver_hypodense_candidates(
    *,
    post: PostprocessResult,
    probabilities: np.ndarray,
    image: Volume,
    settings: LiverReaderSettings | None = None,
    first_label: int = 1,
) -> tuple[PostprocessResult, StepRecord]:
    """``post`` with the hypodense focal regions of the network's liver that no network
    candidate touches added as liver candidates (module docstring), and the step record.
    ``first_label``: the lowest label value they may take (above every value the network's
    candidates had before the filters, so that no step record names two candidates alike)."""
    settings = settings or LiverReaderSettings()
    started = time.perf_counter()
    voxel_ml = image.voxel_volume_ml
    details: dict = {"added": [], "added_labels": []}
    liver = _liver(probabilities) if settings.enabled else np.zeros(image.array.shape, bool)
    details["liver_ml"] = round(float(liver.sum() * voxel_ml), 1)
    if liver.sum() * voxel_ml >= settings.min_liver_ml:
        box, reading, liver_box, liver_hu = _read(image, liver, settings)
        spacing_kji = np.asarray(image.spacing_mm, dtype=float)[::-1]
        found = _regions(reading, liver_box, post.mask.array[box] > 0, spacing_kji, voxel_ml,
                         settings)  # fmt: skip
        details["liver_hu"] = round(liver_hu, 1)
        details["drop_noise_hu"] = round(reading.drop_noise_hu, 2)
        details["added"] = [{
            "seed_kji": [int(s) + int(b.start) for s, b in zip(seed, box, strict=True)],
            "blob_hu": round(float(reading.response[seed]), 1),
            "scale_mm": float(reading.scale[seed]), "drop_hu": round(float(reading.drop[seed]), 1),
            "volume_ml": round(float(region.sum() * voxel_ml), 3),
        } for seed, region in found]  # fmt: skip
        if found:
            post, details["added_labels"] = add_regions(
                post,
                probabilities,
                box,
                [region for _, region in found],
                voxel_ml,
                first_label,
                "liver",
            )
    else:
        details["skipped"] = "no liver of min_liver_ml" if settings.enabled else "turned off"
    record = StepRecord(
        name="liver_second_reader",
        parameters=asdict(settings),
        versions={"scipy": scipy.__version__, "numpy": np.__version__},
        seconds=time.perf_counter() - started,
        details=details,
    )
    return post, record
