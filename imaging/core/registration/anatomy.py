"""Coarse anatomy of a chest/abdomen CT in HU: body, lungs, liver, heart and spine landmarks.

Everything is measured in the coordinates the header gives (DICOM patient coordinates,
LPS mm), on a coarse copy of the volume (about 4 mm, axes along L, P, S), so the
landmarks say where the header *claims* the organs are; `orientation.orientation_check`
compares that with where anatomy puts them.

Definitions (deliberately crude, enough to tell left from right and head from feet):

- body: voxels above -500 HU, the largest connected component, with every axial slice's
  holes filled (so the lungs are inside it); a separate table or blanket drops out.
- lungs: air (below -400 HU) inside the filled body, in components of at least 100 ml
  and a tenth of the largest (bowel gas and the trachea's small pieces drop out).
- thorax / abdomen slices: axial slices whose lung area is at least 30 % / below 25 %
  of the largest lung slice area.
- liver: dense soft tissue (35..130 HU) at least 25 mm deep inside the body (so the
  muscle of the body wall drops out) in the abdomen slices within 150 mm of the lungs'
  base; the largest such component. The liver is by far the largest organ there and it
  lies on the patient's right, so even the centroid of all that tissue sits right of
  the body's centre.
- heart: soft tissue (0..130 HU, not lung, 25 mm deep) between the lungs in thorax
  slices; the heart lies left of the midline.
- spine: bone (above 180 HU) within 40 mm of the body's left-right centre, 25 mm or
  more deep or posterior; the vertebral column is behind the body's centre.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from imaging.core.geometry.preprocess import volume_resample
from imaging.core.geometry.triples import vec3
from imaging.core.geometry.volume import Volume

BODY_HU = -500.0
AIR_HU = -400.0
DENSE_TISSUE_HU = (35.0, 130.0)
SOFT_TISSUE_HU = (0.0, 130.0)
BONE_HU = 180.0
DEEP_MM = 25.0
MIN_LUNG_ML = 100.0
SPINE_HALF_WIDTH_MM = 40.0
ABDOMEN_REACH_MM = 150.0


# --------------------------------------------------------------------------- coarse copy
def _is_axis_aligned(direction: np.ndarray) -> bool:
    return bool(np.all(np.isclose(np.abs(direction), 0.0, atol=1e-3) | (np.abs(direction) > 0.999)))


def volume_coarse(*, volume: Volume, spacing_mm: float = 4.0) -> Volume:
    """A smaller copy at about ``spacing_mm``, its axes along L, P, S (identity direction).

    Scalar volumes are block-averaged (anti-aliased, and about 0.3 s on a 512x512x300
    volume) by the whole factor nearest ``spacing_mm / spacing`` along each axis; an axis
    still finer than 0.8 x ``spacing_mm`` after that (a 3 mm pixel, say) is resampled
    linearly to ``spacing_mm``. Label volumes take every n-th voxel and
    nearest neighbour. The result is permuted and flipped into LPS order
    (``sitk.DICOMOrient``, exact); an oblique volume is resampled onto an axis-aligned
    grid instead. Scalars come out float32. The outer boundary stays where it was, less
    any remainder of voxels that does not fill a whole block at the far end.
    """
    factors = [max(1, int(round(spacing_mm / s))) for s in volume.spacing_mm]
    if volume.kind == "scalar":
        volume = _block_mean(volume, factors)
        image = volume.to_sitk()
    else:
        image = volume.to_sitk()
        if max(factors) > 1:
            image = sitk.Shrink(image, factors)
    if not _is_axis_aligned(volume.direction):
        image = _resample_axis_aligned(image, spacing_mm, volume.kind == "label")
        return Volume.from_sitk(
            image, kind=volume.kind, frame_of_reference_uid=volume.frame_of_reference_uid
        )
    coarse = Volume.from_sitk(
        sitk.DICOMOrient(image, "LPS"),
        kind=volume.kind,
        frame_of_reference_uid=volume.frame_of_reference_uid,
    )
    if min(coarse.spacing_mm) < 0.8 * spacing_mm:
        target = vec3(max(s, spacing_mm) if s < 0.8 * spacing_mm else s for s in coarse.spacing_mm)
        coarse = volume_resample(volume=coarse, spacing_mm=target)
    return coarse


def _block_mean(volume: Volume, factors: list[int]) -> Volume:
    """Average blocks of ``factors`` (i, j, k) voxels, float32, as ``sitk.BinShrink`` does
    but without first copying a large array into SimpleITK. A remainder that does not
    fill a block at the far end of an axis is dropped."""
    array = volume.array
    for axis, factor in zip((2, 1, 0), factors, strict=True):
        n = array.shape[axis] // factor
        if factor == 1 or n == 0:
            continue
        index = [slice(None)] * 3
        index[axis] = slice(0, n * factor)
        shape = list(array.shape)
        shape[axis : axis + 1] = [n, factor]
        array = array[tuple(index)].reshape(shape).mean(axis=axis + 1, dtype=np.float32)
    factors = [
        f if volume.array.shape[axis] // f else 1
        for axis, f in zip((2, 1, 0), factors, strict=True)
    ]
    return Volume(
        array=np.ascontiguousarray(array, dtype=np.float32),
        spacing_mm=vec3(s * f for s, f in zip(volume.spacing_mm, factors, strict=True)),
        origin_mm=tuple(volume.index_to_lps((np.asarray(factors, dtype=float) - 1.0) / 2.0)),
        direction=volume.direction,
        frame_of_reference_uid=volume.frame_of_reference_uid,
        kind=volume.kind,
    )


def _resample_axis_aligned(image: sitk.Image, spacing_mm: float, label: bool) -> sitk.Image:
    size = np.asarray(image.GetSize())
    corners = np.array(np.meshgrid([0, 1], [0, 1], [0, 1], indexing="ij")).reshape(3, -1).T
    points = np.array(
        [image.TransformContinuousIndexToPhysicalPoint(c * (size - 1.0)) for c in corners]
    )
    lo, hi = points.min(axis=0), points.max(axis=0)
    new_size = [int(np.ceil((h - lo_) / spacing_mm)) + 1 for lo_, h in zip(lo, hi, strict=True)]
    default = 0.0 if label else float(sitk.GetArrayViewFromImage(image).min())
    return sitk.Resample(
        image,
        new_size,
        sitk.Transform(),
        sitk.sitkNearestNeighbor if label else sitk.sitkLinear,
        tuple(lo),
        (spacing_mm,) * 3,
        tuple(np.eye(3).flatten()),
        default,
        image.GetPixelID(),
    )


# --------------------------------------------------------------------------- masks
def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _fill_axial(mask: np.ndarray) -> np.ndarray:
    out = np.empty_like(mask)
    for z in range(mask.shape[0]):
        out[z] = ndimage.binary_fill_holes(mask[z])
    return out


def body_lung_arrays(hu: np.ndarray, voxel_ml: float) -> tuple[np.ndarray, np.ndarray]:
    """Filled body mask and lung mask (bool arrays) of a CT array in HU whose k axis is
    axial (slices are filled one by one), with voxels of ``voxel_ml`` millilitres."""
    body = _largest_component(hu > BODY_HU)
    filled = _fill_axial(body)
    air = filled & (hu < AIR_HU)
    labels, n = ndimage.label(air)
    if n == 0:
        return filled, np.zeros_like(filled)
    sizes = np.bincount(labels.ravel()) * voxel_ml
    sizes[0] = 0.0
    keep = sizes >= max(MIN_LUNG_ML, 0.1 * sizes.max())
    keep[0] = False
    return filled, keep[labels]


def body_lung_masks(*, volume: Volume, spacing_mm: float = 4.0) -> tuple[Volume, Volume]:
    """Body (filled) and lung masks at about ``spacing_mm``, LPS-aligned label volumes (0/1)."""
    coarse = volume_coarse(volume=volume, spacing_mm=spacing_mm)
    hu = ndimage.gaussian_filter(coarse.array, 0.7)
    body, lungs = body_lung_arrays(hu, coarse.voxel_volume_ml)
    return (
        coarse.with_array(body.astype(np.uint8), kind="label"),
        coarse.with_array(lungs.astype(np.uint8), kind="label"),
    )


# --------------------------------------------------------------------------- landmarks
Point = tuple[float, float, float]


@dataclass(frozen=True)
class AnatomyLandmarks:
    """Where the header puts the organs (LPS mm), and the signed evidence per axis.

    Each ``*_evidence_mm`` is positive when the anatomy agrees with the header and
    negative when it contradicts it, None when it could not be measured:

    - ``head_foot_evidence_mm``: lung centroid minus the centroid of the soft tissue of
      the non-lung slices, along S (the lungs are above the abdomen).
    - ``liver_side_evidence_mm``: body centre minus the abdomen's dense soft tissue
      centroid along L (the liver is on the right, towards -L).
    - ``heart_side_evidence_mm``: mediastinal soft tissue centroid minus the midpoint of
      the lungs along L (the heart is on the left).
    - ``spine_evidence_mm``: spine centroid minus body centre along P (the spine is
      posterior).
    """

    spacing_mm: float
    body_volume_ml: float
    body_centroid_lps_mm: Point | None
    lung_volume_ml: float
    lung_centroid_lps_mm: Point | None
    lung_base_s_mm: float | None
    liver_centroid_lps_mm: Point | None
    liver_volume_ml: float
    heart_centroid_lps_mm: Point | None
    spine_centroid_lps_mm: Point | None
    head_foot_evidence_mm: float | None
    liver_side_evidence_mm: float | None
    heart_side_evidence_mm: float | None
    spine_evidence_mm: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def _centroid(mask: np.ndarray, grid: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Centroid (L, P, S) of a ``[S, P, L]`` mask on coordinates ``grid`` (x, y, z 1-D)."""
    x, y, z = grid
    count = mask.sum()
    return np.array(
        [
            (mask.sum(axis=(0, 1)) * x).sum() / count,
            (mask.sum(axis=(0, 2)) * y).sum() / count,
            (mask.sum(axis=(1, 2)) * z).sum() / count,
        ]
    )


