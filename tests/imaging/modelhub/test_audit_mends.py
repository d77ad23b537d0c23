"""What the model-lifecycle audit found, each now refused or shown: a report on nothing
never passes and a report on another set never promotes; drift that cannot be tested is
shown as not tested, and the small reference the locked set gives is tested; the locked
set is kept out of training by content and its changes are recorded; a MONAI bundle's
unclipped window is fed unclipped; a RadTrack version's segmentations record the
registry's digest."""

from __future__ import annotations

import datetime as dt
import importlib
import json
from io import StringIO

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from django.utils import timezone
from monai.transforms import ScaleIntensityRange

from imaging.core.modelhub.adapters.monai_bundle import bundle_conventions, bundle_parser
from imaging.core.modelhub.compare import report_refusals
from imaging.core.modelhub.conventions import InputConventions, ModelDescriptionError
from imaging.core.modelhub.drift import drift_evaluate, flat_statistics
from imaging.core.modelhub.validate import reference_statistics
from imaging.modelhub.drift import drift_after_run, study_statistics_store
from imaging.modelhub.models import (
    DriftAlert,
    ModelEvent,
    SegmentationModel,
    StudyStatistics,
    TrainingExample,
    ValidationSetStudy,
)
from imaging.modelhub.services import (
    RegistryError,
    active_model,
    model_loaded,
    model_promote,
    model_register,
    model_retire,
)
from imaging.modelhub.training import training_examples_sync
from imaging.modelhub.validation import model_validate, validation_set_add
from imaging.models import Segmentation
from patients.models import AuditEvent
from tests.imaging.factories import ProcessingRunFactory, SeriesFactory
from tests.imaging.modelhub.conftest import (
    ONNX_CONVENTIONS,
    processed_phantom_study,
    review_all,
    tiny_active,
)
from tests.imaging.modelhub.stream import AFTER, BEFORE, statistics
from tests.imaging.modelhub.test_registry import _worse_onnx
from tests.imaging.modelhub.tiny_models import TINY_LABELS
from tests.patients.factories import UserFactory

SITE_ONLY = {"name": "site-only", "studies": 0}


def _register(folder, version, **extra):
    return model_register(source=folder, fmt="onnx", name="tiny", version=version, labels=TINY_LABELS,
                          conventions=ONNX_CONVENTIONS, username="test", **extra)  # fmt: skip


# --------------------------------------------------------------------------- 1. promotion
def test_a_report_that_measured_nothing_cannot_pass():
    empty = {"studies": 0, "overall": {"lesions_counted": 0}}
    assert report_refusals(empty) == ["the validation set had no study: nothing was measured"]
    no_lesion = {"studies": 2, "overall": {"lesions_counted": 0}}
    assert "no lesion that counts" in report_refusals(no_lesion)[0]
    assert report_refusals({"studies": 2, "overall": {"lesions_counted": 3}}) == []


