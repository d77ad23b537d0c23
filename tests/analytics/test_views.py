"""Dashboard pages: the worklist (home page), cohort and pipeline: content, filters,
audit rows, constant query counts, and Plotly served by the site itself."""

import datetime as dt
import re
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.staticfiles import finders
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from analytics.dashboard.cohort import cohort_survival
from analytics.dashboard.worklist import worklist_page
from analytics.models import ResponseAssessment, RiskModelVersion, RiskScore
from imaging.models import IngestSession, ProcessingRun, Series
from patients.models import AuditEvent, ClinicalEvent, LabResult, Patient
from tests.imaging.factories import ProcessingRunFactory, SeriesFactory, StudyFactory
from tests.patients.factories import PatientFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def clinician(client):
    user = UserFactory(groups=["clinician"])
    client.force_login(user)
    client.user = user
    return client


def model_version(**kwargs):
    return RiskModelVersion.objects.create(
        name="cox-test",
        kind="cox",
        artifact_path="x.joblib",
        training_fingerprint="0" * 64,
        **kwargs,
    )


def score(patient, version, value, tier, landmark=dt.date(2024, 6, 1)):
    return RiskScore.objects.create(
        patient=patient, model_version=version, score=value, tier=tier, landmark_date=landmark
    )


# -- worklist ---------------------------------------------------------------------------
def test_worklist_is_the_home_page_behind_login(client):
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert reverse("analytics:worklist") == "/"


def test_worklist_orders_by_risk_with_flags_and_audits(clinician):
    version = model_version()
    low, high = PatientFactory(patient_id="LOW", name="Low^Lou"), PatientFactory(patient_id="HIGH")
    PatientFactory(patient_id="NONE")
    score(low, version, -1.0, "low")
    score(high, version, 2.0, "high")
    s1 = StudyFactory(patient=high, study_date=dt.date(2024, 1, 1))
    s2 = StudyFactory(patient=high, study_date=dt.date(2024, 5, 1))
    ResponseAssessment.objects.create(patient=high, study=s1, is_baseline=True)
    ResponseAssessment.objects.create(
        patient=high, study=s2, recist_response="PD", new_lesions=True
    )
    SeriesFactory(study=s2, state=Series.State.FAILED)
    for day, value in ((dt.date(2024, 4, 1), 4.0), (dt.date(2024, 5, 1), 8.0)):
        LabResult.objects.create(
            patient=high,
            loinc_code="2039-6",
            value=value,
            unit="ng/mL",
            observed_at=dt.datetime.combine(day, dt.time(9), dt.UTC),
        )

    response = clinician.get(reverse("analytics:worklist"))

    content = response.content.decode()
    assert response.status_code == 200
    assert [r.patient_id for r in response.context["page"].rows] == ["HIGH", "LOW", "NONE"]
    row = re.search(r"<tr>.*?HIGH.*?</tr>", content, re.S).group(0)
    for text in (
        "High",
        "2.000",
        "PD",
        "New progression",
        "New lesion",
        "cea 4 → 8 ng/mL",
        "Processing failed",
        "2024-05-01",
    ):
        assert text in row, text
    assert "Not scored" in content
    assert "no CT" not in row
    # LOW has a score and no CT study: its tier rests on labs alone, and says so.
    low_row = re.search(r"<tr>.*?LOW.*?</tr>", content, re.S).group(0)
    assert "no CT: scored on labs alone" in low_row
    assert reverse("patients:detail", args=[high.pk]) in content
    # One audit row per patient shown (who saw this patient's data, page by page).
    events = AuditEvent.objects.filter(action="worklist.view")
    shown = {p.pk for p in Patient.objects.filter(patient_id__in=["HIGH", "LOW", "NONE"])}
    assert sorted(e.patient_id for e in events) == sorted(shown)
    assert {(e.user, e.object) for e in events} == {(clinician.user, "page 1, order risk")}