def _point(values: np.ndarray | None) -> Point | None:
    return None if values is None else vec3(round(float(v), 2) for v in values)


#: Landmarks that stay None when they cannot be measured.
_OPTIONAL = (
    "lung_centroid_lps_mm",
    "lung_base_s_mm",
    "liver_centroid_lps_mm",
    "heart_centroid_lps_mm",
    "spine_centroid_lps_mm",
    "head_foot_evidence_mm",
    "liver_side_evidence_mm",
    "heart_side_evidence_mm",
    "spine_evidence_mm",
)


@dataclass(frozen=True, eq=False)
class _Coarse:
    """The smoothed HU array ``[S, P, L]`` of the coarse copy, its coordinates and masks."""

    hu: np.ndarray
    grid: tuple[np.ndarray, np.ndarray, np.ndarray]
    spacing_mm: tuple[float, float, float]
    voxel_ml: float
    body: np.ndarray
    lungs: np.ndarray


def _coarse_anatomy(volume: Volume, spacing_mm: float) -> _Coarse:
    coarse = volume_coarse(volume=volume, spacing_mm=spacing_mm)
    hu = ndimage.gaussian_filter(coarse.array, 0.7)
    nz, ny, nx = hu.shape
    origin, spacing = coarse.origin_mm, coarse.spacing_mm
    grid = (
        origin[0] + spacing[0] * np.arange(nx),
        origin[1] + spacing[1] * np.arange(ny),
        origin[2] + spacing[2] * np.arange(nz),
    )
    body, lungs = body_lung_arrays(hu, coarse.voxel_volume_ml)
    return _Coarse(hu, grid, coarse.spacing_mm, coarse.voxel_volume_ml, body, lungs)


