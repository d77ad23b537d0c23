"""The evaluation generator: its truth is exact, its headers tell the truth in every patient
position, and it shares nothing with the training generator."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from imaging.core.registration.anatomy import anatomy_landmarks
from imaging.core.synthetic_eval.anatomy import StudyState
from imaging.core.synthetic_eval.cohort import (
    landmarks_lps,
    lesion_truth,
    patient_draw,
    study_render,
)

PACKAGE = Path(__file__).resolve().parents[3] / "imaging" / "core" / "synthetic_eval"


def test_it_imports_nothing_of_the_training_generator():
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("imaging.core.synthetic."), path.name
                assert node.module != "imaging.core.synthetic", path.name


def test_a_round_lesion_has_the_volume_of_its_sphere_and_breathing_moves_it():
    patient = patient_draw(seed=3, index=0, n_studies=2, size="small", lesion_counts=(1, 0, 0),
                           lesion_diameters_mm=(12.0, 12.5), lesion_kinds=("solid",))  # fmt: skip
    lesion = patient.studies[0].lesions[0]
    radius = lesion.scale * lesion.spheres[0][1]
    still = replace(patient.studies[0], state=StudyState(), rotation=np.eye(3),
                    translation=np.zeros(3))  # fmt: skip
    truth = lesion_truth(patient, still, lesion)
    assert truth.volume_ml == pytest.approx(4 / 3 * np.pi * radius**3 / 1000, rel=0.01)
    assert np.allclose(truth.centre_lps_mm, lesion.centre, atol=0.1)
    # Breathing moves tissue, and the lesion with it; its truth follows the mapping.
    breathing = replace(still, state=StudyState(breath_mm=10.0))
    moved = lesion_truth(patient, breathing, lesion)
    at = landmarks_lps(patient, breathing, names=[f"lesion:{lesion.lesion_id}"])
    assert np.linalg.norm(np.asarray(moved.centre_lps_mm) - at[f"lesion:{lesion.lesion_id}"]) < 0.5
    assert moved.volume_ml == pytest.approx(truth.volume_ml, rel=0.1)


@pytest.mark.parametrize("position", ["HFS", "FFS", "HFP", "FFP"])
def test_headers_put_the_anatomy_where_it_is_in_every_position(position):
    """RadTrack's own anatomy check reads the rendered study: lungs above the abdomen,
    spine behind, liver on the right, in LPS, whatever the patient position."""
    patient = patient_draw(seed=5, index=0, n_studies=1, size="small", positions=(position,),
                           thicknesses=(5.0,), lesion_counts=(0, 0, 0))  # fmt: skip
    study = patient.studies[0]
    study = replace(study, acquisition=replace(study.acquisition, matrix=96, pixel_mm=4.2,
                                               slice_spacing_mm=6.0, slice_thickness_mm=6.0))  # fmt: skip
    volume = study_render(replace(patient, studies=(study,)), study).volume
    marks = anatomy_landmarks(volume=volume)
    assert marks.head_foot_evidence_mm > 50.0
    assert marks.spine_evidence_mm > 20.0
    assert marks.liver_side_evidence_mm > 0.0
