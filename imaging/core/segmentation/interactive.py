"""Click-guided lesion segmentation: a radiologist's one click (or box) on a study to the
lesion's mask there, measured as the pipeline measures; and a mask a radiologist drew,
measured.

`click_segment` works on the study's own grid (any `Volume` holding the click: the
whole study or a box read around it) with a classical, bounded and checked method; no
learning, every parameter recorded (`ClickSettings`):

1. Around the click: the voxels within ``reach_mm`` of it (or inside the drawn box),
   smoothed (Gaussian) against noise: ``smooth_sigma_mm`` first, 1.6 times more each
   time (up to ``max_smooth_sigma_mm``) while the noise left (robust SD in the shell
   of step 2) is over a sixth of the contrast, or the region leaks or is empty.
2. The lesion's CT number L: the median of the smoothed HU within ``seed_radius_mm`` of
   the click. Its surroundings' B: first the median of the voxels in reach that differ
   from L by more than ``min_contrast_hu``; then the median of a shell (``shell_mm``)
   just outside the region found.
3. The region: the voxels face-connected to the click on the lesion's side of the
   half-contrast level (L + B) / 2, where the edge of a lesion blurred by the scanner
   lies (full width at half maximum); found again with B from its own shell, up to
   ``iterations`` times, until B settles.
4. Bounded and checked: a region that reaches the edge of the search (``reach_mm`` from
   the click; the edge of the scan) or holds more than ``max_volume_ml`` has leaked into
   a neighbour of the same CT number (a vessel, the chest wall, another organ). It is
   cut at its narrowest necks (an opening by reconstruction of growing radius, up to
   ``max_cut_mm``). One that no cut frees from the edge of the scan alone is the lesion
   itself, going on beyond what was imaged: kept, and measured as cut there (step 5).
   One that still leaks otherwise is refused (`ClickRefused`), as is a click
   with less than ``min_contrast_hu`` between L and B, or less than ``min_snr`` noise
   SDs at every smoothing (nothing stands out there). A drawn box bounds the region
   instead: the region is clipped to it. Holes are filled and one-voxel spurs that
   noise grows on the edge opened away.
5. Measured like every lesion (`measure.lesions_measure`): each voxel's partial-volume
   fraction (HU - B) / (L - B), clipped to 0..1 near the region, is the map whose
   isosurface gives the diameters; the study's own voxels give the partial-volume
   volume and the HU statistics (never its padded voxels, `Volume.padding`); the edges
   of the whole study as scanned that the lesion reaches (`measure.lesion_edges`: a
   padded voxel beside it, its first or last slice, the in-plane edge) are recorded
   with it, so a lesion cut there is read as seen, its size not assessable.

The organ comes from the tissue around the lesion: lung when it is air (B below
``lung_below_hu``), liver when B is in the liver's range ``liver_hu``, else "other";
a caller may name it instead. Coordinates are LPS mm in the study's own frame.

`interactive_search.lesion_search` follows a lesion to another study with the same
method.

`mask_measure` measures a mask a radiologist drew (an edited lesion): the same
measurement, with the volume of the drawn voxels' isosurface, since the drawing, not
the HU, is the radiologist's statement of the lesion's extent.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import scipy
from scipy import ndimage

from imaging.core.geometry.preprocess import StepRecord
from imaging.core.geometry.triples import vec3
from imaging.core.geometry.volume import Volume
from imaging.core.segmentation.measure import LesionMeasurement, lesions_measure
from imaging.core.segmentation.postprocess import LesionCandidate

FACES = ndimage.generate_binary_structure(3, 1)
METHOD = "click: half-contrast region growing, bounded and leak-checked"
EDIT_METHOD = "mask drawn by a radiologist (brush, eraser, grow, shrink)"


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


@dataclass(frozen=True)
class LesionLook:
    """What a segmented lesion looked like: how to recognise it at another study
    (``organ`` is the one its surroundings say, whatever organ it was given)."""

    brighter: bool
    lesion_hu: float
    background_hu: float
    volume_ml: float
    organ: str


@dataclass(frozen=True, eq=False)
class ClickSegmentation:
    """A lesion segmented from a click: its mask (0/1, kind label) and partial-volume
    map (``fraction``, 0..1) on a box of the study's own grid, its measurement
    (`measure.LesionMeasurement`, label value 1, centroid in the study's LPS mm), what
    it looked like, and the record of how it was made."""

    mask: Volume
    fraction: Volume
    measurement: LesionMeasurement
    look: LesionLook
    seed_lps_mm: tuple[float, float, float]
    record: StepRecord

    @property
    def organ(self) -> str:
        """The lesion's organ: the one given, else the one its surroundings say."""
        return self.measurement.organ


# --------------------------------------------------------------------------- the box
@dataclass(frozen=True, eq=False)
class Around:
    """The study around a click: its HU (float32), each voxel's distance (mm) from
    the click, the voxels a region may hold (``allowed``), the ones it may not reach
    (``edge``: the limit of the search) and those on the scan's own edge
    (``scan_edge``: a region there has leaked unless no cut frees it, module docs)."""

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


# --------------------------------------------------------------------------- the region
def _seed_component(side: np.ndarray, around: Around, near_mm: float) -> np.ndarray:
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


def _cut(
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
    box = _box_around(region, 0.0, around.spacing_kji)
    depth[box] = ndimage.distance_transform_edt(region[box], sampling=around.spacing_kji)
    step = float(min(around.spacing_kji))
    radius = step
    while radius <= settings.max_cut_mm + 1e-6:
        core = _seed_component(depth > radius, around, radius + 2 * step)
        if not core.any():
            break
        near = _box_around(core, radius + step, around.spacing_kji)
        grown = np.zeros_like(region)
        grown[near] = ndimage.distance_transform_edt(~core[near], sampling=around.spacing_kji) <= (
            radius + 0.5 * step
        )
        opened = grown & region
        opened = _seed_component(opened, around, radius + 2 * step)
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


@dataclass(frozen=True)
class _Grown:
    region: np.ndarray
    smoothed: np.ndarray
    lesion_hu: float
    background_hu: float
    brighter: bool
    cut_mm: float
    iterations: int
    sigma_mm: float
    noise_hu: float


def _grow_at(around: Around, settings: ClickSettings, sigma_mm: float) -> _Grown:
    """Steps 2-4 of the module docs with the study smoothed at ``sigma_mm``."""
    sm = ndimage.gaussian_filter(around.hu, sigma_mm / around.spacing_kji, mode="nearest")
    seed_mm = max(settings.seed_radius_mm, float(min(around.spacing_kji)))
    ball = around.distance_mm <= seed_mm
    ball[around.seed_kji] = True  # a thick slice can hold no voxel centre that near
    lesion = float(np.median(sm[ball]))
    different = around.allowed & ~ball & (np.abs(sm - lesion) > settings.min_contrast_hu)
    if not different.any():
        raise _no_contrast(lesion, lesion, settings)
    background = float(np.median(sm[different]))
    brighter = lesion > background
    max_voxels = int(settings.max_volume_ml / (float(np.prod(around.spacing_kji)) / 1000.0))
    region, cut_mm, rounds = np.zeros_like(ball), 0.0, 0
    for rounds in range(1, settings.iterations + 1):  # noqa: B007 (recorded)
        if abs(lesion - background) < settings.min_contrast_hu:
            raise _no_contrast(lesion, background, settings)
        level = 0.5 * (lesion + background)
        side = (sm > level) if brighter else (sm < level)
        region = _seed_component(side & around.allowed, around, 1.5 * seed_mm)
        if not region.any():
            raise _no_contrast(lesion, background, settings)
        region, cut_mm = _cut(region, around, settings, max_voxels)
        updated, _ = _shell_stats(region, around, sm, settings.shell_mm)
        settled = not np.isfinite(updated) or abs(updated - background) < 1.0
        background = updated if np.isfinite(updated) else background
        if settled:
            break
        if (lesion > background) != brighter:
            raise _no_contrast(lesion, background, settings)
    if abs(lesion - background) < settings.min_contrast_hu:
        raise _no_contrast(lesion, background, settings)
    _, noise = _shell_stats(region, around, sm, settings.shell_mm)
    region = _fringe_trimmed(region, around)
    return _Grown(region, sm, lesion, background, brighter, cut_mm, rounds, sigma_mm, noise)


def _box_around(mask: np.ndarray, margin_mm: float, spacing_kji: np.ndarray) -> tuple[slice, ...]:
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


def _shell_stats(
    region: np.ndarray, around: Around, sm: np.ndarray, shell_mm: tuple[float, float]
) -> tuple[float, float]:
    """Median and robust SD (1.4826 MAD) of the smoothed HU in a shell outside ``region``."""
    box = _box_around(region, shell_mm[1], around.spacing_kji)
    outside = ndimage.distance_transform_edt(~region[box], sampling=around.spacing_kji)
    shell = (outside > shell_mm[0]) & (outside <= shell_mm[1]) & around.allowed[box]
    values = sm[box][shell]
    if not values.size:
        return float("nan"), float("nan")
    median = float(np.median(values))
    return median, 1.4826 * float(np.median(np.abs(values - median)))


def _fringe_trimmed(region: np.ndarray, around: Around) -> np.ndarray:
    """Holes filled, and one-voxel spurs that noise grows on the edge opened away (slice
    by slice: a thick slice is no spur); kept as it was when the opening would lose the
    click or most of the region (a lesion a few voxels across)."""
    filled = np.zeros_like(region)
    box = _box_around(region, 0.0, around.spacing_kji)
    filled[box] = ndimage.binary_fill_holes(region[box]) & around.allowed[box]
    cross = np.zeros((1, 3, 3), dtype=bool)
    cross[0, 1, :] = cross[0, :, 1] = True
    opened = ndimage.binary_opening(filled, cross)
    opened = _seed_component(opened, around, 2.0 * float(max(around.spacing_kji)))
    if opened.sum() < 0.7 * filled.sum():
        return filled
    return opened


def _grow(around: Around, settings: ClickSettings) -> _Grown:
    """The region at the least smoothing whose noise leaves the half-contrast level at
    least three noise SDs from both L and B (``smooth_sigma_mm``, then 1.6 times more
    each time, up to ``max_smooth_sigma_mm``); a smoothing that leaks or finds nothing
    gives way to the next. Refused when no smoothing lifts the lesion ``min_snr`` noise
    SDs above its surroundings."""
    sigma, refused, best = settings.smooth_sigma_mm, None, None
    while sigma <= settings.max_smooth_sigma_mm + 1e-6:
        try:
            grown = _grow_at(around, settings, sigma)
        except ClickRefused as error:
            refused = refused or error
        else:
            contrast = abs(grown.lesion_hu - grown.background_hu)
            if contrast >= 6.0 * grown.noise_hu:
                return grown
            if contrast >= settings.min_snr * grown.noise_hu:
                best = grown
        sigma *= 1.6
    if best is not None:
        return best
    if refused is not None:
        raise refused
    raise ClickRefused(
        "seed_lps_mm: nothing stands out at the click above the image's noise; click on "
        "the lesion itself, or draw a box around it"
    )


def _no_contrast(lesion: float, background: float, settings: ClickSettings) -> ClickRefused:
    return ClickRefused(
        f"seed_lps_mm: nothing stands out at the click (about {lesion:.0f} HU there, "
        f"{background:.0f} HU around it; at least {settings.min_contrast_hu:g} HU apart "
        "is needed); click on the lesion itself"
    )


def organ_from_surroundings(background_hu: float, settings: ClickSettings) -> str:
    """Lung when the lesion is surrounded by air, liver when by tissue in the liver's
    HU range, else "other"."""
    if background_hu < settings.lung_below_hu:
        return "lung"
    low, high = settings.liver_hu
    return "liver" if low <= background_hu <= high else "other"


# --------------------------------------------------------------------------- measuring
def _candidate(mask: np.ndarray, organ: str, voxel_ml: float) -> LesionCandidate:
    (k0, k1), (j0, j1), (i0, i1) = (
        (int(s.start), int(s.stop)) for s in ndimage.find_objects(mask.astype(np.uint8))[0]
    )
    n = int(mask.sum())
    return LesionCandidate(
        label_value=1,
        organ=organ,
        n_voxels=n,
        volume_ml=n * voxel_ml,
        # a radiologist's lesion: no segmenter confidence (NaN, never "low confidence")
        confidence=float("nan"),
        mean_probability=float("nan"),
        bbox_kji=((k0, k1), (j0, j1), (i0, i1)),
    )


def region_measure(
    *,
    study: Volume,
    mask: np.ndarray,
    fraction: np.ndarray,
    organ: str,
    scanned: Volume | None = None,
) -> LesionMeasurement:
    """Measure the lesion ``mask`` (bool, ``study``'s grid) with ``fraction`` (0..1, the
    same grid) as its map, as `measure.lesions_measure` measures every lesion.

    ``scanned``: the whole study as scanned, with its ``padding``, whose edges the lesion
    may reach (``edges_reached``, `measure.lesion_edges`): pass it when ``study`` is a
    box of it, whose faces are not all the scan's; None takes ``study`` for it."""
    if not mask.any():
        raise ClickRefused("mask: it holds no voxel")
    measured = lesions_measure(
        lesion_probability=study.with_array(fraction.astype(np.float32), kind="scalar"),
        candidate_mask=study.with_array(mask.astype(np.uint8), kind="label"),
        candidates=[_candidate(mask, organ, study.voxel_volume_ml)],
        study=study,
        scanned=scanned if scanned is not None else study,
    )
    if not measured:
        raise ClickRefused("mask: the lesion could not be measured (no voxel reaches its edge)")
    return measured[0]


def _fraction(grown: _Grown, around: Around) -> np.ndarray:
    near = ndimage.binary_dilation(grown.region, FACES, iterations=1)
    contrast = grown.lesion_hu - grown.background_hu
    f = np.clip((grown.smoothed - grown.background_hu) / contrast, 0.0, 1.0)
    return np.where(near, f, 0.0).astype(np.float32)


def mask_measure(*, study: Volume, mask: np.ndarray, organ: str) -> LesionMeasurement:
    """Measure a drawn mask (bool, ``study``'s grid): diameters, centroid and HU as for
    every lesion, its volume that of the drawn voxels' isosurface (``volume_method``
    "mask")."""
    smooth = ndimage.gaussian_filter(mask.astype(np.float32), 0.5)
    measured = region_measure(study=study, mask=mask, fraction=np.maximum(smooth, 0.0), organ=organ)
    volume = measured.volume_isosurface_ml or measured.volume_grid_ml
    return replace(
        measured,
        volume_ml=float(volume),
        volume_method="mask",
        volume_isosurface_ml=float(volume),
    )


# --------------------------------------------------------------------------- the calls
def as_point(value: Any, name: str) -> np.ndarray:
    point = np.asarray(value, dtype=float).reshape(-1)
    if point.shape != (3,) or not np.all(np.isfinite(point)):
        raise ClickRefused(f"{name}: three finite numbers (x, y, z in LPS mm)")
    return point


def _as_box(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    box = np.asarray(value, dtype=float)
    if box.size != 6 or not np.all(np.isfinite(box)):
        raise ClickRefused("box_lps_mm: two corners, [[x0, y0, z0], [x1, y1, z1]] in LPS mm")
    box = box.reshape(2, 3)
    if np.any(np.abs(box[1] - box[0]) < 1.0):
        raise ClickRefused("box_lps_mm: the box is flat (each side at least 1 mm)")
    return np.stack([box.min(axis=0), box.max(axis=0)])


def click_segment(
    *,
    study: Volume,
    seed_lps_mm: Any,
    box_lps_mm: Any = None,
    organ: str | None = None,
    settings: ClickSettings | None = None,
    scanned: Volume | None = None,
) -> ClickSegmentation:
    """The lesion at ``seed_lps_mm`` (LPS mm, the study's own frame) on ``study`` (HU,
    any box of the study that holds the click and ``reach_mm`` around it), segmented
    and measured (module docs). ``box_lps_mm`` (two corners) bounds it instead of
    ``reach_mm``; ``organ`` overrides the one read from the surroundings. ``scanned``:
    the whole study as scanned (its grid and ``padding``) when ``study`` is a box read
    from it, whose edges the lesion may reach (`region_measure`); None when ``study`` is
    the whole study. Raises `ClickRefused` with the reason when nothing can be segmented
    there."""
    settings = settings or ClickSettings()
    started = time.perf_counter()
    seed = as_point(seed_lps_mm, "seed_lps_mm")
    box = _as_box(box_lps_mm)
    if box is not None and not np.all((seed >= box[0]) & (seed <= box[1])):
        raise ClickRefused("box_lps_mm: the click is outside the box")
    around = around_click(study, seed, box, settings)
    grown = _grow(around, settings)
    chosen = organ or organ_from_surroundings(grown.background_hu, settings)
    fraction = _fraction(grown, around)
    # measured on the box around the click; its edges judged on the whole study
    measurement = region_measure(
        study=around.study,
        mask=grown.region,
        fraction=fraction,
        organ=chosen,
        scanned=scanned if scanned is not None else study,
    )
    look = LesionLook(
        brighter=grown.brighter,
        lesion_hu=grown.lesion_hu,
        background_hu=grown.background_hu,
        volume_ml=float(measurement.volume_ml),
        organ=organ_from_surroundings(grown.background_hu, settings),
    )
    record = StepRecord(
        name="click_segment",
        parameters={
            "method": METHOD,
            **settings.as_dict(),
            "seed_lps_mm": [float(v) for v in seed],
            "box_lps_mm": box.tolist() if box is not None else None,
            "organ_given": organ,
        },
        versions={"scipy": scipy.__version__, "numpy": np.__version__},
        seconds=time.perf_counter() - started,
        details={
            "lesion_hu": round(grown.lesion_hu, 1),
            "background_hu": round(grown.background_hu, 1),
            "level_hu": round(0.5 * (grown.lesion_hu + grown.background_hu), 1),
            "brighter": grown.brighter,
            "leak_cut_mm": grown.cut_mm,
            "smooth_sigma_mm": round(grown.sigma_mm, 3),
            "noise_hu": round(grown.noise_hu, 1),
            "iterations": grown.iterations,
            "voxels": int(grown.region.sum()),
            "organ": chosen,
            "organ_from": "given" if organ else "surroundings",
        },
    )
    return ClickSegmentation(
        mask=around.study.with_array(grown.region.astype(np.uint8), kind="label"),
        fraction=around.study.with_array(fraction, kind="scalar"),
        measurement=measurement,
        look=look,
        seed_lps_mm=vec3(seed),
        record=record,
    )
