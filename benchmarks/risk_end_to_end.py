"""``manage.py fit_risk_model`` end to end on a database holding a simulated cohort, stage by stage.

`benchmarks/risk.py --end-to-end` calls `end_to_end_run`: for one cohort size a fresh
database (an SQLite file, or a PostgreSQL database with ``--database-url``) is migrated
and filled in a child process with the simulated cohort's rows, written straight into
the tables as `benchmarks/dashboard.py` writes its cohort: patients, CT studies, lesions
and their measurements (the true volumes, accepted), RECIST and volumetric responses
(`responses_table_build` over those measurements), labs and outcome events. Then
``fit_risk_model --model <kind>`` runs as an operator would run it, and the time of each
stage is read from its progress lines: loading the inputs, building the training table,
cross-validation, the final fit, and scoring every patient (reading the inputs again,
their features, explanations and the bulk write of the scores).
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The progress lines of ``fit_risk_model`` that open each stage, and the stage's name.
STAGES = (
    ("loading patients", "load inputs"),
    ("building features", "training table"),
    ("cross-validating", "cross-validation"),
    ("fitting the final", "final fit"),
    ("scoring every patient", "scores"),
)


def _none(value):
    """None for a missing number (NaN), else the value: the database stores NULL."""
    return None if isinstance(value, float) and math.isnan(value) else value


def database_fill(tables: dict) -> dict[str, int]:
    """Write the cohort's tables into the database (one transaction); rows per table."""
    from django.db import transaction

    from analytics.lesions.core.volumetric import responses_table_build
    from analytics.models import ResponseAssessment
    from imaging.models import Lesion, LesionMeasurement, Study
    from patients.models import ClinicalEvent, LabResult, Patient

    measurements = tables["measurements"]
    responses = responses_table_build(measurements=measurements)
    with transaction.atomic():
        patients = Patient.objects.bulk_create(
            [
                Patient(patient_id=pid, name=f"Sim^{i}", birth_date=birth, sex=sex)
                for i, (pid, birth, sex) in enumerate(tables["patients"].itertuples(index=False))
            ],
            batch_size=2000,
        )
        patient_pk = {p.patient_id: p.pk for p in patients}
        studies = Study.objects.bulk_create(
            [
                Study(study_instance_uid=uid, patient_id=patient_pk[pid], study_date=date)
                for pid, uid, date in tables["studies"].itertuples(index=False)
            ],
            batch_size=2000,
        )
        study_pk = {s.study_instance_uid: s.pk for s in studies}
        lesion_rows = measurements.drop_duplicates("lesion_uid")
        lesions = Lesion.objects.bulk_create(
            [
                Lesion(patient_id=patient_pk[pid], tracking_uid=uid, label=label, organ=organ)
                for pid, uid, label, organ in lesion_rows.loc[
                    :, ["patient_id", "lesion_uid", "lesion_label", "organ"]
                ].itertuples(index=False)
            ],
            batch_size=2000,
        )
        lesion_pk = {lesion.tracking_uid: lesion.pk for lesion in lesions}
        LesionMeasurement.objects.bulk_create(
            [
                LesionMeasurement(
                    lesion_id=lesion_pk[m.lesion_uid],
                    study_id=study_pk[m.study_instance_uid],
                    status=m.status,
                    volume_ml=m.volume_ml,
                    longest_diameter_mm=m.longest_diameter_mm,
                    short_axis_mm=m.short_axis_mm,
                    review_state=LesionMeasurement.Review.ACCEPTED,
                )
                for m in measurements.itertuples(index=False)
            ],
            batch_size=2000,
        )
        ResponseAssessment.objects.bulk_create(
            [
                ResponseAssessment(
                    patient_id=patient_pk[r.patient_id],
                    study_id=study_pk[r.study_instance_uid],
                    is_baseline=not r.recist_response,
                    sum_diameters_mm=_none(r.sum_diameters_mm),
                    total_volume_ml=_none(r.total_volume_ml),
                    pct_change_baseline=_none(r.pct_change_baseline),
                    pct_change_nadir=_none(r.pct_change_nadir),
                    recist_response=r.recist_response or "",
                    volumetric_response=r.volumetric_response or "",
                    new_lesions=bool(r.new_lesions),
                )
                for r in responses.itertuples(index=False)
            ],
            batch_size=2000,
        )
        LabResult.objects.bulk_create(
            [
                LabResult(
                    patient_id=patient_pk[pid],
                    loinc_code=code,
                    value=value,
                    unit=unit,
                    observed_at=observed.to_pydatetime(),
                )
                for pid, code, value, unit, observed in tables["labs"].itertuples(index=False)
            ],
            batch_size=2000,
        )
        ClinicalEvent.objects.bulk_create(
            [
                ClinicalEvent(patient_id=patient_pk[pid], kind=kind, date=date)
                for pid, kind, date in tables["events"].itertuples(index=False)
            ],
            batch_size=2000,
        )
    return {
        "patients": len(patients),
        "studies": len(studies),
        "measurements": len(measurements),
        "responses": len(responses),
        "labs": len(tables["labs"]),
        "events": len(tables["events"]),
    }


