"""Lung candidates that are pieces of vessels or airway walls, told from nodules by shape.

The lungs are full of bright tubes: vessels and the walls of bronchi, branching from
the hila out to the pleura. A network that has not been shown a given anatomy's vessel
tree reads their segments, branchings and crossings as nodules (the shipped model on
the evaluation generator's lungs: 165 false candidates against 23 true ones on 8
studies), and no rule on a candidate's outline separates the two, because a candidate
is often a nodule joined to the vessel beside it (`benchmarks/README.md`: elongation
and sphericity). What does separate them is the local shape of the image: a nodule is
a blob, bright and curved down in all three directions; a vessel is a tube, curved
across it and flat along it.

For each lung candidate, the image (HU on the grid the candidate was found on, clipped
to ``hu_range``) is smoothed at each of ``sigmas_mm`` and its Hessian's eigenvalues
(scale-normalised: times sigma squared) are taken at the candidate's voxels. With
|l1| <= |l2| <= |l3| and all three negative (a bright blob), the dot-enhancement
response |l1|^2 / |l3| (Li, Sone and Doi, Med Phys 30(8), 2003) is high at a nodule's
centre at the scale matching its size and near zero anywhere along a tube (l1 ~ 0
along its axis). The response is in HU (curvature times contrast). A candidate is kept
when its strongest response over its voxels and the scales reaches ``min_dot_hu``, or,
for a faint one (a ground-glass nodule 150 HU above the lung reaches about 40 HU), when
the response is at least ``min_dot_share`` of its contrast with the lung around it and
that contrast is at least ``min_contrast_hu`` (a vessel's response is a few per cent of
its contrast). Otherwise it holds no blob and is dropped; the step record keeps every
judged candidate's response and contrast, so that a radiologist can add a nodule back
with one click (a missed lesion added by hand is kept through later runs).

Two cases need care. A nodule on the pleura is a bump on the chest wall, not a blob in
the image: when thick soft tissue (what survives an opening of ``wall_mm``: chest
wall, mediastinum, diaphragm) touches a candidate, it is also judged with that tissue
set to the lung's HU, and the stronger response counts. A candidate smaller than the
smallest scale (equivalent radius under ``small_radius_mm``) is also judged at
``small_sigma_mm``, where a 4 mm nodule's response peaks.

Chosen on the training generator (8 full-size studies, seed 4242: all 8 lung nodules
kept, the smallest a 0.03 ml nodule at 46.7 HU) and the evaluation generator (8 medium
studies, seed 7373: all 23 true lung candidates kept, the faintest a ground-glass
nodule at 58.5 HU; false ones 165 -> 33), and checked on evaluation studies it was not
chosen on (seed 9191: 15 of 15 kept, false ones 106 -> 25). Nodules under about 5 mm
that are faint (ground glass) can be dropped: the price of the rule. Only lung
candidates are judged (liver vessels run inside an organ of their own density and are
handled by the network and the contrast filter), and only up to ``max_volume_ml``: a
large mass's response peaks at a scale near its radius / sqrt(3), beyond the scales
used here.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import scipy
from scipy import ndimage

from imaging.core.geometry.preprocess import StepRecord
from imaging.core.geometry.volume import Volume
from imaging.core.segmentation.postprocess import LesionCandidate, candidates_keep


@dataclass(frozen=True)
class BlobSettings:
    """Parameters of `tubular_candidates_filter` (the candidates' own grid)."""

    sigmas_mm: tuple[float, ...] = (3.0, 4.5, 6.0)
    small_sigma_mm: float = 2.0
    small_radius_mm: float = 3.0
    min_dot_hu: float = 45.0
    min_dot_share: float = 0.2
    min_contrast_hu: float = 100.0
    lung_hu: float = -500.0
    ring_voxels: tuple[int, int] = (1, 4)
    wall_mm: float = 5.0
    hu_range: tuple[float, float] = (-1000.0, 400.0)
    max_volume_ml: float = 30.0
    organs: tuple[str, ...] = ("lung",)


def hessian_matrices(
    image: np.ndarray,
    spacing_kji: np.ndarray,
    sigma_mm: float,
    where: np.ndarray,
    min_sigma_voxels: float = 0.0,
) -> np.ndarray:
    """Scale-normalised Hessians (n, 3, 3) of ``image`` smoothed at ``sigma_mm`` (at
    least ``min_sigma_voxels`` along each axis: thick slices), at the voxels ``where``."""
    sigma_vox = np.maximum(sigma_mm / spacing_kji, min_sigma_voxels)
    hessian = np.empty((int(where.sum()), 3, 3), dtype=np.float64)
    for a in range(3):
        for b in range(a, 3):
            order = [0, 0, 0]
            order[a] += 1
            order[b] += 1
            second = ndimage.gaussian_filter(image, sigma_vox, order=order, mode="nearest")
            value = second[where] * sigma_mm**2 / (spacing_kji[a] * spacing_kji[b])
            hessian[:, a, b] = hessian[:, b, a] = value
    return hessian


def hessian_eigenvalues(
    image: np.ndarray, spacing_kji: np.ndarray, sigma_mm: float, where: np.ndarray
) -> np.ndarray:
    """Scale-normalised Hessian eigenvalues (n, 3) of ``image`` smoothed at ``sigma_mm``,
    at the voxels ``where``, sorted by magnitude (smallest first)."""
    eigen = np.linalg.eigvalsh(hessian_matrices(image, spacing_kji, sigma_mm, where))
    return np.take_along_axis(eigen, np.argsort(np.abs(eigen), axis=1), axis=1)


def dot_map(
    image: np.ndarray, spacing_kji: np.ndarray, core: np.ndarray, sigmas_mm: tuple[float, ...]
) -> np.ndarray:
    """The dot-enhancement response (HU) at each voxel of ``core`` (in ``image[core]``'s
    order): the strongest over the scales ``sigmas_mm``, 0 where no scale sees a blob."""
    best = np.zeros(int(core.sum()))
    for sigma in sigmas_mm:
        eigen = hessian_eigenvalues(image, spacing_kji, sigma, core)
        blob = np.all(eigen < 0, axis=1)
        response = eigen[:, 0] ** 2 / np.maximum(np.abs(eigen[:, 2]), 1e-12)
        best = np.maximum(best, np.where(blob, response, 0.0))
    return best


def dot_response(
    image: np.ndarray, spacing_kji: np.ndarray, core: np.ndarray, sigmas_mm: tuple[float, ...]
) -> float:
    """The strongest dot-enhancement response (HU) over the voxels ``core`` of ``image``
    and the scales ``sigmas_mm`` (module docstring)."""
    return float(dot_map(image, spacing_kji, core, sigmas_mm).max(initial=0.0))


def _scales(candidate: LesionCandidate, settings: BlobSettings) -> tuple[float, ...]:
    """The scales a candidate is judged at: ``sigmas_mm``, and ``small_sigma_mm`` too for
    one whose equivalent radius is under ``small_radius_mm`` (a 4 mm nodule's response
    peaks at a scale below the others; the small scale is not used on larger candidates,
    where it finds blobs at every crossing of two vessels)."""
    radius_mm = (3.0 * candidate.volume_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    if radius_mm < settings.small_radius_mm:
        return (settings.small_sigma_mm, *settings.sigmas_mm)
    return settings.sigmas_mm


def walls_away(
    crop: np.ndarray, core: np.ndarray, spacing_kji: np.ndarray, settings: BlobSettings
) -> np.ndarray | None:
    """``crop`` with the thick soft tissue around the lungs (chest wall, mediastinum,
    diaphragm: what survives an opening of ``wall_mm``) outside the candidate set to
    the lung's HU, so that a nodule on the pleura is judged by its own shape, not as a
    bump of the wall; vessels and airway walls, thinner than that, stay."""
    tissue = crop >= settings.lung_hu
    radius = np.maximum(np.round(settings.wall_mm / spacing_kji).astype(int), 1)
    k, j, i = np.ogrid[
        -radius[0] : radius[0] + 1, -radius[1] : radius[1] + 1, -radius[2] : radius[2] + 1
    ]
    ball = (k / radius[0]) ** 2 + (j / radius[1]) ** 2 + (i / radius[2]) ** 2 <= 1.0
    wall = ndimage.binary_opening(tissue, structure=ball) & ~core
    if not (ndimage.binary_dilation(core, iterations=2) & wall).any():
        return None
    lung = crop[~tissue]
    out = crop.copy()
    out[wall] = float(np.median(lung)) if lung.size else settings.hu_range[0]
    return out


def lung_contrast(crop: np.ndarray, core: np.ndarray, settings: BlobSettings) -> float | None:
    """The candidate's brightness over the lung around it: the 90th percentile of its HU
    minus the median of the lung (below ``lung_hu``) in a ring around it; None without
    lung around it."""
    inner, outer = settings.ring_voxels
    ring = (
        ndimage.binary_dilation(core, iterations=outer)
        & ~ndimage.binary_dilation(core, iterations=inner)
        & (crop < settings.lung_hu)
    )
    if ring.sum() < 8:
        return None
    return float(np.percentile(crop[core], 90) - np.median(crop[ring]))


def blob_response(
    crop: np.ndarray,
    core: np.ndarray,
    spacing_kji: np.ndarray,
    candidate: LesionCandidate,
    settings: BlobSettings,
    away: np.ndarray | None,
) -> dict[str, float | None]:
    """A candidate's dot-enhancement response (``dot_hu``: the stronger of the image's
    and, beside thick soft tissue, the image's with that tissue set to the lung's HU)
    and its contrast with the lung around it (``contrast_hu``), both rounded to 0.1 HU.
    ``crop``: the image around it, clipped to ``hu_range``; ``core``: its voxels there;
    ``away``: `walls_away` of them (None where no thick tissue touches it)."""
    contrast = lung_contrast(crop, core, settings)
    sigmas = _scales(candidate, settings)
    dot = dot_response(crop, spacing_kji, core, sigmas)
    if away is not None:
        dot = max(dot, dot_response(away, spacing_kji, core, sigmas))
    return {
        "dot_hu": round(dot, 1),
        "contrast_hu": None if contrast is None else round(contrast, 1),
    }


def _blob(response: dict[str, float | None], settings: BlobSettings) -> bool:
    dot, contrast = response["dot_hu"], response["contrast_hu"]
    assert dot is not None
    if dot >= settings.min_dot_hu:
        return True
    return (
        contrast is not None
        and contrast >= settings.min_contrast_hu
        and dot >= settings.min_dot_share * contrast
    )


def grid_shared(image: Volume, candidate_mask: Volume) -> None:
    """Refuse an image and a candidate mask that are not on one grid (ValueError)."""
    if image.array.shape != candidate_mask.array.shape:
        raise ValueError(
            f"image {image.array.shape} and candidate mask {candidate_mask.array.shape} "
            "must share a grid"
        )


def grid_and_margin(
    image: Volume, candidate_mask: Volume, settings: BlobSettings
) -> tuple[np.ndarray, np.ndarray]:
    """The (k, j, i) spacing of ``image``, which must share ``candidate_mask``'s grid, and
    the margin (voxels) a candidate's box needs for the largest scale's filters."""
    grid_shared(image, candidate_mask)
    spacing_kji = np.asarray(image.spacing_mm[::-1], dtype=np.float64)
    return spacing_kji, np.ceil(3.0 * max(settings.sigmas_mm) / spacing_kji).astype(int)


def candidate_box(
    candidate: LesionCandidate, margin: np.ndarray, shape: tuple[int, ...]
) -> tuple[slice, ...]:
    """The candidate's bounding box, ``margin`` voxels wider on each side, within ``shape``."""
    return tuple(
        slice(max(0, low - pad), min(size, high + pad))
        for (low, high), pad, size in zip(candidate.bbox_kji, margin, shape, strict=True)
    )


def tubular_candidates_filter(
    *,
    image: Volume,
    candidate_mask: Volume,
    candidates: tuple[LesionCandidate, ...],
    settings: BlobSettings | None = None,
) -> tuple[Volume, tuple[LesionCandidate, ...], StepRecord]:
    """Drop lung candidates that hold no blob (module docstring). ``image`` is the study
    in HU on ``candidate_mask``'s grid (the network's grid, where the candidates and
    their ``bbox_kji`` were made); the record keeps every judged candidate's response."""
    settings = settings or BlobSettings()
    started = time.perf_counter()
    spacing_kji, margin = grid_and_margin(image, candidate_mask, settings)
    looked = [
        c
        for c in candidates
        if c.organ in settings.organs and c.volume_ml <= settings.max_volume_ml
    ]
    responses: dict[str, dict[str, float | None]] = {}
    for candidate in looked:
        box = candidate_box(candidate, margin, image.array.shape)
        core = candidate_mask.array[box] == candidate.label_value
        if not core.any():
            continue
        crop = np.clip(image.array[box].astype(np.float32), *settings.hu_range)
        away = walls_away(crop, core, spacing_kji, settings)
        responses[str(candidate.label_value)] = blob_response(
            crop, core, spacing_kji, candidate, settings, away
        )
    removed = {k: v for k, v in responses.items() if not _blob(v, settings)}
    kept = tuple(c for c in candidates if str(c.label_value) not in removed)
    mask = candidates_keep(candidate_mask, kept) if removed else candidate_mask
    record = StepRecord(
        name="postprocess_tubular",
        parameters={
            **asdict(settings),
            "rule": "max over the candidate's voxels and sigmas of |l1|^2/|l3| (Hessian "
            "eigenvalues times sigma^2, |l1| <= |l2| <= |l3|, all negative) >= min_dot_hu: "
            "a blob (nodule), else a piece of a tube (vessel, airway wall)",
        },
        versions={"scipy": scipy.__version__, "numpy": np.__version__},
        seconds=time.perf_counter() - started,
        details={"looked_at": len(looked), "removed": len(removed), "responses": responses},
    )
    return mask, kept, record