@pytest.mark.django_db
def test_an_empty_or_outdated_report_never_promotes(tmp_path, tiny_sources, settings, admin_user):
    settings.RADTRACK_VALIDATION_SET = SITE_ONLY
    tiny_active(tiny_sources)
    study = processed_phantom_study(tmp_path, key="pg1")
    review_all(study, admin_user)
    worse = _register(_worse_onnx(tmp_path / "worse"), "worse")  # never finds the lesion
    good = _register(tiny_sources["onnx"], "good")

    # On a set of no study, nothing was measured: not a pass.
    empty = model_validate(model=worse, device="cpu", username="test")
    assert empty.metrics["studies"] == 0 and empty.passed is False
    assert empty.comparison["refusals"] == ["the validation set had no study: nothing was measured"]
    with pytest.raises(RegistryError, match="does not pass: the validation set had no study"):
        model_promote(model=worse, username="test")

    # The study joins the set: the old report is on another set now.
    validation_set_add(study=study, username="test")
    with pytest.raises(RegistryError, match="site stud.* joined the set.*must be run again"):
        model_promote(model=worse, username="test")
    # Validated again, the candidate that finds nothing regresses, measures it could not
    # give included.
    fresh = model_validate(model=worse, device="cpu", username="test")
    texts = [r["text"] for r in fresh.comparison["regressions"]]
    assert (
        not fresh.passed and "overall: sensitivity fell by 100.00 points (margin 1 points)" in texts
    )
    assert any("could not be measured for the candidate" in t for t in texts)

    report = model_validate(model=good, device="cpu", username="test")
    assert report.passed and [s["study_instance_uid"] for s in report.site_studies] == [
        study.study_instance_uid
    ]
    # The study leaves the set (recorded): the passing report no longer promotes.
    call_command("model_validation_set", f"--remove={study.study_instance_uid}",
                 "--reason=wrong series", stdout=StringIO())  # fmt: skip
    with pytest.raises(RegistryError, match="1 left it.*validation must be run again"):
        model_promote(model=good, username="test")
    assert ModelEvent.objects.filter(action="refuse", model=good).exists()
    # Back in the set as it was: the same set, the report promotes.
    validation_set_add(study=study, username="test")
    model_promote(model=good, username="test")
    assert active_model().pk == good.pk


# --------------------------------------------------------------------------- 2. drift
def _shipped_size_reference():
    """As `model_validate` records it on the shipped set: 5 validation studies (inputs and
    outputs) and 3 training cases (inputs): 8 values per input statistic, 5 per output."""
    per_study = []
    for n in range(5):
        inputs, outputs = statistics(2000 + n, BEFORE)
        per_study.append({"inputs": inputs, "outputs": outputs,
                          "protocol": "synthetic_eval | STANDARD | slices 1.5-3 mm"})  # fmt: skip
    training = [statistics(3000 + n, BEFORE)[0] for n in range(3)]
    return reference_statistics(per_study=per_study, training=training)


def test_the_shipped_size_reference_is_tested_and_a_protocol_off_from_its_start_is_found():
    reference = _shipped_size_reference()
    assert {k: len(v) for k, v in reference["values"].items()}["noise_hu"] == 8
    assert len(reference["values"]["mean_confidence"]) == 5
    off = [flat_statistics(*statistics(n, AFTER)) for n in range(12)]
    opened = {}
    for n in range(1, len(off) + 1):
        result = drift_evaluate(protocol="Acme | SHARP | slices 1.5-3 mm", history=off[:n],
                                reference=reference["values"], known_protocols={"x"})  # fmt: skip
        for f in result.findings:
            opened.setdefault((f.kind, f.statistic), n)
        if n == 9:  # before the window is full: each test says it was not run, and why
            noise = next(
                t for t in result.tests if (t.statistic, t.reference) == ("noise_hu", "model")
            )
            assert noise.text == "not tested (recent n=9 < 10)"
    assert opened[("new_protocol", "")] == 1
    assert opened[("shift", "noise_hu")] == 10  # the first full window, against n=8
    # the same statistics as the reference raise nothing
    same = [flat_statistics(*statistics(n, BEFORE)) for n in range(10)]
    result = drift_evaluate(protocol="y", history=same, reference=reference["values"],
                            known_protocols={"y"})  # fmt: skip
    assert [f for f in result.findings if f.statistic == "noise_hu"] == []
    assert any(t.tested and t.statistic == "noise_hu" for t in result.tests)


def test_a_reference_too_small_or_missing_is_not_tested_with_the_reason():
    history = [flat_statistics(*statistics(n, AFTER)) for n in range(10)]
    small = {k: v[:3] for k, v in _shipped_size_reference()["values"].items()}
    result = drift_evaluate(protocol="p", history=history, reference=small, known_protocols={"p"})
    assert result.findings == []
    texts = {t.statistic: t.text for t in result.tests if t.reference == "model"}
    assert texts["noise_hu"] == "not tested (reference n=3 < 5)"
    assert texts["equivocal_share"] == "not tested (the reference has no value of it)"
    none = drift_evaluate(protocol="p", history=history, reference=None, known_protocols={"p"})
    assert all(not t.tested for t in none.tests)
    assert "never validated" in none.tests[0].reason
    # A reference of 5 against 10 recent studies at a stricter level could not reach it
    # even wholly apart: said, not passed over as "no shift".
    five = {k: v[:5] for k, v in _shipped_size_reference()["values"].items()}
    result = drift_evaluate(protocol="p", history=history, reference=five, known_protocols={"p"},
                            alpha=0.001)  # fmt: skip
    noise = next(t for t in result.tests if (t.statistic, t.reference) == ("noise_hu", "model"))
    assert not noise.tested and "could not reach p <" in noise.reason


