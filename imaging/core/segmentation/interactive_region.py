"""Where a click's region may grow (the study around the click) and how a region that leaked
is cut free at its narrowest necks: steps 1 and 4 of `interactive`, with its settings."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from imaging.core.geometry.triples import vec3
from imaging.core.geometry.volume import Volume

FACES = ndimage.generate_binary_structure(3, 1)


class ClickRefused(ValueError):
    """Nothing can be segmented at the click; the message says why and what to do."""


@dataclass(frozen=True)
class ClickSettings:
    """Parameters of `click_segment` and `lesion_search` (recorded with every result)."""

    reach_mm: float = 40.0
    smooth_sigma_mm: float = 0.8
    max_smooth_sigma_mm: float = 2.1
    seed_radius_mm: float = 1.5
    min_contrast_hu: float = 8.0
    min_snr: float = 2.5
    shell_mm: tuple[float, float] = (1.5, 5.0)
    iterations: int = 4
    max_cut_mm: float = 4.0
    max_volume_ml: float = 150.0
    lung_below_hu: float = -400.0
    liver_hu: tuple[float, float] = (35.0, 130.0)
    search_mm: float = 15.0
    search_tries: int = 4
    look_hu_tolerance: float = 30.0
    look_volume_ratio: float = 100.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- the box
@dataclass(frozen=True, eq=False)
class Around:
    """The study around a click: its HU (float32), each voxel's distance (mm) from
    the click, the voxels a region may hold (``allowed``), the ones it may not reach
    (``edge``: the limit of the search) and those on the scan's own edge
    (``scan_edge``: a region there has leaked unless no cut frees it, `interactive`)."""

    study: Volume
    hu: np.ndarray
    seed_kji: tuple[int, int, int]
    distance_mm: np.ndarray
    allowed: np.ndarray
    edge: np.ndarray
    spacing_kji: np.ndarray
    scan_edge: np.ndarray


def _index_box(study: Volume, corners_lps: np.ndarray, margin_vox: np.ndarray) -> tuple[slice, ...]:
    ijk = study.lps_to_index(corners_lps)
    lo = np.maximum(np.floor(ijk.min(axis=0) - margin_vox).astype(int), 0)
    hi = np.minimum(np.ceil(ijk.max(axis=0) + margin_vox).astype(int) + 1, study.shape_ijk)
    if np.any(hi <= lo):
        raise ClickRefused("seed_lps_mm: the click is outside the study's images")
    return (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))


def _cube(centre: np.ndarray, half_mm: float) -> np.ndarray:
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
    return centre + half_mm * signs


def _sub_volume(study: Volume, box: tuple[slice, ...]) -> Volume:
    """The box of ``study`` ([k, j, i] slices), its padding with it."""
    start = np.array([box[2].start, box[1].start, box[0].start], dtype=float)
    return Volume(
        array=study.array[box],
        spacing_mm=study.spacing_mm,
        origin_mm=vec3(study.index_to_lps(start)),
        direction=study.direction,
        frame_of_reference_uid=study.frame_of_reference_uid,
        kind=study.kind,
        padding=study.padding[box] if study.padding is not None else None,
    )


def around_click(
    study: Volume,
    seed_lps_mm: np.ndarray,
    box_lps_mm: np.ndarray | None,
    settings: ClickSettings,
) -> Around:
    """The study around a click (LPS mm): ``reach_mm`` around it, or the drawn box
    (two corners, LPS mm), with the margin measurement reads beyond it."""
    spacing = np.asarray(study.spacing_mm)
    margin = np.maximum(6.0, 5.0 / spacing)  # what measurement reads beyond the region
    seed_ijk = study.lps_to_index(seed_lps_mm)
    if np.any(seed_ijk < -0.5) or np.any(seed_ijk > np.asarray(study.shape_ijk) - 0.5):
        raise ClickRefused("seed_lps_mm: the click is outside the study's images")
    if box_lps_mm is None:
        corners = _cube(seed_lps_mm, settings.reach_mm)
    else:
        corners = np.array([[x, y, z] for x in box_lps_mm[:, 0] for y in box_lps_mm[:, 1]
                            for z in box_lps_mm[:, 2]])  # fmt: skip
    box = _index_box(study, corners, margin)
    sub = _sub_volume(study, box)
    hu = sub.array.astype(np.float32)
    spacing_kji = spacing[::-1]
    k, j, i = np.indices(hu.shape, dtype=np.float32)
    seed_sub = sub.lps_to_index(seed_lps_mm)
    offsets = np.stack([(i - seed_sub[0]), (j - seed_sub[1]), (k - seed_sub[2])], axis=-1)
    distance = np.linalg.norm(offsets * spacing.astype(np.float32), axis=-1)
    if box_lps_mm is None:
        allowed = distance <= settings.reach_mm
    else:
        lps = sub.index_to_lps(np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1))
        lo, hi = box_lps_mm.min(axis=0), box_lps_mm.max(axis=0)
        allowed = np.all((lps >= lo) & (lps <= hi), axis=1).reshape(hu.shape)
    k0, j0, i0 = (int(v) for v in np.clip(np.round(seed_sub[::-1]), 0, np.array(hu.shape) - 1))
    seed_kji = (k0, j0, i0)
    allowed[seed_kji] = True
    if box_lps_mm is None:
        # The search's limit inside the box: the box reaches past it (``margin``) except
        # where it stops at the scan's own edge (``scan_edge``).
        edge = allowed & ~ndimage.binary_erosion(allowed, FACES, border_value=1)
    else:
        # A drawn box bounds the region (clipped to it); only the scan's edge may leak.
        edge = np.zeros_like(allowed)
    scan_edge = allowed & _scan_border(box, study)
    return Around(sub, hu, seed_kji, distance, allowed, edge, spacing_kji, scan_edge)


def _scan_border(box: tuple[slice, ...], study: Volume) -> np.ndarray:
    """Voxels of the box on the study's outer faces (True there)."""
    shape = tuple(s.stop - s.start for s in box)
    border = np.zeros(shape, dtype=bool)
    for axis, (s, size) in enumerate(zip(box, study.array.shape, strict=True)):
        if s.start == 0:
            border[(slice(None),) * axis + (0,)] = True
        if s.stop == size:
            border[(slice(None),) * axis + (-1,)] = True
    return border