def _depth_mm(anatomy: _Coarse) -> np.ndarray:
    """Depth below the skin, in-plane (mm): the body wall's muscle and fat are shallow."""
    sx, sy, _ = anatomy.spacing_mm
    depth = np.empty(anatomy.hu.shape, dtype=np.float32)
    for k in range(anatomy.hu.shape[0]):
        depth[k] = ndimage.distance_transform_edt(anatomy.body[k], sampling=(sy, sx))
    return depth


def anatomy_landmarks(*, volume: Volume, spacing_mm: float = 4.0) -> AnatomyLandmarks:
    """Coarse landmarks of a CT volume in HU, in the LPS coordinates its header gives."""
    if volume.kind != "scalar":
        raise ValueError("anatomy landmarks need a scalar CT volume in HU")
    anatomy = _coarse_anatomy(volume, spacing_mm)
    body_ml = float(anatomy.body.sum() * anatomy.voxel_ml)
    if body_ml < 500.0:
        return AnatomyLandmarks(
            spacing_mm=spacing_mm,
            body_volume_ml=body_ml,
            body_centroid_lps_mm=None,
            lung_volume_ml=0.0,
            liver_volume_ml=0.0,
            **dict.fromkeys(_OPTIONAL),
        )
    body_centre = _centroid(anatomy.body, anatomy.grid)
    depth = _depth_mm(anatomy)
    found: dict = dict.fromkeys(_OPTIONAL) | {"liver_volume_ml": 0.0}
    found["spine_centroid_lps_mm"], found["spine_evidence_mm"] = _spine(
        anatomy.hu, anatomy.body, depth, anatomy.grid, body_centre
    )
    lung_volume = float(anatomy.lungs.sum() * anatomy.voxel_ml)
    if lung_volume >= 2 * MIN_LUNG_ML:
        found |= _lung_landmarks(anatomy, depth >= DEEP_MM)
    for key in ("lung_centroid_lps_mm", "liver_centroid_lps_mm"):
        found[key] = _point(found[key])
    for key, value in found.items():
        if key.endswith("_evidence_mm") and value is not None:
            found[key] = round(float(value), 2)
    found["liver_volume_ml"] = round(found["liver_volume_ml"], 1)
    return AnatomyLandmarks(
        spacing_mm=spacing_mm,
        body_volume_ml=round(body_ml, 1),
        body_centroid_lps_mm=_point(body_centre),
        lung_volume_ml=round(lung_volume, 1),
        **found,
    )


