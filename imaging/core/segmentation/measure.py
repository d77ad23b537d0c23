"""Per-lesion measurements in physical units, at sub-voxel precision.

Every lesion is measured on a fine isotropic grid whose axes are L, P, S (``fine
spacing``, 0.5 mm by default, coarser only for lesions so large that the grid would
exceed ~6 M voxels): the lesion's probability (or occupancy) map is sampled there by
trilinear interpolation from its own grid and thresholded at 0.5. Interpolating the
probability rather than the voxel mask keeps the surface where the map crosses 0.5
between voxel centres, so a 10 mm nodule on a 1.5 mm grid is not measured in 1.5 mm
steps.

- ``volume_ml``: partial-volume volumetry on the study's own voxels where it can be
  done (`partial_volume.partial_volume_measure`): each voxel of the lesion's region (its candidate grown
  by 3 mm) counts for the fraction of lesion it holds, read from its HU between the
  lesion's core and the surrounding tissue. Blurring by the scanner and by thick
  slices moves HU across the edge but keeps their sum, so this volume does not depend
  on where a threshold cuts the blurred edge; on the benchmark's full-size studies its
  median error was 1.8 % against 9.4 % for the probability isosurface. Where the
  lesion has no core of its own voxels (smaller than about two voxels across) or no
  contrast, the thresholded fine mask's volume is used (1 ml = 1000 mm^3);
  ``volume_method`` says which, and ``volume_isosurface_ml`` keeps the other. A lesion
  surrounded by an outer layer of its own (the ground glass of a part-solid or
  ground-glass nodule, the wall of a cystic lesion) is measured with it
  (`two_level.two_level_measure`: between the background's level and the layer's, the
  layer and anything beyond it counted whole; ``volume_method`` ``two_level``,
  ``volume_layer`` names the layer), and ``volume_core_ml`` keeps the volume without
  it. The diameters below stay those of the network's outline: of a part-solid nodule,
  its solid part.
- ``longest_axial_diameter_mm`` and ``short_axis_mm`` (RECIST 1.1, Eisenhauer et al.
  2009, section 3.3): "axial" is perpendicular to the patient's head-foot axis (LPS z),
  whatever the acquisition's orientation, since the fine grid's slices are planes of
  constant z. On each such slice the outline is the set of points where the map
  crosses 0.5 along the grid's edges (linear interpolation: the marching-squares
  vertices); the longest diameter is the largest distance between two of them (over
  their convex hull), taken on the slice where it is largest; the short axis is the
  widest extent of that outline perpendicular to the long axis (caliper).
- ``max_3d_diameter_mm``: the same over the 3D outline (marching-cubes vertices).
- ``centroid_lps_mm``: the fine mask's centre of mass in the study's patient
  coordinates (LPS mm).
- ``mean_hu`` / ``sd_hu``: over the study's own voxels whose centres fall in the fine
  mask (no interpolated values).
- ``sphericity``: surface area of the sphere of equal volume over the surface area
  (1 for a sphere), from ``sitk.LabelShapeStatisticsImageFilter`` (its roundness).
- ``confidence`` and ``uncertainty`` come from the segmenter: the highest lesion
  probability in the component, and the mean flip-TTA disagreement of the lesion
  probability over the component's voxels.
- ``edges_reached``: the edges of what was imaged that the lesion reaches
  (`edges.lesion_edges`: the first or last slice of the scanned range, the in-plane
  field of view, pixels outside the reconstructed field of view). Beyond them the
  lesion was not imaged, so every size above is then a lower bound, not the lesion's
  size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from imaging.core.geometry.volume import Volume
from imaging.core.registration.transforms import volume_onto_grid
from imaging.core.segmentation.edges import lesion_edges
from imaging.core.segmentation.partial_volume import PartialVolume, volume_readings
from imaging.core.segmentation.postprocess import LesionCandidate
from imaging.core.segmentation.two_level import TwoLevel

MAX_FINE_VOXELS = 6_000_000
SOFT_FLOOR = 0.1
MATCHED_LEVELS = (0.3, 0.7)


@dataclass(frozen=True)
class ShapeMeasures:
    """Geometry of one lesion from its probability map (mm, ml, LPS)."""

    volume_ml: float
    longest_axial_diameter_mm: float
    short_axis_mm: float
    axial_slice_z_mm: float
    max_3d_diameter_mm: float
    centroid_lps_mm: tuple[float, float, float]
    sphericity: float
    mean_hu: float | None
    sd_hu: float | None
    fine_spacing_mm: float
    n_fine_voxels: int
    level: float


@dataclass(frozen=True)
class LesionMeasurement:
    """One lesion candidate, measured: geometry plus organ, confidence and uncertainty."""

    label_value: int
    organ: str
    volume_ml: float
    longest_axial_diameter_mm: float
    short_axis_mm: float
    max_3d_diameter_mm: float
    centroid_lps_mm: tuple[float, float, float]
    mean_hu: float | None
    sd_hu: float | None
    sphericity: float
    confidence: float
    uncertainty: float
    axial_slice_z_mm: float
    volume_grid_ml: float
    fine_spacing_mm: float
    level: float
    volume_method: str = "isosurface"
    volume_isosurface_ml: float | None = None
    #: with ``volume_method`` ``two_level``: the outer layer measured with the lesion
    #: (``ground_glass`` or ``hypodense_wall``, `two_level`) and the volume without it
    #: (the one-level partial volume, else the isosurface's): a part-solid nodule's
    #: solid part, a cystic lesion's fluid and inner wall
    volume_layer: str | None = None
    volume_core_ml: float | None = None
    core_hu: float | None = None
    background_hu: float | None = None
    edges_reached: tuple[str, ...] = ()
    #: what proposed it: ``network`` (the segmenter), ``liver_second_reader``
    #: (`liver_reader`: a hypodense focal region of the liver the network did not outline)
    #: or ``lung_second_reader`` (`lung_reader`: a round faint region of a lung)
    found_by: str = "network"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- outline points
def _edge_crossings_2d(p: np.ndarray, xs: np.ndarray, ys: np.ndarray, level: float) -> np.ndarray:
    """Points (N, 2) in mm where ``p`` ([y, x]) crosses ``level`` along grid edges."""
    points = []
    inside = p >= level
    # Along x (between columns c and c + 1)
    a, b = p[:, :-1], p[:, 1:]
    hit = inside[:, :-1] != inside[:, 1:]
    if hit.any():
        r, c = np.nonzero(hit)
        t = (level - a[r, c]) / (b[r, c] - a[r, c])
        points.append(np.stack([xs[c] + t * (xs[c + 1] - xs[c]), ys[r]], axis=1))
    a, b = p[:-1, :], p[1:, :]
    hit = inside[:-1, :] != inside[1:, :]
    if hit.any():
        r, c = np.nonzero(hit)
        t = (level - a[r, c]) / (b[r, c] - a[r, c])
        points.append(np.stack([xs[c], ys[r] + t * (ys[r + 1] - ys[r])], axis=1))
    return np.concatenate(points) if points else np.zeros((0, 2))


def _edge_crossings_3d(
    p: np.ndarray, axes_mm: tuple[np.ndarray, np.ndarray, np.ndarray], level: float
) -> np.ndarray:
    """Points (N, 3) as (x, y, z) mm where ``p`` ([z, y, x]) crosses ``level`` along edges."""
    zs, ys, xs = axes_mm
    inside = p >= level
    points = []
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis] = slice(None, -1)
        hi[axis] = slice(1, None)
        hit = inside[tuple(lo)] != inside[tuple(hi)]
        if not hit.any():
            continue
        idx = np.nonzero(hit)
        a = p[tuple(lo)][idx]
        b = p[tuple(hi)][idx]
        t = (level - a) / (b - a)
        coords = [zs[idx[0]], ys[idx[1]], xs[idx[2]]]
        step = (zs, ys, xs)[axis]
        coords[axis] = step[idx[axis]] + t * (step[idx[axis] + 1] - step[idx[axis]])
        points.append(np.stack([coords[2], coords[1], coords[0]], axis=1))
    return np.concatenate(points) if points else np.zeros((0, 3))


def _hull_points(points: np.ndarray) -> np.ndarray:
    if len(points) < points.shape[1] + 2:
        return points
    try:
        hull = ConvexHull(points)
    except (QhullError, ValueError):
        return points
    return points[hull.vertices]


def _max_pair(points: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Largest distance between two points and the pair (brute force over hull vertices)."""
    pts = _hull_points(points)
    if len(pts) < 2:
        return (
            0.0,
            pts[0] if len(pts) else np.zeros(points.shape[1]),
            pts[0] if len(pts) else np.zeros(points.shape[1]),
        )
    best, pa, pb = -1.0, pts[0], pts[0]
    for start in range(0, len(pts), 512):
        block = pts[start : start + 512]
        d = np.linalg.norm(block[:, None, :] - pts[None, :, :], axis=-1)
        flat = int(np.argmax(d))
        value = float(d.flat[flat])
        if value > best:
            best = value
            a, b = np.unravel_index(flat, d.shape)
            pa, pb = block[a], pts[b]
    return best, pa, pb


