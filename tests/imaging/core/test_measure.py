"""Lesion measurements on analytic shapes of known size, at several spacings and orientations.

Each shape is given as its exact partial-volume occupancy on a grid (supersampled),
which is what a calibrated probability map of that lesion looks like; the expected
numbers are the shape's own: volume 4/3 pi abc, longest axial diameter 2 max(a, b) for
an ellipsoid whose c axis runs head-foot, and so on.
"""

from __future__ import annotations

import numpy as np
import pytest

from imaging.core.geometry.volume import Volume
from imaging.core.segmentation.measure import (
    axial_diameters_mm,
    lesion_regions,
    lesions_measure,
    probability_measure,
)
from imaging.core.segmentation.postprocess import LesionCandidate

IDENTITY = np.eye(3)
HFS = IDENTITY
FFS = np.diag([-1.0, 1.0, -1.0])  # feet-first supine: i to the right, k to the feet
HFP = np.diag([-1.0, -1.0, 1.0])  # head-first prone
FFP = np.diag([1.0, -1.0, -1.0])


def _rotation(axis, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = np.deg2rad(degrees)
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)


OBLIQUE = _rotation([1.0, 0.3, 0.2], 20.0)


def occupancy_on(grid: Volume, *, semi_axes_mm, centre_lps_mm, rotation=IDENTITY,
                 supersample: int = 3) -> Volume:  # fmt: skip
    """Exact-ish occupancy on ``grid`` of an ellipsoid whose axes are ``rotation``'s columns."""
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    k, j, i = np.meshgrid(*[np.arange(n) for n in grid.array.shape], indexing="ij")
    base = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(float)
    acc = np.zeros(base.shape[0], np.float32)
    semi = np.asarray(semi_axes_mm, float)
    for a in offsets:
        for b in offsets:
            for c in offsets:
                local = (grid.index_to_lps(base + [a, b, c]) - centre_lps_mm) @ rotation
                acc += ((local / semi) ** 2).sum(axis=1) <= 1.0
    return grid.with_array((acc / supersample**3).reshape(grid.array.shape))


def occupancy(
    *, semi_axes_mm, centre_lps_mm, spacing_mm, direction, rotation=IDENTITY, extent_mm=34.0
) -> Volume:
    """The ellipsoid on a grid of ``extent_mm`` around it, off-centre by a fraction of a voxel."""
    spacing = np.asarray(spacing_mm, float)
    shape_ijk = np.ceil(extent_mm / spacing).astype(int)
    direction = np.asarray(direction, float)
    origin = np.asarray(centre_lps_mm) - direction @ ((shape_ijk - 1) / 2 * spacing)
    origin = origin + np.array([0.31, -0.17, 0.23])
    grid = Volume(np.zeros(shape_ijk[::-1], np.float32), tuple(spacing), tuple(origin), direction)
    return occupancy_on(grid, semi_axes_mm=semi_axes_mm, centre_lps_mm=centre_lps_mm,
                        rotation=rotation)  # fmt: skip


def ellipsoid_surface_mm2(a: float, b: float, c: float) -> float:
    """Knud Thomsen's approximation (relative error <= 1.06 %)."""
    p = 1.6075
    return 4 * np.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)


CENTRE = np.array([-61.4, 22.7, -103.9])


def measured_on(study: Volume, model: Volume, organ: str):
    """`lesions_measure` of the one candidate the network's map ``model`` (the 1.5 mm model
    grid) outlines at 0.5, read on ``study``'s own voxels."""
    mask = (model.array >= 0.5).astype(np.uint16)
    candidate = LesionCandidate(
        1, organ, int(mask.sum()), float(mask.sum() * 1.5**3 / 1000), 0.9, 0.8,
        tuple((int(x.min()), int(x.max()) + 1) for x in np.nonzero(mask)),
    )  # fmt: skip
    (out,) = lesions_measure(
        lesion_probability=model,
        candidate_mask=model.with_array(mask, kind="label"),
        candidates=[candidate],
        study=study,
    )
    return out


