"""The patient page: risk and what drives it, charts, response per study, lesions."""

import datetime as dt
import json
import re

import pytest
from django.urls import reverse

from analytics.dashboard.patient import patient_timeline
from analytics.lesions.responses import responses_recompute
from analytics.models import RiskModelVersion, RiskScore
from imaging.models import LesionMeasurement
from patients.models import AuditEvent, LabResult
from tests.imaging.factories import LesionFactory, LesionMeasurementFactory, StudyFactory
from tests.patients.factories import PatientFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def clinician(client):
    client.force_login(UserFactory(groups=["clinician"]))
    return client


@pytest.fixture
def followed():
    """Two liver targets shrinking then one growing back, a new lung lesion at the last
    study, a rejected false positive, labs, and a score of the current model."""
    patient = PatientFactory(patient_id="MRN-9", name="Roe^Ann")
    days = (dt.date(2024, 1, 10), dt.date(2024, 4, 10), dt.date(2024, 7, 10))
    studies = [StudyFactory(patient=patient, study_date=d) for d in days]
    liver1 = LesionFactory(patient=patient, label="Liver 1")
    liver2 = LesionFactory(patient=patient, label="Liver 2")
    for lesion, sizes in ((liver1, (30.0, 18.0, 26.0)), (liver2, (20.0, 12.0, 14.0))):
        for k, (study, d) in enumerate(zip(studies, sizes, strict=True)):
            LesionMeasurementFactory(
                lesion=lesion, study=study, status="new" if k == 0 else "tracked",
                longest_diameter_mm=d, short_axis_mm=d * 0.7, volume_ml=(d / 10) ** 3 * 0.52,
                is_target=True, review_state="accepted",
            )  # fmt: skip
    lung = LesionFactory(patient=patient, label="Lung 1", organ="lung")
    LesionMeasurementFactory(
        lesion=lung, study=studies[2], status="new", longest_diameter_mm=12.0, volume_ml=0.9
    )
    ghost = LesionFactory(patient=patient, label="Liver 3")
    LesionMeasurementFactory(
        lesion=ghost, study=studies[1], status="new", longest_diameter_mm=40.0, volume_ml=30.0,
        review_state=LesionMeasurement.Review.REJECTED,
    )  # fmt: skip
    responses_recompute(patient=patient)
    for day, value in zip(days, (3.1, 2.8, 6.5), strict=True):
        LabResult.objects.create(
            patient=patient, loinc_code="2039-6", value=value, unit="ng/mL",
            observed_at=dt.datetime.combine(day, dt.time(8), dt.UTC),
        )  # fmt: skip
    version = RiskModelVersion.objects.create(
        name="cox-pfs-test", kind="cox", artifact_path="x.joblib", training_fingerprint="0" * 64
    )
    RiskScore.objects.create(
        patient=patient, model_version=version, score=0.84, tier="high", landmark_date=days[2],
        explanation={
            "score": 0.84, "reference_score": 0.0, "scale": "log hazard ratio",
            "contributions": [
                {"feature": "cea_slope", "value": 0.02, "contribution": 0.51},
                {"feature": "albumin_latest", "value": None, "contribution": -0.12},
            ],
            "notes": ["held inside the training range: cea_slope (was 0.05)"],
        },
    )  # fmt: skip
    return patient, studies


def test_patient_page_shows_risk_model_and_what_drives_it(clinician, followed):
    patient, _ = followed
    content = clinician.get(reverse("patients:detail", args=[patient.pk])).content.decode()
    assert "High risk" in content and "0.840" in content
    assert "cox-pfs-test" in content and "log hazard ratio" in content
    assert "held inside the training range: cea_slope (was 0.05)" in content
    assert "cea_slope" in content and "albumin_latest" in content and "missing" in content


def test_patient_page_response_table_and_lesions(clinician, followed):
    patient, studies = followed
    response = clinician.get(reverse("patients:detail", args=[patient.pk]))
    content = response.content.decode()
    timeline = response.context["timeline"]
    # baseline sum 50, nadir 30, then 40 mm (+33%, +10 mm) with a new lesion: PD
    assert [r.recist_response for r in timeline.responses] == ["", "PR", "PD"]
    assert [r.sum_diameters_mm for r in timeline.responses] == [50.0, 30.0, 40.0]
    assert f'data-testid="recist-{studies[2].pk}">PD<' in content
    assert f'data-testid="recist-{studies[1].pk}">PR<' in content
    labels = [t.label for t in timeline.lesions]
    assert set(labels) == {"Liver 1", "Liver 2", "Liver 3", "Lung 1"}
    rejected = re.search(r'<tr class="is-rejected"[^>]*>.*?</tr>', content, re.S).group(0)
    assert "Rejected (false positive)" in rejected
    assert AuditEvent.objects.filter(action="patient.view", patient=patient).count() == 1


def test_patient_page_embeds_its_figures_and_local_plotly(clinician, followed):
    patient, _ = followed
    content = clinician.get(reverse("patients:detail", args=[patient.pk])).content.decode()
    for name in ("fig-lesions", "fig-timeline", "fig-risk"):
        assert f'data-figure="{name}"' in content
        figure = json.loads(
            re.search(
                rf'<script id="{name}" type="application/json">(.*?)</script>', content, re.S
            ).group(1)
        )
        assert figure["data"], name
    lesions = json.loads(
        re.search(
            r'<script id="fig-lesions" type="application/json">(.*?)</script>', content, re.S
        ).group(1)
    )
    assert [t["name"] for t in lesions["data"]] == [
        "Liver 1 (target)",
        "Liver 2 (target)",
        "Lung 1",
    ]
    assert "/static/radtrack/vendor/plotly/plotly.min.js" in content
    assert "cdn." not in content and "https://" not in content


def test_patient_page_without_lesions_or_model_says_so(clinician):
    patient = PatientFactory()
    content = clinician.get(reverse("patients:detail", args=[patient.pk])).content.decode()
    assert "no risk model has been fitted yet" in content
    assert "No lesions found yet." in content and "No response assessment yet" in content
    assert "plotly.min.js" not in content


def test_timeline_carries_lesions_responses_labs_and_risk(followed):
    patient, _ = followed
    timeline = patient_timeline(pk=patient.pk)
    liver1 = next(t for t in timeline.lesions if t.label == "Liver 1")
    assert [p.longest_diameter_mm for p in liver1.points] == [30.0, 18.0, 26.0]
    assert liver1.is_target
    ghost = next(t for t in timeline.lesions if t.label == "Liver 3")
    assert ghost.points[0].is_rejected and ghost.shown_points == ()
    (cea,) = timeline.labs
    assert (cea.key, cea.unit, cea.values) == ("cea", "ng/mL", (3.1, 2.8, 6.5))
    assert timeline.risk.tier == "high" and timeline.risk.contributions[0].feature == "cea_slope"


def test_timeline_risk_is_from_the_current_model_only(followed):
    patient, _ = followed
    RiskModelVersion.objects.create(
        name="newer", kind="gbm", artifact_path="y.joblib", training_fingerprint="1" * 64
    )
    assert patient_timeline(pk=patient.pk).risk is None
