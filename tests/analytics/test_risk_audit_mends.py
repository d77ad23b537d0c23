"""Risk scores that stayed in charge after the data behind them changed, events counted by
landmark row, and lab dates taken in UTC against a local "today" (an audit's findings)."""

import datetime as dt

import pandas as pd
import pytest
from django.urls import reverse

from analytics.dashboard.worklist import worklist
from analytics.models import LatestRiskScore, RiskModelVersion, RiskScore
from analytics.risk.core.features import LabFeatures, feature_table_build, landmark_cutoff
from analytics.risk.core.outcomes import landmark_outcomes
from analytics.risk.selectors import feature_inputs_load
from analytics.risk.services import (
    MIN_EVENTS,
    LandmarkPolicy,
    TooFewEvents,
    TrainingTable,
    _events_enough_check,
    current_landmarks,
    risk_model_fit_and_store,
    risk_scores_compute,
    training_table_build,
)
from imaging.core.synthetic.cohort import cohort_simulate
from patients.models import ClinicalEvent, LabResult, Patient
from tests.analytics.test_services import FAST, TODAY, cohort_load
from tests.patients.factories import PatientFactory, UserFactory

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.filterwarnings("ignore::lifelines.exceptions.ConvergenceWarning"),
]


@pytest.fixture(scope="module")
def cohort():
    return cohort_simulate(n_patients=40, n_timepoints=4, seed=21)


@pytest.fixture
def scored(cohort, tmp_path):
    """The cohort loaded, a model fitted and everyone scored; the version and a patient
    who is alive (no death in the simulation)."""
    cohort_load(cohort, tmp_path)
    version = risk_model_fit_and_store(kind="cox", **FAST)
    assert risk_scores_compute(model_version=version, today=TODAY) > 0
    alive = [p for p in cohort.patients if not any(e.kind == "death" for e in p.events)]
    return version, [Patient.objects.get(patient_id=p.patient_id) for p in alive[:2]]


def latest(patient: Patient, version: RiskModelVersion) -> LatestRiskScore | None:
    return LatestRiskScore.objects.filter(patient=patient, model_version=version).first()


def row_of(patient: Patient, version: RiskModelVersion):
    return next(r for r in worklist(model_version=version) if r.patient_id == patient.patient_id)


# -- 1. a death removes the patient's scores ------------------------------------------------
def test_a_patient_who_died_is_no_longer_ranked_by_their_old_score(scored):
    version, (patient, other) = scored
    before = latest(patient, version)
    assert before is not None and row_of(patient, version).tier is not None
    others = RiskScore.objects.filter(model_version=version).exclude(patient=patient).count()
    died = before.landmark_date + dt.timedelta(days=10)
    ClinicalEvent.objects.create(patient=patient, kind="death", date=died)

    risk_scores_compute(model_version=version, today=TODAY)

    assert not RiskScore.objects.filter(patient=patient, model_version=version).exists()
    assert latest(patient, version) is None
    assert RiskScore.objects.filter(model_version=version).count() == others
    rows = worklist(model_version=version)
    mine = next(r for r in rows if r.patient_id == patient.patient_id)
    # Said as deceased, not as a score still to come.
    assert (mine.tier, mine.score, mine.landmark_date, mine.died_on) == (None, None, None, died)
    assert mine.tier_label == f"Deceased {died:%Y-%m-%d}"
    alive = next(r for r in rows if r.patient_id == other.patient_id)
    assert alive.died_on is None and alive.tier_label != "Not scored"
    # Ranked with the unscored, after every scored patient.
    assert all(r.tier is None for r in rows[rows.index(mine) :])
    assert latest(other, version) is not None