CASES = [
    # (name, semi-axes (x, y, z) mm, in-plane rotation deg, spacing, direction)
    ("sphere 10 mm, 1.5 mm iso, HFS", (5, 5, 5), 0, (1.5, 1.5, 1.5), HFS),
    ("sphere 10 mm, 1.5 mm iso, feet-first", (5, 5, 5), 0, (1.5, 1.5, 1.5), FFS),
    ("sphere 20 mm, 1.0 mm iso, prone", (10, 10, 10), 0, (1.0, 1.0, 1.0), HFP),
    ("sphere 6 mm, 1.0 mm iso, FFP", (3, 3, 3), 0, (1.0, 1.0, 1.0), FFP),
    ("ellipsoid long head-foot, 1.5 mm, HFS", (9, 6, 12), 0, (1.5, 1.5, 1.5), HFS),
    ("ellipsoid long head-foot, feet-first", (9, 6, 12), 0, (1.5, 1.5, 1.5), FFS),
    ("ellipsoid turned 30 deg in plane, prone", (9, 6, 12), 30, (1.5, 1.5, 1.5), HFP),
    ("ellipsoid, anisotropic 0.75 x 0.75 x 1.25", (8, 5, 6), 0, (0.75, 0.75, 1.25), HFS),
    ("ellipsoid, oblique grid", (9, 6, 12), 0, (1.5, 1.5, 1.5), OBLIQUE),
]


@pytest.mark.parametrize(
    "name, semi, turn_deg, spacing, direction", CASES, ids=[c[0] for c in CASES]
)
def test_measures_of_analytic_shapes(name, semi, turn_deg, spacing, direction):
    rotation = _rotation([0, 0, 1], turn_deg)
    prob = occupancy(
        semi_axes_mm=semi,
        centre_lps_mm=CENTRE,
        spacing_mm=spacing,
        direction=direction,
        rotation=rotation,
        extent_mm=2 * max(semi) + 8,
    )
    m = probability_measure(probability=prob)
    a, b, c = semi
    volume_ml = 4 / 3 * np.pi * a * b * c / 1000
    assert m.volume_ml == pytest.approx(volume_ml, rel=0.04), name
    # Axial = perpendicular to head-foot (LPS z), whatever the grid's orientation.
    assert m.longest_axial_diameter_mm == pytest.approx(2 * max(a, b), abs=0.6), name
    assert m.short_axis_mm == pytest.approx(2 * min(a, b), abs=0.6), name
    assert m.max_3d_diameter_mm == pytest.approx(2 * max(a, b, c), abs=0.7), name
    assert m.axial_slice_z_mm == pytest.approx(CENTRE[2], abs=1.5), name
    np.testing.assert_allclose(m.centroid_lps_mm, CENTRE, atol=0.25, err_msg=name)
    sphericity = (
        np.pi ** (1 / 3) * (6 * volume_ml * 1000) ** (2 / 3) / ellipsoid_surface_mm2(a, b, c)
    )
    assert m.sphericity == pytest.approx(sphericity, abs=0.05), name


def test_axial_diameter_ignores_the_head_foot_extent():
    prob = occupancy(semi_axes_mm=(4, 4, 15), centre_lps_mm=CENTRE, spacing_mm=(1.0,) * 3,
                     direction=FFS, extent_mm=40)  # fmt: skip
    m = probability_measure(probability=prob)
    assert m.longest_axial_diameter_mm == pytest.approx(8.0, abs=0.5)
    assert m.max_3d_diameter_mm == pytest.approx(30.0, abs=0.7)


def test_two_dimensional_diameters_of_an_ellipse_outline():
    xs = np.arange(80) * 0.5
    ys = np.arange(60) * 0.5
    gx, gy = np.meshgrid(xs - 20.1, ys - 14.8)
    # A map falling linearly through 0.5 on an ellipse of semi-axes 12 x 7 mm.
    radius = np.hypot(gx / 12.0, gy / 7.0)
    p = np.clip(0.5 + (1.0 - radius) * 4.0, 0.0, 1.0)
    longest, width = axial_diameters_mm(p, xs, ys)
    assert longest == pytest.approx(24.0, abs=0.1)
    assert width == pytest.approx(14.0, abs=0.1)


def test_mean_and_sd_hu_come_from_the_study_voxels_inside():
    prob = occupancy(semi_axes_mm=(6, 6, 6), centre_lps_mm=CENTRE, spacing_mm=(1.5,) * 3,
                     direction=HFS, extent_mm=24)  # fmt: skip
    # The study (feet-first): 0.7 mm voxels, 40 +- 10 HU within 7 mm, -850 HU beyond: only
    # its voxels inside the 6 mm lesion may count.
    rng = np.random.default_rng(0)
    n = 40
    origin = CENTRE - FFS @ np.full(3, 0.7 * (n - 1) / 2)
    study = Volume(np.zeros((n, n, n), np.float32), (0.7, 0.7, 0.7), tuple(origin), FFS)
    k, j, i = np.meshgrid(*[np.arange(n)] * 3, indexing="ij")
    lps = study.index_to_lps(np.stack([i.ravel(), j.ravel(), k.ravel()], 1))
    inside = (np.linalg.norm(lps - CENTRE, axis=1) < 7.0).reshape(study.array.shape)
    hu = np.where(inside, 40.0 + rng.normal(0, 10, inside.shape), -850.0).astype(np.float32)
    study = study.with_array(hu)
    m = probability_measure(probability=prob, hu=study)
    assert m.mean_hu == pytest.approx(40.0, abs=2.0)
    assert m.sd_hu == pytest.approx(10.0, abs=2.0)


