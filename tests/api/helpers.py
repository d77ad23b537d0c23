"""Rows for the REST and FHIR tests: two patients, one with a followed lesion, a response
assessment, labs and a risk score of a fitted model version."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from analytics.models import ResponseAssessment, RiskModelVersion, RiskScore
from imaging.models import Lesion, LesionMeasurement, Study
from patients.models import LabResult, Patient
from tests.imaging.factories import (
    InstanceFactory,
    LesionFactory,
    LesionMeasurementFactory,
    SeriesFactory,
    StudyFactory,
)
from tests.patients.factories import PatientFactory


@dataclass
class Rows:
    alice: Patient
    bob: Patient
    baseline: Study
    followup: Study
    lesion: Lesion
    at_baseline: LesionMeasurement
    at_followup: LesionMeasurement
    rejected: LesionMeasurement
    response: ResponseAssessment
    version: RiskModelVersion
    score: RiskScore
    lab: LabResult


def rows_make() -> Rows:
    alice = PatientFactory(patient_id="MRN-A", name="Smith^Alice", sex="F")
    bob = PatientFactory(patient_id="MRN-B", name="Jones^Bob", sex="M")
    baseline = StudyFactory(patient=alice, study_date=dt.date(2024, 1, 10), accession_number="A1")
    followup = StudyFactory(patient=alice, study_date=dt.date(2024, 4, 10))
    StudyFactory(patient=bob, study_date=dt.date(2024, 2, 1))
    series = SeriesFactory(study=followup, series_number=2)
    InstanceFactory.create_batch(3, series=series)
    lesion = LesionFactory(patient=alice, label="Liver 1", organ="liver")
    at_baseline = LesionMeasurementFactory(
        lesion=lesion, study=baseline, status="new", review_state="accepted", volume_ml=8.0,
        longest_diameter_mm=30.0, short_axis_mm=20.0, is_target=True,
    )  # fmt: skip
    at_followup = LesionMeasurementFactory(
        lesion=lesion, study=followup, status="tracked", review_state="edited", volume_ml=5.0,
        longest_diameter_mm=25.0, short_axis_mm=15.0, override_longest_diameter_mm=19.5,
        is_target=True,
    )  # fmt: skip
    false_positive = LesionFactory(patient=alice, label="Liver 2")
    rejected = LesionMeasurementFactory(
        lesion=false_positive, study=followup, status="new", review_state="rejected"
    )
    ResponseAssessment.objects.create(
        patient=alice, study=baseline, is_baseline=True, sum_diameters_mm=30.0,
        total_volume_ml=8.0,
    )  # fmt: skip
    response = ResponseAssessment.objects.create(
        patient=alice, study=followup, sum_diameters_mm=19.5, total_volume_ml=5.0,
        pct_change_baseline=-35.0, pct_change_nadir=-35.0, recist_response="PR",
        volumetric_response="PR", new_lesions=False,
    )  # fmt: skip
    version = RiskModelVersion.objects.create(
        name="cox-pfs-test", kind="cox", artifact_path="x.joblib", training_fingerprint="0" * 64,
        parameters={"endpoint": "pfs"},
    )  # fmt: skip
    score = RiskScore.objects.create(
        patient=alice, model_version=version, score=0.8, tier="high",
        landmark_date=dt.date(2024, 4, 10),
    )  # fmt: skip
    RiskScore.objects.create(
        patient=bob, model_version=version, score=-0.4, tier="low",
        landmark_date=dt.date(2024, 2, 1),
    )  # fmt: skip
    lab = LabResult.objects.create(
        patient=alice, loinc_code="2039-6", value=4.2, unit="ng/mL",
        observed_at=dt.datetime(2024, 4, 1, 9, tzinfo=dt.UTC),
    )  # fmt: skip
    return Rows(
        alice=alice, bob=bob, baseline=baseline, followup=followup, lesion=lesion,
        at_baseline=at_baseline, at_followup=at_followup, rejected=rejected, response=response,
        version=version, score=score, lab=lab,
    )  # fmt: skip
