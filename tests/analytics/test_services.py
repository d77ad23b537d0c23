"""Fitting, storing and scoring risk models on a generated cohort loaded into the database."""

import datetime as dt
import math

import pytest

from analytics.models import RiskModelVersion, RiskScore
from analytics.risk.core.features import IMAGING_COLUMNS
from analytics.risk.core.survival import risk_model_load
from analytics.risk.selectors import feature_inputs_load
from analytics.risk.services import (
    FEATURES,
    MIN_EVENTS,
    LandmarkPolicy,
    TooFewEvents,
    current_landmarks,
    risk_model_fit_and_store,
    risk_scores_compute,
    training_landmarks,
    training_table_build,
)
from analytics.risk.tasks import risk_scores_compute_task
from imaging.core.synthetic.cohort import cohort_simulate
from imaging.core.synthetic.ehr import events_csv_write, labs_csv_write
from imaging.core.synthetic.lesion_shape import equivalent_diameter_mm
from imaging.core.synthetic.simulated import Cohort
from imaging.models import Lesion, LesionMeasurement, Study
from patients.ehr.importer import ehr_import
from patients.models import ClinicalEvent, LabResult, Patient
from tests.patients.factories import PatientFactory

pytestmark = [
    pytest.mark.django_db,
    # Forty patients' exact (noise-free) volumes make some features nearly constant, and
    # lifelines warns about it; convergence is not what these tests are about.
    pytest.mark.filterwarnings("ignore::lifelines.exceptions.ConvergenceWarning"),
]

# Cohorts end long ago (baselines 2019-2023): score and train "as of" this day.
TODAY = dt.date(2030, 1, 1)
# A firmer penalty than the default: on 40 patients' exact (noise-free) volumes lifelines'
# Newton steps at 0.1 can oscillate to its step limit, which only costs time here.
# One landmark per patient (at baseline) where the landmark policy is not under test.
FAST = {"folds": 3, "today": TODAY, "penalizer": 1.0, "policy": LandmarkPolicy("baseline", 0)}


def cohort_load(cohort: Cohort, tmp_path, *, imaging: bool = True) -> None:
    """Put a simulated cohort in the database as RadTrack would hold it.

    Patients exist first (as DICOM ingest makes them); labs and events come in through
    the EHR import of the cohort's ``labs.csv`` and ``events.csv``. With ``imaging``,
    each study gets the simulation's true lesion volumes as accepted measurements (the
    equivalent-sphere diameter as the longest diameter), a resolved lesion keeps a row
    with volume 0, and a lesion not yet present has none.
    """
    for p in cohort.patients:
        PatientFactory(
            patient_id=p.patient_id, name=p.patient_name, birth_date=p.birth_date, sex=p.sex
        )
    labs_csv_write(cohort, tmp_path / "labs.csv")
    events_csv_write(cohort, tmp_path / "events.csv")
    for name in ("labs.csv", "events.csv"):
        result = ehr_import(path_or_bytes=tmp_path / name)
        assert not result.rejected and not result.unmatched, result.summary()
    if not imaging:
        return
    patients = dict(Patient.objects.values_list("patient_id", "pk"))
    for p in cohort.patients:
        studies = Study.objects.bulk_create(
            Study(
                study_instance_uid=s.study_instance_uid,
                patient_id=patients[p.patient_id],
                study_date=s.study_date,
                study_time=s.study_time,
            )
            for s in p.studies
        )
        lesions = Lesion.objects.bulk_create(
            Lesion(
                patient_id=patients[p.patient_id],
                tracking_uid=lesion.tracking_uid,
                label=lesion.lesion_id,
                organ=lesion.organ,
            )
            for lesion in p.lesions
        )
        rows = []
        for lesion, sim in zip(lesions, p.lesions, strict=True):
            seen = False
            for study, s in zip(studies, p.studies, strict=True):
                state = sim.status(s.day)
                if state == "not_yet_present":
                    continue
                volume = sim.volume_ml(s.day)
                diameter = equivalent_diameter_mm(volume)
                rows.append(
                    LesionMeasurement(
                        lesion=lesion,
                        study=study,
                        status="resolved"
                        if state == "resolved"
                        else ("tracked" if seen else "new"),
                        volume_ml=volume,
                        longest_diameter_mm=diameter,
                        short_axis_mm=0.8 * diameter,
                        review_state=LesionMeasurement.Review.ACCEPTED,
                    )
                )
                seen = True
        LesionMeasurement.objects.bulk_create(rows)