class _StampedStream(io.StringIO):
    """The command's stderr: remembers when each progress line was written."""

    def __init__(self) -> None:
        super().__init__()
        self.stamps: list[tuple[float, str]] = []

    def write(self, text: str) -> int:
        self.stamps.append((time.perf_counter(), text))
        return super().write(text)


def command_time(kind: str) -> dict:
    """Run ``fit_risk_model --model kind`` once; seconds per stage and in all."""
    from django.core.management import call_command

    from analytics.models import RiskScore

    out, err = io.StringIO(), _StampedStream()
    started = time.perf_counter()
    call_command("fit_risk_model", "--model", kind, stdout=out, stderr=err)
    ended = time.perf_counter()
    marks = []
    for stamp, text in err.stamps:
        for opening, stage in STAGES:
            if opening in text:
                marks.append((stamp, stage))
    stages = {}
    for (stamp, stage), following in zip(marks, [*marks[1:], (ended, "")], strict=True):
        stages[stage] = stages.get(stage, 0.0) + following[0] - stamp
    summary = out.getvalue().strip().splitlines()
    return {
        "kind": kind,
        "seconds": ended - started,
        "stages": stages,
        "rows": summary[0] if summary else "",
        "scores": RiskScore.objects.count(),
    }


def _child(cohort_path: str, n_patients: int, kinds: list[str]) -> None:
    """In a process whose environment names the database: migrate, fill, time; print JSON."""
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from risk import first_patients

    with open(cohort_path, "rb") as f:
        tables = first_patients(pickle.load(f), n_patients)
    call_command("migrate", verbosity=0, interactive=False)
    started = time.perf_counter()
    counts = database_fill(tables)
    filled = time.perf_counter() - started
    with connection.cursor() as cursor:
        # Planner statistics, as autovacuum (PostgreSQL) would gather after a bulk load.
        cursor.execute("ANALYZE")
    runs = [command_time(kind) for kind in kinds]
    print(json.dumps({"filled_s": filled, "counts": counts, "runs": runs}))


def _database_for(database_url: str | None, workdir: Path, size: int) -> str:
    """A fresh, empty database for this size; its URL."""
    if not database_url:
        return f"sqlite:///{workdir / f'risk-{size}.sqlite3'}"
    base, _, name = database_url.rpartition("/")
    name = f"{name}_risk_{size}"
    _postgres_recreate(base, name, create=True)
    return f"{base}/{name}"


def _postgres_recreate(base: str, name: str, *, create: bool) -> None:
    """Drop the PostgreSQL database ``name`` at server ``base``, and create it afresh."""
    import psycopg

    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        if create:
            conn.execute(f'CREATE DATABASE "{name}"')


def end_to_end_run(
    *, cohort_path: Path, n_patients: int, kinds: list[str], database_url: str | None
) -> dict:
    """Fill a fresh database with the first ``n_patients`` and time the command per kind."""
    with tempfile.TemporaryDirectory(prefix="radtrack-bench-risk-") as tmp:
        workdir = Path(tmp)
        url = _database_for(database_url, workdir, n_patients)
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "RADTRACK_DATA_DIR": str(workdir / "data"),
            "DJANGO_SETTINGS_MODULE": "radtrack.settings",
        }
        try:
            child = subprocess.run(
                [sys.executable, __file__, str(cohort_path), str(n_patients), *kinds],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
        finally:
            if database_url:  # the SQLite file goes with the temporary folder
                base, _, name = url.rpartition("/")
                _postgres_recreate(base, name, create=False)
    if child.returncode != 0:
        raise RuntimeError(
            f"the end-to-end run at {n_patients} patients failed (exit {child.returncode}):\n"
            + child.stdout[-4000:]
            + child.stderr[-4000:]
        )
    return json.loads(child.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    _child(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
