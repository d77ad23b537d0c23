"""``manage.py generate_cohort``: files, summary, usage errors, and DICOM validity (dciodvfy).

The command needs no database; these tests do not request one.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pydicom
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from imaging.core.synthetic.acquisition import SIZES
from tests.conftest import require_program


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("cohort") / "out"
    stdout = StringIO()
    call_command(
        "generate_cohort",
        str(out),
        "--patients=2",
        "--timepoints=2",
        "--seed=5",
        "--quiet",
        stdout=stdout,
        stderr=StringIO(),
    )
    return out, stdout.getvalue()


def test_writes_every_output_and_a_one_line_summary(cohort_dir):
    out, stdout = cohort_dir
    for name in ("labs.csv", "events.csv", "ehr_bundle.json", "truth.json"):
        assert (out / name).is_file(), name
    lines = stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("generate_cohort: 2 patients")
    truth = json.loads((out / "truth.json").read_text())
    assert truth["seed"] == 5 and truth["size"] == "small" and len(truth["patients"]) == 2
    n_images = 0
    for patient in truth["patients"]:
        assert 1 <= len(patient["studies"]) <= 2
        for study in patient["studies"]:
            files = sorted((out / study["dicom_dir"]).glob("IM*.dcm"))
            assert len(files) == study["n_slices"]
            n_images += len(files)
            ds = pydicom.dcmread(files[0], stop_before_pixels=True)
            assert ds.PatientID == patient["patient_id"]
            assert ds.StudyInstanceUID == study["study_instance_uid"]
            assert ds.SeriesInstanceUID == study["series_instance_uid"]
            assert ds.PatientPosition == study["patient_position"]
            assert ds.Rows == ds.Columns == 128
            assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    assert f"{n_images} images" in stdout
    assert out.joinpath("dicom").is_dir()
    with (out / "events.csv").open() as f:
        patients = {row["patient_id"] for row in csv.DictReader(f)}
    assert patients == {p["patient_id"] for p in truth["patients"]}


def test_generated_files_pass_dciodvfy(cohort_dir):
    """dicom3tools' validator reports no errors on first, middle and last slices."""
    dciodvfy = require_program("dciodvfy", why="it validates the generated DICOM")
    out, _ = cohort_dir
    truth = json.loads((out / "truth.json").read_text())
    checked = 0
    for patient in truth["patients"]:
        for study in patient["studies"]:
            files = sorted((out / study["dicom_dir"]).glob("IM*.dcm"))
            for path in (files[0], files[len(files) // 2], files[-1]):
                result = subprocess.run(
                    [dciodvfy, str(path)], capture_output=True, text=True, timeout=60
                )
                report = result.stdout + result.stderr
                errors = [line for line in report.splitlines() if line.startswith("Error")]
                assert not errors, f"{path}:\n{report}"
                assert "CTImage" in report  # it recognised the IOD it checked
                checked += 1
    assert checked >= 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["--patients=0"], "--patients must be at least 1"),
        (["--timepoints=0"], "--timepoints must be at least 1"),
        (["--seed=-1"], "--seed must be >= 0"),
    ],
)
def test_usage_errors(tmp_path, args, message):
    with pytest.raises(CommandError, match=message):
        call_command("generate_cohort", str(tmp_path / "out"), *args, stdout=StringIO())
    assert not (tmp_path / "out" / "truth.json").exists()


def test_unknown_size_is_a_usage_error(tmp_path):

    assert sorted(SIZES) == ["full", "small"]  # the command's --size choices
    with pytest.raises(CommandError, match="invalid choice"):
        call_command("generate_cohort", str(tmp_path / "out"), "--size=huge", stdout=StringIO())


def test_refuses_to_mix_cohorts_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    args = [str(out), "--patients=1", "--timepoints=1", "--quiet"]
    call_command("generate_cohort", *args, "--seed=1", stdout=StringIO())
    with pytest.raises(CommandError, match="already holds a cohort"):
        call_command("generate_cohort", *args, "--seed=2", stdout=StringIO())
    call_command("generate_cohort", *args, "--seed=2", "--overwrite", stdout=StringIO())
    truth = json.loads((out / "truth.json").read_text())
    assert truth["seed"] == 2
    assert [p.name for p in (out / "dicom").iterdir()] == ["SYN-2-0001"]


def test_command_line_usage_error_exits_non_zero(tmp_path):
    """A real process with an unreachable database: exit status 1 and a clear message.

    (The tests above run the command under pytest-django without database access, so
    any query it made would fail them.)
    """
    manage = Path(__file__).resolve().parents[2] / "manage.py"
    env = {
        **os.environ,
        "DATABASE_URL": "postgres://nobody@127.0.0.1:9/unreachable",
        "RADTRACK_DATA_DIR": str(tmp_path / "data"),
        "DJANGO_SECRET_KEY": "test-only",
    }
    result = subprocess.run(
        [sys.executable, str(manage), "generate_cohort", str(tmp_path / "x"), "--patients", "0"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 1
    assert "--patients must be at least 1" in result.stderr
