"""Processing runs: queued on ingest, recorded step by step, failures readable, reruns safe."""

from __future__ import annotations

from io import StringIO

import numpy as np
import pydicom
import pytest
from django.core.management import CommandError, call_command

from analytics.dashboard.series import run_status_label, run_warnings
from imaging.core.geometry.nifti import volume_read_nifti
from imaging.ingest.service import ingest_paths
from imaging.models import ProcessingRun, Series
from imaging.pipeline.run import series_process
from imaging.store import data_dir
from tests.imaging.factories import ct_files

pytestmark = pytest.mark.django_db


@pytest.fixture
def ingest_and_process(django_capture_on_commit_callbacks):
    """Ingest with processing queued on commit; Celery runs the task eagerly here."""

    def run(path):
        with django_capture_on_commit_callbacks(execute=True):
            ingest_paths(paths=[path], process=True)

    return run


def test_ingest_queues_processing_and_the_run_stores_a_geometry_true_volume(
    tmp_path, ingest_and_process
):
    files = ct_files(tmp_path / "s", slices=12, key="k1", size=32)

    ingest_and_process(tmp_path / "s")

    series = Series.objects.get()
    assert series.state == Series.State.PROCESSED, series.state_detail
    run = series.processing_runs.get()
    assert run.status == ProcessingRun.Status.SUCCEEDED
    assert run.device == "cpu"
    pipeline = [s["name"] for s in run.steps if "group" not in s]
    assert pipeline == [
        "device",
        "series_to_volume",
        "orientation_standardise",
        "store_volume",
        "segment",
        "store_segmentation",
        "study_statistics",
        "track_lesions",
    ]
    # The segmenter's own steps (body crop, reorient, resample, inference,
    # post-processing, measurement) are recorded inside the run too, with their parameters
    # and versions.
    inner = [s["name"] for s in run.steps if s.get("group") == "segment"]
    assert inner[:4] == ["body_crop", "reorient", "resample", "segment_unet"]
    assert inner[-1] == "measure_lesions"
    assert all(s["status"] == "succeeded" and s["seconds"] >= 0 for s in run.steps)
    assert run.versions["pydicom"] == pydicom.__version__

    volume = volume_read_nifti(path=data_dir() / run.volume_path)
    assert volume.shape_ijk == (32, 32, 12)
    first = pydicom.dcmread(files[0])
    np.testing.assert_allclose(
        volume.origin_mm, [float(v) for v in first.ImagePositionPatient], atol=1e-3
    )
    np.testing.assert_allclose(volume.spacing_mm, (0.8, 0.8, 2.5), atol=1e-4)
    np.testing.assert_allclose(volume.array[0], first.pixel_array.astype(float) - 1024.0, atol=1e-3)
    assert run.volume_geometry["shape_ijk"] == [32, 32, 12]


def test_a_series_that_cannot_be_built_fails_with_a_readable_reason(tmp_path, ingest_and_process):
    files = ct_files(tmp_path / "s", slices=12, key="k2", size=32)
    # Two images at the same position: the stack is ambiguous and must be refused.
    ds = pydicom.dcmread(files[3])
    ds.ImagePositionPatient = pydicom.dcmread(files[2]).ImagePositionPatient
    ds.save_as(files[3], enforce_file_format=True)

    ingest_and_process(tmp_path / "s")

    series = Series.objects.get()
    run = series.processing_runs.get()
    assert series.state == Series.State.FAILED
    assert run.status == ProcessingRun.Status.FAILED
    assert "position" in run.error
    assert series.state_detail == run.error
    assert run.steps[-1]["name"] == "series_to_volume"
    assert run.steps[-1]["status"] == "failed"
    assert not run.volume_path


def test_a_volume_built_with_slices_filled_in_is_a_run_with_warnings(tmp_path, ingest_and_process):
    files = ct_files(tmp_path / "s", slices=12, key="k4", size=32)
    files[5].unlink()  # one slice never arrived: filled in by interpolation

    ingest_and_process(tmp_path / "s")

    run = Series.objects.get().processing_runs.get()
    assert run.status == ProcessingRun.Status.SUCCEEDED
    (warning, *_) = run.flags["volume_warnings"]
    assert "1 slice(s) missing" in warning
    assert run_status_label(run.status, "Succeeded", run_warnings(run.flags)) == (
        "Succeeded with warnings"
    )


def test_ct_numbers_that_are_not_hounsfield_units_are_flagged(tmp_path, ingest_and_process):
    # The raw stored values without their Rescale Intercept: air reads 0, not -1024.
    files = ct_files(tmp_path / "s", slices=12, key="k5", size=32)
    for path in files:
        ds = pydicom.dcmread(path)
        del ds.RescaleIntercept
        del ds.RescaleSlope
        ds.save_as(path, enforce_file_format=True)

    ingest_and_process(tmp_path / "s")

    run = Series.objects.get().processing_runs.get()
    assert "may not be Hounsfield units" in run.flags["hu_implausible"]
    assert any(w.startswith("CT numbers implausible") for w in run_warnings(run.flags))


def test_processing_again_keeps_the_earlier_run_and_its_volume(tmp_path, ingest_and_process):
    ct_files(tmp_path / "s", slices=12, key="k3", size=32)
    ingest_and_process(tmp_path / "s")
    series = Series.objects.get()
    first = series.processing_runs.get()

    second = series_process(series=series)

    assert second.pk != first.pk
    assert second.status == ProcessingRun.Status.SUCCEEDED
    assert (data_dir() / first.volume_path).exists()
    assert (data_dir() / second.volume_path).exists()
    assert series.processing_runs.count() == 2


def test_process_command_processes_what_is_pending(tmp_path):
    ct_files(tmp_path / "a", patient_id="A", slices=12, key="k4", size=32)
    ct_files(tmp_path / "b", patient_id="B", slices=12, seed=2, key="k5", size=32)
    ingest_paths(paths=[tmp_path], process=False)
    out = StringIO()

    call_command("process", "--patient", "A", stdout=out, stderr=StringIO())
    assert "1 study on cpu, 1 succeeded, 0 failed" in out.getvalue()

    out = StringIO()
    call_command("process", "--all", stdout=out, stderr=StringIO())
    assert "1 study on cpu, 1 succeeded" in out.getvalue()
    assert set(Series.objects.values_list("state", flat=True)) == {Series.State.PROCESSED}


def test_process_command_usage_errors():
    with pytest.raises(CommandError):
        call_command("process", stdout=StringIO(), stderr=StringIO())
    with pytest.raises(CommandError, match="no patient"):
        call_command("process", "--patient", "NOPE", stdout=StringIO(), stderr=StringIO())