def _lung_landmarks(anatomy: _Coarse, deep: np.ndarray) -> dict:
    """Lung centroid, and from the lungs the head-foot evidence, liver and heart."""
    hu, body, lungs = anatomy.hu, anatomy.body, anatomy.lungs
    found: dict = {"lung_centroid_lps_mm": _centroid(lungs, anatomy.grid)}
    area = lungs.sum(axis=(1, 2)).astype(float)
    thorax = area >= 0.3 * area.max()
    lower = (area < 0.25 * area.max()) & (body.sum(axis=(1, 2)) > 0)
    soft = body & ~lungs & (hu >= SOFT_TISSUE_HU[0]) & (hu <= SOFT_TISSUE_HU[1])
    soft_lower = soft & lower[:, None, None]
    if lower.sum() >= 3 and soft_lower.sum() * anatomy.voxel_ml >= 50.0:
        found |= _abdomen_landmarks(
            anatomy, deep, found["lung_centroid_lps_mm"], area, lower, soft_lower
        )
    found["heart_centroid_lps_mm"], found["heart_side_evidence_mm"] = _heart(
        soft, lungs, deep, thorax, anatomy.grid, anatomy.voxel_ml
    )
    return found


def _abdomen_landmarks(
    anatomy: _Coarse,
    deep: np.ndarray,
    lung_centre: np.ndarray,
    area: np.ndarray,
    lower: np.ndarray,
    soft_lower: np.ndarray,
) -> dict:
    """Head-foot evidence, the lungs' base, and the liver in the slab below it."""
    grid, z = anatomy.grid, anatomy.grid[2]
    soft_z = _centroid(soft_lower, grid)[2]
    found: dict = {"head_foot_evidence_mm": float(lung_centre[2] - soft_z)}
    # The lungs' base: the lung-slice boundary on the abdomen's side.
    lung_z = z[area >= 0.25 * area.max()]
    if soft_z < lung_centre[2]:
        base = float(lung_z.min())
        slab = lower & (z < base) & (z >= base - ABDOMEN_REACH_MM)
    else:
        base = float(lung_z.max())
        slab = lower & (z > base) & (z <= base + ABDOMEN_REACH_MM)
    found["lung_base_s_mm"] = base
    liver = _liver(anatomy.hu, anatomy.body, deep, slab, grid, anatomy.voxel_ml)
    if liver is not None:
        dense, liver_mask = liver
        found["liver_volume_ml"] = float(liver_mask.sum() * anatomy.voxel_ml)
        found["liver_centroid_lps_mm"] = _centroid(liver_mask, grid)
        slab_body = anatomy.body & slab[:, None, None]
        found["liver_side_evidence_mm"] = float(
            _centroid(slab_body, grid)[0] - _centroid(dense, grid)[0]
        )
    return found