def test_lesions_measure_keeps_neighbours_apart():
    grid = Volume(np.zeros((30, 30, 40), np.float32), (1.5,) * 3, (0.0, 0.0, 0.0))
    a = occupancy_on(grid, semi_axes_mm=(5, 5, 5), centre_lps_mm=np.array([20.0, 22.0, 22.0]))
    b = occupancy_on(grid, semi_axes_mm=(4, 4, 4), centre_lps_mm=np.array([33.0, 22.0, 22.0]))
    combined = grid.with_array(np.clip(a.array + b.array, 0, 1))
    mask = np.zeros(grid.array.shape, np.uint16)
    mask[a.array >= 0.5] = 1
    mask[b.array >= 0.5] = 2
    candidates = [
        LesionCandidate(v, "lung", int((mask == v).sum()), 0.0, 0.9, 0.8,
                        tuple((int(x.min()), int(x.max()) + 1) for x in np.nonzero(mask == v)))
        for v in (1, 2)
    ]  # fmt: skip
    regions = lesion_regions(mask, dilation_voxels=2)
    assert not np.any((regions == 1) & (mask == 2))
    out = lesions_measure(
        lesion_probability=combined,
        candidate_mask=grid.with_array(mask, kind="label"),
        candidates=candidates,
    )
    assert [m.label_value for m in out] == [1, 2]
    assert out[0].volume_ml == pytest.approx(4 / 3 * np.pi * 125 / 1000, rel=0.05)
    assert out[1].volume_ml == pytest.approx(4 / 3 * np.pi * 64 / 1000, rel=0.06)
    np.testing.assert_allclose(out[1].centroid_lps_mm, [33.0, 22.0, 22.0], atol=0.3)
    assert out[0].confidence == 0.9 and np.isnan(out[0].uncertainty)


@pytest.mark.parametrize(
    ("radius_mm", "spacing_mm", "direction", "noise_hu", "method", "rel"),
    [
        # 5 mm slices, a soft network map 1.6 times too large: the voxels decide.
        (8.0, (1.0, 1.0, 5.0), HFS, 10.0, "partial_volume", 0.05),
        (8.0, (0.8, 0.8, 1.25), FFS, 20.0, "partial_volume", 0.05),
        (12.0, (2.9, 2.9, 5.0), HFP, 15.0, "partial_volume", 0.08),
        # Smaller than two study voxels across: no core of its own, the isosurface stands.
        (2.0, (1.0, 1.0, 5.0), HFS, 10.0, "isosurface", None),
    ],
)
def test_volume_is_read_from_the_partial_volume_of_the_study_voxels(
    radius_mm, spacing_mm, direction, noise_hu, method, rel
):
    rng = np.random.default_rng(4)
    extent = 4 * radius_mm + 30.0
    liver, lesion = 60.0, 25.0
    study = occupancy(semi_axes_mm=(radius_mm,) * 3, centre_lps_mm=CENTRE, spacing_mm=spacing_mm,
                      direction=direction, extent_mm=extent)  # fmt: skip
    hu = liver + study.array * (lesion - liver)
    hu = hu + rng.normal(0.0, noise_hu, hu.shape)
    study = study.with_array(hu.astype(np.float32))
    # The network's map on the 1.5 mm model grid: soft and too wide (radius + 1.5 mm).
    model = occupancy(semi_axes_mm=(radius_mm + 1.5,) * 3, centre_lps_mm=CENTRE,
                      spacing_mm=(1.5,) * 3, direction=HFS, extent_mm=extent)  # fmt: skip

    out = measured_on(study, model, "liver")

    truth_ml = 4 / 3 * np.pi * radius_mm**3 / 1000
    assert out.volume_method == method
    assert out.volume_isosurface_ml == pytest.approx(
        (radius_mm + 1.5) ** 3 / radius_mm**3 * truth_ml, rel=0.1
    )
    if method == "partial_volume":
        assert out.volume_ml == pytest.approx(truth_ml, rel=rel)
        assert out.core_hu == pytest.approx(lesion, abs=3 * noise_hu / 2)
        assert out.background_hu == pytest.approx(liver, abs=3.0)
    else:
        assert out.volume_ml == out.volume_isosurface_ml and out.core_hu is None