@pytest.fixture(scope="module")
def cohort():
    return cohort_simulate(n_patients=40, n_timepoints=4, seed=21)


@pytest.fixture
def loaded(cohort, tmp_path):
    cohort_load(cohort, tmp_path)
    return cohort


# -- landmarks ------------------------------------------------------------------------
def test_study_landmarks_are_assessed_study_dates_and_baseline_without_imaging(loaded, tmp_path):
    lonely = PatientFactory(patient_id="EHR-ONLY")
    LabResult.objects.create(
        patient=lonely,
        loinc_code="2039-6",
        value=3.0,
        unit="ng/mL",
        observed_at=dt.datetime(2024, 2, 1, 23, 30, tzinfo=dt.UTC),
    )
    inputs = feature_inputs_load()
    landmarks = training_landmarks(inputs, LandmarkPolicy(), today=TODAY)
    first = loaded.patients[0]
    mine = landmarks[landmarks["patient_id"] == first.patient_id]["landmark_date"].tolist()
    assert mine == [s.study_date for s in first.studies]
    assert landmarks[landmarks["patient_id"] == "EHR-ONLY"]["landmark_date"].tolist() == [
        dt.date(2024, 2, 1)
    ]
    # Nothing after "today".
    early = training_landmarks(inputs, LandmarkPolicy(), today=first.studies[1].study_date)
    assert early[early["patient_id"] == first.patient_id]["landmark_date"].tolist() == [
        s.study_date for s in first.studies[:2]
    ]

    offset = training_landmarks(inputs, LandmarkPolicy("baseline", 90), today=TODAY)
    assert offset["patient_id"].is_unique
    row = offset[offset["patient_id"] == first.patient_id].iloc[0]
    assert row["landmark_date"] == first.baseline_date + dt.timedelta(days=90)


def test_training_table_has_no_row_after_progression_and_outcomes_from_the_landmark(loaded):
    training = training_table_build(inputs=feature_inputs_load(), today=TODAY)
    table = training.table
    assert list(table.columns) == [
        "patient_id",
        "landmark_date",
        *FEATURES,
        "duration_days",
        "event",
    ]
    by_id = {p.patient_id: p for p in loaded.patients}
    for row in table.itertuples(index=False):
        events = {e.kind: e.date for e in by_id[row.patient_id].events}
        if "progression" in events:
            assert row.landmark_date < events["progression"]
        first_event = (
            min(d for k, d in events.items() if k in ("progression", "death"))
            if ("progression" in events or "death" in events)
            else None
        )
        if row.event:
            assert row.duration_days == (first_event - row.landmark_date).days
    assert training.n_events >= MIN_EVENTS
    # Imaging features are there, computed from the measurements.
    assert table["total_burden_ml"].notna().all()
    assert set(IMAGING_COLUMNS) <= set(table.columns)


# -- fit and store --------------------------------------------------------------------
def test_fit_stores_a_traceable_version(loaded):
    version = risk_model_fit_and_store(kind="cox", seed=3, folds=3, today=TODAY, penalizer=1.0)
    assert version.kind == "cox"
    assert version.artifact_file.is_file()
    assert version.features == list(FEATURES)
    assert len(version.training_fingerprint) == 64
    assert version.n_training_rows == version.metrics["n_rows"] > 40  # several per patient
    assert 0.5 < version.metrics["c_index"] <= 1.0
    for name in ("auc_182d", "auc_365d", "ibs", "c_index_pooled", "c_index_sd"):
        assert name in version.metrics
    assert len(version.metrics["calibration"]) == 10
    assert len(version.metrics["folds"]) == 3
    assert version.parameters["landmark_policy"] == {"kind": "studies", "offset_days": 0}
    assert version.metrics["n_events"] >= MIN_EVENTS
    assert version.parameters["endpoint"] == "pfs"
    assert version.parameters["model"]["penalizer"] == 1.0
    low, high = version.tier_thresholds["low_below"], version.tier_thresholds["high_from"]
    assert low < high
    assert {"lifelines", "scikit-learn", "numpy", "python"} <= set(version.library_versions)
    model = risk_model_load(version.artifact_file)
    assert model.features == list(FEATURES)
    assert model.tiers.low_below == low

    def walk(value):  # PostgreSQL's jsonb has no NaN: none may be stored
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        else:
            assert not (isinstance(value, float) and math.isnan(value))

    walk(version.metrics)
    walk(version.parameters)


