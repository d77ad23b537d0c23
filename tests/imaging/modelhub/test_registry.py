"""The registry end to end: the shipped model active from the start, registering a model
of another format, the pipeline segmenting with the active version, validation on the
locked set beside the active model, promotion only with a passing report, rollback in
one step, every change audited, and the pages that show it."""

from __future__ import annotations

import json
import shutil
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from imaging.core.segmentation.network import WEIGHTS_DIR, file_sha256, manifest_read
from imaging.modelhub.models import ModelEvent, SegmentationModel, TrainingExample, ValidationReport
from imaging.modelhub.services import active_model, cohort_training_sources, model_register
from imaging.modelhub.training import training_examples_sync
from imaging.models import Segmentation
from imaging.store import data_dir
from patients.models import AuditEvent
from tests.imaging.modelhub.conftest import (
    ONNX_CONVENTIONS,
    labels_json,
    processed_phantom_study,
    review_all,
    tiny_active,
)
from tests.imaging.modelhub.tiny_models import conv_rule, window_rule

pytestmark = pytest.mark.django_db

#: The locked set of these tests: no generated study, only the site's reviewed ones.
SITE_ONLY = {"name": "site-only", "studies": 0}


def _call(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_the_shipped_model_is_the_first_active_version_with_its_files_checked():
    model = active_model()
    manifest = manifest_read()
    assert (model.name, model.version, model.format, model.status) == (
        manifest["name"], manifest["version"], "radtrack", "active")  # fmt: skip
    files = {f["path"]: f["sha256"] for f in model.files}
    assert (
        files[manifest["file"]] == manifest["sha256"] == file_sha256(WEIGHTS_DIR / manifest["file"])
    )
    assert model.labels == {
        "0": "background",
        "1": "lung",
        "2": "liver",
        "3": "lung_nodule",
        "4": "liver_lesion",
    }
    assert ModelEvent.objects.get().action == "register"
    assert AuditEvent.objects.filter(
        action="model.register", object=f"model {model.label}"
    ).exists()
    assert active_model().pk == model.pk  # registered once
    # Its files are copied into the data store: the version outlives new shipped weights.
    assert file_sha256(data_dir() / model.path / manifest["file"]) == manifest["sha256"]


def test_the_cohorts_trained_on_are_found_up_the_warm_start_chain_and_the_parents():
    cohort = [{"seed": 1000, "size": "full"}, {"seed": 1001, "size": "small"}]
    warm_started = SegmentationModel(training={"manifest_training": {
        "train": [], "warm_start": {"data": {"train": [], "warm_start": {"data": {"train": cohort}}}},
    }})  # fmt: skip
    assert cohort_training_sources(warm_started) == cohort
    tuned = SegmentationModel(training={"from_reviews": True}, parent=warm_started)
    assert cohort_training_sources(tuned) == cohort
    # The shipped weights name the cohorts they were trained on, and RadTrack weights
    # registered by hand keep their manifest's record too.
    assert {s["seed"] for s in cohort_training_sources(active_model())} == {1000, 1001}
    registered = model_register(source=WEIGHTS_DIR, fmt="radtrack", version="1.0.0-copy")
    assert registered.training["manifest_training"] == manifest_read()["training"]["data"]
    assert {s["seed"] for s in cohort_training_sources(registered)} == {1000, 1001}
    assert cohort_training_sources(SegmentationModel(training={})) == []


def test_new_shipped_weights_are_a_candidate_until_validated_and_promoted(tmp_path, monkeypatch):
    from imaging.modelhub import services

    first = active_model()
    upgrade = tmp_path / "weights"
    upgrade.mkdir()
    manifest = manifest_read()
    shutil.copyfile(WEIGHTS_DIR / manifest["file"], upgrade / manifest["file"])
    manifest["version"] = manifest["spec"]["version"] = "9.0.0-upgrade"
    (upgrade / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(services, "WEIGHTS_DIR", upgrade)
    assert active_model().pk == first.pk
    new = SegmentationModel.objects.get(version="9.0.0-upgrade")
    assert new.status == "candidate" and new.path == "models/lesionseg/9.0.0-upgrade"
    # The version in use still loads from its own copy.
    assert services.model_loaded(model=first, device="cpu").version == first.label


def test_register_describes_copies_and_tests_the_model_first(tiny_sources):
    out = _call("model_register", str(tiny_sources["onnx"]), "--format=onnx", "--name=tiny", "--version=1.0",
                f"--labels={labels_json()}", f"--conventions={json.dumps(ONNX_CONVENTIONS)}")  # fmt: skip
    assert out.startswith("model_register: tiny-1.0 (onnx) registered as a candidate")
    row = SegmentationModel.objects.get(name="tiny")
    assert row.status == "candidate" and row.path == "models/tiny/1.0"
    stored = data_dir() / row.path / "model.onnx"
    assert file_sha256(stored) == row.files[0]["sha256"]
    smoke = ModelEvent.objects.get(model=row, action="register").detail["smoke_test"]
    assert smoke["voxels_per_class"]["liver_lesion"] > 0
    # Registered before anything asked for the registry: the shipped model is still the
    # active one (it was left a candidate, and processing had no model).
    shipped = manifest_read()
    active = SegmentationModel.objects.get(status="active")
    assert (active.name, active.version) == (shipped["name"], shipped["version"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--name=tiny", "--version=2"], "do not name their outputs: give --labels"),
        (["--name=ti-ny", "--version=2", "--labels=@LABELS"], "name: lower-case letters"),
        (
            ["--name=tiny", "--version=2", '--labels={"0": "background", "1": "liver_lesion"}'],
            "gave 4 output channels but its label map names 2",
        ),
        (["--name=tiny", "--version=2", "--labels={not json"], "--labels: not valid JSON"),
    ],
)
def test_bad_registrations_are_refused_and_leave_nothing(tiny_sources, tmp_path, extra, message):
    labels = tmp_path / "labels.json"
    labels.write_text(labels_json())
    args = [a.replace("@LABELS", f"@{labels}") for a in extra]
    with pytest.raises(CommandError, match=message):
        _call("model_register", str(tiny_sources["onnx"]), "--format=onnx",
              f"--conventions={json.dumps(ONNX_CONVENTIONS)}", *args)  # fmt: skip
    assert not SegmentationModel.objects.filter(name="tiny").exists()
    assert not (data_dir() / "models" / "tiny").exists() or not any(
        (data_dir() / "models" / "tiny").iterdir()
    )


def _worse_onnx(folder):
    """The tiny rule with the lesion's HU band removed: it never finds the lesion."""
    import torch

    conv = conv_rule()
    slopes, intercepts = window_rule()
    with torch.no_grad():
        conv.bias[2] = float(intercepts[2]) - 1e4  # the lesion channel never wins
    folder.mkdir()
    torch.onnx.export(conv, (torch.zeros(1, 1, 16, 16, 16),), str(folder / "model.onnx"), input_names=["image"],
                      output_names=["logits"], dynamic_axes={"image": {2: "k", 3: "j", 4: "i"}}, dynamo=False)  # fmt: skip
    return folder


def test_validate_promote_and_roll_back(tmp_path, tiny_sources, settings, admin_user, client):
    settings.RADTRACK_VALIDATION_SET = SITE_ONLY
    active = tiny_active(tiny_sources)
    study = processed_phantom_study(tmp_path, key="v1")
    # The pipeline segmented with the active version and says so.
    segmentation = Segmentation.objects.get(series__study=study)
    assert (segmentation.model_name, segmentation.model_version) == ("tiny", "a")
    review_all(study, admin_user)
    assert _call("model_validation_set", f"--add={study.study_instance_uid}").endswith(
        "1 site study in the set\n"
    )

    for version, folder in (
        ("good", tiny_sources["onnx"]),
        ("worse", _worse_onnx(tmp_path / "worse")),
    ):
        _call("model_register", str(folder), "--format=onnx", "--name=tiny", f"--version={version}",
              f"--labels={labels_json()}", f"--conventions={json.dumps(ONNX_CONVENTIONS)}")  # fmt: skip

    with pytest.raises(CommandError, match="has no validation report"):
        _call("model_promote", "tiny-good")
    assert ModelEvent.objects.filter(action="refuse", model__version="good").exists()
    assert AuditEvent.objects.filter(action="model.refuse").exists()

    out = _call("model_validate", "tiny-good", "--quiet")
    assert "against tiny-a: no regression beyond the margins" in out
    good = ValidationReport.objects.get(model__version="good")
    assert good.passed and good.compared_with_id == active.pk
    assert good.metrics["by_organ"]["liver"]["sensitivity"] == 1.0
    # Measurement is compared on the lesions both versions found (one liver lesion here).
    paired = good.comparison["paired_volume_error"]
    assert paired["overall"]["lesions"] == paired["liver"]["lesions"] == 1
    # The active model was validated on the same set for the side-by-side columns.
    assert ValidationReport.objects.get(model=active).set_checksum == good.set_checksum
    html = (data_dir() / good.html_path).read_text()
    assert "Sensitivity by organ, side and size band" in html and "Plotly.newPlot(" in html
    assert "<script src=" not in html  # self-contained: nothing fetched

    out = _call("model_validate", "tiny-worse", "--quiet")
    assert "regressions: overall: sensitivity fell by 100.00 points" in out
    with pytest.raises(
        CommandError, match="regresses beyond the margins: overall: sensitivity fell"
    ):
        _call("model_promote", "tiny-worse")

    assert _call("model_promote", "tiny-good") == "model_promote: tiny-good is the active model\n"
    assert dict(SegmentationModel.objects.values_list("version", "status")) == {
        manifest_read()["version"]: "retired", "a": "retired", "good": "active", "worse": "candidate"}  # fmt: skip
    promoted = ModelEvent.objects.get(action="promote")
    assert promoted.previous_active_id == active.pk and promoted.report_id == good.pk
    # A second study goes through the new version.
    second = processed_phantom_study(tmp_path, key="v2", seed=1)
    assert Segmentation.objects.get(series__study=second).model_version == "good"

    out = _call("model_rollback", "--reason=drift on the new scanner")
    assert out == "model_rollback: tiny-good retired, tiny-a is active again\n"
    assert active_model().pk == active.pk
    assert ModelEvent.objects.get(action="rollback").reason == "drift on the new scanner"
    assert AuditEvent.objects.filter(action__in=["model.promote", "model.rollback"]).count() == 2
    with pytest.raises(CommandError, match="tiny-a was not promoted over another version"):
        _call("model_rollback")

    # A study of the locked set is never trained on.
    (example,) = training_examples_sync()
    assert example.status == TrainingExample.Status.EXCLUDED
    assert example.reason == "in the locked validation set: never trained on"

    # The pages.
    client.force_login(admin_user)
    page = client.get(reverse("modelhub:registry"))
    assert page.status_code == 200 and b"tiny-good" in page.content and b"Roll back" in page.content
    detail = client.get(reverse("modelhub:model", args=[good.model_id]))
    assert detail.status_code == 200
    assert b"liver: median volume error on the 1 lesion(s) both found" in detail.content
    assert set(detail.context["figures"]) == {
        "fig-sensitivity",
        "fig-calibration",
        "fig-volume",
        "fig-time",
    }
    assert b'data-figure="fig-sensitivity"' in detail.content
    export = client.get(reverse("modelhub:report-export", args=[good.pk]))
    assert export.status_code == 200 and b"Plotly.newPlot(" in b"".join(export.streaming_content)
    assert AuditEvent.objects.filter(action="model.report.export").exists()


def test_promotion_needs_a_report_against_the_model_active_now(
    tmp_path, tiny_sources, settings, admin_user
):
    settings.RADTRACK_VALIDATION_SET = SITE_ONLY
    tiny_active(tiny_sources)
    study = processed_phantom_study(tmp_path, key="p1")
    review_all(study, admin_user)
    _call("model_validation_set", f"--add={study.study_instance_uid}")
    _call("model_register", str(tiny_sources["onnx"]), "--format=onnx", "--name=tiny", "--version=b",
          f"--labels={labels_json()}", f"--conventions={json.dumps(ONNX_CONVENTIONS)}")  # fmt: skip
    _call("model_validate", "tiny-b", "--quiet")
    # Someone makes another version active meanwhile: the report no longer compares.
    SegmentationModel.objects.filter(status="active").update(status="retired")
    SegmentationModel.objects.filter(name="lesionseg").update(status="active")
    shipped = f"lesionseg-{manifest_read()['version']}"
    with pytest.raises(CommandError, match=f"compares it with tiny-a, but {shipped} is active now"):
        _call("model_promote", "tiny-b")


def test_a_study_joins_the_locked_set_only_when_fully_reviewed(tmp_path, tiny_sources):
    tiny_active(tiny_sources)
    study = processed_phantom_study(tmp_path, key="r1")
    with pytest.raises(CommandError, match="is not fully reviewed"):
        _call("model_validation_set", f"--add={study.study_instance_uid}")
