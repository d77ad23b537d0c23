"""Click-guided segmentation on phantoms of known truth: a nodule in lung, a hypodense
liver lesion, a nodule touching a vessel, thick slices and a tilted grid; refusals; the
lesion found again at another study; a drawn mask measured."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from imaging.core.geometry.volume import Volume
from imaging.core.segmentation.interactive import click_segment, mask_measure
from imaging.core.segmentation.interactive_region import ClickRefused, ClickSettings
from imaging.core.segmentation.interactive_search import lesion_search

LUNG_HU, NODULE_HU, LIVER_HU, METASTASIS_HU = -850.0, 40.0, 60.0, 20.0


def _phantom(
    *,
    background: float,
    lesion: float,
    radius_mm: float,
    centre_mm=(0.0, 0.0, 0.0),
    spacing=(0.8, 0.8, 2.0),
    shape=(40, 70, 70),
    noise=15.0,
    direction=None,
    seed=0,
    extra=None,
) -> tuple[Volume, np.ndarray, float]:
    """A volume centred on the LPS origin with a sphere (supersampled occupancy, blurred
    like a scanner, with noise); returns it, the true mask and the true volume (ml)."""
    direction = np.eye(3) if direction is None else direction
    nk, nj, ni = shape
    spacing_arr = np.asarray(spacing)
    origin = -direction @ (spacing_arr * (np.array([ni, nj, nk]) - 1) / 2.0)
    grid = Volume(np.zeros(shape, np.float32), tuple(spacing), tuple(origin), direction)
    fraction = np.zeros(shape, np.float32)
    k, j, i = np.indices(shape, dtype=float)
    offsets = [(a, b, c) for a in (-0.25, 0.25) for b in (-0.25, 0.25) for c in (-0.25, 0.25)]
    for di, dj, dk in offsets:
        ijk = np.stack([(i + di).ravel(), (j + dj).ravel(), (k + dk).ravel()], axis=1)
        lps = grid.index_to_lps(ijk).reshape(*shape, 3)
        fraction += (np.linalg.norm(lps - np.asarray(centre_mm), axis=-1) <= radius_mm) / 8.0
    hu = background + fraction * (lesion - background)
    if extra is not None:
        hu = extra(grid, hu)
    hu = ndimage.gaussian_filter(hu, 0.6 / spacing_arr[::-1])
    hu += np.random.default_rng(seed).normal(0.0, noise, shape)
    volume = grid.with_array(hu.astype(np.float32))
    return volume, fraction >= 0.5, 4.0 / 3.0 * np.pi * radius_mm**3 / 1000.0


def _dice(segmented, truth: np.ndarray, volume: Volume) -> float:
    full = np.zeros(truth.shape, bool)
    start = np.round(volume.lps_to_index(np.asarray(segmented.mask.origin_mm))).astype(int)
    nk, nj, ni = segmented.mask.array.shape
    full[start[2] : start[2] + nk, start[1] : start[1] + nj, start[0] : start[0] + ni] = (
        segmented.mask.array > 0
    )
    return 2 * (full & truth).sum() / (full.sum() + truth.sum())


@pytest.mark.parametrize(
    ("background", "lesion", "radius", "organ", "spacing"),
    [
        (LUNG_HU, NODULE_HU, 5.0, "lung", (0.8, 0.8, 2.0)),
        (LUNG_HU, NODULE_HU, 7.0, "lung", (0.7, 0.7, 5.0)),
        (LIVER_HU, METASTASIS_HU, 9.0, "liver", (0.8, 0.8, 2.0)),
    ],
)
def test_a_click_at_the_centre_segments_and_measures_the_lesion(
    background, lesion, radius, organ, spacing
):
    volume, truth, true_ml = _phantom(
        background=background, lesion=lesion, radius_mm=radius, spacing=spacing,
        noise=10.0 if organ == "liver" else 20.0,
    )  # fmt: skip

    result = click_segment(study=volume, seed_lps_mm=[0.4, -0.3, 0.2])

    m = result.measurement
    assert result.organ == organ and m.organ == organ
    assert m.volume_ml == pytest.approx(true_ml, rel=0.12)
    assert m.longest_axial_diameter_mm == pytest.approx(2 * radius, abs=1.6)
    assert m.short_axis_mm == pytest.approx(2 * radius, abs=2.0)
    assert np.linalg.norm(m.centroid_lps_mm) < 1.0
    assert _dice(result, truth, volume) > 0.85
    assert result.look.brighter == (lesion > background)
    assert result.record.parameters["seed_lps_mm"] == pytest.approx([0.4, -0.3, 0.2])
    assert result.record.details["organ_from"] == "surroundings"


def test_a_tilted_grid_gives_the_same_lesion():
    angle = np.radians(20)
    tilt = np.array(
        [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    )
    volume, truth, true_ml = _phantom(
        background=LUNG_HU, lesion=NODULE_HU, radius_mm=6.0, direction=tilt, centre_mm=(3, -2, 1)
    )

    result = click_segment(study=volume, seed_lps_mm=[3.0, -2.0, 1.0])

    assert result.measurement.volume_ml == pytest.approx(true_ml, rel=0.12)
    assert np.linalg.norm(np.subtract(result.measurement.centroid_lps_mm, (3, -2, 1))) < 1.0


def _vessel(grid: Volume, hu: np.ndarray) -> np.ndarray:
    """A 3.2 mm-wide vessel along L through the nodule, across the whole volume."""
    k, j, i = np.indices(hu.shape, dtype=float)
    lps = grid.index_to_lps(np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)).reshape(
        *hu.shape, 3
    )
    inside = np.hypot(lps[..., 1] - 4.0, lps[..., 2]) <= 1.6
    return np.where(inside, NODULE_HU, hu)


def test_a_nodule_on_a_vessel_is_cut_free_of_it():
    volume, truth, true_ml = _phantom(
        background=LUNG_HU, lesion=NODULE_HU, radius_mm=6.0, spacing=(0.8, 0.8, 1.0),
        shape=(50, 70, 70), extra=_vessel,
    )  # fmt: skip

    result = click_segment(study=volume, seed_lps_mm=[0.0, 0.0, 0.0])

    assert result.record.details["leak_cut_mm"] > 0
    assert result.measurement.volume_ml == pytest.approx(true_ml, rel=0.25)
    assert _dice(result, truth, volume) > 0.8


def test_a_click_on_plain_tissue_or_outside_is_refused_with_the_reason():
    volume, _, _ = _phantom(background=LIVER_HU, lesion=METASTASIS_HU, radius_mm=5.0, noise=8.0)

    with pytest.raises(ClickRefused, match="nothing stands out"):
        click_segment(study=volume, seed_lps_mm=[-18.0, 18.0, 0.0])  # liver, not lesion
    with pytest.raises(ClickRefused, match="outside the study"):
        click_segment(study=volume, seed_lps_mm=[500.0, 0.0, 0.0])
    with pytest.raises(ClickRefused, match="seed_lps_mm"):
        click_segment(study=volume, seed_lps_mm=[1.0, float("nan"), 0.0])
    with pytest.raises(ClickRefused, match="outside the box"):
        click_segment(study=volume, seed_lps_mm=[0, 0, 0], box_lps_mm=[[5, 5, 5], [9, 9, 9]])


def test_a_region_that_leaks_is_refused_and_a_box_bounds_it():
    # A 10 mm slab of tissue across the whole volume: no neck separates it from the click.
    def slab(grid, hu):
        k, j, i = np.indices(hu.shape, dtype=float)
        lps = grid.index_to_lps(np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1))
        return np.where(np.abs(lps[:, 2].reshape(hu.shape)) <= 5.0, NODULE_HU, hu)

    volume, _, _ = _phantom(background=LUNG_HU, lesion=NODULE_HU, radius_mm=4.0, extra=slab)
    settings = ClickSettings(reach_mm=20.0)

    with pytest.raises(ClickRefused, match="leaks"):
        click_segment(study=volume, seed_lps_mm=[0, 0, 0], settings=settings)
    box = [[-6, -6, -6], [6, 6, 16]]
    boxed = click_segment(study=volume, seed_lps_mm=[0, 0, 0], box_lps_mm=box, settings=settings)
    assert boxed.measurement.volume_ml <= 12 * 12 * 22 / 1000.0
    assert boxed.record.parameters["box_lps_mm"] == box


def test_the_lesion_is_found_again_near_a_mapped_point_and_not_where_it_has_gone():
    first, _, _ = _phantom(background=LUNG_HU, lesion=NODULE_HU, radius_mm=5.0)
    later, truth, later_ml = _phantom(
        background=LUNG_HU, lesion=NODULE_HU, radius_mm=6.5, centre_mm=(6.0, -4.0, 2.0), seed=3
    )
    gone, _, _ = _phantom(background=LUNG_HU, lesion=LUNG_HU, radius_mm=5.0, seed=4)
    clicked = click_segment(study=first, seed_lps_mm=[0, 0, 0])

    found = lesion_search(study=later, centre_lps_mm=[0, 0, 0], look=clicked.look)
    missing = lesion_search(study=gone, centre_lps_mm=[0, 0, 0], look=clicked.look)

    assert found.found is not None and found.reason == ""
    assert found.found.measurement.volume_ml == pytest.approx(later_ml, rel=0.12)
    assert np.linalg.norm(np.subtract(found.found.measurement.centroid_lps_mm, (6, -4, 2))) < 1.0
    assert missing.found is None and "nothing of the lesion's contrast" in missing.reason


def test_a_drawn_mask_is_measured_by_its_own_voxels():
    volume, truth, _ = _phantom(background=LUNG_HU, lesion=NODULE_HU, radius_mm=6.0)
    drawn = truth.copy()
    drawn[:, :, 35:] = False  # the radiologist erased half

    measured = mask_measure(study=volume, mask=drawn, organ="lung")

    voxel_ml = float(np.prod(volume.spacing_mm)) / 1000.0
    assert measured.volume_method == "mask"
    assert measured.volume_ml == pytest.approx(drawn.sum() * voxel_ml, rel=0.08)
    assert measured.centroid_lps_mm[0] < -1.0  # its centre moved with the erased half
    with pytest.raises(ClickRefused, match="no voxel"):
        mask_measure(study=volume, mask=np.zeros_like(drawn), organ="lung")
