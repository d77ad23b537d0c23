"""The shipped segmenter: its weights and manifest, device choice, and the real model at work.

The model tests run the shipped network (no double): over a rendered feet-first study of
the training generator, scored against the phantom's exact truth on the model grid; and
over a patient of the independent evaluation generator with a nodule in each lung, as
it is and mirrored left-right (a flipped patient).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from imaging.core.segmentation.lesions import lesions_segment
from imaging.core.segmentation.network import (
    CLASSES,
    MANIFEST_NAME,
    WEIGHTS_DIR,
    SegmenterError,
    device_select,
    file_sha256,
    manifest_read,
    segmenter_load,
)
from imaging.core.synthetic import cohort
from imaging.core.synthetic.labels import study_label_render
from imaging.core.synthetic.phantom import ScanGeometry, phantom_render
from imaging.core.synthetic_eval.cohort import patient_draw
from imaging.core.synthetic_eval.cohort import study_render as eval_study_render

SEED, PATIENT = 13, 4  # feet-first supine; a 10 mm nodule, liver lesions of 24, 25, 18 mm


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(2)
    return segmenter_load(device="cpu")


def test_shipped_weights_are_small_named_versioned_and_checked():
    manifest = manifest_read()
    path = WEIGHTS_DIR / manifest["file"]
    assert path.stat().st_size < 30e6
    assert file_sha256(path) == manifest["sha256"]
    assert manifest["classes"] == list(CLASSES)
    assert manifest["spacing_mm"] == [1.5, 1.5, 1.5]
    loaded = segmenter_load(device="cpu")
    assert loaded.spec.sha256 == manifest["sha256"]
    assert loaded.version == f"{manifest['name']}-{manifest['version']}"
    card = (WEIGHTS_DIR / "MODEL_CARD.md").read_text()
    assert manifest["version"] in card and manifest["sha256"] in card and "Dice" in card
    # The training data never used the benchmark's seed.
    assert 4242 not in manifest["training"]["data"]["cohort_seeds"]


def test_tampered_weights_are_refused(tmp_path):
    manifest = manifest_read()
    weights = tmp_path / manifest["file"]
    shutil.copy(WEIGHTS_DIR / manifest["file"], weights)
    shutil.copy(WEIGHTS_DIR / MANIFEST_NAME, tmp_path / MANIFEST_NAME)
    segmenter_load(weights_path=weights, device="cpu")  # an intact copy loads
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(SegmenterError, match="SHA-256"):
        segmenter_load(weights_path=weights, device="cpu")
    # A manifest that names other weights is refused the same way.
    shutil.copy(WEIGHTS_DIR / manifest["file"], weights)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({**manifest, "sha256": "0" * 64}))
    with pytest.raises(SegmenterError, match="refusing"):
        segmenter_load(weights_path=weights, device="cpu")


def test_device_selection(monkeypatch):
    assert device_select("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert device_select("auto").type == expected
    with pytest.raises(SegmenterError, match="device must be"):
        device_select("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_select("auto").type == "cpu"
    with pytest.raises(SegmenterError, match="no CUDA"):
        device_select("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device_select("auto").type == "cuda"


@pytest.fixture(scope="module")
def feet_first_study():
    """The patient's baseline study (small preset: ~3.2 mm pixels, 5 mm slices), lesion slab."""
    patient = cohort.patient_simulate(seed=SEED, index=PATIENT, n_timepoints=1, size="small")
    study = patient.studies[0]
    scanner = study.scanner
    assert scanner.patient_position == "FFS"
    full = scanner.geometry()
    lesions = [lesion for lesion in patient.lesions_at(study) if lesion.volume_ml > 0]
    centres = np.array([study.to_lps(lesion.shape.centre_body_mm) for lesion in lesions])
    half = (np.asarray(full.shape_ijk) - 1) / 2 * np.asarray(full.spacing_mm)
    centre = np.asarray(full.origin_mm) + full.direction @ half
    centre[2] = (centres[:, 2].min() + centres[:, 2].max()) / 2
    n_slices = int(np.ceil((np.ptp(centres[:, 2]) + 80.0) / scanner.slice_spacing_mm))
    geometry = ScanGeometry.centred(
        centre_lps_mm=centre,
        shape_ijk=(full.shape_ijk[0], full.shape_ijk[1], n_slices),
        spacing_mm=full.spacing_mm,
        direction=full.direction,
        slice_thickness_mm=full.slice_thickness_mm,
    )
    rendered = phantom_render(
        anatomy=patient.anatomy,
        lesions=lesions,
        geometry=geometry,
        pose_body_to_lps=study.pose_body_to_lps,
        noise_hu=scanner.noise_hu,
        rng=np.random.default_rng(1),
    )
    return patient, study, lesions, rendered.volume


