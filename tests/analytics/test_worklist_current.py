"""`LatestRiskScore`, the copy of each patient's latest score the worklist orders on: kept
in step by every write of `RiskScore` in the same transaction, filled by its migration,
and giving the worklist exactly what it gave when it looked scores up itself."""

import datetime as dt
import importlib
import itertools
from types import SimpleNamespace

import pytest
from django.apps import apps as django_apps
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from analytics.dashboard.flags import worklist_flags_refresh
from analytics.dashboard.worklist import WorklistOrder, worklist, worklist_page
from analytics.models import TIER_RANK, LatestRiskScore, RiskModelVersion, RiskScore
from analytics.risk.services import risk_model_fit_and_store, risk_scores_compute
from imaging.models import Series
from patients.models import LabResult, Patient
from tests.analytics.test_selectors import assessment, lab, lesion, measure
from tests.analytics.test_services import FAST, TODAY, cohort, loaded  # noqa: F401 (fixtures)
from tests.imaging.factories import SeriesFactory, StudyFactory
from tests.patients.factories import PatientFactory

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.filterwarnings("ignore::lifelines.exceptions.ConvergenceWarning"),
]

CEA = "2039-6"


def model_version(name="test"):
    return RiskModelVersion.objects.create(
        name=name, kind="cox", artifact_path="x.joblib", training_fingerprint="0" * 64
    )


def score(patient, version, value, tier, landmark=dt.date(2024, 6, 1), **extra):
    return RiskScore.objects.create(
        patient=patient,
        model_version=version,
        score=value,
        tier=tier,
        landmark_date=landmark,
        **extra,
    )


def expected_latest() -> dict[tuple[int, int], tuple]:
    """What `LatestRiskScore` must hold, worked out from `RiskScore` alone in Python."""
    out: dict[tuple[int, int], tuple] = {}
    for s in sorted(
        RiskScore.objects.all(),
        key=lambda s: (s.landmark_date, s.computed_at, s.pk),
        reverse=True,
    ):
        out.setdefault(
            (s.model_version_id, s.patient_id),
            (s.pk, s.score, s.tier, TIER_RANK[s.tier], s.landmark_date),
        )
    return out


def stored_latest() -> dict[tuple[int, int], tuple]:
    return {
        (r.model_version_id, r.patient_id): (
            r.risk_score_id,
            r.score,
            r.tier,
            r.tier_rank,
            r.landmark_date,
        )
        for r in LatestRiskScore.objects.all()
    }


def assert_in_step() -> None:
    assert stored_latest() == expected_latest()


# -- kept in step by every write ------------------------------------------------------
def test_create_keeps_the_latest_landmark_then_computed_at_then_pk():
    version, patient = model_version(), PatientFactory()
    early = score(patient, version, 1.0, "high", landmark=dt.date(2024, 1, 1))
    assert stored_latest()[(version.pk, patient.pk)][0] == early.pk
    late = score(patient, version, -1.0, "low", landmark=dt.date(2024, 5, 1))
    score(patient, version, 3.0, "high", landmark=dt.date(2024, 3, 1))  # older landmark
    assert stored_latest()[(version.pk, patient.pk)] == (
        late.pk, -1.0, "low", 2, dt.date(2024, 5, 1),
    )  # fmt: skip
    assert_in_step()


def test_each_version_keeps_its_own_latest_and_a_new_version_starts_empty():
    old, patient = model_version("old"), PatientFactory(patient_id="P")
    score(patient, old, 9.0, "high")
    new = model_version("new")  # the current version changes: nothing to rewrite
    assert LatestRiskScore.objects.filter(model_version=new).count() == 0
    (row,) = worklist()
    assert row.model_version_id == new.pk and row.score is None and row.tier is None
    score(patient, new, 0.2, "intermediate")
    (row,) = worklist()
    assert (row.score, row.tier) == (0.2, "intermediate")
    assert worklist(model_version=old)[0].score == 9.0
    assert_in_step()


def test_updates_deletes_and_bulk_writes_refresh_the_latest():
    version = model_version()
    a, b = PatientFactory(), PatientFactory()
    a1 = score(a, version, 1.0, "high", landmark=dt.date(2024, 1, 1))
    a2 = score(a, version, 0.1, "intermediate", landmark=dt.date(2024, 2, 1))
    b1 = score(b, version, -1.0, "low")

    a2.score, a2.tier = 2.0, "high"  # one row saved again
    a2.save()
    assert stored_latest()[(version.pk, a.pk)][1:3] == (2.0, "high")

    RiskScore.objects.filter(pk=b1.pk).update(score=-2.0)  # QuerySet.update
    assert stored_latest()[(version.pk, b.pk)][1] == -2.0

    a1.landmark_date = dt.date(2024, 3, 1)  # bulk_update moves another row ahead
    RiskScore.objects.bulk_update([a1], ["landmark_date"])
    assert stored_latest()[(version.pk, a.pk)][0] == a1.pk

    a1.delete()  # the latest deleted: the one before takes its place
    assert stored_latest()[(version.pk, a.pk)][0] == a2.pk

    RiskScore.objects.filter(patient=a).delete()  # QuerySet.delete: no score, no row
    assert (version.pk, a.pk) not in stored_latest()

    RiskScore.objects.filter(pk=b1.pk).update(patient=a)  # a row moved to another patient
    assert set(stored_latest()) == {(version.pk, a.pk)}
    assert_in_step()


