"""``manage.py train_segmenter`` and ``finetune_segmenter``: orchestration, files, resume, errors.

These run one or two optimiser steps on tiny data: they check the plumbing (splits,
checkpoints, resume, reports, weights with their SHA-256), not what the model learns;
tests/imaging/core/test_segmentation.py checks the shipped model itself. No database.
"""

from __future__ import annotations

import datetime as dt
import json
from io import StringIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from django.core.management import call_command
from django.core.management.base import CommandError

from imaging.core.dicom.write import CTSeriesAttributes, ct_series_write, synthetic_uid
from imaging.core.geometry.nifti import volume_write_nifti
from imaging.core.segmentation.network import WEIGHTS_DIR, SegmenterSpec, file_sha256, manifest_read
from imaging.core.segmentation.training.encoder import encoder_parameter_prefixes
from imaging.core.segmentation.training.site import seg_labels_read
from imaging.core.synthetic import cohort
from imaging.core.synthetic.labels import study_label_render
from imaging.core.synthetic.phantom import ScanGeometry, phantom_render

TINY = ["--patients=0", "--small-patients=1", "--timepoints=1", "--val-patients=0",
        "--patch-size=16", "--batch-size=1", "--checkpoint-every=1", "--threads=1", "--quiet"]  # fmt: skip


def _run(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_train_one_step_then_resume(tmp_path):
    run = tmp_path / "run"
    stdout = _run("train_segmenter", f"--out={run}", "--steps=1", *TINY)
    lines = stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train_segmenter: 1 steps on 1 studies")
    for name in ("checkpoint.pt", "manifest.json", "MODEL_CARD.md", "train_log.jsonl"):
        assert (run / name).is_file(), name
    manifest = json.loads((run / "manifest.json").read_text())
    assert file_sha256(run / manifest["file"]) == manifest["sha256"]
    assert manifest["training"]["settings"]["seed"] == 0
    assert manifest["training"]["data"]["cohort_seeds"] == [1001]
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["step"] == 1
    first = {k: v.clone() for k, v in state["network"].items()}

    with pytest.raises(CommandError, match="already holds a checkpoint"):
        _run("train_segmenter", f"--out={run}", "--steps=2", *TINY)
    stdout = _run("train_segmenter", f"--out={run}", "--steps=2", "--resume", *TINY)
    assert stdout.startswith("train_segmenter: 2 steps")
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["step"] == 2
    assert any(not torch.equal(first[k], v) for k, v in state["network"].items())
    logged = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in logged] == [1, 2]
    with pytest.raises(CommandError, match="only --steps may change"):
        _run("train_segmenter", f"--out={run}", "--steps=3", "--resume", "--lr=0.1", *TINY)
    # The shipped weights were not touched.
    assert manifest_read()["sha256"] == file_sha256(WEIGHTS_DIR / manifest_read()["file"])


def test_train_one_generated_step_then_resume(tmp_path):
    """With ``--generated`` every patch comes fresh from the variation generator, seeded by
    (seed, step): the run records the generator, and a resumed run draws the batches an
    uninterrupted one would."""
    from imaging.core.segmentation.training.generated import GeneratedData, batch_generate

    run = tmp_path / "generated"
    args = ["--generated", "--loader-workers=0", "--recalibrate-batches=2", "--plain-share=0.5",
            "--cohort-acquisition-share=0.5", *TINY]  # fmt: skip
    stdout = _run("train_segmenter", f"--out={run}", "--steps=1", *args)
    assert stdout.startswith("train_segmenter: 1 steps on 0 studies")
    manifest = json.loads((run / "manifest.json").read_text())
    generator = manifest["training"]["data"]["generator"]
    assert generator["plain_share"] == 0.5 and generator["patch_size"] == 16
    assert generator["cohort_acquisition_share"] == 0.5
    assert manifest["training"]["settings"]["cohort_acquisition_share"] == 0.5
    assert manifest["training"]["settings"]["generated"] is True
    _run("train_segmenter", f"--out={run}", "--steps=2", "--resume", *args)
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == 2
    data = GeneratedData(patch_size=16, batch_size=1, lesion_bias=0.5, plain_share=0.5)
    spec = SegmenterSpec()
    once, again = (batch_generate(seed=0, step=1, spec=spec, data=data) for _ in range(2))
    assert np.array_equal(once[0], again[0]) and np.array_equal(once[1], again[1])
    other = batch_generate(seed=0, step=2, spec=spec, data=data)
    assert not np.array_equal(once[0], other[0])
    assert once[0].shape == (1, 2, 16, 16, 16) and np.allclose(once[1].sum(axis=1), 1.0, atol=1e-3)


def test_train_usage_errors(tmp_path):
    with pytest.raises(CommandError, match="no checkpoint"):
        _run("train_segmenter", f"--out={tmp_path / 'none'}", "--resume", *TINY)
    with pytest.raises(CommandError, match="multiple of 8"):
        _run("train_segmenter", f"--out={tmp_path / 'x'}", *TINY[:-4], "--patch-size=20")
    with pytest.raises(CommandError, match="no training data"):
        _run("train_segmenter", f"--out={tmp_path / 'x'}", "--patients=0", "--small-patients=0")
    with pytest.raises(CommandError, match="plain-share"):
        _run("train_segmenter", f"--out={tmp_path / 'x'}", "--generated", "--plain-share=2", *TINY)
    with pytest.raises(CommandError, match="cohort-acquisition-share"):
        _run("train_segmenter", f"--out={tmp_path / 'x'}", "--generated",
             "--cohort-acquisition-share=-1", *TINY)  # fmt: skip


