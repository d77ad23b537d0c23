"""The classical baseline on a rendered phantom study (prone), scored against its exact truth."""

from __future__ import annotations

import numpy as np
import pytest

from imaging.core.geometry.preprocess import volume_reorient, volume_resample
from imaging.core.segmentation.classical import ClassicalSettings, classical_segment
from imaging.core.segmentation.postprocess import postprocess_run
from imaging.core.synthetic import cohort
from imaging.core.synthetic.labels import study_label_render
from imaging.core.synthetic.phantom import ScanGeometry, phantom_render

SEED, PATIENT = 14, 4  # head-first prone; liver lesions of 12 and 11 mm, a 16 mm nodule


@pytest.fixture(scope="module")
def study():
    patient = cohort.patient_simulate(seed=SEED, index=PATIENT, n_timepoints=1, size="small")
    scan = patient.studies[0]
    assert scan.scanner.patient_position == "HFP"
    lesions = patient.lesions_at(scan)
    rendered = phantom_render(
        anatomy=patient.anatomy,
        lesions=lesions,
        geometry=scan.scanner.geometry(),
        pose_body_to_lps=scan.pose_body_to_lps,
        noise_hu=scan.scanner.noise_hu,
        rng=np.random.default_rng(3),
    )
    image = volume_resample(volume=volume_reorient(volume=rendered.volume), spacing_mm=(2.0,) * 3)
    grid = ScanGeometry(
        shape_ijk=image.shape_ijk,
        spacing_mm=image.spacing_mm,
        origin_mm=image.origin_mm,
        direction=image.direction,
        slice_thickness_mm=2.0,
    )
    truth = study_label_render(
        anatomy=patient.anatomy,
        lesions=lesions,
        lesion_organs={lesion.lesion_id: lesion.organ for lesion in patient.lesions},
        geometry=grid,
        pose_body_to_lps=scan.pose_body_to_lps,
    )
    return image, truth, classical_segment(image=image)


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_organ_masks_by_rules(study):
    _, truth, out = study
    assert _dice(out.lung, np.isin(truth.label, (1, 3))) > 0.95
    assert _dice(out.liver, np.isin(truth.label, (2, 4))) > 0.85
    assert out.records[0].name == "segment_classical"
    assert out.records[0].parameters["nodule_seed_hu"] == ClassicalSettings().nodule_seed_hu


def test_finds_every_lesion_in_its_organ_with_few_false_positives(study):
    image, truth, out = study
    post = postprocess_run(probabilities=out.probabilities, image=image)
    found = set()
    false_positives = 0
    for candidate in post.candidates:
        region = post.mask.array == candidate.label_value
        hits = set(np.unique(truth.lesion_index[region]).tolist()) - {0}
        if not hits:
            false_positives += 1
        for hit in hits:
            assert truth.lesion_organs[hit - 1] == candidate.organ
            found.add(hit)
    assert found == set(range(1, len(truth.lesion_ids) + 1))
    assert false_positives <= 1
    # Pseudo-probabilities are partial-volume fractions: their sum is near the volume (roughly:
    # smoothing lowers a small lesion's contrast, which inflates the fractions).
    for number in range(1, len(truth.lesion_ids) + 1):
        core = truth.lesion_index == number
        near = np.zeros_like(core)
        box = tuple(slice(max(0, a.min() - 3), a.max() + 4) for a in np.nonzero(core))
        near[box] = True
        cls = 3 if truth.lesion_organs[number - 1] == "lung" else 4
        estimate = out.probabilities[cls][near].astype(np.float64).sum()
        exact = truth.lesion_fraction[near].astype(np.float64).sum()
        assert estimate == pytest.approx(exact, rel=0.6)