@pytest.mark.django_db
def test_the_pages_show_drift_not_tested_and_the_small_reference_finds_the_shift(settings, client):
    settings.RADTRACK_DRIFT_WINDOW = 10
    model = active_model()
    start = timezone.now() - dt.timedelta(days=40)

    def stream(count, acquisition, offset):
        opened = {}
        for n in range(count):
            series = SeriesFactory(
                manufacturer="Acme", kernel=acquisition.kernel, slice_thickness_mm=2.0
            )
            run = ProcessingRunFactory(series=series)
            inputs, outputs = statistics(offset + n, acquisition)
            row = study_statistics_store(run=run, series=series, model_label=model.label,
                                         statistics={"inputs": inputs, "outputs": outputs})  # fmt: skip
            StudyStatistics.objects.filter(pk=row.pk).update(
                created_at=start + dt.timedelta(days=offset + n)
            )
            for alert in drift_after_run(run=run):
                opened.setdefault((alert.kind, alert.statistic), n)
        return opened

    # The shipped model, never validated here: no reference, nothing can be tested.
    assert not model.reference_statistics
    stream(3, BEFORE, 0)
    client.force_login(UserFactory(groups=["radiologist"]))
    page = client.get(reverse("analytics:pipeline"))
    assert b'data-testid="drift-untested"' in page.content
    assert b"has no reference statistics: it was never validated" in page.content
    assert DriftAlert.objects.filter(kind="not_tested").count() == 1  # once per protocol
    drift = client.get(reverse("modelhub:drift"))
    assert b"not tested (" in drift.content and b"never validated" in drift.content

    # Validated on a set of the shipped size (8 input values, 5 output values): tested.
    model.reference_statistics = {
        **_shipped_size_reference(),
        "protocols": ["Acme | STANDARD | slices 1.5-3 mm"],
    }
    model.save()
    assert stream(20, BEFORE, 100) == {}  # the same scanner and protocol: silent
    standard = StudyStatistics.objects.filter(kernel="STANDARD").order_by("-pk").first()
    noise = next(
        t for t in standard.drift_tests if (t["statistic"], t["reference"]) == ("noise_hu", "model")
    )
    assert noise["tested"] and noise["n_reference"] == 8 and not noise["shift"]
    opened = stream(12, AFTER, 200)
    assert opened[("new_protocol", "")] == 0
    assert opened[("shift", "noise_hu")] == 9  # its 10th study: the first full window
    alert = DriftAlert.objects.get(kind="shift", statistic="noise_hu")
    assert alert.detail["n_reference"] == 8 and alert.protocol == "Acme | SHARP | slices 1.5-3 mm"
    page = client.get(reverse("analytics:pipeline"))
    assert b'data-testid="drift-alerts"' in page.content
    assert b'data-testid="drift-untested"' not in page.content  # closed once tested
    closed = DriftAlert.objects.get(kind="not_tested")
    assert closed.acknowledged_by_name == "radtrack: tested since"
    drift = client.get(reverse("modelhub:drift"))
    tests = {p["protocol"]: p for p in drift.context["overview"]["tests"]}
    sharp = {s["statistic"]: s for s in tests["Acme | SHARP | slices 1.5-3 mm"]["statistics"]}
    assert sharp["noise_hu"]["model"]["shift"] is True
    assert (
        sharp["equivocal_share"]["model"]["text"] == "not tested (the reference has no value of it)"
    )
    assert b"not tested (the reference has no value of it)" in drift.content