@pytest.mark.slow
def test_real_model_finds_and_measures_the_lesions(model, feet_first_study):
    patient, study, lesions, volume = feet_first_study
    result = lesions_segment(volume=volume, model=model, device="cpu", tta=True)
    assert result.model_version == model.spec.label and result.model_sha256 == model.spec.sha256
    names = [r.name for r in result.records]
    assert names[:4] == ["body_crop", "reorient", "resample", "segment_unet"]
    assert "postprocess_min_volume" in names and names[-1] == "measure_lesions"
    assert names[-4:-1] == ["liver_second_reader", "lung_second_reader", "nodule_extent"]

    grid = result.candidate_mask
    np.testing.assert_allclose(grid.direction, np.eye(3))  # LPS, though scanned feet-first
    assert result.lesion_probability.array.shape == grid.array.shape
    assert result.uncertainty.array.min() >= 0.0 and result.uncertainty.array.max() <= 1.0
    truth = study_label_render(
        anatomy=patient.anatomy,
        lesions=lesions,
        lesion_organs={lesion.lesion_id: lesion.organ for lesion in patient.lesions},
        geometry=ScanGeometry(grid.shape_ijk, grid.spacing_mm, grid.origin_mm, grid.direction, 1.5),
        pose_body_to_lps=study.pose_body_to_lps,
    )
    by_value = {m.label_value: m for m in result.lesions}
    matched: set[int] = set()
    for number, lesion_id in enumerate(truth.lesion_ids, start=1):
        core = truth.lesion_index == number
        values = set(np.unique(grid.array[core]).tolist()) - {0}
        assert values, f"{lesion_id} was missed"
        matched |= values
        predicted = np.isin(grid.array, list(values))
        dice = 2 * (predicted & core).sum() / (predicted.sum() + core.sum())
        assert dice > 0.7, f"{lesion_id}: Dice {dice:.2f}"
        measured = [by_value[v] for v in values if v in by_value]
        assert measured and all(m.organ == truth.lesion_organs[number - 1] for m in measured)
        sim = next(x for x in lesions if x.lesion_id == lesion_id)
        centre = study.to_lps(sim.shape.centre_body_mm)
        best = max(measured, key=lambda m: m.volume_ml)
        assert np.linalg.norm(np.asarray(best.centroid_lps_mm) - centre) < 2.5
        # 3.2 mm pixels and 5 mm slices: a sanity bound, the accuracy figures are the
        # benchmark's (full-size studies).
        assert best.volume_ml == pytest.approx(sim.volume_ml, rel=0.3)
        assert 0.5 < best.confidence <= 1.0 and np.isfinite(best.uncertainty)
    false_positives = [m for m in result.lesions if m.label_value not in matched]
    assert len(false_positives) <= 1


@pytest.fixture(scope="module")
def two_sided_patient():
    """A patient of the evaluation generator (an anatomy the segmenter was never trained
    on) with a nodule in each lung, rendered as a 2.5 mm slab that holds both."""
    patient = patient_draw(
        seed=11, index=1, n_studies=1, size="small", positions=("HFS",),
        lesion_counts=(2, 0, 0), lesion_diameters_mm=(11.0, 14.0),
        lesion_kinds=("solid", "lobulated", "spiculated"),
    )  # fmt: skip
    study = patient.studies[0]
    acquisition = replace(
        study.acquisition, matrix=224, pixel_mm=1.6, slice_spacing_mm=2.5,
        slice_thickness_mm=2.5, z_start_mm=-5.0, z_end_mm=130.0, noise_hu=12.0,
    )  # fmt: skip
    patient = replace(patient, studies=(replace(study, acquisition=acquisition),))
    rendered = eval_study_render(patient, patient.studies[0])
    assert sorted(t.side for t in rendered.lesions) == ["left", "right"]
    return rendered


def _mirrored_centre(volume, centre):
    """Where a point lands when the image is mirrored left-right (i -> n - 1 - i)."""
    ijk = volume.lps_to_index(np.asarray(centre))
    ijk[0] = volume.shape_ijk[0] - 1 - ijk[0]
    return volume.index_to_lps(ijk)


@pytest.mark.parametrize("mirrored", [False, True], ids=["as_is", "flipped_patient"])
def test_nodules_are_found_in_both_lungs_of_a_patient_and_of_its_mirror_image(
    model, two_sided_patient, mirrored
):
    """No step assumes which side the organs are on: each lung's nodule is found as a
    lung nodule, and so are both in the mirror image of the patient (liver on the left,
    heart on the right), where the right lung's nodule is now on the left."""
    volume = two_sided_patient.volume
    truths = [
        (t.side, np.asarray(t.centre_lps_mm), t.diameter_mm) for t in two_sided_patient.lesions
    ]
    if mirrored:
        volume = volume.with_array(np.ascontiguousarray(volume.array[..., ::-1]))
        truths = [(side, _mirrored_centre(volume, c), d) for side, c, d in truths]
    result = lesions_segment(volume=volume, model=model, device="cpu")
    for side, centre, diameter in truths:
        near = [
            m for m in result.lesions
            if np.linalg.norm(np.asarray(m.centroid_lps_mm) - centre) <= diameter / 2 + 3.0
        ]  # fmt: skip
        assert near, f"the {side} lung's nodule was missed ({'mirrored' if mirrored else 'as is'})"
        assert max(near, key=lambda m: m.volume_ml).organ == "lung"
    assert not [r for r in result.records if "tta_agreement" in r.name]