def axial_diameters_mm(
    p_slice: np.ndarray, xs: np.ndarray, ys: np.ndarray, *, level: float = 0.5
) -> tuple[float, float]:
    """(longest diameter, perpendicular width) in mm of the outline of one axial slice."""
    points = _edge_crossings_2d(p_slice, xs, ys, level)
    if len(points) < 2:
        return 0.0, 0.0
    longest, a, b = _max_pair(points)
    if longest <= 0:
        return 0.0, 0.0
    axis = (b - a) / longest
    normal = np.array([-axis[1], axis[0]])
    projection = points @ normal
    return longest, float(projection.max() - projection.min())


# --------------------------------------------------------------------------- fine grid
def _fine_grid(volume: Volume, region: np.ndarray, fine_mm: float) -> tuple[np.ndarray, float]:
    """LPS bounds (lo, hi) of the region's voxel boxes plus one voxel, and the fine spacing."""
    idx = np.argwhere(region)  # [k, j, i]
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    corners = np.array(
        [[i, j, k] for i in (lo[2] - 1.5, hi[2] + 1.5) for j in (lo[1] - 1.5, hi[1] + 1.5)
         for k in (lo[0] - 1.5, hi[0] + 1.5)]
    )  # fmt: skip
    lps = volume.index_to_lps(corners)
    bounds = np.stack([lps.min(axis=0), lps.max(axis=0)])
    extent = bounds[1] - bounds[0]
    spacing = max(fine_mm, float(np.cbrt(np.prod(extent) / MAX_FINE_VOXELS)))
    return bounds, spacing