def test_worklist_filters_search_sort_and_pages_keep_the_filters(clinician):
    version = model_version()
    for i in range(60):
        score(
            PatientFactory(patient_id=f"P-{i:03d}", name=f"Smith{i}^Ann"),
            version,
            float(i),
            "high" if i % 2 else "low",
        )

    high = clinician.get(reverse("analytics:worklist"), {"tier": "high"})
    assert high.context["page"].total == 30
    assert [r.patient_id for r in high.context["page"].rows][:2] == ["P-059", "P-057"]

    by_mrn = clinician.get(reverse("analytics:worklist"), {"order": "patient", "tier": "low"})
    assert [r.patient_id for r in by_mrn.context["page"].rows][:2] == ["P-000", "P-002"]

    found = clinician.get(reverse("analytics:worklist"), {"q": "smith7"})
    assert {r.patient_id for r in found.context["page"].rows} == {"P-007"} | {
        f"P-{i:03d}" for i in range(70, 80) if i < 60
    }
    assert AuditEvent.objects.filter(object__contains="search 'smith7'").exists()

    first = clinician.get(reverse("analytics:worklist"), {"order": "patient"})
    page = first.context["page"]
    assert (page.total, page.num_pages, len(page.rows)) == (60, 2, 50)
    assert 'href="?order=patient&amp;page=2"' in first.content.decode()
    second = clinician.get(reverse("analytics:worklist"), {"order": "patient", "page": 2})
    assert [r.patient_id for r in second.context["page"].rows][0] == "P-050"
    assert "Patients 51–60 of 60" in second.content.decode()
    beyond = clinician.get(reverse("analytics:worklist"), {"page": 99})
    assert beyond.context["page"].number == 2  # clamped, not an error


def test_worklist_flag_filters_in_sql_and_for_rising_markers():
    version = model_version()
    pending = PatientFactory(patient_id="FAIL")
    SeriesFactory(study=StudyFactory(patient=pending), state=Series.State.FAILED)
    cea = PatientFactory(patient_id="CEA")
    for day, value in ((dt.date(2024, 4, 1), 4.0), (dt.date(2024, 5, 1), 8.0)):
        LabResult.objects.create(
            patient=cea, loinc_code="2039-6", value=value, unit="ng/mL",
            observed_at=dt.datetime.combine(day, dt.time(9), dt.UTC),
        )  # fmt: skip
    PatientFactory(patient_id="QUIET")
    score(cea, version, 1.0, "high")

    assert [r.patient_id for r in worklist_page(flags=["processing_failed"]).rows] == ["FAIL"]
    marked = worklist_page(flags=["rising_marker"])
    assert [r.patient_id for r in marked.rows] == ["CEA"] and marked.total == 1
    assert worklist_page(flags=["rising_marker", "processing_failed"]).total == 0
    with pytest.raises(ValueError, match="unknown flags"):
        worklist_page(flags=["nope"])


def _bulk_patients(n: int, version: RiskModelVersion, start: int) -> None:
    patients = Patient.objects.bulk_create(
        [Patient(patient_id=f"B-{start + i:06d}", name=f"Bulk{i}^X") for i in range(n)]
    )
    RiskScore.objects.bulk_create(
        [
            RiskScore(patient=p, model_version=version, score=i / n, tier=("low", "intermediate", "high")[i % 3], landmark_date=dt.date(2024, 6, 1))
            for i, p in enumerate(patients)
        ]
    )  # fmt: skip
    LabResult.objects.bulk_create(
        [
            LabResult(patient=p, loinc_code="2039-6", value=3.0 + k * (i % 5), unit="ng/mL",
                      observed_at=dt.datetime(2024, 5, 1 + k, 9, tzinfo=dt.UTC))
            for i, p in enumerate(patients)
            for k in range(2)
        ]
    )  # fmt: skip