def test_refitting_the_same_data_gives_the_same_fingerprint(loaded):
    first = risk_model_fit_and_store(kind="cox", **FAST)
    second = risk_model_fit_and_store(kind="cox", **FAST)
    assert first.pk != second.pk
    assert first.artifact_path != second.artifact_path
    assert first.training_fingerprint == second.training_fingerprint
    assert first.metrics["c_index"] == pytest.approx(second.metrics["c_index"])
    # New data changes it.
    patient = Patient.objects.get(patient_id=loaded.patients[0].patient_id)
    LabResult.objects.filter(patient=patient).update(value=1.0)
    third = risk_model_fit_and_store(kind="cox", **FAST)
    assert third.training_fingerprint != first.training_fingerprint


def test_gbm_fits_and_scores(loaded):
    version = risk_model_fit_and_store(kind="gbm", folds=3, today=TODAY, policy=FAST["policy"])
    assert version.kind == "gbm"
    assert version.parameters["model"]["max_iter"] > 0
    assert risk_scores_compute(model_version=version, today=TODAY) > 0
    scores = RiskScore.objects.filter(model_version=version)
    assert all(0.0 <= s.score <= 1.0 for s in scores)
    assert scores.first().explanation["scale"].startswith("probability")


def test_too_few_events_is_a_clear_error_naming_the_count(cohort, tmp_path):
    cohort_load(cohort, tmp_path, imaging=False)
    progressions = ClinicalEvent.objects.filter(kind__in=["progression", "death"])
    keep = list(progressions.order_by("pk").values_list("pk", flat=True)[:3])
    progressions.exclude(pk__in=keep).delete()
    with pytest.raises(TooFewEvents) as caught:
        risk_model_fit_and_store(kind="cox", **FAST)
    assert caught.value.events <= 3
    assert f"only {caught.value.events} outcome event" in str(caught.value)
    assert f"at least {MIN_EVENTS}" in str(caught.value)
    assert not RiskModelVersion.objects.exists()


def test_fit_without_imaging_uses_labs_and_demographics(cohort, tmp_path):
    cohort_load(cohort, tmp_path, imaging=False)
    version = risk_model_fit_and_store(kind="cox", **FAST)
    dropped = version.parameters["dropped_features"]
    assert set(IMAGING_COLUMNS) <= set(dropped)
    assert "cea_latest" in version.parameters["design_columns"]


# -- scores ---------------------------------------------------------------------------
def test_scores_name_their_version_and_are_idempotent(loaded):
    version = risk_model_fit_and_store(kind="cox", **FAST)
    n = risk_scores_compute(model_version=version, today=TODAY)
    dead = {p.patient_id for p in loaded.patients if any(e.kind == "death" for e in p.events)}
    assert n == len(loaded.patients) - len(dead) > 0
    scores = list(RiskScore.objects.filter(model_version=version).select_related("patient"))
    assert len(scores) == n
    assert {s.patient.patient_id for s in scores}.isdisjoint(dead)
    model = risk_model_load(version.artifact_file)
    for s in scores:
        assert s.model_version_id == version.pk
        assert s.tier == model.tiers.tier(s.score)
        contributions = s.explanation["contributions"]
        assert {c["feature"] for c in contributions} <= set(FEATURES)
        assert abs(contributions[0]["contribution"]) >= abs(contributions[-1]["contribution"])
        # Cox: the contributions add up to the score (log hazard ratio).
        assert sum(c["contribution"] for c in contributions) == pytest.approx(s.score, abs=1e-6)
        assert s.explanation["landmark_date"] == s.landmark_date.isoformat()

    # The landmark is the latest data: the last study, or a later lab.
    by_id = {p.patient_id: p for p in loaded.patients}
    for s in scores:
        p = by_id[s.patient.patient_id]
        latest = max([p.studies[-1].study_date, *(lab.observed_at.date() for lab in p.labs)])
        assert s.landmark_date == latest

    before = {s.pk: s.score for s in scores}
    assert risk_scores_compute(model_version=version, today=TODAY) == n
    again = RiskScore.objects.filter(model_version=version)
    assert again.count() == n
    assert {s.pk: s.score for s in again} == pytest.approx(before)


