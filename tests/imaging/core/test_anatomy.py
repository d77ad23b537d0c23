"""Orientation checks: flipped headers are caught and corrected, correct ones are left alone.

The volumes are a small analytic trunk (`trunk_volume`): body, two lungs, heart, liver,
spleen and spine in HU, placed in patient coordinates by a rigid pose and sampled on a
scanner grid whose direction follows the patient position, exactly as a header that
tells the truth would describe it. A wrong header is then made by replacing that
direction, the way a mislabelled study arrives.
"""

from __future__ import annotations

import numpy as np
import pytest

from imaging.core.geometry.preprocess import volume_reorient
from imaging.core.geometry.volume import Volume
from imaging.core.registration.anatomy import anatomy_landmarks, body_lung_masks, volume_coarse
from imaging.core.registration.orientation import (
    FlipThresholds,
    orientation_check,
    orientation_correct,
    orientation_standardise,
    volume_flip_header,
)
from imaging.core.synthetic.acquisition import PATIENT_POSITIONS
from imaging.core.synthetic.cohort import cohort_simulate, study_render

# Row and column cosines of Image Orientation (Patient) for axial scans (PS3.3 C.7.6.2.1.1).
POSITIONS = {
    "HFS": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "FFS": ((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "HFP": ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
    "FFP": ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
}


def _ellipsoid(x, y, z, centre, semi):
    return sum(((c - c0) / s) ** 2 for c, c0, s in zip((x, y, z), centre, semi, strict=True)) <= 1


def trunk_hu(x: np.ndarray, y: np.ndarray, z: np.ndarray, *, mirrored: bool = False) -> np.ndarray:
    """HU of a crude chest/upper abdomen at body-frame points (mm; x left, y posterior, z up).

    ``mirrored`` gives situs inversus: the organs' left-right order reversed, truly.
    """
    if mirrored:
        x = -x
    hu = np.full(np.broadcast(x, y, z).shape, -1000.0, dtype=np.float32)
    inside = (z > -190) & (z < 190)
    hu[inside & ((x / 150) ** 2 + (y / 110) ** 2 <= 1)] = -100.0
    cavity = inside & ((x / 130) ** 2 + (y / 92) ** 2 <= 1)
    hu[cavity] = -30.0
    hu[cavity & (z < -50)] = 25.0
    lungs = cavity & (z >= -50)
    for side in (-1, 1):
        hu[lungs & _ellipsoid(x, y, z, (side * 62, 5, 50), (55, 75, 140))] = -850.0
    hu[_ellipsoid(x, y, z, (22, -38, -5), (45, 40, 48))] = 40.0
    hu[cavity & _ellipsoid(x, y, z, (-45, 0, -95), (85, 78, 75))] = 60.0
    hu[cavity & _ellipsoid(x, y, z, (75, 45, -85), (25, 30, 35))] = 50.0
    hu[inside & (x**2 + (y - 65) ** 2 <= 16**2)] = 450.0
    return hu


def rotation(axis, angle_deg: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = np.radians(angle_deg)
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)


def trunk_volume(
    *,
    position: str = "HFS",
    pose: np.ndarray | None = None,
    shape_ijk: tuple[int, int, int] = (64, 64, 64),
    spacing_mm: tuple[float, float, float] = (5.5, 5.5, 5.5),
    noise_hu: float = 10.0,
    seed: int = 0,
    mirrored: bool = False,
) -> Volume:
    """The trunk under a rigid ``pose`` (body -> LPS, 4x4) on a grid for ``position``."""
    row, column = (np.asarray(v) for v in POSITIONS[position])
    direction = np.stack([row, column, np.cross(row, column)], axis=1)
    spacing = np.asarray(spacing_mm)
    origin = -direction @ ((np.asarray(shape_ijk) - 1) / 2 * spacing)
    pose = np.eye(4) if pose is None else pose
    ni, nj, nk = shape_ijk
    k, j, i = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    ijk = np.stack([i, j, k], axis=-1).astype(float)
    # Partial volume: each voxel is the mean of 2x2x2 samples inside it.
    hu = np.zeros((nk, nj, ni), dtype=np.float32)
    for offset in np.array(np.meshgrid(*([-0.25, 0.25],) * 3, indexing="ij")).reshape(3, -1).T:
        lps = (ijk + offset) @ (direction * spacing).T + origin
        body = (lps - pose[:3, 3]) @ pose[:3, :3]  # the inverse pose, on rows
        hu += trunk_hu(body[..., 0], body[..., 1], body[..., 2], mirrored=mirrored) / 8
    hu += np.random.default_rng(seed).normal(0.0, noise_hu, hu.shape).astype(np.float32)
    return Volume(array=hu, spacing_mm=tuple(spacing), origin_mm=tuple(origin), direction=direction)


def relabel(volume: Volume, position: str) -> Volume:
    """The same voxels and origin under the header of another patient position."""
    row, column = (np.asarray(v) for v in POSITIONS[position])
    direction = np.stack([row, column, np.cross(row, column)], axis=1)
    return Volume(
        array=volume.array,
        spacing_mm=volume.spacing_mm,
        origin_mm=volume.origin_mm,
        direction=direction,
    )


@pytest.fixture(scope="module")
def baseline() -> Volume:
    return trunk_volume(seed=1)


def _relative(landmarks, name: str) -> np.ndarray:
    return np.asarray(getattr(landmarks, name)) - np.asarray(landmarks.body_centroid_lps_mm)


# --------------------------------------------------------------------------- landmarks
def test_landmarks_put_the_organs_where_they_are():
    landmarks = anatomy_landmarks(volume=trunk_volume())
    body = np.asarray(landmarks.body_centroid_lps_mm)
    assert 4000 < landmarks.lung_volume_ml < 6000
    assert landmarks.liver_volume_ml > 800
    # Liver on the patient's right (-L) and below the lungs; spine posterior (+P).
    assert landmarks.liver_centroid_lps_mm[0] < body[0] - 20
    assert landmarks.liver_centroid_lps_mm[2] < landmarks.lung_centroid_lps_mm[2] - 80
    assert landmarks.spine_centroid_lps_mm[1] > body[1] + 40
    assert landmarks.head_foot_evidence_mm > 50
    assert landmarks.liver_side_evidence_mm > 8
    assert landmarks.spine_evidence_mm > 20


def test_body_and_lung_masks_are_coarse_label_volumes():
    body, lungs = body_lung_masks(volume=trunk_volume())
    assert body.kind == lungs.kind == "label"
    assert set(np.unique(lungs.array)) <= {0, 1}
    assert lungs.array.sum() < body.array.sum()
    assert np.allclose(body.direction, np.eye(3))


def test_coarse_copy_keeps_the_outer_boundary_and_lps_axes():
    volume = trunk_volume(position="FFP", spacing_mm=(2.0, 2.0, 5.5))
    coarse = volume_coarse(volume=volume, spacing_mm=4.0)
    assert np.allclose(coarse.direction, np.eye(3))
    assert coarse.spacing_mm == pytest.approx((4.0, 4.0, 5.5))

    def corners(v: Volume) -> np.ndarray:
        lo = v.index_to_lps(np.full(3, -0.5))
        hi = v.index_to_lps(np.asarray(v.shape_ijk) - 0.5)
        return np.sort(np.stack([lo, hi]), axis=0)

    assert np.allclose(corners(coarse), corners(volume), atol=1e-6)


# --------------------------------------------------------------------------- correct headers
@pytest.mark.parametrize("position", sorted(POSITIONS))
def test_correct_headers_in_every_patient_position_are_not_flagged(position):
    pose = np.eye(4)
    pose[:3, :3] = rotation((0.2, 0.1, 1.0), 7.0)
    pose[:3, 3] = (8.0, -5.0, 6.0)
    check = orientation_check(volume=trunk_volume(position=position, pose=pose, seed=3))
    assert not check.flipped
    assert not check.needs_review
    assert {a.verdict for a in check.axes} == {"consistent"}
    assert check.confidence > 0.5
    corrected = orientation_correct(volume=trunk_volume(position=position), check=check)
    assert not corrected.needs_review
    assert corrected.record.details["corrected"] is False


def test_correct_header_agrees_with_the_baseline(baseline):
    pose = np.eye(4)
    pose[:3, 3] = (10.0, 4.0, -6.0)
    check = orientation_check(
        volume=trunk_volume(position="FFS", pose=pose, seed=4), baseline=baseline
    )
    assert not check.flipped and not check.needs_review
    assert check.baseline.preferred == "none"
    assert check.baseline.margin > 0.05


# --------------------------------------------------------------------------- wrong headers
@pytest.mark.parametrize(
    ("true_position", "labelled", "flips", "words"),
    [
        ("HFS", None, (-1, 1, 1), "left-right"),
        ("HFS", None, (1, 1, -1), "head-foot"),
        ("HFP", "HFS", (-1, -1, 1), "prone labelled supine"),
        ("FFS", "HFS", (-1, 1, -1), "feet-first labelled head-first"),
    ],
)
def test_wrong_headers_are_detected_corrected_and_flagged(true_position, labelled, flips, words):
    truth = trunk_volume(position=true_position, seed=5)
    if labelled is None:
        wrong = volume_flip_header(volume=truth, flips=flips)
    else:
        wrong = relabel(truth, labelled)
    check = orientation_check(volume=wrong)
    assert check.flips == flips
    assert words in check.finding
    assert check.needs_review
    assert check.confidence > 0.5
    flipped_axes = {a.axis for a, s in zip(check.axes, flips, strict=True) if s < 0}
    assert {a.axis for a in check.axes if a.verdict == "flipped"} == flipped_axes

    result = orientation_correct(volume=wrong, check=check)
    assert result.needs_review
    assert result.record.name == "orientation_correct"
    assert result.record.parameters["flips_lps"] == list(flips)
    assert result.record.details["corrected"] is True
    # The header is fixed, the voxels untouched.
    assert result.volume.array is wrong.array
    # The corrected header puts the anatomy where it truly is (up to where along a
    # flipped axis the patient lay, which no header can recover).
    fixed = anatomy_landmarks(volume=result.volume)
    true = anatomy_landmarks(volume=truth)
    for name in ("liver_centroid_lps_mm", "spine_centroid_lps_mm", "lung_centroid_lps_mm"):
        assert np.allclose(_relative(fixed, name), _relative(true, name), atol=6.0), name
    recheck = orientation_check(volume=result.volume)
    assert not recheck.flipped and not recheck.needs_review


def test_flipped_follow_up_is_confirmed_by_the_baseline(baseline):
    wrong = volume_flip_header(volume=trunk_volume(seed=6), flips=(-1, 1, 1))
    result = orientation_standardise(volume=wrong, baseline=baseline)
    assert result.check.flips == (-1, 1, 1)
    assert result.check.baseline.preferred == "LR"
    assert result.check.baseline.scores["LR"] > result.check.baseline.scores["none"] + 0.05
    assert result.needs_review
    assert result.record.details["baseline"]["preferred"] == "LR"


def test_a_baseline_that_fits_the_header_vetoes_the_anatomy():
    # Situs inversus: the liver really is on the left. Anatomy alone reads a
    # left-right flip; the patient's own baseline shows the header is right.
    own_baseline = trunk_volume(mirrored=True, seed=7)
    study = trunk_volume(mirrored=True, seed=8)
    alone = orientation_check(volume=study)
    assert alone.flips == (-1, 1, 1)
    check = orientation_check(volume=study, baseline=own_baseline)
    assert not check.flipped
    assert check.needs_review
    assert "baseline" in check.reasons[0]
    corrected = orientation_correct(volume=study, check=check)
    assert corrected.volume is study
    assert corrected.needs_review


def test_weak_evidence_is_not_corrected():
    # A phantom whose liver sits on the midline: left-right cannot be told.
    check = orientation_check(
        volume=volume_flip_header(volume=trunk_volume(seed=9), flips=(-1, 1, 1)),
        thresholds=FlipThresholds(liver_side_mm=500.0),
    )
    assert not check.flip_lr
    assert check.axes[0].verdict == "inconclusive"
    assert not check.needs_review


def test_header_flip_is_its_own_inverse_and_exact():
    volume = trunk_volume(position="FFP", shape_ijk=(16, 16, 16), spacing_mm=(20.0, 20.0, 20.0))
    centre = np.array([5.0, -3.0, 12.0])
    once = volume_flip_header(volume=volume, flips=(-1, -1, 1), centre_lps_mm=centre)
    twice = volume_flip_header(volume=once, flips=(-1, -1, 1), centre_lps_mm=centre)
    assert np.allclose(twice.affine_lps, volume.affine_lps)
    ijk = np.array([[0, 0, 0], [3, 7, 11]])
    expected = centre + (volume.index_to_lps(ijk) - centre) * [-1, -1, 1]
    assert np.allclose(once.index_to_lps(ijk), expected)
    # Canonical layout afterwards: the reorient step applies as usual.
    assert np.allclose(volume_reorient(volume=once).direction, np.eye(3))


# --------------------------------------------------------------------------- cohort phantom
@pytest.fixture(scope="module")
def cohort_studies() -> list[tuple[str, Volume]]:
    """One synthetic cohort study (imaging.core.synthetic.cohort) acquired in each patient position."""
    from dataclasses import replace

    cohort = cohort_simulate(n_patients=1, n_timepoints=1, seed=11, size="small")
    patient = cohort.patients[0]
    study = patient.studies[0]
    out = []
    for position in PATIENT_POSITIONS:
        acquired = replace(study, scanner=replace(study.scanner, patient_position=position))
        out.append((position, study_render(cohort, patient, acquired).volume))
    return out


def test_cohort_phantom_headers_are_read_right_and_flips_caught(cohort_studies):
    assert [p for p, _ in cohort_studies] == ["HFS", "FFS", "HFP", "FFP"]
    directions = {p: tuple(np.sign(np.diag(v.direction)).astype(int)) for p, v in cohort_studies}
    assert len({d[:2] for d in directions.values()}) == 4  # four different in-plane layouts
    for position, volume in cohort_studies:
        check = orientation_check(volume=volume)
        assert not check.flipped and not check.needs_review, (position, check.reasons)
        for flips in [(-1, 1, 1), (1, 1, -1), (-1, -1, 1)]:
            wrong = orientation_check(volume=volume_flip_header(volume=volume, flips=flips))
            assert wrong.flips == flips, (position, flips, wrong.axes)
            assert wrong.needs_review