def _page_queries(client) -> tuple[int, int, int, int]:
    """(queries reading the page, audit INSERT statements, audit rows written, patients
    shown) of one worklist."""
    audited = AuditEvent.objects.count()
    with CaptureQueriesContext(connection) as queries:
        response = client.get(reverse("analytics:worklist"))
    assert response.status_code == 200
    statements = [q["sql"].lstrip().upper() for q in queries.captured_queries]
    audit = [sql for sql in statements if sql.startswith("INSERT") and "AUDITEVENT" in sql]
    # Transaction bookkeeping around the audit rows is not a read of the page.
    reads = [sql for sql in statements if sql.startswith("SELECT")]
    written = AuditEvent.objects.count() - audited
    return len(reads), len(audit), written, len(response.context["page"].rows)


def test_worklist_reads_10000_patients_in_as_many_queries_as_a_full_page(clinician):
    """Reading the page takes a fixed number of queries whatever the number of patients;
    auditing writes one row per patient shown (at most a page) in one INSERT."""
    version = model_version()
    _bulk_patients(60, version, 0)  # more than a page: 50 shown
    few = _page_queries(clinician)
    _bulk_patients(9940, version, 60)
    many = _page_queries(clinician)
    assert Patient.objects.count() == 10000
    assert few == many
    reads, audit_inserts, audit_rows, shown = many
    assert shown == 50 and audit_rows == shown and audit_inserts == 1  # one row each, at once
    # session, user, its own and its groups' permissions, model version, count, page,
    # the header's count of series in processing and its open drift alerts
    assert reads <= 9
    assert AuditEvent.objects.filter(action="worklist.view").count() == 2 * shown


# -- cohort -----------------------------------------------------------------------------
def test_cohort_page_without_a_model_says_how_to_fit_one(clinician):
    content = clinician.get(reverse("analytics:cohort")).content.decode()
    assert "fit_risk_model" in content and "plotly.min.js" not in content


@pytest.fixture
def scored_cohort():
    """Six patients, two per tier; high-risk ones progress early, low-risk ones never."""
    version = model_version(
        parameters={"endpoint": "pfs"},
        metrics={
            "c_index": 0.71, "c_index_sd": 0.04, "ibs": 0.18, "n_rows": 40, "n_patients": 6,
            "n_events": 4, "horizon_days": 365.0,
            "calibration": [{"group": 1, "n": 3, "mean_predicted": 0.2, "observed": 0.1, "followed_to_horizon": True}],
        },
        tier_thresholds={"low_below": -0.5, "high_from": 0.5},
    )  # fmt: skip
    landmark = dt.date(2024, 1, 1)
    plan = {"high": (30, 60), "intermediate": (200, None), "low": (None, None)}
    for tier, progressions in plan.items():
        for k, days in enumerate(progressions):
            patient = PatientFactory(patient_id=f"{tier}-{k}")
            score(
                patient,
                version,
                {"high": 1.0, "intermediate": 0.0, "low": -1.0}[tier],
                tier,
                landmark,
            )
            if days is not None:
                ClinicalEvent.objects.create(
                    patient=patient, kind="progression", date=landmark + dt.timedelta(days=days)
                )
            ClinicalEvent.objects.create(
                patient=patient, kind="censor", date=landmark + dt.timedelta(days=400)
            )
    # progressed before the landmark: left out of a PFS curve
    early = PatientFactory(patient_id="early")
    score(early, version, 1.0, "high", landmark)
    ClinicalEvent.objects.create(patient=early, kind="progression", date=dt.date(2023, 12, 1))
    ClinicalEvent.objects.create(patient=early, kind="censor", date=dt.date(2024, 6, 1))
    return version


def test_cohort_survival_by_tier_from_the_landmark(scored_cohort):
    survival = cohort_survival(model_version=scored_cohort)
    curves = {c.tier: c for c in survival.curves}
    assert [c.tier for c in survival.curves] == ["high", "intermediate", "low"]
    assert (curves["high"].n, curves["high"].events) == (2, 2)
    assert curves["high"].times_days == (0.0, 30.0, 60.0)
    assert curves["high"].survival == (1.0, 0.5, 0.0)
    assert curves["high"].median_days == 30.0
    assert curves["intermediate"].survival[-1] == pytest.approx(0.5)
    assert curves["low"].events == 0 and curves["low"].median_days is None
    assert curves["low"].censored_days == (400.0, 400.0)
    assert survival.excluded == {"progressed on or before the landmark": 1}
    assert (survival.n_scored, survival.n_included) == (7, 6)
    assert survival.logrank_p is not None and survival.logrank_p < 0.05


