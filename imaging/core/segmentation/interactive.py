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
   cut at its narrowest necks (`interactive_region.region_cut`: an opening by
   reconstruction of growing radius, up to ``max_cut_mm``). One that no cut frees from
   the edge of the scan alone is the lesion itself, going on beyond what was imaged:
   kept, and measured as cut there (step 5).
   One that still leaks otherwise is refused (`ClickRefused`), as is a click
   with less than ``min_contrast_hu`` between L and B, or less than ``min_snr`` noise
   SDs at every smoothing (nothing stands out there). A drawn box bounds the region
   instead: the region is clipped to it. Holes are filled and one-voxel spurs that
   noise grows on the edge opened away.
5. Measured like every lesion (`measure.lesions_measure`): each voxel's partial-volume
   fraction (HU - B) / (L - B), clipped to 0..1 near the region, is the map whose
   isosurface gives the diameters; the study's own voxels give the partial-volume
   volume and the HU statistics (never its padded voxels, `Volume.padding`); the edges
   of the whole study as scanned that the lesion reaches (`edges.lesion_edges`: a
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
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import scipy
from scipy import ndimage

from imaging.core.geometry.preprocess import StepRecord
from imaging.core.geometry.triples import vec3
from imaging.core.geometry.volume import Volume
from imaging.core.segmentation.interactive_region import (
    FACES,
    Around,
    ClickRefused,
    ClickSettings,
    around_click,
    box_around,
    region_cut,
    seed_component,
)
from imaging.core.segmentation.measure import LesionMeasurement, lesions_measure
from imaging.core.segmentation.postprocess import LesionCandidate

METHOD = "click: half-contrast region growing, bounded and leak-checked"
EDIT_METHOD = "mask drawn by a radiologist (brush, eraser, grow, shrink)"


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


# --------------------------------------------------------------------------- the region
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
        region = seed_component(side & around.allowed, around, 1.5 * seed_mm)
        if not region.any():
            raise _no_contrast(lesion, background, settings)
        region, cut_mm = region_cut(region, around, settings, max_voxels)
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


def _shell_stats(
    region: np.ndarray, around: Around, sm: np.ndarray, shell_mm: tuple[float, float]
) -> tuple[float, float]:
    """Median and robust SD (1.4826 MAD) of the smoothed HU in a shell outside ``region``."""
    box = box_around(region, shell_mm[1], around.spacing_kji)
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
    box = box_around(region, 0.0, around.spacing_kji)
    filled[box] = ndimage.binary_fill_holes(region[box]) & around.allowed[box]
    cross = np.zeros((1, 3, 3), dtype=bool)
    cross[0, 1, :] = cross[0, :, 1] = True
    opened = ndimage.binary_opening(filled, cross)
    opened = seed_component(opened, around, 2.0 * float(max(around.spacing_kji)))
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
    may reach (``edges_reached``, `edges.lesion_edges`): pass it when ``study`` is a
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
