"""Every model format behind one ``segment`` call, through the same post-processing and
measurement: a tiny network written in each format's own way finds and measures the
phantom's lesion as the truth says, and all formats agree (no database)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from imaging.core.modelhub.adapters import (
    description_build,
    model_inspect,
    model_load,
    model_smoke_test,
)
from imaging.core.modelhub.adapters.base import from_model_axes, to_model_axes
from imaging.core.modelhub.conventions import InputConventions, LabelMap, ModelDescriptionError
from imaging.core.modelhub.files import model_digest, model_files_describe
from imaging.core.segmentation.lesions import lesions_segment
from tests.imaging.modelhub.tiny_models import (
    LESION_RADIUS_MM,
    TINY_LABELS,
    monai_bundle_build,
    nnunet_build,
    onnx_build,
    phantom,
)

ONNX_CONVENTIONS = {"spacing_mm": [2, 2, 2], "windows_hu": [[-1000, 1000]], "divisor": 1}
BUILDERS = {"onnx": onnx_build, "monai-bundle": monai_bundle_build, "nnunetv2": nnunet_build}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {fmt: build(root / fmt) and root / fmt for fmt, build in BUILDERS.items()}


def _load(fmt, folder, labels=None, conventions=None):
    inspected = model_inspect(fmt=fmt, root=folder)
    files = model_files_describe(root=folder)
    description = description_build(
        name="tiny", version=fmt, fmt=fmt, labels=labels or inspected["labels"] or TINY_LABELS,
        conventions=conventions or inspected["conventions"] or ONNX_CONVENTIONS, files=files,
        sha256=model_digest(files),
    )  # fmt: skip
    return model_load(description=description, root=folder, device="cpu")


@pytest.fixture(scope="module")
def measured(built):
    volume, centre, volume_ml = phantom()
    out = {}
    for fmt, folder in built.items():
        segmentation = lesions_segment(volume=volume, model=_load(fmt, folder), device="cpu")
        out[fmt] = segmentation
    return out, centre, volume_ml


@pytest.mark.parametrize("fmt", list(BUILDERS))
def test_each_format_finds_and_measures_the_lesion_as_the_truth_says(measured, fmt):
    results, centre, volume_ml = measured
    segmentation = results[fmt]
    assert len(segmentation.lesions) == 1, [m.organ for m in segmentation.lesions]
    lesion = segmentation.lesions[0]
    assert lesion.organ == "liver"
    assert np.linalg.norm(np.asarray(lesion.centroid_lps_mm) - centre) < 1.0
    assert lesion.volume_ml == pytest.approx(volume_ml, rel=0.1)
    assert lesion.longest_axial_diameter_mm == pytest.approx(2 * LESION_RADIUS_MM, abs=2.5)
    # The run record names the model and its format; the post-processing steps follow it.
    names = [r.name for r in segmentation.records]
    assert f"segment_{fmt.replace('-', '_')}" in names
    assert "postprocess_threshold" in names and names[-1] == "measure_lesions"
    assert segmentation.model_version == f"tiny-{fmt}"


def test_the_formats_agree_with_each_other(measured):
    results, _, _ = measured
    volumes = [r.lesions[0].volume_ml for r in results.values()]
    assert max(volumes) - min(volumes) < 0.02 * max(volumes)


def test_inspection_reads_what_each_format_says_about_itself(built):
    bundle = model_inspect(fmt="monai-bundle", root=built["monai-bundle"])
    assert bundle["labels"] == TINY_LABELS
    assert bundle["conventions"]["axes"] == "RAS"
    assert bundle["conventions"]["spacing_mm"] == [2.0, 2.0, 2.0]
    assert bundle["conventions"]["windows_hu"] == [[-1000.0, 1000.0]]
    assert bundle["conventions"]["window_voxels"] == [32, 32, 32]
    nnunet = model_inspect(fmt="nnunetv2", root=built["nnunetv2"])
    assert nnunet["labels"] == {"background": 0, "lung": 1, "liver_lesion": 2, "liver": 3}
    assert nnunet["conventions"]["intensity"] == "none"
    assert nnunet["conventions"]["spacing_mm"] == [2.0, 2.0, 2.0]
    assert model_inspect(fmt="onnx", root=built["onnx"]) == {"labels": None, "conventions": {}}


def test_a_label_map_that_does_not_fit_the_outputs_is_refused_on_first_use(built):
    three = {"0": "background", "1": "liver", "2": "liver_lesion"}
    model = _load("onnx", built["onnx"], labels=three, conventions=ONNX_CONVENTIONS)
    with pytest.raises(ModelDescriptionError, match="4 output channels but its label map names 3"):
        model_smoke_test(model)
    with pytest.raises(ModelDescriptionError, match="has 4 outputs; the label map names 3"):
        _load("nnunetv2", built["nnunetv2"], labels=three)


def test_an_altered_file_is_refused(built, tmp_path):
    folder = tmp_path / "bundle"
    shutil.copytree(built["monai-bundle"], folder)
    files = model_files_describe(root=folder)
    description = description_build(name="tiny", version="1", fmt="monai-bundle", labels=TINY_LABELS,
                                    conventions={}, files=files, sha256=model_digest(files))  # fmt: skip
    (folder / "models" / "model.pt").write_bytes(b"not the weights")
    with pytest.raises(
        ModelDescriptionError, match="models/model.pt differs from its registered SHA-256"
    ):
        model_load(description=description, root=folder, device="cpu")
    (folder / "models" / "model.pt").unlink()
    with pytest.raises(ModelDescriptionError, match="models/model.pt is missing"):
        model_load(description=description, root=folder, device="cpu")


def test_a_region_based_or_broken_nnunet_folder_is_refused(tmp_path):
    with pytest.raises(ModelDescriptionError, match="no plans.json"):
        model_inspect(fmt="nnunetv2", root=tmp_path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"0": "background", "2": "liver_lesion"}, "numbered 0..1 without gaps"),
        (["background", "tumour"], "unknown label"),
        (["background", "liver"], "no channel is a lesion"),
        ("liver", "expected a list or an object"),
    ],
)
def test_bad_label_maps_are_refused_with_the_reason(data, message):
    with pytest.raises(ModelDescriptionError, match=message):
        LabelMap.from_json(data)


def test_label_maps_fold_onto_radtrack_classes():
    labels = LabelMap.from_json({"background": 0, "lymph_node": 1, "liver_lesion": 2, "liver": 3})
    probs = np.array([[0.1], [0.2], [0.3], [0.4]], dtype=np.float32)
    folded = labels.fold(probs)
    # background + lymph node (not measured) -> background; liver -> 2; liver lesion -> 4
    np.testing.assert_allclose(folded[:, 0], [0.3, 0.0, 0.4, 0.0, 0.3])
    assert labels.unused == ("lymph_node",)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"spacing_mm": [1, 1]}, "spacing_mm: expected three positive"),
        ({"intensity": "minmax"}, "intensity: 'minmax' is not one of"),
        ({"windows_hu": [[100, -100]]}, "windows_hu: expected finite low < high"),
        ({"sd_hu": 0}, "sd_hu: must be positive"),
        ({"colour": "red"}, "unknown field"),
    ],
)
def test_bad_conventions_are_refused_naming_the_field(data, message):
    with pytest.raises(ModelDescriptionError, match=message):
        InputConventions.from_json(data)


def test_ras_axes_go_there_and_back():
    array = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    ras = to_model_axes(array, "RAS")
    assert ras.shape == (2, 5, 4, 3)
    # LPS index i grows to the patient's left; RAS x grows to the right.
    assert ras[0, 0, 0, 0] == array[0, 0, 3, 4]
    np.testing.assert_array_equal(from_model_axes(ras, "RAS"), array)