# --------------------------------------------------------------------------- 3. locked set
@pytest.mark.django_db
def test_the_locked_set_is_kept_out_of_training_by_content(tmp_path, tiny_sources, admin_user):
    tiny_active(tiny_sources)
    locked = processed_phantom_study(tmp_path, key="lk", patient_id="LK-A", seed=3)
    resent = processed_phantom_study(tmp_path, key="rs", patient_id="LK-B", seed=3)  # same pixels
    later = processed_phantom_study(tmp_path, key="lt", patient_id="LK-A", seed=1)  # same patient
    other = processed_phantom_study(tmp_path, key="ot", patient_id="LK-C", seed=2)
    for study in (locked, resent, later, other):
        review_all(study, admin_user)
    validation_set_add(study=locked, username="test")
    examples = {e.study_id: e for e in training_examples_sync()}
    assert examples[locked.pk].reason == "in the locked validation set: never trained on"
    assert examples[resent.pk].status == TrainingExample.Status.EXCLUDED
    assert examples[resent.pk].reason.startswith(
        "the same images (identical voxels on the same grid)"
    )
    assert locked.study_instance_uid in examples[resent.pk].reason
    assert examples[later.pk].status == TrainingExample.Status.EXCLUDED
    assert examples[later.pk].reason.startswith("the same patient")
    assert examples[other.pk].status == TrainingExample.Status.INCLUDED


@pytest.mark.django_db
def test_set_changes_are_recorded_and_a_study_trained_on_cannot_be_judged_on(
    tmp_path, tiny_sources, settings, admin_user, client
):
    settings.RADTRACK_VALIDATION_SET = SITE_ONLY
    tiny_active(tiny_sources)
    study = processed_phantom_study(tmp_path, key="t1", patient_id="TR-1")
    review_all(study, admin_user)
    (example,) = training_examples_sync()
    assert example.status == TrainingExample.Status.INCLUDED
    tuned = _register(tiny_sources["onnx"], "ft1",
                      training={"examples": [example.pk], "studies": [study.study_instance_uid]})  # fmt: skip
    # A version in use learnt from it: it cannot join the set.
    with pytest.raises(RegistryError, match="tiny-ft1 was trained on study .*: the same study"):
        validation_set_add(study=study, username="test")
    assert not ValidationSetStudy.objects.exists()
    model_retire(model=tuned, username="test", reason="superseded")
    before = AuditEvent.objects.count()
    validation_set_add(study=study, username="test", reason="reviewed twice")
    added = ModelEvent.objects.get(action="set_add")
    assert added.detail["study_instance_uid"] == study.study_instance_uid
    assert AuditEvent.objects.filter(action="model.set_add").count() == 1
    # A version registered later that learnt from a study of the set cannot pass on it.
    again = _register(tiny_sources["onnx"], "ft2", parent=tuned)  # inherits ft1's training
    report = model_validate(model=again, device="cpu", username="test")
    assert not report.passed
    assert any("tiny-ft2 was trained on study" in r for r in report.comparison["refusals"])

    # Removed with the command: recorded, and still never trained on.
    call_command("model_validation_set", f"--remove={study.study_instance_uid}",
                 "--reason=mislabelled", stdout=StringIO())  # fmt: skip
    removed = ModelEvent.objects.get(action="set_remove")
    assert (
        removed.reason == "mislabelled"
        and removed.detail["study_instance_uid"] == study.study_instance_uid
    )
    assert AuditEvent.objects.filter(action="model.set_remove").count() == 1
    assert AuditEvent.objects.count() > before
    (example,) = training_examples_sync()
    assert example.status == TrainingExample.Status.EXCLUDED
    assert example.reason.startswith("removed from the locked validation set on")
    with pytest.raises(CommandError, match="is not in the validation set"):
        call_command(
            "model_validation_set", f"--remove={study.study_instance_uid}", stdout=StringIO()
        )

    # The admin's delete is the same recorded removal.
    model_retire(model=again, username="test", reason="trained on a set study")
    validation_set_add(study=study, username="test")
    entry = ValidationSetStudy.objects.get(study=study)
    assert entry.removed_at is None
    client.force_login(admin_user)
    page = client.post(
        reverse("admin:modelhub_validationsetstudy_delete", args=[entry.pk]), {"post": "yes"}
    )
    assert page.status_code == 302
    entry.refresh_from_db()
    assert entry.removed_at is not None and entry.removed_by_name == admin_user.get_username()
    assert ModelEvent.objects.filter(action="set_remove").count() == 2