@dataclass(frozen=True, eq=False)
class _FineMap:
    """A lesion's map on the fine grid ([z, y, x], cell centres ``xs``, ``ys``, ``zs`` mm)
    and its own-grid crop ``p_box`` (values outside the region zeroed)."""

    fine: np.ndarray
    xs: np.ndarray
    ys: np.ndarray
    zs: np.ndarray
    step: float
    lo_lps: np.ndarray
    p_box: np.ndarray


def _fine_map(
    probability: Volume, p: np.ndarray, region: np.ndarray, fine_spacing_mm: float
) -> _FineMap:
    """Trilinear samples of ``p`` (limited to ``region``) on the fine LPS grid around it."""
    box = tuple(
        slice(max(0, int(lo) - 2), min(n, int(hi) + 3))
        for lo, hi, n in zip(
            np.argwhere(region).min(axis=0), np.argwhere(region).max(axis=0), p.shape, strict=True
        )
    )
    p_box = np.where(region[box], p[box], 0.0).astype(np.float32)
    offset_kji = np.array([s.start for s in box], dtype=float)
    bounds, step = _fine_grid(probability, region, fine_spacing_mm)
    n = np.maximum(1, np.ceil((bounds[1] - bounds[0]) / step).astype(int))
    xs = bounds[0, 0] + (np.arange(n[0]) + 0.5) * step
    ys = bounds[0, 1] + (np.arange(n[1]) + 0.5) * step
    zs = bounds[0, 2] + (np.arange(n[2]) + 0.5) * step
    fine = np.zeros((n[2], n[1], n[0]), dtype=np.float32)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    for kz, z in enumerate(zs):
        lps = np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, z)], axis=1)
        ijk = probability.lps_to_index(lps)
        coords = ijk[:, ::-1].T - offset_kji[:, None]
        fine[kz] = ndimage.map_coordinates(
            p_box, coords, order=1, mode="constant", cval=0.0
        ).reshape(gx.shape)
    return _FineMap(fine=fine, xs=xs, ys=ys, zs=zs, step=step, lo_lps=bounds[0], p_box=p_box)