def test_bulk_create_with_update_conflicts_replaces_the_row_of_the_same_key():
    version = model_version()
    patients = [PatientFactory() for _ in range(3)]
    day = dt.date(2024, 6, 1)

    def write(values):
        RiskScore.objects.bulk_create(
            [
                RiskScore(patient=p, model_version=version, score=v, tier=t, landmark_date=day)
                for p, (v, t) in zip(patients, values, strict=True)
            ],
            update_conflicts=True,
            unique_fields=["patient", "model_version", "landmark_date"],
            update_fields=["score", "tier", "computed_at"],
        )

    write([(1.0, "high"), (0.0, "intermediate"), (-1.0, "low")])
    write([(-1.0, "low"), (0.0, "intermediate"), (1.0, "high")])
    assert RiskScore.objects.count() == 3
    assert [stored_latest()[(version.pk, p.pk)][2] for p in patients] == [
        "low",
        "intermediate",
        "high",
    ]
    assert_in_step()


def test_a_failed_write_leaves_neither_the_score_nor_its_copy():
    version, patient = model_version(), PatientFactory()
    score(patient, version, 1.0, "high", landmark=dt.date(2024, 1, 1))
    before = stored_latest()
    with pytest.raises(RuntimeError), transaction.atomic():
        score(patient, version, -1.0, "low", landmark=dt.date(2024, 5, 1))
        assert stored_latest() != before  # written in the same transaction...
        raise RuntimeError("the scoring failed half-way")
    assert stored_latest() == before  # ...and rolled back with it
    assert_in_step()


def test_deleting_a_patient_or_a_version_cascades():
    old, new = model_version("old"), model_version("new")
    a, b = PatientFactory(), PatientFactory()
    for version in (old, new):
        score(a, version, 1.0, "high")
        score(b, version, -1.0, "low")
    a.delete()
    old.delete()
    assert set(stored_latest()) == {(new.pk, b.pk)}
    assert_in_step()


def test_the_migration_fills_the_copy_from_existing_scores():
    versions = [model_version("a"), model_version("b")]
    now = timezone.now()
    for i in range(6):
        patient = PatientFactory()
        for version, k in itertools.product(versions, range(1 + i % 3)):
            score(
                patient,
                version,
                float(i - k),
                ("low", "intermediate", "high")[(i + k) % 3],
                landmark=dt.date(2024, 1 + k, 1),
                computed_at=now - dt.timedelta(hours=k),  # the latest landmark, not the newest row
            )
    expected = expected_latest()
    LatestRiskScore.objects.all().delete()
    migration = importlib.import_module("analytics.migrations.0003_latestriskscore")
    migration.latest_risk_scores_fill(django_apps, SimpleNamespace(connection=connection))
    assert stored_latest() == expected and len(expected) == 6 * 2


# -- the scoring service writes it ----------------------------------------------------
@pytest.mark.usefixtures("loaded")
def test_scoring_writes_the_copy_and_rescoring_one_patient_changes_only_theirs():
    version = risk_model_fit_and_store(kind="cox", **FAST)
    n = risk_scores_compute(model_version=version, today=TODAY)
    assert LatestRiskScore.objects.filter(model_version=version).count() == n > 1
    assert_in_step()

    first = Patient.objects.filter(latest_risk_scores__model_version=version).first()
    others = {k: v for k, v in stored_latest().items() if k[1] != first.pk}
    later = stored_latest()[(version.pk, first.pk)][4] + dt.timedelta(days=30)
    LabResult.objects.create(
        patient=first, loinc_code=CEA, value=5.0, unit="ng/mL",
        observed_at=dt.datetime.combine(later, dt.time(9), dt.UTC),
    )  # fmt: skip
    risk_scores_compute(model_version=version, today=TODAY, patient_ids=[first.patient_id])
    assert RiskScore.objects.filter(model_version=version, patient=first).count() == 2
    # a later landmark: the new score is the latest
    assert stored_latest()[(version.pk, first.pk)][4] == later
    assert {k: v for k, v in stored_latest().items() if k[1] != first.pk} == others
    assert_in_step()

    ordered = [r.patient_id for r in worklist()]
    by_score = sorted(
        RiskScore.objects.filter(pk__in=[v[0] for v in stored_latest().values()]),
        key=lambda s: (TIER_RANK[s.tier], -s.score),
    )
    assert ordered[: len(by_score)] == [s.patient.patient_id for s in by_score]