# --------------------------------------------------------------------------- 4. MONAI clip
def _bundle(tmp_path, **scale):
    (tmp_path / "configs").mkdir()
    cfg = {"network_def": {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 4, "kernel_size": 1},
           "preprocessing": {"_target_": "Compose", "transforms": [
               {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
               {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -200, "a_max": 300,
                "b_min": 0.0, "b_max": 1.0, **scale}]}}  # fmt: skip
    (tmp_path / "configs" / "inference.json").write_text(json.dumps(cfg))
    return bundle_conventions(bundle_parser(tmp_path))


@pytest.mark.parametrize("scale", [{}, {"clip": False}, {"clip": True}])
def test_a_bundle_is_fed_its_window_clipped_or_not_as_monai_would(tmp_path, scale):
    conventions = InputConventions.from_json(_bundle(tmp_path, **scale))
    hu = np.array([[[-1000.0, 0.0, 1200.0]]], dtype=np.float32)
    ours = conventions.normalise(hu)[0].ravel()
    monai = ScaleIntensityRange(a_min=-200, a_max=300, b_min=0.0, b_max=1.0, **scale)(hu)
    assert np.allclose(ours, np.asarray(monai).ravel())
    assert conventions.window_clip is scale.get("clip", False)


def test_a_bundle_clip_that_is_not_a_literal_is_refused(tmp_path):
    with pytest.raises(ModelDescriptionError, match="clip='\\$True'.*window_clip"):
        _bundle(tmp_path, clip="$True")


def test_conventions_stored_before_window_clip_still_clip():
    old = InputConventions.from_json({"windows_hu": [[-100, 100]]})
    assert old.window_clip is True
    assert old.normalise(np.array([[[-500.0, 500.0]]], dtype=np.float32)).ravel().tolist() == [
        0.0,
        1.0,
    ]
    with pytest.raises(ModelDescriptionError, match="window_clip: expected true or false"):
        InputConventions.from_json({"window_clip": "no"})


# --------------------------------------------------------------------------- 5. digests
@pytest.mark.django_db
def test_a_radtrack_version_records_the_registry_digest():
    row = active_model()
    assert row.format == "radtrack"
    loaded = model_loaded(model=row, device="cpu")
    assert loaded.spec.sha256 == row.sha256
    weights = next(f["sha256"] for f in row.files if f["path"].endswith(".pt"))
    assert weights != row.sha256


@pytest.mark.django_db
def test_segmentations_recorded_with_the_weights_digest_are_brought_in_line():
    from django.apps import apps

    migration = importlib.import_module("imaging.modelhub.migrations.0002_audit_mends")
    row = active_model()
    weights = next(f["sha256"] for f in row.files if f["path"].endswith(".pt"))
    series = SeriesFactory()
    old = Segmentation.objects.create(series=series, mask_path="x.nii.gz", model_name=row.name,
                                      model_version=row.version, model_sha256=weights)  # fmt: skip
    other = Segmentation.objects.create(series=series, mask_path="y.nii.gz", model_name="tiny",
                                        model_version="a", model_sha256=weights)  # fmt: skip
    migration.forwards(apps, None)
    old.refresh_from_db()
    other.refresh_from_db()
    assert old.model_sha256 == row.sha256 and other.model_sha256 == weights
    assert SegmentationModel.objects.filter(sha256=old.model_sha256).exists()
    migration.backwards(apps, None)
    old.refresh_from_db()
    assert old.model_sha256 == weights
