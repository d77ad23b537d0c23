"""Render one synthetic CT acquisition in HU: anatomy and lesions with partial volume, blur, noise.

Frames. Anatomy and lesions live in the body frame (`imaging.core.synthetic.anatomy`). A
study places the body in its own patient coordinates with a rigid 4x4 *pose* (body -> LPS
mm); the scanner grid is a `ScanGeometry` in LPS. Rendering maps each voxel from LPS back
into the body frame.

Partial volume. A voxel holds the mean over its box (spacing_mm, not thickness) of the
scene, so the sum of a lesion's voxel fractions times the voxel volume is the lesion's
volume. Lesion boundary voxels are supersampled on a sub-voxel lattice (interior and
exterior voxels are classified with a rigorous bound and not sampled). A slice thicker
than the slice spacing is then modelled by a sum-preserving Gaussian blur along the
slice axis, a point spread function by a sum-preserving in-plane blur, and scanner
noise is added last (Gaussian, lightly correlated in-plane).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from imaging.core.geometry.triples import ivec3, vec3
from imaging.core.geometry.volume import Volume
from imaging.core.synthetic.anatomy import HU_AIR, BodyAnatomy
from imaging.core.synthetic.anatomy_structures import (
    AnatomyStructure,
    anatomy_structures,
    antialias_fraction,
    hu_blend,
)
from imaging.core.synthetic.lesion_shape import LesionShape

#: An index box of a grid: (k0, k1, j0, j1, i0, i1), ends exclusive.
IndexBox = tuple[int, int, int, int, int, int]


@dataclass(frozen=True, eq=False)
class ScanGeometry:
    """A CT acquisition grid in LPS mm, with the same conventions as `Volume`.

    ``spacing_mm`` is (column spacing, row spacing, slice spacing); ``direction`` columns are
    the row cosine, the column cosine and the slice direction (+-(row x column));
    ``slice_thickness_mm`` >= the slice spacing (overlapping reconstructions are blurred).
    """

    shape_ijk: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    direction: np.ndarray
    slice_thickness_mm: float

    def empty_volume(self, frame_of_reference_uid: str = "") -> Volume:
        ni, nj, nk = self.shape_ijk
        return Volume(
            array=np.zeros((nk, nj, ni), dtype=np.float32),
            spacing_mm=self.spacing_mm,
            origin_mm=self.origin_mm,
            direction=self.direction,
            frame_of_reference_uid=frame_of_reference_uid,
        )

    @classmethod
    def centred(
        cls,
        *,
        centre_lps_mm: np.ndarray,
        shape_ijk: tuple[int, int, int],
        spacing_mm: tuple[float, float, float],
        direction: np.ndarray,
        slice_thickness_mm: float,
    ) -> ScanGeometry:
        """The grid whose central voxel position is ``centre_lps_mm``."""
        direction = np.asarray(direction, dtype=float)
        half = (np.asarray(shape_ijk, dtype=float) - 1.0) / 2.0 * np.asarray(spacing_mm)
        origin = np.asarray(centre_lps_mm, dtype=float) - direction @ half
        return cls(
            shape_ijk=ivec3(shape_ijk),
            spacing_mm=vec3(spacing_mm),
            origin_mm=vec3(origin),
            direction=direction,
            slice_thickness_mm=float(slice_thickness_mm),
        )


@dataclass(frozen=True)
class LesionAtStudy:
    """A lesion's shape and its exact volume (ml) at one study."""

    lesion_id: str
    shape: LesionShape
    volume_ml: float


@dataclass(frozen=True, eq=False)
class LesionFraction:
    """A lesion's voxel occupancy (0..1, before blur and noise) in a box of the grid."""

    lesion_id: str
    start_kji: tuple[int, int, int]
    fraction: np.ndarray

    def volume_ml(self, voxel_volume_ml: float) -> float:
        return float(self.fraction.sum(dtype=np.float64) * voxel_volume_ml)


@dataclass(frozen=True, eq=False)
class RenderedStudy:
    """The image (HU, float32) and each lesion's occupancy as rendered."""

    volume: Volume
    lesion_fractions: dict[str, LesionFraction] = field(default_factory=dict)