def test_scores_at_a_fixed_landmark_use_nothing_after_it(loaded):
    version = risk_model_fit_and_store(kind="cox", **FAST)
    first = loaded.patients[0]
    landmark = first.studies[1].study_date
    risk_scores_compute(model_version=version, landmark_date=landmark, today=TODAY)
    score = RiskScore.objects.get(patient__patient_id=first.patient_id, landmark_date=landmark)
    before = score.score
    # Data after the landmark does not move the score at that landmark.
    patient = Patient.objects.get(patient_id=first.patient_id)
    LabResult.objects.create(
        patient=patient,
        loinc_code="2039-6",
        value=900.0,
        unit="ng/mL",
        observed_at=dt.datetime.combine(landmark + dt.timedelta(days=1), dt.time(8), dt.UTC),
    )
    risk_scores_compute(model_version=version, landmark_date=landmark, today=TODAY)
    score.refresh_from_db()
    assert score.score == pytest.approx(before)


def test_current_landmarks_skip_patients_without_data_and_the_dead(loaded):
    PatientFactory(patient_id="NO-DATA")
    inputs = feature_inputs_load()
    landmarks, skipped = current_landmarks(inputs, today=TODAY)
    assert skipped["NO-DATA"] == "no CT study or lab result to score from"
    dead = [p for p in loaded.patients if any(e.kind == "death" for e in p.events)]
    assert dead, "the cohort should hold a death"
    assert skipped[dead[0].patient_id].startswith("died on")
    assert set(landmarks["patient_id"]).isdisjoint(skipped)


def test_task_recomputes_scores_of_the_latest_version(loaded):
    assert risk_scores_compute_task.delay().get() == 0  # nothing fitted yet
    version = risk_model_fit_and_store(kind="cox", **FAST)
    # Eager mode; "today" is the real date, long after the cohort, so landmarks are the same.
    n = risk_scores_compute_task.delay(version.pk).get()
    assert n == RiskScore.objects.filter(model_version=version).count() > 0
    assert risk_scores_compute_task.delay().get() == n


def test_scores_hold_values_inside_the_training_range_and_say_so(loaded):
    version = risk_model_fit_and_store(kind="cox", **FAST)
    low, high = risk_model_load(version.artifact_file).parameters["feature_ranges"]["cea_latest"]
    alive = next(p for p in loaded.patients if not any(e.kind == "death" for e in p.events))
    patient = Patient.objects.get(patient_id=alive.patient_id)
    day = max(lab.observed_at.date() for lab in alive.labs) + dt.timedelta(days=5)
    LabResult.objects.create(
        patient=patient, loinc_code="2039-6", value=high * 50, unit="ng/mL", observed_at=at(day)
    )
    risk_scores_compute(model_version=version, today=TODAY)
    score = RiskScore.objects.get(patient=patient, landmark_date=day)
    assert score.explanation["outside_training_range"]["cea_latest"] == high * 50
    cea = next(c for c in score.explanation["contributions"] if c["feature"] == "cea_latest")
    assert cea["value"] == high
    note = next(n for n in score.explanation["notes"] if n.startswith("held inside"))
    assert f"cea_latest (was {high * 50:.3g})" in note

    progressed = [
        s
        for s in RiskScore.objects.filter(model_version=version).select_related("patient")
        if any(
            e.kind == "progression" and e.date <= s.landmark_date
            for p in loaded.patients
            if p.patient_id == s.patient.patient_id
            for e in p.events
        )
    ]
    assert progressed, "the cohort should hold a living patient who progressed"
    assert all(s.explanation["notes"][0].startswith("progressed on") for s in progressed)