# --------------------------------------------------------------------------- fine-tuning
def _site_case(seed: int, index: int):
    """A small slab of a phantom study around its first lesion, with exact labels."""
    patient = cohort.patient_simulate(seed=seed, index=index, n_timepoints=1, size="small")
    study = patient.studies[0]
    lesion = next(x for x in patient.lesions_at(study) if x.volume_ml > 0)
    geometry = ScanGeometry.centred(
        centre_lps_mm=study.to_lps(lesion.shape.centre_body_mm),
        shape_ijk=(40, 40, 16),
        spacing_mm=(2.5, 2.5, 5.0),
        direction=np.eye(3),
        slice_thickness_mm=5.0,
    )
    image = phantom_render(anatomy=patient.anatomy, lesions=[lesion], geometry=geometry,
                           pose_body_to_lps=study.pose_body_to_lps, noise_hu=10.0,
                           rng=np.random.default_rng(index))  # fmt: skip
    truth = study_label_render(
        anatomy=patient.anatomy,
        lesions=[lesion],
        lesion_organs={x.lesion_id: x.organ for x in patient.lesions},
        geometry=geometry,
        pose_body_to_lps=study.pose_body_to_lps,
    )
    return image.volume, truth.label, patient.patient_id


def _write_seg(case: Path, volume, label: np.ndarray, patient_id: str) -> None:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    attrs = CTSeriesAttributes(
        patient_id=patient_id,
        study_instance_uid=str(synthetic_uid([patient_id, "study"])),
        series_instance_uid=str(synthetic_uid([patient_id, "series"])),
        frame_of_reference_uid=str(synthetic_uid([patient_id, "for"])),
        study_date=dt.date(2024, 1, 1),
    )
    paths = ct_series_write(volume, case / "image", attrs)
    sources = [pydicom.dcmread(p) for p in paths]
    names = {2: "Liver", 4: "Liver lesion", 1: "Lung", 3: "Lung nodule"}
    present = [c for c in (1, 2, 3, 4) if (label == c).any()]
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=names[c],
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for n, c in enumerate(present, start=1)
    ]
    masks = np.stack([label == c for c in present], axis=-1).astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=2,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="RadTrack tests",
        manufacturer_model_name="phantom",
        software_versions="0",
        device_serial_number="0",
    )
    seg.save_as(case / "seg.dcm")


@pytest.fixture(scope="module")
def site_data(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("site")
    for n, (seed, index) in enumerate([(12, 0), (12, 3), (14, 4)]):
        volume, label, patient_id = _site_case(seed, index)
        case = data / f"case{n}"
        case.mkdir()
        if n == 2:
            _write_seg(case, volume, label, patient_id)
        else:
            volume_write_nifti(volume=volume, path=case / "image.nii.gz")
            volume_write_nifti(volume=volume.with_array(label, kind="label"),
                               path=case / "label.nii.gz")  # fmt: skip
    return data


def test_dicom_seg_labels_are_read_onto_the_series_geometry(site_data):
    label = seg_labels_read(path=site_data / "case2" / "seg.dcm")
    volume, truth, _ = _site_case(14, 4)
    assert label.kind == "label"
    np.testing.assert_allclose(label.spacing_mm, volume.spacing_mm, atol=1e-3)
    np.testing.assert_allclose(label.origin_mm, volume.origin_mm, atol=1e-3)
    np.testing.assert_allclose(label.direction, volume.direction, atol=1e-6)
    assert np.array_equal(label.array, truth)


def test_finetune_one_step_with_frozen_encoder_and_report(site_data, tmp_path):
    out = tmp_path / "ft"
    stdout = _run("finetune_segmenter", str(site_data), f"--out={out}", "--steps=1",
                  "--patch-size=16", "--batch-size=1", "--freeze-encoder", "--threads=1",
                  "--quiet")  # fmt: skip
    line = stdout.strip()
    assert "\n" not in line and line.startswith("finetune_segmenter: lesionseg-")
    assert "(encoder frozen)" in line and "2 cases (1 validation)" in line
    report = json.loads((out / "finetune_report.json").read_text())
    assert set(report) >= {"before", "after", "train_cases", "validation_cases"}
    for phase in ("before", "after"):
        assert set(report[phase]["dice"]) == {"lung", "liver", "lung_nodule", "liver_lesion"}
    assert "| Dice liver |" in (out / "finetune_report.md").read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    base = manifest_read()
    assert manifest["version"] == f"{base['version']}-ft1"
    assert manifest["training"]["data"]["base_sha256"] == base["sha256"]
    assert file_sha256(out / manifest["file"]) == manifest["sha256"]
    tuned = torch.load(out / manifest["file"], weights_only=True)["state_dict"]
    original = torch.load(WEIGHTS_DIR / base["file"], weights_only=True)["state_dict"]
    prefixes = encoder_parameter_prefixes(SegmenterSpec.from_dict(base["spec"]))
    encoder = [k for k in tuned if any(k.startswith(p) for p in prefixes) and "conv" in k]
    decoder = [k for k in tuned if not any(k.startswith(p) for p in prefixes) and "conv" in k]
    assert encoder and decoder
    assert all(torch.equal(tuned[k], original[k]) for k in encoder)
    assert any(not torch.equal(tuned[k], original[k]) for k in decoder)


def test_finetune_usage_errors(tmp_path, site_data):
    with pytest.raises(CommandError, match="not a folder"):
        _run("finetune_segmenter", str(tmp_path / "missing"), f"--out={tmp_path / 'o'}")
    with pytest.raises(CommandError, match="small rate"):
        _run("finetune_segmenter", str(site_data), f"--out={tmp_path / 'o'}", "--lr=0.01")
    empty = tmp_path / "empty"
    (empty / "case").mkdir(parents=True)
    with pytest.raises(CommandError, match="no image.nii.gz"):
        _run("finetune_segmenter", str(empty), f"--out={tmp_path / 'o'}")