def test_rescoring_only_the_patient_who_died_removes_theirs_alone(scored):
    version, (patient, other) = scored
    kept = set(RiskScore.objects.filter(model_version=version).exclude(patient=patient))
    ClinicalEvent.objects.create(patient=patient, kind="death", date=TODAY)

    assert (
        risk_scores_compute(model_version=version, today=TODAY, patient_ids=[patient.patient_id])
        == 0
    )

    assert latest(patient, version) is None
    assert set(RiskScore.objects.filter(model_version=version)) == kept


# -- 2. a withdrawn lab takes its later score with it -----------------------------------------
def test_a_withdrawn_lab_leaves_the_score_just_computed_as_the_latest(scored):
    version, (patient, other) = scored
    first = latest(patient, version)
    other_before = latest(other, version)
    day = first.landmark_date + dt.timedelta(days=7)
    lab = LabResult.objects.create(
        patient=patient,
        loinc_code="2039-6",
        value=900.0,
        unit="ng/mL",
        observed_at=dt.datetime.combine(day, dt.time(12), dt.UTC),
    )
    risk_scores_compute(model_version=version, today=TODAY, patient_ids=[patient.patient_id])
    assert latest(patient, version).landmark_date == day

    lab.delete()  # retracted
    risk_scores_compute(model_version=version, today=TODAY, patient_ids=[patient.patient_id])

    assert not RiskScore.objects.filter(patient=patient, landmark_date=day).exists()
    now = latest(patient, version)
    assert now.landmark_date == first.landmark_date
    assert now.score == pytest.approx(first.score)
    assert row_of(patient, version).landmark_date == first.landmark_date
    assert latest(other, version).risk_score_id == other_before.risk_score_id


def test_scores_at_a_fixed_earlier_landmark_keep_the_later_ones(scored):
    version, (patient, _other) = scored
    current = latest(patient, version)
    landmark = current.landmark_date - dt.timedelta(days=30)

    risk_scores_compute(model_version=version, landmark_date=landmark, today=TODAY)

    assert RiskScore.objects.filter(patient=patient, landmark_date=landmark).exists()
    assert latest(patient, version).risk_score_id == current.risk_score_id


# -- 3. events counted once per patient --------------------------------------------------
def _training(n_progressing: int, n_censored: int, landmarks_each: int) -> TrainingTable:
    """Patients with ``landmarks_each`` landmarks 60 days apart, the first
    ``n_progressing`` progressing after the last one."""
    landmarks, events = [], []
    for i in range(n_progressing + n_censored):
        pid = f"P{i}"
        landmarks += [
            (pid, dt.date(2020, 1, 1) + dt.timedelta(days=60 * k)) for k in range(landmarks_each)
        ]
        if i < n_progressing:
            events.append((pid, "progression", dt.date(2021, 6, 1)))
        events.append((pid, "censor", dt.date(2022, 1, 1)))
    out = landmark_outcomes(
        events=pd.DataFrame(events, columns=["patient_id", "kind", "date"]),
        landmarks=pd.DataFrame(landmarks, columns=["patient_id", "landmark_date"]),
    )
    return TrainingTable(table=out.table, excluded=out.excluded)


def test_too_few_events_counts_patients_not_landmark_rows():
    training = _training(n_progressing=2, n_censored=3, landmarks_each=5)
    assert (training.n_events, training.n_event_patients) == (10, 2)

    with pytest.raises(TooFewEvents) as caught:
        _events_enough_check(training, endpoint="pfs", needed=MIN_EVENTS)

    assert caught.value.events == 2
    assert "only 2 outcome events, one per patient" in str(caught.value)
    assert "10 of 25 landmark rows of 5 patients" in str(caught.value)


def test_the_version_stores_the_patients_with_an_event(cohort, tmp_path):
    cohort_load(cohort, tmp_path)
    version = risk_model_fit_and_store(kind="cox", **FAST)
    inputs = feature_inputs_load()
    at_baseline = training_table_build(inputs=inputs, policy=FAST["policy"], today=TODAY)
    assert version.metrics["n_event_patients"] == at_baseline.n_event_patients >= MIN_EVENTS
    assert "n_events" in version.metrics
    # Every assessed study is a landmark: a patient's event ends several rows.
    studies = training_table_build(inputs=inputs, policy=LandmarkPolicy("studies"), today=TODAY)
    events = studies.table[studies.table["event"].astype(bool)]
    assert studies.n_event_patients == events["patient_id"].nunique() < studies.n_events