def test_cohort_page_draws_km_and_calibration_with_local_plotly(clinician, scored_cohort):
    response = clinician.get(reverse("analytics:cohort"))
    content = response.content.decode()
    assert response.status_code == 200
    assert 'data-figure="fig-km"' in content and 'id="fig-km"' in content
    assert 'id="fig-calibration"' in content
    assert "C-index (Harrell), mean over folds" in content and "0.710" in content
    assert "1 left out: progressed on or before the landmark" in content
    assert "Log-rank test across tiers" in content
    assert AuditEvent.objects.filter(action="cohort.view").exists()
    scripts = re.findall(r'<script[^>]*src="([^"]+)"', content)
    assert scripts and all(
        src.startswith(settings.STATIC_URL) or src.startswith("/" + settings.STATIC_URL)
        for src in scripts
    )


def test_plotly_is_vendored_with_its_licence_and_version():
    path = finders.find("radtrack/vendor/plotly/plotly.min.js")
    assert path, "plotly.min.js is not among the static files"
    head = Path(path).read_text(encoding="utf-8")[:200]
    assert "plotly.js v" in head
    folder = Path(path).parent
    assert "MIT License" in (folder / "LICENSE.txt").read_text(encoding="utf-8")
    version = re.search(r"plotly\.js v([\d.]+)", head).group(1)
    assert f"plotly.js {version}" in (folder / "VERSION").read_text(encoding="utf-8")


# -- pipeline ---------------------------------------------------------------------------
def test_pipeline_page_shows_imports_states_steps_and_readable_errors(clinician):
    patient = PatientFactory(patient_id="MRN-P")
    study = StudyFactory(patient=patient, study_date=dt.date(2024, 2, 2))
    failed = SeriesFactory(
        study=study,
        state=Series.State.FAILED,
        state_detail="slice spacing is irregular (2.5 mm then 5.0 mm)",
    )
    ProcessingRunFactory(
        series=failed, status=ProcessingRun.Status.FAILED, error="slice spacing is irregular (2.5 mm then 5.0 mm)",
        steps=[{"name": "device", "status": "succeeded", "seconds": 0.01},
               {"name": "series_to_volume", "status": "failed", "seconds": 0.2, "error": "slice spacing is irregular (2.5 mm then 5.0 mm)"}],
    )  # fmt: skip
    IngestSession.objects.create(
        source="folder", status="done", files_seen=12, stored=10, duplicates=1, rejected=1
    )

    response = clinician.get(reverse("analytics:pipeline"))

    content = response.content.decode()
    assert response.status_code == 200
    assert "slice spacing is irregular (2.5 mm then 5.0 mm)" in content
    assert "series_to_volume" in content and "1 of 2 steps done" in content
    assert "Folder import" in content and "MRN-P" in content
    assert 'data-active="false"' in content
    assert AuditEvent.objects.filter(action="pipeline.view").exists()


def test_pipeline_fragment_reports_live_progress_of_a_running_run(clinician):
    series = SeriesFactory(state=Series.State.PROCESSING)
    ProcessingRunFactory(
        series=series, status=ProcessingRun.Status.RUNNING,
        steps=[{"name": "device", "status": "succeeded", "seconds": 0.01},
               {"name": "series_to_volume", "status": "running"}],
    )  # fmt: skip
    response = clinician.get(reverse("analytics:pipeline"), {"fragment": "1"})
    content = response.content.decode()
    assert "<html" not in content  # only the live part
    assert 'data-active="true"' in content
    assert "Now: series_to_volume" in content


def test_pipeline_needs_series_permission(client):
    client.force_login(UserFactory())
    assert client.get(reverse("analytics:pipeline")).status_code == 403
