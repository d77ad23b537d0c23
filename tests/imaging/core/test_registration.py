"""Registration: known rigid poses are recovered in every patient position, with thin and
thick slices and partial coverage; the quality check passes right transforms and fails
misses; transforms, deformable ones included, carry points both ways.

The fixed and moving volumes are the analytic trunk of test_anatomy (64^3, 5.5 mm) seen
under two rigid poses with independent noise, so the true fixed -> moving transform is
``pose_moving @ inverse(pose_fixed)``. `benchmarks/registration.py` measures the same on
the independent evaluation generator (breathing, every position, thickness and pose).
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from imaging.core.geometry.volume import Volume
from imaging.core.registration.orientation import volume_flip_header
from imaging.core.registration.quality import QualityThresholds, registration_quality
from imaging.core.registration.register import register
from imaging.core.registration.sitk_backend import register_rigid_affine_sitk
from imaging.core.registration.torch_backend import register_torch, resolve_device
from imaging.core.registration.transforms import (
    SpatialTransform,
    point_map,
    rotation_matrix,
    transform_read,
    transform_write,
    volume_warp,
)
from tests.imaging.core.test_anatomy import trunk_volume

# Test points spread through the trunk (LPS mm, the fixed study's coordinates).
POINTS = np.array(
    [
        [x, y, z]
        for x in (-90.0, 0.0, 90.0)
        for y in (-60.0, 0.0, 60.0)
        for z in (-120.0, 0.0, 120.0)
    ]
)


def _pose(angle_deg: float, shift_mm: float, axis=(0.3, 0.2, 1.0), direction=(1.0, -1.0, 1.0)):
    pose = np.eye(4)
    pose[:3, :3] = rotation_matrix(axis=np.asarray(axis), angle_deg=angle_deg)
    pose[:3, 3] = np.asarray(direction) / np.linalg.norm(direction) * shift_mm
    return pose


@pytest.fixture(scope="module")
def pair() -> tuple[Volume, Volume, np.ndarray]:
    pose_fixed = np.eye(4)
    pose_moving = _pose(8.0, 6.0)
    fixed = trunk_volume(pose=pose_fixed, seed=11)
    moving = trunk_volume(position="FFS", pose=pose_moving, seed=12)
    return fixed, moving, pose_moving @ np.linalg.inv(pose_fixed)


def _errors_mm(transform: SpatialTransform, truth: np.ndarray) -> np.ndarray:
    expected = POINTS @ truth[:3, :3].T + truth[:3, 3]
    return np.linalg.norm(point_map(transform, POINTS) - expected, axis=1)


def test_simpleitk_recovers_a_rigid_pose(pair):
    fixed, moving, truth = pair
    result = register_rigid_affine_sitk(fixed=fixed, moving=moving)
    errors = _errors_mm(result.transform, truth)
    assert errors.max() < 1.0, errors
    assert not result.failed, result.reason
    assert result.backend == "simpleitk" and result.device == "cpu"
    assert [s.name for s in result.stages] == ["rigid", "affine"]
    assert len(result.stages[0].metric) == 2  # one value per level
    assert result.quality.ncc > 0.9 and result.quality.lung_dice > 0.9
    assert result.as_dict()["transform"]["matrix"][3] == [0.0, 0.0, 0.0, 1.0]


def test_torch_recovers_a_rigid_pose(pair):
    fixed, moving, truth = pair
    result = register_torch(fixed=fixed, moving=moving, device="auto", threads=1, iterations=40)
    errors = _errors_mm(result.transform, truth)
    assert errors.max() < 1.0, errors
    assert not result.failed, result.reason
    assert result.backend == "torch"
    assert result.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert [s.name for s in result.stages] == ["rigid", "affine"]


def test_backend_is_chosen_by_name(pair):
    fixed, moving, _ = pair
    with pytest.raises(ValueError, match="backend"):
        register(fixed=fixed, moving=moving, backend="elastix")


def test_cuda_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        assert resolve_device("cuda") == "cuda"
    else:
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")
    assert resolve_device("cpu") == "cpu"


def _water_cylinder() -> Volume:
    k, j, i = np.meshgrid(*(np.arange(48) - 23.5,) * 3, indexing="ij")
    water = np.where(i**2 + j**2 < 15**2, 0.0, -1000.0).astype(np.float32)
    water += np.random.default_rng(0).normal(0, 10, water.shape).astype(np.float32)
    return Volume(array=water, spacing_mm=(6.0, 6.0, 6.0), origin_mm=(-141.0, -141.0, -141.0))


@pytest.mark.parametrize("unrelated", ["water_cylinder", "head_foot_mirror"])
def test_unrelated_images_are_flagged_failed(pair, unrelated):
    fixed, moving, _ = pair
    if unrelated == "water_cylinder":
        other = _water_cylinder()  # no lungs, nothing like a trunk
    else:
        other = volume_flip_header(volume=moving, flips=(1, 1, -1))  # no rigid fit exists
    # Few iterations: the flag comes from the quality check, not from the optimiser.
    result = register_rigid_affine_sitk(fixed=fixed, moving=other, iterations=30)
    assert result.failed
    assert any(word in result.reason for word in ("Dice", "NCC", "surfaces", "spine"))


def test_quality_tells_a_wrong_transform_from_the_right_one(pair):
    fixed, moving, truth = pair
    right = registration_quality(fixed=fixed, moving=moving, transform=SpatialTransform(truth))
    assert not right.failed, right.reasons
    off = SpatialTransform(truth @ np.linalg.inv(_pose(20.0, 30.0, axis=(1, 0, 0))))
    wrong = registration_quality(fixed=fixed, moving=moving, transform=off)
    assert wrong.failed
    assert wrong.score < right.score - 0.1
    strict = registration_quality(
        fixed=fixed,
        moving=moving,
        transform=SpatialTransform(truth),
        thresholds=QualityThresholds(max_rotation_deg=5.0),
    )
    assert strict.failed and "rotation" in strict.reasons[0]


def _bspline_transform(reference: Volume) -> sitk.BSplineTransform:
    bspline = sitk.BSplineTransformInitializer(reference.to_sitk(), [3, 3, 3], order=3)
    coefficients = np.random.default_rng(1).normal(0.0, 3.0, len(bspline.GetParameters()))
    bspline.SetParameters(tuple(coefficients))
    return bspline


@pytest.mark.parametrize("suffix", [".tfm", ".h5", ".json"])
def test_transform_file_round_trip(tmp_path, pair, suffix):
    fixed, _, truth = pair
    transform = SpatialTransform(truth)
    path = transform_write(transform=transform, path=tmp_path / f"t{suffix}")
    again = transform_read(path=path)
    assert np.allclose(again.matrix, truth, atol=1e-9)
    assert np.allclose(point_map(again, POINTS), point_map(transform, POINTS), atol=1e-6)


def test_deformable_transform_round_trip_and_composition_order(tmp_path, pair):
    fixed, _, truth = pair
    bspline = _bspline_transform(fixed)
    transform = SpatialTransform(truth, bspline)
    # Our convention: the B-spline acts on the fixed point first, then the affine.
    by_hand = np.array([bspline.TransformPoint(tuple(p)) for p in POINTS])
    expected = by_hand @ truth[:3, :3].T + truth[:3, 3]
    assert np.allclose(point_map(transform, POINTS), expected)
    composite = transform.to_sitk()
    assert np.allclose([composite.TransformPoint(tuple(p)) for p in POINTS], expected)
    again = transform_read(path=transform_write(transform=transform, path=tmp_path / "d.tfm"))
    assert not again.is_affine
    assert np.allclose(point_map(again, POINTS), expected, atol=1e-6)
    with pytest.raises(ValueError, match="deformable"):
        transform_write(transform=transform, path=tmp_path / "d.json")


def test_label_warp_stays_integer_valued(pair):
    fixed, moving, truth = pair
    labels = np.zeros(moving.array.shape, dtype=np.uint16)
    labels[moving.array < -400] = 1
    labels[(moving.array > 30) & (moving.array < 100)] = 7
    labels[moving.array > 300] = 300
    label_volume = moving.with_array(labels, kind="label")
    warped = volume_warp(moving=label_volume, reference=fixed, transform=SpatialTransform(truth))
    assert warped.kind == "label"
    assert warped.array.dtype == np.uint16
    assert set(np.unique(warped.array)) <= {0, 1, 7, 300}
    assert {1, 7, 300} <= set(np.unique(warped.array))
    with pytest.raises(ValueError, match="nearest"):
        volume_warp(
            moving=label_volume, reference=fixed, transform=SpatialTransform(truth), kind="scalar"
        )


def test_scalar_warp_puts_the_moving_study_on_the_fixed_grid(pair):
    fixed, moving, truth = pair

    def correlation(transform: SpatialTransform) -> float:
        warped = volume_warp(
            moving=moving, reference=fixed, transform=transform, default_value=-5000.0
        )
        assert warped.array.shape == fixed.array.shape
        assert np.allclose(warped.affine_lps, fixed.affine_lps)
        inside = warped.array > -4000  # outside the moving volume: the default value
        return float(np.corrcoef(warped.array[inside], fixed.array[inside])[0, 1])

    aligned = correlation(SpatialTransform(truth))
    assert aligned > 0.95
    assert correlation(SpatialTransform.identity()) < aligned - 0.05


def test_bspline_stage_runs_and_is_kept_only_when_it_helps(pair):
    fixed, moving, _ = pair
    result = register_rigid_affine_sitk(fixed=fixed, moving=moving, bspline=True, iterations=8)
    stage = result.stages[-1]
    assert stage.name == "bspline"
    # Judged on held-out samples; a kept deformation is part of the transform.
    kept = stage.parameters["held_out_metric_after"] < stage.parameters["held_out_metric_before"]
    assert stage.parameters["kept"] == kept
    assert result.transform.is_affine == (not kept)


@pytest.mark.parametrize("position", ["HFS", "FFS", "HFP", "FFP"])
def test_every_patient_position_registers_under_a_large_pose(position):
    """15 degrees and 30 mm off the baseline, in each patient position (the header's
    geometry is used first, then the start's search and the rigid stages)."""
    fixed = trunk_volume(pose=np.eye(4), seed=21)
    pose = _pose(15.0, 30.0, axis=(0.3, -0.2, 1.0), direction=(-1.0, 1.0, 0.5))
    moving = trunk_volume(position=position, pose=pose, seed=22)
    result = register(fixed=fixed, moving=moving, deformable=False)
    errors = _errors_mm(result.transform, pose)
    assert np.median(errors) < 1.5 and errors.max() < 3.0, errors
    assert not result.failed, result.reason


@pytest.mark.parametrize(
    "spacing_mm, shape_ijk",
    [
        ((5.5, 5.5, 1.5), (64, 64, 100)),
        ((5.5, 5.5, 11.0), (64, 64, 32)),
        ((5.5, 5.5, 5.5), (64, 64, 28)),
    ],
    ids=["thin_slices_part_of_the_range", "thick_slices", "chest_and_upper_abdomen_only"],
)
def test_other_slices_and_a_follow_up_covering_part_of_the_range_register(spacing_mm, shape_ijk):
    """A follow-up with 1.5 or 11 mm slices, or one covering only 150 mm of the
    baseline's 350, registers on what both show and is not failed for the rest."""
    fixed = trunk_volume(pose=np.eye(4), seed=31)
    pose = _pose(10.0, 20.0)
    moving = trunk_volume(pose=pose, spacing_mm=spacing_mm, shape_ijk=shape_ijk, seed=32)
    result = register(fixed=fixed, moving=moving, deformable=False)
    reach = 0.5 * shape_ijk[2] * spacing_mm[2] - 20.0
    inside = np.abs(POINTS[:, 2]) < reach  # points the follow-up shows
    errors = _errors_mm(result.transform, pose)[inside]
    assert errors.max() < 3.0, errors
    assert not result.failed, result.reason
    assert result.quality.overlap_fraction > 0.9


def test_the_start_tries_several_poses_and_records_them(pair):
    fixed, moving, _ = pair
    result = register(fixed=fixed, moving=moving, deformable=False)
    parameters = result.stages[0].parameters
    candidates = parameters["start_candidates"]
    # 3 or 4 shifts (header, body, body in-plane, lungs) x 4 angles, then 3 x 6 along S.
    assert parameters["start_tried"] >= 3 * 4 + 18
    assert len(candidates) == 5
    assert [c["score"] for c in candidates] == sorted(
        (c["score"] for c in candidates), reverse=True
    )
    assert all(c["overlap"] >= 0.0 and -1.0 <= c["ncc"] <= 1.0 for c in candidates)


def test_quality_passes_the_right_transform_and_fails_15_mm_or_10_degrees_off(pair):
    """Each kind of miss is caught by a measure of what matters (spine and lung overlap,
    or the fit not being the best near it), and the right transform passes all."""
    fixed, moving, truth = pair
    right = registration_quality(fixed=fixed, moving=moving, transform=SpatialTransform(truth))
    assert not right.failed, right.reasons
    assert right.spine_mm < 2.0 and right.lung_surface_mm < 2.5 and right.optimum_gain < 0.01
    centre = np.zeros(3)
    for axis in np.eye(3):
        shift = np.eye(4)
        shift[:3, 3] = 15.0 * axis
        turn = np.eye(4)
        turn[:3, :3] = rotation_matrix(axis=axis, angle_deg=10.0)
        turn[:3, 3] = centre - turn[:3, :3] @ centre
        for move in (shift, turn):
            off = registration_quality(
                fixed=fixed, moving=moving, transform=SpatialTransform(move @ truth)
            )
            assert off.failed, (axis, off)


def test_deformable_points_map_both_ways(tmp_path, pair):
    """`point_map` carries baseline points to the follow-up and, with ``inverse``,
    follow-up points back, through the B-spline as stored in the .tfm file."""
    fixed, _, truth = pair
    transform = SpatialTransform(truth, _bspline_transform(fixed))
    stored = transform_read(path=transform_write(transform=transform, path=tmp_path / "t.tfm"))
    forward = point_map(stored, POINTS)
    assert not np.allclose(forward, point_map(SpatialTransform(truth), POINTS), atol=0.5)
    back = point_map(stored, forward, inverse=True)
    assert np.abs(back - POINTS).max() < 0.05
    affine_only = SpatialTransform(truth)
    assert np.allclose(point_map(affine_only, point_map(affine_only, POINTS), inverse=True), POINTS)


def _arms_and_table(volume: Volume, pose: np.ndarray, *, prone: bool) -> Volume:
    """``volume`` with arms down beside the trunk and the table under the patient (in
    front of a prone one), both above -500 HU and touching the body."""
    k, j, i = np.indices(volume.array.shape)
    lps = volume.index_to_lps(np.stack([i, j, k], axis=-1).astype(float))
    x, y, z = np.moveaxis((lps - pose[:3, 3]) @ pose[:3, :3], -1, 0)  # body frame
    hu = volume.array.copy()
    for side in (-1.0, 1.0):
        hu[((x - side * 190.0) ** 2 + y**2 <= 45.0**2) & (z > -150) & (z < 190)] = 30.0
    table_y = -116.0 if prone else 116.0
    hu[(np.abs(y - table_y) <= 8.0) & (np.abs(x) <= 210.0)] = 150.0
    return volume.with_array(hu)


def test_quality_passes_a_good_registration_whose_body_outline_differs():
    """Arms down and the table in front of a prone patient change the body outline (above
    -500 HU) but not the anatomy: the right transform passes, one 15 mm off fails."""
    fixed = trunk_volume(pose=np.eye(4), shape_ijk=(84, 64, 64), seed=41)
    pose = _pose(12.0, 25.0, axis=(0.2, 0.3, 1.0))
    moving = trunk_volume(position="FFP", pose=pose, shape_ijk=(84, 64, 64), seed=42)
    moving = _arms_and_table(moving, pose, prone=True)
    right = registration_quality(fixed=fixed, moving=moving, transform=SpatialTransform(pose))
    assert right.body_dice < 0.85  # the outline did change
    assert not right.failed, right.reasons
    shift = np.eye(4)
    shift[:3, 3] = [0.0, 0.0, 15.0]
    off = registration_quality(fixed=fixed, moving=moving, transform=SpatialTransform(shift @ pose))
    assert off.failed