def test_a_score_with_features_filled_in_says_which(loaded):
    # A patient with one CEA and no CT: every imaging feature is the model's guess.
    lonely = PatientFactory(patient_id="LABS-ONLY")
    LabResult.objects.create(
        patient=lonely, loinc_code="2039-6", value=3.0, unit="ng/mL", observed_at=at(TODAY)
    )
    version = risk_model_fit_and_store(kind="cox", **FAST)
    risk_scores_compute(model_version=version, today=TODAY)
    for score in RiskScore.objects.filter(model_version=version):
        gaps = [c["feature"] for c in score.explanation["contributions"] if c["value"] is None]
        said = [n for n in score.explanation["notes"] if n.startswith("no value at this")]
        assert bool(gaps) == bool(said), score.patient_id
        assert all(g in said[0] for g in gaps)
    lonely_notes = RiskScore.objects.get(patient=lonely).explanation["notes"]
    assert any("total_burden_ml" in n for n in lonely_notes if n.startswith("no value"))


def test_an_ehr_import_rescores_its_patients_once_committed(
    loaded, django_capture_on_commit_callbacks
):
    version = risk_model_fit_and_store(kind="cox", **FAST)
    risk_scores_compute(model_version=version, today=TODAY)
    alive = next(p for p in loaded.patients if not any(e.kind == "death" for e in p.events))
    patient = Patient.objects.get(patient_id=alive.patient_id)
    day = max(lab.observed_at.date() for lab in alive.labs) + dt.timedelta(days=7)
    assert not RiskScore.objects.filter(patient=patient, landmark_date=day).exists()
    csv = f"patient_id,loinc_code,value,unit,observed_at\n{alive.patient_id},2039-6,250,ng/mL,{day}T09:00:00+00:00\n"
    with django_capture_on_commit_callbacks(execute=True) as queued:
        ehr_import(path_or_bytes=csv.encode(), source_name="spike.csv")
    assert queued, "the import queues the rescoring"
    # Scored at the new landmark, with the new CEA in its features.
    score = RiskScore.objects.get(patient=patient, model_version=version, landmark_date=day)
    cea = next(c for c in score.explanation["contributions"] if c["feature"] == "cea_latest")
    assert cea["value"] is not None


def at(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(9), dt.UTC)


def test_scores_from_inputs_already_loaded_are_the_same(loaded):
    version = risk_model_fit_and_store(kind="cox", **FAST)
    risk_scores_compute(model_version=version, today=TODAY)
    before = {
        (s.patient_id, s.landmark_date): (s.score, s.tier, s.explanation)
        for s in RiskScore.objects.filter(model_version=version)
    }
    inputs = feature_inputs_load()
    assert risk_scores_compute(model_version=version, today=TODAY, inputs=inputs) == len(before)
    after = {
        (s.patient_id, s.landmark_date): (s.score, s.tier, s.explanation)
        for s in RiskScore.objects.filter(model_version=version)
    }
    assert after == before
    with pytest.raises(ValueError, match="not both"):
        risk_scores_compute(model_version=version, inputs=inputs, patient_ids=["X"])


def test_a_score_on_labs_long_after_the_last_ct_says_how_old_its_imaging_is(loaded):
    from imaging.models import LesionMeasurement
    from patients.models import ClinicalEvent

    version = risk_model_fit_and_store(kind="cox", **FAST)
    alive = Patient.objects.exclude(
        pk__in=ClinicalEvent.objects.filter(kind="death").values("patient_id")
    ).filter(lesions__isnull=False)[0]
    last_ct = max(
        LesionMeasurement.objects.filter(lesion__patient=alive).values_list(
            "study__study_date", flat=True
        )
    )
    # A lab 200 days after the last CT: the landmark moves to it, the imaging does not.
    landmark = last_ct + dt.timedelta(days=200)
    LabResult.objects.create(
        patient=alive, loinc_code="2039-6", value=4.0, unit="ng/mL", observed_at=at(landmark)
    )
    risk_scores_compute(model_version=version, landmark_date=landmark, today=TODAY)

    notes = RiskScore.objects.get(patient=alive, landmark_date=landmark).explanation["notes"]
    said = f"imaging features from the CT of {last_ct:%Y-%m-%d}, 200 days before"
    assert any(n.startswith(said) for n in notes), notes
    # At the CT's own landmark, nothing to say.
    risk_scores_compute(model_version=version, landmark_date=last_ct, today=TODAY)
    at_ct = RiskScore.objects.get(patient=alive, landmark_date=last_ct).explanation["notes"]
    assert not any(n.startswith("imaging features from") for n in at_ct)
