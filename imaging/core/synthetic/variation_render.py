"""Render training crops of a varied scene the way a scanner and the segmenter would see them.

A crop is a cube on the segmenter's grid (LPS, 1.5 mm) around a chosen point. It is
first rendered on a native acquisition grid around it (pixel 0.5-1.5 mm, a tenth of
the time 2.5-3.2 mm, as the demo's coarse studies; slice thickness 0.6-5 mm with
overlapping reconstructions sometimes), with the body rotated by up to 15 degrees;
then the scanner's effects: slice sensitivity, a smooth, standard or sharp
reconstruction kernel (edge overshoot), beam-hardening cupping, streaks, and noise
correlated in-plane and between slices with a band-pass (ramp-like) spectrum. Last, it
is resampled linearly onto the model grid as `network.segment_volume` does. Truth comes
analytically on the model grid: organ codes as painted and each lesion's exact
partial-volume occupancy. Lesions the acquisition's noise hides are left out, painted
and labelled neither (`variation_visibility`); `cohort_acquisition_sample` acquires as
the cohort generator does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from imaging.core.geometry.triples import ivec3
from imaging.core.synthetic.anatomy import HU_AIR
from imaging.core.synthetic.anatomy_structures import (
    AnatomyStructure,
    antialias_fraction,
    hu_blend,
)
from imaging.core.synthetic.phantom import (
    ScanGeometry,
    body_coordinates,
    lesion_fraction_render,
    structure_boxes,
)
from imaging.core.synthetic.variation import ORGAN_OF_STRUCTURE, TrainingScene, capsule_distance
from imaging.core.synthetic.variation_lesions import ProfiledLesion
from imaging.core.synthetic.variation_visibility import (
    VISIBLE_Z,
    NoiseModel,
    lesion_contrast_z,
)

ORGAN_CODES = {"lung": 1, "liver": 2}
LESION_CODES = {"lung": 3, "liver": 4}


@dataclass(frozen=True)
class Acquisition:
    """How one crop is acquired and reconstructed (``pose``: scene -> LPS, rotation only)."""

    pixel_mm: float
    slice_spacing_mm: float
    slice_thickness_mm: float
    psf_fwhm_mm: float
    sharpen: float
    noise_hu: float
    noise_grain_px: float
    noise_z_px: float
    streaks: int
    streak_hu: float
    cupping_hu: float
    pose: np.ndarray
    noise_coarse_weight: float = 0.6  # band-pass; 0 for the cohort's plain correlated noise

    def noise_model(self) -> NoiseModel:
        return NoiseModel(self.noise_hu, self.noise_grain_px, self.noise_z_px,
                          self.noise_coarse_weight)  # fmt: skip

    def blur_sigma_px(self) -> tuple[float, float, float]:
        """Gaussian sigmas [k, j, i] of the slice profile and the kernel, as rendered."""
        extra = max(self.slice_thickness_mm**2 - self.slice_spacing_mm**2, 0.0)
        sigma_k = np.sqrt(extra) / 2.3548 / self.slice_spacing_mm if extra > 1e-6 else 0.0
        sigma = self.psf_fwhm_mm / 2.3548 / self.pixel_mm
        return (float(sigma_k), float(sigma), float(sigma))


def _rotation(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1 - np.cos(angle_rad)) * (k @ k)


def acquisition_sample(rng: np.random.Generator) -> Acquisition:
    """Pixel, slices, kernel, noise, artefacts and a rotation of up to 15 degrees."""
    pixel = float(rng.uniform(2.5, 3.2) if rng.random() < 0.1 else rng.uniform(0.5, 1.5))
    thickness = float(np.exp(rng.uniform(np.log(0.6), np.log(5.0))))
    spacing = thickness * (float(rng.uniform(0.5, 1.0)) if rng.random() < 0.3 else 1.0)
    kernel = rng.choice(["smooth", "standard", "sharp"], p=[0.3, 0.45, 0.25])
    psf = {"smooth": rng.uniform(1.2, 2.0), "standard": rng.uniform(0.8, 1.3),
           "sharp": rng.uniform(0.5, 0.9)}[kernel]  # fmt: skip
    pose = np.eye(4)
    axis = rng.normal(size=3) * [0.4, 0.4, 1.0]
    pose[:3, :3] = _rotation(axis, np.deg2rad(float(rng.uniform(0.0, 15.0))))
    return Acquisition(
        pixel_mm=pixel,
        slice_spacing_mm=float(spacing),
        slice_thickness_mm=thickness,
        psf_fwhm_mm=float(psf),
        sharpen=float(rng.uniform(0.3, 1.2)) if kernel == "sharp" else 0.0,
        noise_hu=float(np.exp(rng.uniform(np.log(4.0), np.log(45.0)))),
        noise_grain_px=float(rng.uniform(0.4, 1.6)),
        noise_z_px=float(rng.uniform(0.0, 1.0)),
        streaks=int(rng.poisson(1.0)) if rng.random() < 0.35 else 0,
        streak_hu=float(rng.uniform(20.0, 120.0)),
        cupping_hu=float(rng.uniform(0.0, 40.0)) if rng.random() < 0.4 else 0.0,
        pose=pose,
    )


def cohort_acquisition_sample(rng: np.random.Generator) -> Acquisition:
    """The cohort generator's acquisitions (`synthetic.acquisition`), for its plain phantom.

    Half its small preset (the demo's and the tests' studies: 2.5-3.2 mm pixels, 4.5-5
    mm slices), half its full one; a 1 mm kernel and 8-25 HU of noise correlated in-plane
    only (0.6 pixel), not band-passed: noise the variation generator's own acquisitions
    do not make, coarse and homogeneous, whose blobs a network must learn to leave alone.
    """
    if rng.random() < 0.5:
        pixel, thickness = float(rng.uniform(2.5, 3.2)), float(rng.choice([4.5, 5.0]))
    else:
        pixel = float(rng.uniform(0.6, 1.0))
        thickness = float(rng.choice([1.25, 1.5, 2.0, 2.5, 3.0, 5.0]))
    pose = np.eye(4)
    axis = rng.normal(size=3) * [0.4, 0.4, 1.0]
    pose[:3, :3] = _rotation(axis, np.deg2rad(float(rng.uniform(0.0, 10.0))))
    return Acquisition(
        pixel_mm=pixel,
        slice_spacing_mm=thickness,
        slice_thickness_mm=thickness,
        psf_fwhm_mm=1.0,
        sharpen=0.0,
        noise_hu=float(rng.uniform(8.0, 25.0)),
        noise_grain_px=0.6,
        noise_z_px=0.0,
        streaks=0,
        streak_hu=0.0,
        cupping_hu=0.0,
        pose=pose,
        noise_coarse_weight=0.0,
    )


# --------------------------------------------------------------------------- painting
def _scene_boxes(scene: TrainingScene, geometry: ScanGeometry, pose: np.ndarray, pad_mm: float):
    """(unwarped structure, index box, warped coordinates there) for each structure in
    paint order; the warp is evaluated once over the whole grid, not once per structure."""
    body_from_lps = np.linalg.inv(pose)
    ni, nj, nk = geometry.shape_ijk
    x, y, z = body_coordinates(geometry, body_from_lps, (0, nk, 0, nj, 0, ni))
    wx, wy, wz = scene.warp.apply(x, y, z)
    base = {id(w): b for w, b in zip(scene.structures, scene.base_structures, strict=True)}
    boxes = structure_boxes(scene.structures, geometry, body_from_lps=body_from_lps,
                            lps_from_body=pose, pad_mm=pad_mm, slices_per_chunk=max(nk, 1))  # fmt: skip
    for structure, (ka, kb, j0, j1, i0, i1) in boxes:
        box = (slice(ka, kb), slice(j0, j1), slice(i0, i1))
        yield base[id(structure)], (ka, kb, j0, j1, i0, i1), (wx[box], wy[box], wz[box])


def _paint(structures, geometry: ScanGeometry, pose: np.ndarray, hu: np.ndarray, voxel_mm: float):
    """Paint structures given in the scene frame (no warp) into ``hu``."""
    body_from_lps = np.linalg.inv(pose)
    boxes = structure_boxes(structures, geometry, body_from_lps=body_from_lps, lps_from_body=pose,
                            pad_mm=2.0 * voxel_mm, slices_per_chunk=max(geometry.shape_ijk[2], 1))  # fmt: skip
    for structure, (ka, kb, j0, j1, i0, i1) in boxes:
        x, y, z = body_coordinates(geometry, body_from_lps, (ka, kb, j0, j1, i0, i1))
        fraction = antialias_fraction(structure.signed_distance(x, y, z), voxel_mm)
        hu_blend(hu[ka:kb, j0:j1, i0:i1], fraction, structure.hu)


def _scene_paint(scene: TrainingScene, geometry: ScanGeometry, pose, hu: np.ndarray, voxel_mm):
    extras = scene.extras
    for structure, (ka, kb, j0, j1, i0, i1), xyz in _scene_boxes(scene, geometry, pose,
                                                                 2.0 * voxel_mm):  # fmt: skip
        fraction = antialias_fraction(structure.signed_distance(*xyz), voxel_mm)
        value = structure.hu
        if structure.name in ("right_lung", "left_lung") and extras.lung_hu != -850.0:
            # Parenchyma of this scene's density, denser towards the dependent side.
            value = extras.lung_hu + extras.lung_gradient_hu * np.clip(xyz[1] / 80.0, -1.0, 1.0)
        box = hu[ka:kb, j0:j1, i0:i1]
        box += fraction * (value - box)


def _lesions_paint(
    lesions, geometry: ScanGeometry, acq: Acquisition, hu: np.ndarray, voxel_mm
) -> tuple[ProfiledLesion, ...]:
    """Paint the lesions the acquisition lets one see (`variation_visibility`); returns them."""
    pose = acq.pose
    body_from_lps = np.linalg.inv(pose)
    noise, blur = acq.noise_model(), acq.blur_sigma_px()
    spicules, visible = [], []
    for lesion in lesions:
        frac = lesion_fraction_render(lesion.at_study(), geometry, body_from_lps)
        if frac is None:
            visible.append(lesion)  # outside the native grid: nothing to see or to paint
            continue
        k0, j0, i0 = frac.start_kji
        nk, nj, ni = frac.fraction.shape
        x, y, z = body_coordinates(geometry, body_from_lps, (k0, k0 + nk, j0, j0 + nj, i0, i0 + ni))
        box = hu[k0 : k0 + nk, j0 : j0 + nj, i0 : i0 + ni]
        added = frac.fraction * (lesion.hu_at(x, y, z) - box)
        if lesion_contrast_z(added, frac.fraction, blur_sigma_px=blur, noise=noise) < VISIBLE_Z:
            continue
        visible.append(lesion)
        box += added
        for s in lesion.spicules:
            p0, p1 = np.asarray(s.start_mm), np.asarray(s.end_mm)
            lo, hi = np.minimum(p0, p1) - s.radius_mm - 1, np.maximum(p0, p1) + s.radius_mm + 1
            spicules.append(AnatomyStructure("spicule", lesion.shape.hu,
                                             capsule_distance(p0, p1, s.radius_mm),
                                             (tuple(lo), tuple(hi))))  # fmt: skip
    if spicules:
        _paint(spicules, geometry, pose, hu, voxel_mm)
    return tuple(visible)


def _scanner_effects(hu: np.ndarray, acq: Acquisition, rng: np.random.Generator) -> None:
    """Slice sensitivity, kernel, cupping, streaks and correlated noise, in place."""
    sigma_k, sigma, _ = acq.blur_sigma_px()
    if sigma_k:
        ndimage.gaussian_filter1d(hu, sigma_k, axis=0, output=hu, mode="nearest")
    ndimage.gaussian_filter(hu, (0, sigma, sigma), output=hu, mode="nearest")
    if acq.sharpen:
        blurred = ndimage.gaussian_filter(hu, (0, 1.5, 1.5), mode="nearest")
        hu += acq.sharpen * (hu - blurred)
    nk, nj, ni = hu.shape
    body = hu > -500.0
    if acq.cupping_hu:
        jj, ii = np.meshgrid(np.linspace(-1, 1, nj), np.linspace(-1, 1, ni), indexing="ij")
        shift = rng.uniform(-0.8, 0.8, 2)
        cup = np.exp(-((jj - shift[0]) ** 2 + (ii - shift[1]) ** 2) / 0.6).astype(np.float32)
        hu -= acq.cupping_hu * cup[None] * body
    for _ in range(acq.streaks):
        angle = rng.uniform(0, np.pi)
        jj, ii = np.meshgrid(np.arange(nj), np.arange(ni), indexing="ij")
        d = (ii - rng.uniform(0, ni)) * np.sin(angle) - (jj - rng.uniform(0, nj)) * np.cos(angle)
        width = rng.uniform(0.6, 2.0)
        streak = np.exp(-0.5 * (d / width) ** 2) - 0.5 * np.exp(-0.5 * (d / (3 * width)) ** 2)
        along = np.exp(-0.5 * ((np.arange(nk) - rng.uniform(0, nk)) / rng.uniform(1.0, 6.0)) ** 2)
        hu += (acq.streak_hu * rng.choice([-1.0, 1.0]) * along[:, None, None]
               * streak[None].astype(np.float32))  # fmt: skip
    band = acq.noise_model().filter(rng.standard_normal(hu.shape, dtype=np.float32), mode="reflect")
    band /= max(float(band.std()), 1e-6)
    hu += acq.noise_hu * band


# --------------------------------------------------------------------------- a crop
@dataclass(frozen=True, eq=False)
class TrainingCrop:
    """A cube on the model grid: HU, organ codes, lesion occupancy / class / identity.

    Arrays are [k, j, i]; ``lesion_index`` is 1 + the position in ``lesions`` where that
    lesion occupies at least half the voxel.
    """

    hu: np.ndarray
    organ: np.ndarray
    lesion_fraction: np.ndarray
    lesion_code: np.ndarray
    lesion_index: np.ndarray
    lesions: tuple[ProfiledLesion, ...]


def _native_geometry(centre_lps, size_mm: float, acq: Acquisition, margin_mm: float):
    pixel = max(acq.pixel_mm, 1.0)  # finer pixels cost time and change little at 1.5 mm
    spacing = (pixel, pixel, max(acq.slice_spacing_mm, 1.0))
    extent = size_mm + 2 * margin_mm + 2.5 * acq.slice_thickness_mm
    shape = ivec3(np.ceil(extent / s) + 1 for s in spacing)
    return ScanGeometry.centred(centre_lps_mm=centre_lps, shape_ijk=shape, spacing_mm=spacing,
                                direction=np.eye(3), slice_thickness_mm=acq.slice_thickness_mm)  # fmt: skip


def _labels(scene, lesions, geometry: ScanGeometry, pose: np.ndarray):
    body_from_lps = np.linalg.inv(pose)
    ni, nj, nk = geometry.shape_ijk
    organ = np.zeros((nk, nj, ni), dtype=np.uint8)
    for structure, (ka, kb, j0, j1, i0, i1), xyz in _scene_boxes(scene, geometry, pose, 3.0):
        code = ORGAN_CODES.get(ORGAN_OF_STRUCTURE.get(structure.name, ""), 0)
        organ[ka:kb, j0:j1, i0:i1][structure.signed_distance(*xyz) < 0] = code
    fraction = np.zeros(organ.shape, dtype=np.float32)
    index = np.zeros(organ.shape, dtype=np.uint8)
    codes = np.zeros(organ.shape, dtype=np.uint8)
    for number, lesion in enumerate(lesions, start=1):
        rendered = lesion_fraction_render(lesion.at_study(), geometry, body_from_lps)
        if rendered is None:
            continue
        k0, j0, i0 = rendered.start_kji
        nk_, nj_, ni_ = rendered.fraction.shape
        box = (slice(k0, k0 + nk_), slice(j0, j0 + nj_), slice(i0, i0 + ni_))
        fraction[box] += rendered.fraction
        index[box][rendered.fraction >= 0.5] = number
        codes[box][rendered.fraction > 0] = LESION_CODES[lesion.organ]
    np.clip(fraction, 0.0, 1.0, out=fraction)
    return organ, fraction, codes, index


def crop_render(
    *,
    scene: TrainingScene,
    lesions: tuple[ProfiledLesion, ...],
    centre_scene_mm: np.ndarray,
    acquisition: Acquisition,
    rng: np.random.Generator,
    size: int = 64,
    spacing_mm: float = 1.5,
) -> TrainingCrop:
    """A ``size``-voxel cube on the model grid (LPS, ``spacing_mm``) around a scene point."""
    pose = acquisition.pose
    centre_lps = pose[:3, :3] @ np.asarray(centre_scene_mm, dtype=float) + pose[:3, 3]
    size_mm = size * spacing_mm
    native = _native_geometry(centre_lps, size_mm, acquisition, margin_mm=3.0)
    hu = np.full((native.shape_ijk[2], native.shape_ijk[1], native.shape_ijk[0]), HU_AIR,
                 dtype=np.float32)  # fmt: skip
    voxel = float(native.spacing_mm[0])
    _scene_paint(scene, native, pose, hu, voxel)
    lesions = _lesions_paint(lesions, native, acquisition, hu, voxel)
    _scanner_effects(hu, acquisition, rng)
    model = ScanGeometry.centred(centre_lps_mm=centre_lps, shape_ijk=(size, size, size),
                                 spacing_mm=(spacing_mm,) * 3, direction=np.eye(3),
                                 slice_thickness_mm=spacing_mm)  # fmt: skip
    # Model voxel centres as native (continuous) indices; both grids are LPS-aligned.
    axes = []
    for a in range(3):
        lps = model.origin_mm[a] + spacing_mm * np.arange(size)
        axes.append((lps - native.origin_mm[a]) / native.spacing_mm[a])
    kk, jj, ii = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    resampled = ndimage.map_coordinates(hu, [kk, jj, ii], order=1, mode="nearest")
    organ, fraction, code, index = _labels(scene, lesions, model, pose)
    return TrainingCrop(resampled.astype(np.float32), organ, fraction, code, index, lesions)