def _spine(hu, body, depth, grid, body_centre) -> tuple[Point | None, float | None]:
    x, _, _ = grid
    near_midline = np.abs(x - body_centre[0]) <= SPINE_HALF_WIDTH_MM
    # Ribs and sternum lie within a couple of centimetres of the skin; the vertebral
    # bodies deeper. Keep deep bone only (the posterior arch is shallow; not needed).
    bone = body & (hu > BONE_HU) & (depth >= DEEP_MM) & near_midline[None, None, :]
    if bone.sum() < 10:
        return None, None
    centre = _centroid(bone, grid)
    return _point(centre), float(centre[1] - body_centre[1])


def _liver(hu, body, deep, slab, grid, voxel_ml):
    """(dense deep tissue of the slab, its largest component) or None."""
    lo, hi = DENSE_TISSUE_HU
    dense = body & deep & (hu >= lo) & (hu <= hi) & slab[:, None, None]
    if dense.sum() * voxel_ml < 100.0:
        return None
    return dense, _largest_component(ndimage.binary_opening(dense))


def _heart(soft, lungs, deep, thorax, grid, voxel_ml) -> tuple[Point | None, float | None]:
    if thorax.sum() < 3:
        return None, None
    x, _, _ = grid
    lung_x = lungs[thorax].sum(axis=(0, 1)).astype(float)
    if lung_x.sum() == 0:
        return None, None
    # The two lungs: the lung mass either side of its own x-centroid.
    centre_x = (lung_x * x).sum() / lung_x.sum()
    right = lung_x * (x < centre_x)
    left = lung_x * (x >= centre_x)
    if right.sum() == 0 or left.sum() == 0:
        return None, None
    right_x = (right * x).sum() / right.sum()
    left_x = (left * x).sum() / left.sum()
    between = (x > min(right_x, left_x)) & (x < max(right_x, left_x))
    mediastinum = soft & deep & ~lungs & thorax[:, None, None] & between[None, None, :]
    if mediastinum.sum() * voxel_ml < 50.0:
        return None, None
    centre = _centroid(mediastinum, grid)
    return _point(centre), float(centre[0] - 0.5 * (right_x + left_x))
