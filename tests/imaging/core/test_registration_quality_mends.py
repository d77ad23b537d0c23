"""The quality check fails a registration a vertebra or two off along the spine, and one
of a follow-up whose header mirrors it left-right; the right transforms still pass.

The pair comes from the evaluation generator (`imaging.core.synthetic_eval`, small: 128
matrix, 5 mm slices), whose spine is a column of vertebrae and discs: a follow-up of
the abdomen alone (no lung to tell the level) fits locally one vertebra off, where the
spine distance and the 6 mm moves of the best-fit check see nothing wrong. Its body,
lungs and spine are nearly symmetric, so a left-right mirrored follow-up overlaps in
every mask. The true fixed -> moving transform is known from the studies' poses.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from imaging.core.geometry.volume import Volume
from imaging.core.registration.anatomy import anatomy_landmarks
from imaging.core.registration.quality import (
    LONG_AXIS_PROBES_MM,
    CoarseStudy,
    QualityThresholds,
    coarse_study,
    study_registration_quality,
)
from imaging.core.registration.transforms import SpatialTransform, rotation_matrix
from imaging.core.synthetic_eval.cohort import patient_draw, study_render

THRESHOLDS = QualityThresholds()


@pytest.fixture(scope="module")
def pair() -> tuple[CoarseStudy, Volume, SpatialTransform, float]:
    """Baseline (its 4 mm copy and masks, made once), follow-up (6 degrees and 10 mm
    off), the true transform, the spine's pitch (mm)."""
    patient = patient_draw(seed=3, index=0, n_studies=2, size="small", positions=("HFS", "HFS"),
                           coverages=("full", "full"), thicknesses=(5.0, 5.0))  # fmt: skip
    direction = np.array([1.0, -0.5, 0.7]) / np.linalg.norm([1.0, -0.5, 0.7])
    baseline, follow_up = patient.studies
    follow_up = replace(
        follow_up,
        rotation=rotation_matrix(axis=np.array([0.2, 0.1, 1.0]), angle_deg=6.0),
        translation=10.0 * direction,
        rotation_deg=6.0,
        shift_mm=10.0,
    )
    baseline = replace(baseline, rotation=np.eye(3), translation=np.zeros(3), rotation_deg=0.0,
                       shift_mm=0.0)  # fmt: skip
    patient = replace(patient, studies=(baseline, follow_up))
    fixed = study_render(patient, baseline, seed=1).volume
    moving = study_render(patient, follow_up, seed=1).volume
    truth = np.eye(4)
    truth[:3, :3] = follow_up.rotation
    truth[:3, 3] = follow_up.translation
    return coarse_study(fixed), moving, SpatialTransform(truth), patient.anatomy.spine_pitch


def _quality(fixed: CoarseStudy, moving: Volume | CoarseStudy, transform: SpatialTransform):
    """`registration_quality` on the 4 mm copies, the fixed one made once."""
    moving = moving if isinstance(moving, CoarseStudy) else coarse_study(moving)
    return study_registration_quality(
        fixed=fixed, moving=moving, transform=transform, thresholds=THRESHOLDS
    )


def _below(volume: Volume, s_max_mm: float) -> Volume:
    """The slices of an axial volume whose S coordinate is below ``s_max_mm``."""
    s = volume.index_to_lps(np.stack([np.zeros(volume.shape_ijk[2]), np.zeros(volume.shape_ijk[2]),
                                      np.arange(volume.shape_ijk[2])], axis=1))[:, 2]  # fmt: skip
    keep = np.flatnonzero(s < s_max_mm)
    k0, k1 = keep.min(), keep.max() + 1
    return Volume(array=volume.array[k0:k1].copy(), spacing_mm=volume.spacing_mm,
                  origin_mm=tuple(volume.index_to_lps([0, 0, k0])), direction=volume.direction)  # fmt: skip


def _shifted_along_s(transform: SpatialTransform, shift_mm: float) -> SpatialTransform:
    """The transform caught ``shift_mm`` along the baseline's S axis."""
    shift = np.eye(4)
    shift[2, 3] = shift_mm
    return SpatialTransform(transform.matrix @ shift)


def test_an_abdomen_follow_up_a_vertebra_or_two_off_fails_and_the_right_one_passes(pair):
    fixed, moving, truth, pitch_mm = pair
    abdomen = coarse_study(_below(moving, anatomy_landmarks(volume=moving).lung_base_s_mm - 25.0))

    right = _quality(fixed, abdomen, truth)
    assert right.lung_dice is None  # no lung: the lung checks say nothing
    assert not right.failed, right.reasons
    # Every shift along S was tried either way and fits clearly worse, on record.
    assert {abs(s) for s, _, _ in right.long_axis_probes} == set(LONG_AXIS_PROBES_MM)
    assert all(
        shifted < found - THRESHOLDS.min_long_axis_margin
        for _, found, shifted in right.long_axis_probes
    )
    json.dumps(right.as_dict())  # stored on the run as it is

    for vertebrae in (1, 2):
        off = _quality(fixed, abdomen, _shifted_along_s(truth, vertebrae * pitch_mm))
        assert off.failed, (vertebrae, off)
        assert off.spine_mm < THRESHOLDS.max_spine_mm  # the spine column still overlaps
        assert any("along the spine" in reason for reason in off.reasons), off.reasons


def test_a_follow_up_mirrored_left_right_by_its_header_fails(pair):
    fixed, moving, truth, _ = pair
    # The header mirrors the follow-up about its volume's centre (U); the registration
    # then finds the rigid fit of a symmetric outline: U . truth . (the baseline
    # patient's own left-right mirror, about x = 0), with every mask overlapping.
    centre = moving.index_to_lps((np.asarray(moving.shape_ijk) - 1) / 2.0)
    header = np.eye(4)
    header[0, 0], header[0, 3] = -1.0, 2.0 * centre[0]
    mirrored = Volume(array=moving.array, spacing_mm=moving.spacing_mm,
                      origin_mm=tuple(header[:3, :3] @ moving.origin_mm + header[:3, 3]),
                      direction=header[:3, :3] @ moving.direction)  # fmt: skip
    found = SpatialTransform(header @ truth.matrix @ np.diag([-1.0, 1.0, 1.0, 1.0]))

    wrong = _quality(fixed, mirrored, found)
    assert wrong.failed
    assert wrong.lung_dice > THRESHOLDS.min_lung_dice and wrong.spine_mm < THRESHOLDS.max_spine_mm
    assert len(wrong.reasons) == 1 and "left and right may be swapped" in wrong.reasons[0]
    ncc_found, ncc_mirrored = wrong.mirror_probe
    assert ncc_mirrored > ncc_found + 0.1

    right = _quality(fixed, moving, truth)
    assert not right.failed, right.reasons
    ncc_found, ncc_mirrored = right.mirror_probe
    assert ncc_mirrored < ncc_found - 0.1