def test_the_cohort_page_is_given_the_patients_with_an_event(client):
    client.force_login(UserFactory(groups=["clinician"]))
    RiskModelVersion.objects.create(
        name="cox-test",
        kind="cox",
        artifact_path="x.joblib",
        training_fingerprint="0" * 64,
        metrics={"n_rows": 40, "n_patients": 6, "n_events": 9, "n_event_patients": 4},
    )
    counts = client.get(reverse("analytics:cohort")).context["counts"]
    assert (counts["n_events"], counts["n_event_patients"]) == (9, 4)


# -- 4. lab dates and "today" in one time zone ------------------------------------------
def test_an_evening_lab_in_new_york_counts_on_its_local_day(settings):
    settings.TIME_ZONE = "America/New_York"
    patient = PatientFactory(patient_id="TZ1")
    for value, observed in (
        (3.0, "2024-03-01T09:00:00-05:00"),
        (60.0, "2024-03-06T20:30:00-05:00"),  # 01:30 UTC on 7 March
    ):
        LabResult.objects.create(
            patient=patient,
            loinc_code="2039-6",
            value=value,
            unit="ng/mL",
            observed_at=dt.datetime.fromisoformat(observed),
        )
    inputs = feature_inputs_load(patient_ids=["TZ1"])

    landmarks, skipped = current_landmarks(inputs, today=dt.date(2024, 3, 6))

    assert not skipped
    assert landmarks["landmark_date"].tolist() == [dt.date(2024, 3, 6)]
    features = feature_table_build(landmarks=landmarks, blocks=inputs.blocks())
    assert features["cea_latest"].tolist() == [60.0]


def test_a_morning_lab_in_tokyo_is_not_in_the_day_before():
    labs = pd.DataFrame(
        {
            "patient_id": ["T"] * 2,
            "loinc_code": ["2039-6"] * 2,
            "value": [3.0, 60.0],
            "observed_at": pd.to_datetime(
                ["2024-03-05T10:00:00+09:00", "2024-03-07T08:00:00+09:00"], utc=True
            ),  # the second is 23:00 UTC on 6 March
        }
    )
    landmark = pd.DataFrame({"patient_id": ["T"], "landmark_date": [dt.date(2024, 3, 6)]})
    local = feature_table_build(landmarks=landmark, blocks=[LabFeatures(labs, tz="Asia/Tokyo")])
    assert local["cea_latest"].tolist() == [3.0]
    in_utc = feature_table_build(landmarks=landmark, blocks=[LabFeatures(labs)])
    assert in_utc["cea_latest"].tolist() == [60.0]


@pytest.mark.parametrize(
    ("tz", "landmark", "cutoff"),
    [
        ("UTC", dt.date(2024, 3, 6), "2024-03-07T00:00:00+00:00"),
        ("America/New_York", dt.date(2024, 3, 6), "2024-03-07T05:00:00+00:00"),
        # Havana's clocks go from 00:00 to 01:00 on 10 March 2024: the day ends then.
        ("America/Havana", dt.date(2024, 3, 9), "2024-03-10T05:00:00+00:00"),
        # ... and back from 01:00 to 00:00 on 3 November: the first midnight ends the 2nd.
        ("America/Havana", dt.date(2024, 11, 2), "2024-11-03T04:00:00+00:00"),
    ],
)
def test_the_landmark_cutoff_is_the_local_midnight_ending_the_day(tz, landmark, cutoff):
    assert landmark_cutoff(landmark, tz) == pd.Timestamp(cutoff)