def _matched_level(fine_map: _FineMap, spacing_mm: tuple[float, float, float]) -> float:
    """The isosurface whose enclosed volume is the map's own partial-volume sum."""
    p_box, step = fine_map.p_box, fine_map.step
    soft_mm3 = float(p_box[p_box >= SOFT_FLOOR].sum()) * float(np.prod(spacing_mm))
    n_target = int(round(soft_mm3 / step**3))
    values = np.sort(fine_map.fine.ravel())[::-1]
    if n_target < 1 or values[0] < MATCHED_LEVELS[0]:
        return 0.5
    return float(np.clip(values[min(n_target, values.size) - 1], *MATCHED_LEVELS))


def _longest_axial(
    fine_map: _FineMap, slices: np.ndarray, level: float
) -> tuple[float, float, float]:
    """Longest axial diameter, its short axis and the z (mm) of the slice that holds them."""
    longest, short, slice_z = 0.0, 0.0, float(fine_map.zs[0])
    for k in np.unique(slices):
        d, w = axial_diameters_mm(fine_map.fine[k], fine_map.xs, fine_map.ys, level=level)
        if d > longest:
            longest, short, slice_z = d, w, float(fine_map.zs[k])
    return longest, short, slice_z


def _sphericity(mask: np.ndarray, step: float) -> float:
    """SimpleITK's roundness of the fine mask (1 for a sphere; NaN when empty)."""
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing((step, step, step))
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.ComputePerimeterOn()
    stats.Execute(image)
    sphericity = float(stats.GetRoundness(1)) if stats.HasLabel(1) else float("nan")
    return min(sphericity, 1.0) if np.isfinite(sphericity) else sphericity


def _hu_statistics(
    hu: Volume | None, mask: np.ndarray, lo_lps: np.ndarray, step: float
) -> tuple[float | None, float | None]:
    """Mean and SD of the study's own voxels inside the fine mask (None without any)."""
    if hu is None:
        return None, None
    values = _hu_inside(hu, mask, lo_lps, step)
    if not values.size:
        return None, None
    return float(values.mean()), float(values.std(ddof=1) if values.size > 1 else 0.0)


def probability_measure(
    *,
    probability: Volume,
    region: np.ndarray | None = None,
    hu: Volume | None = None,
    level: float | None = None,
    fine_spacing_mm: float = 0.5,
) -> ShapeMeasures | None:
    """Measure the lesion described by ``probability`` (0..1, any grid and orientation).

    ``region`` (bool, same grid) limits the map to one lesion (values outside count as
    0); ``hu`` is the study in HU for mean/SD (any grid in the same patient
    coordinates). ``level`` is the isosurface; None (default) picks the level, within
    0.3-0.7, whose fine mask has the map's partial-volume sum as its volume (values
    under 0.1 left out of the sum), which removes the inward bias that a fixed 0.5
    level has on convex shapes (about 6 % of the volume of a 10 mm sphere sampled at
    1.5 mm). Returns None when nothing reaches the level.
    """
    p = probability.array.astype(np.float32)
    if region is None:
        region = p >= 0.01
    if not region.any():
        return None
    fine_map = _fine_map(probability, p, region, fine_spacing_mm)
    step = fine_map.step
    if level is None:
        level = _matched_level(fine_map, probability.spacing_mm)
    mask = fine_map.fine >= level
    count = int(mask.sum())
    if count == 0:
        return None
    kz, jy, ix = np.nonzero(mask)
    longest, short, slice_z = _longest_axial(fine_map, kz, level)
    points3 = _edge_crossings_3d(fine_map.fine, (fine_map.zs, fine_map.ys, fine_map.xs), level)
    max3d = _max_pair(points3)[0] if len(points3) >= 2 else step
    mean_hu, sd_hu = _hu_statistics(hu, mask, fine_map.lo_lps, step)
    return ShapeMeasures(
        volume_ml=count * step**3 / 1000.0,
        longest_axial_diameter_mm=longest,
        short_axis_mm=short,
        axial_slice_z_mm=slice_z,
        max_3d_diameter_mm=float(max3d),
        centroid_lps_mm=(
            float(fine_map.xs[ix].mean()),
            float(fine_map.ys[jy].mean()),
            float(fine_map.zs[kz].mean()),
        ),
        sphericity=_sphericity(mask, step),
        mean_hu=mean_hu,
        sd_hu=sd_hu,
        fine_spacing_mm=step,
        n_fine_voxels=count,
        level=float(level),
    )