# --------------------------------------------------------------------------- the leak cut
def seed_component(side: np.ndarray, around: Around, near_mm: float) -> np.ndarray:
    """The face-connected component of ``side`` holding the click, or the one nearest it
    within ``near_mm`` (the click's own voxel can be noise)."""
    labels, n = ndimage.label(side, structure=FACES)
    if n == 0:
        return np.zeros_like(side)
    number = labels[around.seed_kji]
    if number == 0:
        close = (labels > 0) & (around.distance_mm <= near_mm)
        if not close.any():
            return np.zeros_like(side)
        number = labels[close][np.argmin(around.distance_mm[close])]
    return labels == number


def _leaks(region: np.ndarray, around: Around, max_voxels: int) -> bool:
    """Past the search's limit or too large: leaked, whatever else."""
    return bool((region & around.edge).any()) or int(region.sum()) > max_voxels


def _free(region: np.ndarray, around: Around, max_voxels: int) -> bool:
    """Neither leaked nor on the scan's edge."""
    return not _leaks(region, around, max_voxels) and not (region & around.scan_edge).any()


def region_cut(
    region: np.ndarray, around: Around, settings: ClickSettings, max_voxels: int
) -> tuple[np.ndarray, float]:
    """The region cut free of what it leaked into: (region, cut radius mm). A region on
    the scan's edge that no cut frees from it is kept as cut by the scan (the smallest
    cut that frees it of any other leak). Raises `ClickRefused` when no cut up to
    ``max_cut_mm`` frees it of a leak."""
    if _free(region, around, max_voxels):
        return region, 0.0
    # (cut by the scan: the region itself, or the first cut that frees it of leaks)
    cut_by_scan = None if _leaks(region, around, max_voxels) else (region, 0.0)
    # Depth inside the region: a box one voxel wider than it holds every distance.
    depth = np.zeros(region.shape, dtype=np.float64)
    box = box_around(region, 0.0, around.spacing_kji)
    depth[box] = ndimage.distance_transform_edt(region[box], sampling=around.spacing_kji)
    step = float(min(around.spacing_kji))
    radius = step
    while radius <= settings.max_cut_mm + 1e-6:
        core = seed_component(depth > radius, around, radius + 2 * step)
        if not core.any():
            break
        near = box_around(core, radius + step, around.spacing_kji)
        grown = np.zeros_like(region)
        grown[near] = ndimage.distance_transform_edt(~core[near], sampling=around.spacing_kji) <= (
            radius + 0.5 * step
        )
        opened = grown & region
        opened = seed_component(opened, around, radius + 2 * step)
        if opened.any() and _free(opened, around, max_voxels):
            return opened, radius
        if cut_by_scan is None and opened.any() and not _leaks(opened, around, max_voxels):
            cut_by_scan = (opened, radius)
        radius += step
    if cut_by_scan is not None:
        return cut_by_scan
    if region.sum() > 0.5 * around.allowed.sum():
        raise ClickRefused(
            "seed_lps_mm: nothing stands out at the click: what it is on fills the search "
            "area (plain tissue, not a lesion); click on the lesion itself"
        )
    raise ClickRefused(
        "seed_lps_mm: the region grown from the click leaks into its surroundings (it "
        "reaches the edge of the search or grows too large, and no narrow neck separates "
        "it); click nearer the lesion's centre or draw a box around it (box_lps_mm)"
    )


def box_around(mask: np.ndarray, margin_mm: float, spacing_kji: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of ``mask`` grown by ``margin_mm`` (clipped to the array): where
    distance transforms about it need to look."""
    found = ndimage.find_objects(mask.astype(np.uint8))
    if not found or found[0] is None:
        return tuple(slice(0, n) for n in mask.shape)
    margin = np.ceil(margin_mm / spacing_kji).astype(int) + 1
    return tuple(
        slice(max(0, s.start - m), min(n, s.stop + m))
        for s, m, n in zip(found[0], margin, mask.shape, strict=True)
    )