def body_coordinates(
    geometry: ScanGeometry,
    body_from_lps: np.ndarray,
    box: IndexBox,
    dtype: type = np.float32,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Body-frame x, y, z ([k, j, i]) of voxel centres in the index box (k0, k1, j0, j1, i0, i1)."""
    k0, k1, j0, j1, i0, i1 = box
    affine = body_from_lps[:3, :3] @ (geometry.direction * np.asarray(geometry.spacing_mm)[None, :])
    offset = body_from_lps[:3, :3] @ np.asarray(geometry.origin_mm) + body_from_lps[:3, 3]
    # Sum the small (k, j) plane first, then broadcast once along i, in the output dtype.
    i = np.arange(i0, i1, dtype=np.float64)[None, None, :]
    j = np.arange(j0, j1, dtype=np.float64)[None, :, None]
    k = np.arange(k0, k1, dtype=np.float64)[:, None, None]
    out = []
    for r in range(3):
        plane = (affine[r, 1] * j + affine[r, 2] * k + offset[r]).astype(dtype)
        out.append(plane + (affine[r, 0] * i).astype(dtype))
    return tuple(out)


def structure_boxes(
    structures: Sequence[AnatomyStructure],
    geometry: ScanGeometry,
    *,
    body_from_lps: np.ndarray,
    lps_from_body: np.ndarray,
    pad_mm: float,
    slices_per_chunk: int,
) -> Iterator[tuple[AnatomyStructure, IndexBox]]:
    """Each structure with the index box its bounds (padded) cover, chunk of slices by chunk.

    Chunks come in slice order and structures in paint order within a chunk; a structure
    whose bounds miss a chunk is skipped there, so it is evaluated only where it can be.
    """
    ni, nj, nk = geometry.shape_ijk
    spacing = np.asarray(geometry.spacing_mm)
    index_from_body = (geometry.direction.T @ lps_from_body[:3, :3]) / spacing[:, None]
    index_offset = geometry.direction.T @ (lps_from_body[:3, 3] - geometry.origin_mm) / spacing
    body_from_index = body_from_lps[:3, :3] @ (geometry.direction * spacing[None, :])
    body_offset = body_from_lps[:3, :3] @ np.asarray(geometry.origin_mm) + body_from_lps[:3, 3]
    unit_box = np.array(np.meshgrid([0, 1], [0, 1], [0, 1], indexing="ij")).reshape(3, -1).T
    for k0 in range(0, nk, slices_per_chunk):
        k1 = min(nk, k0 + slices_per_chunk)
        corners = unit_box * [ni - 1, nj - 1, k1 - 1 - k0] + [0, 0, k0]
        chunk_z = (corners @ body_from_index.T + body_offset)[:, 2]
        for structure in structures:
            lo, hi = (np.array(b, dtype=float) for b in structure.bounds_mm)
            lo[2], hi[2] = max(lo[2], chunk_z.min()), min(hi[2], chunk_z.max())
            if lo[2] > hi[2] + pad_mm:
                continue
            lo, hi = lo - pad_mm, hi + pad_mm
            box = (unit_box * (hi - lo) + lo) @ index_from_body.T + index_offset
            i0, j0, ka = np.maximum(np.floor(box.min(axis=0)).astype(int), [0, 0, k0])
            i1, j1, kb = np.minimum(np.ceil(box.max(axis=0)).astype(int) + 1, [ni, nj, k1])
            if i1 <= i0 or j1 <= j0 or kb <= ka:
                continue
            yield structure, (ka, kb, j0, j1, i0, i1)


def _sub_voxel_offsets(spacing_mm: np.ndarray, step_mm: float) -> np.ndarray:
    """Stratified offsets (M, 3) in index units, inside (-0.5, 0.5)^3, ~step_mm apart."""
    counts = np.clip(np.ceil(spacing_mm / step_mm), 2, 24).astype(int)
    axes = [(np.arange(n) + 0.5) / n - 0.5 for n in counts]
    grid = np.meshgrid(*axes, indexing="ij")
    return np.stack([g.ravel() for g in grid], axis=1)


def lesion_fraction_render(
    lesion: LesionAtStudy, geometry: ScanGeometry, body_from_lps: np.ndarray
) -> LesionFraction | None:
    """The lesion's partial-volume occupancy of each voxel box, or None when absent.

    Voxels whose whole box is certainly inside or outside (from rho's bounds and
    Lipschitz constant) get 1 or 0; the others are sampled on a sub-voxel lattice fine
    enough (about R/12, 0.1-0.6 mm) that the summed volume error is well under 1 %.
    """
    if lesion.volume_ml <= 0:
        return None
    shape = lesion.shape
    spacing = np.asarray(geometry.spacing_mm)
    lps_from_body = np.linalg.inv(body_from_lps)
    centre_lps = lps_from_body[:3, :3] @ np.asarray(shape.centre_body_mm) + lps_from_body[:3, 3]
    # The inverse affine of the grid: index = (D^T (lps - origin)) / spacing.
    centre_idx = (geometry.direction.T @ (centre_lps - np.asarray(geometry.origin_mm))) / spacing
    reach = shape.bounding_radius_mm(lesion.volume_ml) + float(np.max(spacing))
    half_idx = reach / spacing
    lo = np.maximum(np.floor(centre_idx - half_idx).astype(int), 0)
    hi = np.minimum(np.ceil(centre_idx + half_idx).astype(int) + 1, np.asarray(geometry.shape_ijk))
    if np.any(hi <= lo):
        return None
    (i0, j0, k0), (i1, j1, k1) = lo, hi
    x, y, z = body_coordinates(geometry, body_from_lps, (k0, k1, j0, j1, i0, i1), dtype=np.float64)
    scale = shape.scale_for_volume_mm(lesion.volume_ml)
    ref = shape.reference_point_body_mm(lesion.volume_ml)
    rel = np.stack([x - ref[0], y - ref[1], z - ref[2]], axis=-1)
    dist = np.linalg.norm(rel, axis=-1)
    surface = scale * shape.rho(rel / np.maximum(dist, 1e-9)[..., None])
    rho_min, rho_max = shape.rho_bounds
    half_diagonal = 0.5 * float(np.linalg.norm(spacing))
    # How far the surface radius can change across a voxel seen from the reference point.
    angle = np.minimum(np.pi / 2 * half_diagonal / np.maximum(dist - half_diagonal, 1e-9), np.pi)
    margin = half_diagonal + scale * shape.rho_lipschitz * angle
    inside = ((surface - dist) > margin) | (dist + half_diagonal < scale * rho_min)
    outside = ((dist - surface) > margin) | (dist - half_diagonal > scale * rho_max)
    fraction = inside.astype(np.float32)
    boundary = np.argwhere(~inside & ~outside)
    if len(boundary):
        offsets = _sub_voxel_offsets(spacing, float(np.clip(scale / 12.0, 0.1, 0.6)))
        affine = body_from_lps[:3, :3] @ (geometry.direction * spacing[None, :])
        base = np.stack([x, y, z], axis=-1)[tuple(boundary.T)]
        sub = offsets[:, [0, 1, 2]] @ affine.T  # index offsets (i, j, k) to body mm
        chunk = max(1, 2_000_000 // len(offsets))
        for start in range(0, len(boundary), chunk):
            points = base[start : start + chunk, None, :] + sub[None, :, :] - ref
            d = np.linalg.norm(points, axis=-1)
            hit = d < scale * shape.rho(points / np.maximum(d, 1e-12)[..., None])
            idx = boundary[start : start + chunk]
            fraction[idx[:, 0], idx[:, 1], idx[:, 2]] = hit.mean(axis=1)
    return LesionFraction(lesion.lesion_id, (int(k0), int(j0), int(i0)), fraction)


def _anatomy_paint(
    anatomy: BodyAnatomy,
    geometry: ScanGeometry,
    body_from_lps: np.ndarray,
    hu: np.ndarray,
    *,
    voxel_mm: float,
    chunk: int,
) -> None:
    """Paint the anatomy into ``hu`` ([k, j, i]), each structure only inside its bounds."""
    hu.fill(HU_AIR)
    boxes = structure_boxes(
        anatomy_structures(anatomy),
        geometry,
        body_from_lps=body_from_lps,
        lps_from_body=np.linalg.inv(body_from_lps),
        pad_mm=2.0 * voxel_mm + float(np.max(geometry.spacing_mm)),
        slices_per_chunk=chunk,
    )
    for structure, (ka, kb, j0, j1, i0, i1) in boxes:
        x, y, z = body_coordinates(geometry, body_from_lps, (ka, kb, j0, j1, i0, i1))
        fraction = antialias_fraction(structure.signed_distance(x, y, z), voxel_mm)
        hu_blend(hu[ka:kb, j0:j1, i0:i1], fraction, structure.hu)


def _lesions_paint(
    lesions: Sequence[LesionAtStudy],
    geometry: ScanGeometry,
    body_from_lps: np.ndarray,
    hu: np.ndarray,
) -> dict[str, LesionFraction]:
    """Cover ``hu`` by each lesion's CT number over its occupancy; return the occupancies."""
    fractions: dict[str, LesionFraction] = {}
    for lesion in lesions:
        frac = lesion_fraction_render(lesion, geometry, body_from_lps)
        if frac is None:
            continue
        fractions[lesion.lesion_id] = frac
        k0, j0, i0 = frac.start_kji
        nk_, nj_, ni_ = frac.fraction.shape
        box = hu[k0 : k0 + nk_, j0 : j0 + nj_, i0 : i0 + ni_]
        box += frac.fraction * (lesion.shape.hu - box)
    return fractions


def _scanner_blur(hu: np.ndarray, geometry: ScanGeometry, psf_fwhm_mm: float) -> None:
    """Slice sensitivity, then the in-plane point spread function, both sum-preserving."""
    # Slice sensitivity: a slab of slice_thickness sampled every slice spacing.
    spacing_k = geometry.spacing_mm[2]
    extra = max(geometry.slice_thickness_mm**2 - spacing_k**2, 0.0)
    if extra > 1e-6:
        sigma_k = np.sqrt(extra) / 2.3548 / spacing_k
        ndimage.gaussian_filter1d(hu, sigma_k, axis=0, output=hu, mode="nearest")
    if psf_fwhm_mm > 0:
        sigma_j = psf_fwhm_mm / 2.3548 / geometry.spacing_mm[1]
        sigma_i = psf_fwhm_mm / 2.3548 / geometry.spacing_mm[0]
        ndimage.gaussian_filter(hu, (0, sigma_j, sigma_i), output=hu, mode="nearest")


def _gaussian_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigma_px: float
) -> np.ndarray:
    """Unit-variance Gaussian noise, correlated in-plane by a Gaussian of ``sigma_px``."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    if sigma_px <= 0:
        return noise
    delta = np.zeros((1, 33, 33), dtype=np.float64)
    delta[0, 16, 16] = 1.0
    gain = float(np.sqrt((ndimage.gaussian_filter(delta, (0, sigma_px, sigma_px)) ** 2).sum()))
    ndimage.gaussian_filter(noise, (0, sigma_px, sigma_px), output=noise, mode="wrap")
    noise /= gain
    return noise


def _noise_add(
    hu: np.ndarray,
    rng: np.random.Generator,
    *,
    noise_hu: float,
    correlation_px: float,
    slices_per_chunk: int,
) -> None:
    """Add scanner noise of standard deviation ``noise_hu``, a chunk of slices at a time."""
    nk, nj, ni = hu.shape
    for k0 in range(0, nk, slices_per_chunk):
        k1 = min(nk, k0 + slices_per_chunk)
        hu[k0:k1] += noise_hu * _gaussian_noise(rng, (k1 - k0, nj, ni), correlation_px)


def phantom_render(
    *,
    anatomy: BodyAnatomy,
    lesions: list[LesionAtStudy],
    geometry: ScanGeometry,
    pose_body_to_lps: np.ndarray,
    noise_hu: float,
    rng: np.random.Generator,
    psf_fwhm_mm: float = 1.0,
    noise_correlation_px: float = 0.6,
    frame_of_reference_uid: str = "",
    slices_per_chunk: int = 16,
) -> RenderedStudy:
    """Render one acquisition: anatomy + lesions (partial volume), blur, then noise (HU)."""
    body_from_lps = np.linalg.inv(np.asarray(pose_body_to_lps, dtype=float))
    volume = geometry.empty_volume(frame_of_reference_uid)
    hu = volume.array
    pixel_mm = float(min(geometry.spacing_mm[:2]))
    _anatomy_paint(anatomy, geometry, body_from_lps, hu, voxel_mm=pixel_mm, chunk=slices_per_chunk)
    fractions = _lesions_paint(lesions, geometry, body_from_lps, hu)
    _scanner_blur(hu, geometry, psf_fwhm_mm)
    if noise_hu > 0:
        _noise_add(
            hu,
            rng,
            noise_hu=noise_hu,
            correlation_px=noise_correlation_px,
            slices_per_chunk=slices_per_chunk,
        )
    return RenderedStudy(volume=volume, lesion_fractions=fractions)