# -- the worklist reads it as it read the scores --------------------------------------
@pytest.fixture
def mixed():
    """Twenty patients: scores under two versions, several landmarks, ties, flags."""
    old, current = model_version("old"), model_version("current")
    tiers = ("low", "intermediate", "high")
    for i in range(20):
        p = PatientFactory(patient_id=f"M-{i:02d}", name=f"Mixed{i}^Pat")
        if i % 5:
            score(p, old, float(i), tiers[i % 3])
        if i % 4:
            score(p, current, float(i % 6) / 2, tiers[i % 3], landmark=dt.date(2024, 1, 1))
        if i % 3 == 0:
            score(p, current, float(i % 4), tiers[(i + 1) % 3], landmark=dt.date(2024, 4, 1))
        if i % 2:
            s1 = StudyFactory(patient=p, study_date=dt.date(2024, 1, 1 + i))
            s2 = StudyFactory(patient=p, study_date=dt.date(2024, 3, 1 + i % 7))
            assessment(p, s1, "", baseline=True)
            assessment(p, s2, ("PD", "SD", "PR")[i % 3], new_lesions=i % 7 == 1)
            if i % 3 == 1:
                SeriesFactory(study=s2, state=Series.State.FAILED)
            if i % 5 == 1:
                measure(lesion(p, "Liver 1"), s2, 1.0, review="pending")
        if i % 4 == 1:
            lab(p, CEA, 4.0, dt.date(2024, 1, 1))
            lab(p, CEA, 8.0, dt.date(2024, 2, 1))
    # Responses and measurements written straight into the tables, not by a tracking
    # rebuild (which refreshes the worklist's flags): refresh them as it would.
    worklist_flags_refresh()
    return old, current


def _looked_up(*, tier=None, order=WorklistOrder.RISK, version=None) -> list[str]:
    """The risk order worked out from `RiskScore` directly, as the worklist did before."""
    version = version or RiskModelVersion.objects.order_by("-created_at", "-pk").first()
    latest = {}
    for s in RiskScore.objects.filter(model_version=version).order_by(
        "-landmark_date", "-computed_at", "-pk"
    ):
        latest.setdefault(s.patient_id, s)
    rows = []
    for p in Patient.objects.all():
        s = latest.get(p.pk)
        if tier is None or (s is not None and s.tier == tier):
            rows.append(
                ((TIER_RANK[s.tier], -s.score) if s else (3, 0.0), p.patient_id, s and s.pk)
            )
    return [(mrn, pk) for _key, mrn, pk in sorted(rows)]


@pytest.mark.parametrize("tier", [None, "high", "low"])
def test_risk_order_matches_a_lookup_of_every_patients_latest_score(mixed, tier):
    old, _current = mixed
    assert [(r.patient_id, r.risk_score_id) for r in worklist(tier=tier)] == _looked_up(tier=tier)
    assert [(r.patient_id, r.risk_score_id) for r in worklist(model_version=old)] == _looked_up(
        version=old
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"order": "patient"},
        {"order": "last_study"},
        {"tier": "intermediate"},
        {"search": "mixed1"},
        {"flags": ["new_progression"]},
        {"flags": ["new_lesion"]},
        {"flags": ["processing_failed", "awaiting_review"]},
        {"flags": ["rising_marker"]},
        {"flags": ["rising_marker"], "order": "last_study"},
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default",
)
def test_pages_put_together_are_the_whole_worklist(mixed, kwargs):
    whole = worklist(**kwargs)
    first = worklist_page(per_page=3, **kwargs)
    pages = [first] + [
        worklist_page(page=n, per_page=3, **kwargs) for n in range(2, first.num_pages + 1)
    ]
    assert [row for page in pages for row in page.rows] == whole
    assert {page.total for page in pages} == {len(whole)}


def test_the_page_reads_stored_flags_and_no_lookup_per_patient(mixed):
    """The query that cuts the page orders on the risk columns alone; the page's rows
    read the latest response, latest study and flags from `WorklistFlags`, with no
    lookup per patient among responses, series, lesions or labs."""
    with CaptureQueriesContext(connection) as queries:
        page = worklist_page(per_page=5)
    assert len(page.rows) == 5
    (rows_sql,) = [q["sql"] for q in queries.captured_queries if "last_recist" in q["sql"]]
    inner = rows_sql[rows_sql.index(" IN (SELECT") :]
    assert "analytics_latestriskscore" in inner
    for table in (
        "analytics_responseassessment",
        "imaging_series",
        "imaging_study",
        "imaging_lesion",
        "patients_labresult",
        '"analytics_riskscore"',
    ):
        assert table not in rows_sql, table
    assert len(queries) == 3  # version, count, the page's rows


@pytest.mark.parametrize(
    "flag",
    ["new_progression", "new_lesion", "rising_marker", "processing_failed", "awaiting_review"],
)
def test_a_flag_filter_keeps_the_rows_showing_that_flag(mixed, flag):
    """Filters run in SQL before the page is cut, the flags shown are read after: same."""
    flagged = [row for row in worklist() if getattr(row, flag)]
    assert flagged and worklist(flags=[flag]) == flagged
    assert list(worklist_page(flags=[flag]).rows) == flagged