def _hu_inside(hu: Volume, mask: np.ndarray, lo_lps: np.ndarray, step: float) -> np.ndarray:
    """HU of ``hu``'s own voxels whose centres fall inside the fine ``mask``."""
    nz, ny, nx = mask.shape
    hi_lps = lo_lps + step * np.array([nx, ny, nz])
    corners = np.array([[x, y, z] for x in (lo_lps[0], hi_lps[0]) for y in (lo_lps[1], hi_lps[1])
                        for z in (lo_lps[2], hi_lps[2])])  # fmt: skip
    ijk = hu.lps_to_index(corners)
    shape_ijk = np.asarray(hu.shape_ijk)
    lo = np.clip(np.floor(ijk.min(axis=0)).astype(int), 0, shape_ijk - 1)
    hi = np.clip(np.ceil(ijk.max(axis=0)).astype(int) + 1, 1, shape_ijk)
    if np.any(hi <= lo):
        return np.zeros(0)
    ii, jj, kk = np.meshgrid(
        np.arange(lo[0], hi[0]), np.arange(lo[1], hi[1]), np.arange(lo[2], hi[2]), indexing="ij"
    )
    idx = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1)
    lps = hu.index_to_lps(idx)
    f = np.floor((lps - lo_lps) / step).astype(int)
    ok = np.all((f >= 0) & (f < np.array([nx, ny, nz])), axis=1)
    idx, f = idx[ok], f[ok]
    inside = mask[f[:, 2], f[:, 1], f[:, 0]]
    idx = idx[inside]
    return hu.array[idx[:, 2], idx[:, 1], idx[:, 0]].astype(np.float64)


# --------------------------------------------------------------------------- lesions
def lesion_regions(mask: np.ndarray, *, dilation_voxels: int = 2) -> np.ndarray:
    """Each candidate's region: its voxels grown by ``dilation_voxels``, never into another's.

    A voxel within reach of two candidates goes to the nearer (each candidate's distance
    map in its own box; the lower label value where they are equally near), so touching
    lesions do not share probability. Per box rather than one distance transform with
    indices over the grid: 0.03 s instead of 1.9 s for a small study's one lesion.
    """
    out = np.zeros_like(mask)
    nearest = np.full(mask.shape, np.inf, dtype=np.float32)
    reach = dilation_voxels + 1
    for index, found in enumerate(ndimage.find_objects(mask)):
        if found is None:
            continue
        box = tuple(
            slice(max(0, s.start - reach), min(size, s.stop + reach))
            for s, size in zip(found, mask.shape, strict=True)
        )
        own = mask[box] == index + 1
        distance = ndimage.distance_transform_edt(~own)
        nearer = (distance <= dilation_voxels) & (distance < nearest[box])
        nearest[box][nearer] = distance[nearer]
        out[box][nearer] = index + 1
    return out


def _candidate_crop(
    lesion_probability: Volume, candidate: LesionCandidate, pad: int = 4
) -> tuple[tuple[slice, slice, slice], Volume]:
    """The candidate's box (plus ``pad`` voxels) and the probability map cropped to it."""
    (k0, k1), (j0, j1), (i0, i1) = candidate.bbox_kji
    box = (
        slice(max(0, k0 - pad), k1 + pad),
        slice(max(0, j0 - pad), j1 + pad),
        slice(max(0, i0 - pad), i1 + pad),
    )
    start = np.array([box[2].start, box[1].start, box[0].start], dtype=float)
    sub = Volume(
        array=lesion_probability.array[box],
        spacing_mm=lesion_probability.spacing_mm,
        origin_mm=tuple(lesion_probability.index_to_lps(start)),
        direction=lesion_probability.direction,
    )
    return box, sub


