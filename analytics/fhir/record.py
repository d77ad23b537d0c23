"""Loading what one patient's FHIR resources are built from, in a fixed number of queries."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, Prefetch

from analytics.models import BestOverallResponse, ResponseAssessment, RiskScore
from imaging.models import Lesion, LesionMeasurement, Series, Study
from patients.models import LabResult, Patient, PatientIdentifier


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
    identifiers: tuple[PatientIdentifier, ...] = ()
    labs: tuple[LabResult, ...] = ()
    best: BestOverallResponse | None = None


def patient_record_load(*, pk: int) -> PatientRecord:
    """Load a patient and every row their resources use (nine queries).

    Measurements rejected as false positives are left out: the row a radiologist
    rejected, and every row of a lesion whose rejection holds for the whole identity
    (finding state ``rejected``). Lesions are those with an exported measurement.

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
        .exclude(finding_state=LesionMeasurement.FindingState.REJECTED)
        .select_related("lesion", "study", "segmentation", "merged_into")
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
        identifiers=tuple(patient.identifiers.order_by("system", "value")),
        labs=tuple(patient.lab_results.order_by("loinc_code", "observed_at", "pk")),
        best=BestOverallResponse.objects.filter(patient=patient).first(),
    )
