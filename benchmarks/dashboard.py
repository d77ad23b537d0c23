"""Server time of the dashboard's worklist and patient page at 100, 1,000 and 10,000 patients.

For each size a fresh database (SQLite file, or a PostgreSQL database with
``--database-url``) is filled with a synthetic cohort written straight into the tables:
per patient three CT studies with a series each, two or three lesions measured at each
study, a response assessment per study, five lab tests at each study, an outcome and a
risk score of one model version. Then, logged in as a clinician through Django's test
client (the whole request: middleware, view, queries, template, audit row), it times
the worklist's first page and a patient page ``--repeat`` times each and prints p50 and
p95. Target: p95 at most 150 ms at 10,000 patients.

    .venv/bin/python benchmarks/dashboard.py
    .venv/bin/python benchmarks/dashboard.py --sizes 100 1000 --repeat 20
    .venv/bin/python benchmarks/dashboard.py --database-url postgres://postgres@127.0.0.1:5432/radtrack_bench
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET_P95_MS = 150.0
LABS = (("2039-6", "ng/mL", 3.0), ("2532-0", "U/L", 200.0), ("1988-5", "mg/L", 5.0),
        ("1751-7", "g/dL", 4.0), ("718-7", "g/dL", 13.0))  # fmt: skip


def _database_for(database_url: str | None, workdir: Path, size: int) -> str:
    """A fresh, empty database for this size; its URL."""
    if database_url:
        import psycopg

        base, _, name = database_url.rpartition("/")
        name = f"{name}_{size}"
        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        url = f"{base}/{name}"
    else:
        url = f"sqlite:///{workdir / f'dashboard-{size}.sqlite3'}"
    return url


def cohort_fill(n_patients: int, *, seed: int = 0) -> None:
    """Write ``n_patients`` synthetic patients with everything the dashboard shows."""
    from django.db import transaction

    from analytics.models import ResponseAssessment, RiskModelVersion, RiskScore
    from imaging.models import Lesion, LesionMeasurement, Series, Study
    from patients.models import ClinicalEvent, LabResult, Patient

    rng = random.Random(seed)
    start = dt.date(2023, 1, 2)
    with transaction.atomic():
        version = RiskModelVersion.objects.create(
            name="bench-cox",
            kind="cox",
            artifact_path="bench.joblib",
            training_fingerprint="0" * 64,
            parameters={"endpoint": "pfs"},
            metrics={
                "c_index": 0.7,
                "c_index_sd": 0.02,
                "horizon_days": 365.0,
                "calibration": [
                    {
                        "group": g,
                        "n": 10,
                        "mean_predicted": g / 11,
                        "observed": g / 12,
                        "followed_to_horizon": True,
                    }
                    for g in range(1, 11)
                ],  # fmt: skip
            },
            tier_thresholds={"low_below": -0.3, "high_from": 0.3},
        )
        patients = Patient.objects.bulk_create(
            [
                Patient(
                    patient_id=f"BENCH-{i:06d}",
                    name=f"Bench{i}^Pat",
                    birth_date=dt.date(1940 + i % 40, 1 + i % 12, 1 + i % 28),
                    sex="FM"[i % 2],
                )
                for i in range(n_patients)
            ],
            batch_size=2000,
        )
        studies = []
        for i, p in enumerate(patients):
            base = start + dt.timedelta(days=i % 300)
            for k in range(3):
                studies.append(
                    Study(
                        patient=p,
                        study_instance_uid=f"2.25.1{i:07d}{k}",
                        study_date=base + dt.timedelta(days=90 * k),
                        description="CT CHEST ABDOMEN",
                    )
                )
        studies = Study.objects.bulk_create(studies, batch_size=2000)
        Series.objects.bulk_create(
            [
                Series(
                    study=s,
                    series_instance_uid=f"2.25.2{j:09d}",
                    modality="CT",
                    series_number=2,
                    slice_count=120,
                    state=Series.State.FAILED if j % 97 == 0 else Series.State.PROCESSED,
                )
                for j, s in enumerate(studies)
            ],
            batch_size=2000,
        )
        lesions = []
        for i, p in enumerate(patients):
            for k in range(2 + i % 2):
                lesions.append(
                    Lesion(
                        patient=p,
                        tracking_uid=f"2.25.3{i:07d}{k}",
                        label=f"Liver {k + 1}",
                        organ="liver",
                    )
                )
        lesions = Lesion.objects.bulk_create(lesions, batch_size=2000)
        by_patient: dict[int, list] = {}
        for s in studies:
            by_patient.setdefault(s.patient_id, []).append(s)
        measurements, assessments, labs, scores, events = [], [], [], [], []
        for lesion in lesions:
            size = rng.uniform(5, 30)
            growth = rng.uniform(0.6, 1.5)
            for k, s in enumerate(by_patient[lesion.patient_id]):
                d = size * growth**k
                measurements.append(
                    LesionMeasurement(
                        lesion=lesion,
                        study=s,
                        status="new" if k == 0 else "tracked",
                        volume_ml=0.5236 * (d / 10) ** 3,
                        longest_diameter_mm=d,
                        short_axis_mm=d * 0.7,
                        confidence=0.9,
                        is_target=True,
                        review_state="pending" if k == 2 and rng.random() < 0.3 else "accepted",
                    )
                )
        for p in patients:
            mine = by_patient[p.pk]
            base_sum = rng.uniform(20, 80)
            for k, s in enumerate(mine):
                change = rng.uniform(-50, 60) if k else 0.0
                recist = (
                    "" if k == 0 else ("PD" if change >= 20 else "PR" if change <= -30 else "SD")
                )
                assessments.append(
                    ResponseAssessment(
                        patient=p,
                        study=s,
                        is_baseline=k == 0,
                        sum_diameters_mm=base_sum * (1 + change / 100),
                        total_volume_ml=base_sum / 3 * (1 + change / 100),
                        pct_change_baseline=change if k else None,
                        pct_change_nadir=change if k else None,
                        recist_response=recist,
                        volumetric_response=recist,
                        new_lesions=k == 2 and rng.random() < 0.1,
                    )
                )
                for code, unit, value in LABS:
                    labs.append(
                        LabResult(
                            patient=p,
                            loinc_code=code,
                            value=value * rng.uniform(0.7, 1.6),
                            unit=unit,
                            observed_at=dt.datetime.combine(s.study_date, dt.time(8), dt.UTC),
                        )
                    )
            score = rng.gauss(0, 1)
            tier = "low" if score < -0.3 else "high" if score >= 0.3 else "intermediate"
            scores.append(
                RiskScore(
                    patient=p,
                    model_version=version,
                    score=score,
                    tier=tier,
                    landmark_date=mine[-1].study_date,
                    explanation={
                        "score": score,
                        "reference_score": 0.0,
                        "scale": "log hazard ratio",
                        "contributions": [
                            {
                                "feature": f"feature_{j}",
                                "value": rng.random(),
                                "contribution": rng.gauss(0, 0.3),
                            }
                            for j in range(12)
                        ],  # fmt: skip
                        "notes": [],
                    },
                )
            )
            end = mine[-1].study_date + dt.timedelta(days=rng.randint(30, 500))
            if rng.random() < 0.5:
                events.append(ClinicalEvent(patient=p, kind="progression", date=end))
            events.append(ClinicalEvent(patient=p, kind="censor", date=end + dt.timedelta(days=30)))
        LesionMeasurement.objects.bulk_create(measurements, batch_size=2000)
        ResponseAssessment.objects.bulk_create(assessments, batch_size=2000)
        # Also rewrites each patient's `WorklistFlags` (the worklist's filters), from the
        # responses and measurements written above and these labs.
        LabResult.objects.bulk_create(labs, batch_size=2000)
        # Also writes each patient's `LatestRiskScore`, the row the worklist orders on.
        RiskScore.objects.bulk_create(scores, batch_size=2000)
        ClinicalEvent.objects.bulk_create(events, batch_size=2000)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def time_pages(*, repeat: int) -> dict[str, tuple[float, float, int]]:
    """p50 and p95 (ms) and query count of the worklist and a patient page."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.db import connection, reset_queries
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.urls import reverse

    from patients.models import Patient

    user, _ = get_user_model().objects.get_or_create(username="bench-clinician")
    user.groups.add(Group.objects.get(name="clinician"))
    client = Client()
    client.force_login(user)
    patient = Patient.objects.order_by("pk")[Patient.objects.count() // 2]
    urls = {
        "worklist": reverse("analytics:worklist"),
        "patient page": reverse("patients:detail", args=[patient.pk]),
    }
    out = {}
    for name, url in urls.items():
        for _ in range(3):  # warm caches and the template loader
            assert client.get(url).status_code == 200
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (name, response.status_code)
        reset_queries()
        with CaptureQueriesContext(connection) as queries:
            client.get(url)
        out[name] = (statistics.median(times), _percentile(times, 0.95), len(queries))
    return out


def _one_size(size: int, repeat: int) -> None:
    """In a fresh process whose environment names the database: fill, time, print JSON."""
    import json

    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    started = time.perf_counter()
    cohort_fill(size)
    filled = time.perf_counter() - started
    from django.db import connection

    with connection.cursor() as cursor:
        # Planner statistics, as autovacuum (PostgreSQL) would gather after a bulk load;
        # without them PostgreSQL plans the worklist several times slower.
        cursor.execute("ANALYZE")
    timings = time_pages(repeat=repeat)
    print(json.dumps({"filled_s": filled, "pages": timings}))


def main(argv: list[str] | None = None) -> int:
    import json
    import subprocess

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--repeat", type=int, default=40)
    parser.add_argument("--database-url", help="PostgreSQL URL; one database per size")
    parser.add_argument("--single", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.sizes) or args.repeat < 1:
        parser.error("sizes and --repeat must be positive")
    if args.single:
        _one_size(args.single, args.repeat)
        return 0

    worst_at_largest = 0.0
    largest = max(args.sizes)
    with tempfile.TemporaryDirectory(prefix="radtrack-bench-dashboard-") as tmp:
        workdir = Path(tmp)
        for size in args.sizes:
            url = _database_for(args.database_url, workdir, size)
            env = {
                **os.environ,
                "DATABASE_URL": url,
                "RADTRACK_DATA_DIR": str(workdir / f"data-{size}"),
                "DJANGO_SETTINGS_MODULE": "radtrack.settings",
            }
            child = subprocess.run(
                [sys.executable, __file__, "--single", str(size), "--repeat", str(args.repeat)],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if child.returncode != 0:
                print(child.stdout + child.stderr, file=sys.stderr)
                print(
                    f"the run at {size} patients failed (exit {child.returncode})", file=sys.stderr
                )
                return 2
            result = json.loads(child.stdout.strip().splitlines()[-1])
            for page, (p50, p95, queries) in result["pages"].items():
                if size == largest:
                    worst_at_largest = max(worst_at_largest, p95)
                print(
                    f"{size:>6} patients  {page:<13} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  "
                    f"{queries:>2} queries  (cohort written in {result['filled_s']:.1f} s)",
                    flush=True,
                )
    met = worst_at_largest <= TARGET_P95_MS
    print(
        f"target: p95 <= {TARGET_P95_MS:.0f} ms at {largest} patients: worst p95 "
        f"{worst_at_largest:.1f} ms, {'met' if met else 'NOT met'} "
        f"({'PostgreSQL' if args.database_url else 'SQLite'})"
    )
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
