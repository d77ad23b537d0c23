"""Loading what one patient's FHIR resources are built from, in a fixed number of queries."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, Prefetch

from analytics.models import ResponseAssessment, RiskScore
from imaging.models import Lesion, LesionMeasurement, Series, Study
from patients.models import Patient


@dataclass(frozen=True)
class PatientRecord:
    """Everything one patient's FHIR resources are built from, loaded once."""

    patient: Patient
    studies: tuple[Study, ...]
    series_by_study: dict[int, tuple[Series, ...]]
    lesions: tuple[Lesion, ...]
    measurements: tuple[LesionMeasurement, ...]
    assessments: tuple[ResponseAssessment, ...]
    scores: tuple[RiskScore, ...]


def patient_record_load(*, pk: int) -> PatientRecord:
    """Load a patient and every row their resources use (six queries).

    Lesions are those with an exported measurement.

    `Patient.DoesNotExist` if there is no such patient.
    """
    patient = Patient.objects.get(pk=pk)
    studies = tuple(
        Study.objects.filter(patient=patient)
        .prefetch_related(
            Prefetch(
                "series",
                queryset=Series.objects.annotate(instance_count=Count("instances")).order_by(
                    "series_number", "series_instance_uid"
                ),
            )
        )
        .chronological()
    )
    measurements = tuple(
        LesionMeasurement.objects.filter(lesion__patient=patient)
        .exclude(review_state=LesionMeasurement.Review.REJECTED)
        .select_related("lesion", "study")
        .order_by("study__study_date", "study_id", "lesion__label", "pk")
    )
    lesions = tuple(sorted({m.lesion for m in measurements}, key=lambda x: (x.label, x.pk)))
    assessments = tuple(
        ResponseAssessment.objects.filter(patient=patient)
        .select_related("study")
        .order_by("study__study_date", "pk")
    )
    scores = tuple(
        RiskScore.objects.filter(patient=patient)
        .select_related("model_version")
        .order_by("-landmark_date", "-computed_at", "-pk")
    )
    return PatientRecord(
        patient=patient,
        studies=studies,
        series_by_study={s.pk: tuple(s.series.all()) for s in studies},
        lesions=lesions,
        measurements=measurements,
        assessments=assessments,
        scores=scores,
    )