def _measurement(
    *,
    candidate: LesionCandidate,
    shape: ShapeMeasures,
    partial: PartialVolume | None,
    layered: TwoLevel | None,
    uncertainty: float,
    volume_grid_ml: float,
    edges_reached: tuple[str, ...],
) -> LesionMeasurement:
    """The measurement: with its outer layer where it has one, else the partial-volume
    volume where there is one, else the isosurface's."""
    core_ml = partial.volume_ml if partial is not None else shape.volume_ml
    if layered is not None:
        volume_ml, method = layered.volume_ml, "two_level"
        core_hu, background_hu = layered.layer_hu, layered.background_hu
    elif partial is not None:
        volume_ml, method = partial.volume_ml, "partial_volume"
        core_hu, background_hu = partial.core_hu, partial.background_hu
    else:
        volume_ml, method, core_hu, background_hu = shape.volume_ml, "isosurface", None, None
    return LesionMeasurement(
        label_value=candidate.label_value,
        organ=candidate.organ,
        volume_ml=volume_ml,
        longest_axial_diameter_mm=shape.longest_axial_diameter_mm,
        short_axis_mm=shape.short_axis_mm,
        max_3d_diameter_mm=shape.max_3d_diameter_mm,
        centroid_lps_mm=shape.centroid_lps_mm,
        mean_hu=shape.mean_hu,
        sd_hu=shape.sd_hu,
        sphericity=shape.sphericity,
        confidence=candidate.confidence,
        uncertainty=uncertainty,
        axial_slice_z_mm=shape.axial_slice_z_mm,
        volume_grid_ml=volume_grid_ml,
        fine_spacing_mm=shape.fine_spacing_mm,
        level=shape.level,
        volume_method=method,
        volume_isosurface_ml=shape.volume_ml,
        volume_layer=layered.layer if layered is not None else None,
        volume_core_ml=core_ml if layered is not None else None,
        core_hu=core_hu,
        background_hu=background_hu,
        edges_reached=edges_reached,
    )


def lesions_measure(
    *,
    lesion_probability: Volume,
    candidate_mask: Volume,
    candidates: list | tuple,
    study: Volume | None = None,
    uncertainty: Volume | None = None,
    fine_spacing_mm: float = 0.5,
    scanned: Volume | None = None,
) -> list[LesionMeasurement]:
    """Measure every candidate of `postprocess.postprocess_run` (see module docs).

    ``lesion_probability`` and ``candidate_mask`` share the model grid; ``study`` is the
    original HU volume for mean/SD (the model grid's image when None is not given: pass
    it), with its ``padding`` when it has one. ``scanned`` is the whole study as scanned,
    whose edges (and padding) a lesion may reach (`lesion_edges`; pass it when ``study``
    is a part of it); None takes the probability map's grid for it. Candidates whose
    probability never reaches 0.5 on the fine grid (possible only after smoothing a
    marginal one) are measured on their voxel mask instead.
    """
    edges_of = scanned if scanned is not None else lesion_probability
    regions = lesion_regions(candidate_mask.array, dilation_voxels=2)
    out = []
    voxel_ml = lesion_probability.voxel_volume_ml
    native = None
    if study is not None and candidates:
        region_native = volume_onto_grid(
            moving=candidate_mask.with_array(regions, kind="label"), reference=study
        ).array
        inner_native = volume_onto_grid(moving=candidate_mask, reference=study).array
        native = (region_native, inner_native, ndimage.find_objects(region_native))
    for candidate in candidates:
        number = candidate.label_value
        box, sub = _candidate_crop(lesion_probability, candidate)
        region = regions[box] == number
        core = candidate_mask.array[box] == number
        shape = probability_measure(
            probability=sub, region=region, hu=study, fine_spacing_mm=fine_spacing_mm
        )
        if shape is None:
            shape = probability_measure(
                probability=sub.with_array(core.astype(np.float32)),
                region=region,
                hu=study,
                fine_spacing_mm=fine_spacing_mm,
            )
        if shape is None:
            continue
        partial, layered = (
            volume_readings(study, native, number)
            if study is not None and native is not None
            else (None, None)
        )
        if uncertainty is not None:
            u = float(uncertainty.array[box][core].mean()) if core.any() else 0.0
        else:
            u = float("nan")
        out.append(
            _measurement(
                candidate=candidate,
                shape=shape,
                partial=partial,
                layered=layered,
                uncertainty=u,
                volume_grid_ml=float(core.sum() * voxel_ml),
                edges_reached=lesion_edges(
                    lesion=sub.with_array(core.astype(np.uint8), kind="label"), scanned=edges_of
                ),
            )
        )
    return out
