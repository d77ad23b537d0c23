"""Lesions measured with their outer layer (ground glass, a cystic lesion's wall); lesions
with none keep the one-level volume.

The network outlines a part-solid nodule's solid core and a cystic lesion's fluid; the
lesion is the layer around them too. Each scene is the lesion's exact occupancy on the
study's grid, blurred as a scanner blurs it, with noise, and the network's candidate is
the core's outline on the 1.5 mm model grid, a little wide.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from imaging.core.geometry.volume import Volume

from .test_measure import CENTRE, FFS, HFS, measured_on, occupancy, occupancy_on

LUNG, GLASS, SOLID = -860.0, -530.0, 30.0


def _study(spacing_mm, direction, extent_mm: float = 56.0) -> Volume:
    """An empty study grid around CENTRE (the ellipsoid helper's, with nothing in it)."""
    return occupancy(semi_axes_mm=(0.1,) * 3, centre_lps_mm=CENTRE, spacing_mm=spacing_mm,
                     direction=direction, extent_mm=extent_mm)  # fmt: skip


def _ball(grid: Volume, radius_mm: float, offset_mm=(0.0, 0.0, 0.0)) -> np.ndarray:
    return occupancy_on(
        grid, semi_axes_mm=(radius_mm,) * 3, centre_lps_mm=CENTRE + np.asarray(offset_mm)
    ).array


def _scanned(grid: Volume, hu: np.ndarray, *, blur_mm: float, noise_hu: float, seed: int = 3):
    """Blurred by the scanner (in-plane ``blur_mm``, through-plane the slice) and noisy."""
    sigma = [max(grid.spacing_mm[2] / 2.355, blur_mm), blur_mm, blur_mm]
    sigma_voxels = np.asarray(sigma) / np.asarray(grid.spacing_mm[::-1])
    hu = ndimage.gaussian_filter(hu, sigma_voxels)
    hu = hu + np.random.default_rng(seed).normal(0.0, noise_hu, hu.shape)
    return grid.with_array(hu.astype(np.float32))


def _measured(
    study: Volume, candidate_radius_mm: float, offset_mm=(0.0, 0.0, 0.0), organ: str = "lung"
):
    """`lesions_measure` with the network's candidate: a ball on the 1.5 mm model grid."""
    model = occupancy(semi_axes_mm=(candidate_radius_mm,) * 3,
                      centre_lps_mm=CENTRE + np.asarray(offset_mm), spacing_mm=(1.5,) * 3,
                      direction=HFS, extent_mm=56.0)  # fmt: skip
    return measured_on(study, model, organ)


@pytest.mark.parametrize(
    ("spacing_mm", "direction", "glass_mm", "core_mm", "noise_hu"),
    [
        ((0.8, 0.8, 1.25), HFS, 9.0, 4.0, 20.0),
        ((0.7, 0.7, 0.625), FFS, 7.0, 3.0, 30.0),
        ((1.0, 1.0, 2.5), HFS, 9.0, 4.0, 25.0),
        ((1.2, 1.2, 5.0), FFS, 10.0, 5.0, 20.0),
    ],
)
def test_a_part_solid_nodule_is_measured_with_its_ground_glass(
    spacing_mm, direction, glass_mm, core_mm, noise_hu
):
    grid = _study(spacing_mm, direction)
    core_offset = (1.5, -1.0, 0.5)
    glass, core = _ball(grid, glass_mm), _ball(grid, core_mm, core_offset)
    hu = LUNG + glass * (GLASS - LUNG) + core * (SOLID - GLASS)
    study = _scanned(grid, hu, blur_mm=0.7, noise_hu=noise_hu)

    out = _measured(study, core_mm + 1.0, core_offset)

    truth_ml = 4 / 3 * np.pi * glass_mm**3 / 1000
    core_ml = 4 / 3 * np.pi * core_mm**3 / 1000
    assert out.volume_method == "two_level" and out.volume_layer == "ground_glass"
    assert out.volume_ml == pytest.approx(truth_ml, rel=0.12)
    assert out.background_hu == pytest.approx(LUNG, abs=15.0)
    assert out.core_hu == pytest.approx(GLASS, abs=60.0)
    # The solid part's volume is kept beside it: the core and some of the glass it sits in.
    assert core_ml * 0.7 < out.volume_core_ml < 0.6 * truth_ml


def test_a_ground_glass_nodule_wider_than_its_outline_is_measured_whole():
    grid = _study((0.8, 0.8, 1.25), HFS)
    hu = LUNG + _ball(grid, 8.0) * (-620.0 - LUNG)
    study = _scanned(grid, hu, blur_mm=0.8, noise_hu=25.0)

    out = _measured(study, 4.0)  # the network outlines the middle only

    assert out.volume_method == "two_level"
    assert out.volume_ml == pytest.approx(4 / 3 * np.pi * 8.0**3 / 1000, rel=0.12)


@pytest.mark.parametrize(
    ("spacing_mm", "blur_mm", "noise_hu"),
    [((0.7, 0.7, 0.625), 1.0, 30.0), ((0.8, 0.8, 1.25), 0.7, 20.0), ((1.2, 1.2, 5.0), 0.8, 20.0)],
)
def test_a_solid_nodule_keeps_its_one_level_volume(spacing_mm, blur_mm, noise_hu):
    """Its blurred edge is not ground glass: thin slices, thick slices, a sharp kernel."""
    grid = _study(spacing_mm, HFS)
    hu = LUNG + _ball(grid, 6.0) * (SOLID - LUNG)
    study = _scanned(grid, hu, blur_mm=blur_mm, noise_hu=noise_hu)

    out = _measured(study, 7.0)

    assert out.volume_method == "partial_volume" and out.volume_core_ml is None
    assert out.volume_ml == pytest.approx(4 / 3 * np.pi * 6.0**3 / 1000, rel=0.06)


def test_a_solid_nodule_beside_a_bronchus_is_not_grown_along_it():
    grid = _study((0.8, 0.8, 1.25), HFS)
    hu = LUNG + _ball(grid, 5.0) * (SOLID - LUNG)
    # A bronchus running head-foot past the nodule: a 40 HU wall round air, touching it.
    k, j, i = np.meshgrid(*[np.arange(n) for n in grid.array.shape], indexing="ij")
    lps = grid.index_to_lps(np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(float))
    off = np.hypot(lps[:, 0] - CENTRE[0] - 8.5, lps[:, 1] - CENTRE[1]).reshape(hu.shape)
    hu = np.where((off >= 2.0) & (off <= 3.3), 40.0, hu)
    hu = np.where(off < 2.0, -990.0, hu)
    study = _scanned(grid, hu, blur_mm=0.8, noise_hu=20.0)

    out = _measured(study, 6.0)

    assert out.volume_method != "two_level"


LIVER, WALL, FLUID, FAT = 95.0, 50.0, 12.0, -100.0


@pytest.mark.parametrize(
    ("spacing_mm", "direction", "noise_hu"),
    [((0.8, 0.8, 1.0), HFS, 20.0), ((0.7, 0.7, 0.625), FFS, 25.0), ((1.2, 1.2, 1.25), HFS, 18.0)],
)
def test_a_cystic_lesion_is_measured_with_its_wall(spacing_mm, direction, noise_hu):
    grid = _study(spacing_mm, direction)
    lesion, fluid = _ball(grid, 10.0), _ball(grid, 5.5)
    hu = LIVER + lesion * (WALL - LIVER) + fluid * (FLUID - WALL)
    study = _scanned(grid, hu, blur_mm=0.8, noise_hu=noise_hu)

    out = _measured(study, 6.5, organ="liver")  # the fluid and the inner wall

    assert out.volume_method == "two_level" and out.volume_layer == "hypodense_wall"
    assert out.volume_ml == pytest.approx(4 / 3 * np.pi * 10.0**3 / 1000, rel=0.12)
    assert out.background_hu == pytest.approx(LIVER, abs=5.0)
    assert out.volume_core_ml < 0.7 * out.volume_ml


def test_a_hypodense_lesion_in_the_liver_keeps_its_one_level_volume():
    grid = _study((0.8, 0.8, 1.25), HFS)
    hu = LIVER + _ball(grid, 7.0) * (WALL - LIVER)
    study = _scanned(grid, hu, blur_mm=0.8, noise_hu=20.0)

    out = _measured(study, 7.5, organ="liver")

    assert out.volume_method == "partial_volume"
    assert out.volume_ml == pytest.approx(4 / 3 * np.pi * 7.0**3 / 1000, rel=0.06)


def test_a_wall_is_not_grown_into_the_fat_and_muscle_beyond_the_liver():
    """A cystic lesion by the liver's edge: beyond it fat, then a band of muscle darker
    than the liver; the layer stops at what is reached within 5 mm of the region."""
    grid = _study((0.8, 0.8, 1.25), HFS)
    lesion, fluid = _ball(grid, 9.0), _ball(grid, 5.0)
    k, j, i = np.meshgrid(*[np.arange(n) for n in grid.array.shape], indexing="ij")
    lps = grid.index_to_lps(np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(float))
    x = (lps[:, 0] - CENTRE[0]).reshape(grid.array.shape)
    background = np.where(x > 11.0, FAT, LIVER)
    background = np.where(x > 16.0, 55.0, background)  # muscle, darker than the liver
    hu = background + lesion * (WALL - background) + fluid * (FLUID - WALL)
    study = _scanned(grid, hu, blur_mm=0.8, noise_hu=20.0)

    out = _measured(study, 6.0, organ="liver")

    assert out.volume_ml < 1.15 * 4 / 3 * np.pi * 9.0**3 / 1000
