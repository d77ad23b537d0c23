"""REST API reads of the lesion data: lesions (identities across studies), lesion
measurements and response assessments, each on the audited read-only base."""

from __future__ import annotations

import django_filters
from django.db.models import Count
from drf_spectacular.utils import (
    extend_schema,
    extend_schema_view,
)
from rest_framework.routers import SimpleRouter

from analytics.lesions.corrections_api import urlpatterns as corrections_urlpatterns
from analytics.lesions.serializers import (
    LesionMeasurementSerializer,
    LesionSerializer,
    ResponseAssessmentSerializer,
)
from analytics.models import ResponseAssessment
from imaging.models import Lesion, LesionMeasurement, study_order
from patients.api_base import AuditedReadOnlyViewSet
from radtrack.api.base import IdFilter

_PATIENT_READ = "patients.view_patient"


class LesionFilter(django_filters.FilterSet):
    patient = IdFilter(field_name="patient_id", help_text="patient id")
    organ = django_filters.ChoiceFilter(choices=Lesion.Organ.choices)
    tracking_uid = django_filters.CharFilter(help_text="DICOM Tracking UID (0062,0021)")

    class Meta:
        model = Lesion
        fields = ["patient", "organ", "tracking_uid"]


@extend_schema_view(
    list=extend_schema(summary="Lesions: each one's identity across studies", tags=["imaging"]),
    retrieve=extend_schema(summary="One lesion", tags=["imaging"]),
)
class LesionViewSet(AuditedReadOnlyViewSet):
    serializer_class = LesionSerializer
    filterset_class = LesionFilter
    required_permissions = (_PATIENT_READ, "imaging.view_lesion")
    audit_noun = "lesion"
    queryset = Lesion.objects.annotate(measurement_count=Count("measurements")).order_by(
        "patient__patient_id", "organ", "label", "pk"
    )


class LesionMeasurementFilter(django_filters.FilterSet):
    patient = IdFilter(field_name="lesion__patient_id", help_text="patient id")
    study = IdFilter(field_name="study_id", help_text="study id")
    lesion = IdFilter(field_name="lesion_id", help_text="lesion id")
    status = django_filters.ChoiceFilter(choices=LesionMeasurement.Status.choices)
    finding_state = django_filters.ChoiceFilter(choices=LesionMeasurement.FindingState.choices)
    review_state = django_filters.ChoiceFilter(choices=LesionMeasurement.Review.choices)
    # "true" or "false"; anything else is a 400 rather than silently no filter.
    is_target = django_filters.TypedChoiceFilter(
        choices=[("true", "true"), ("false", "false")], coerce=lambda value: value == "true"
    )

    class Meta:
        model = LesionMeasurement
        fields = [
            "patient",
            "study",
            "lesion",
            "status",
            "finding_state",
            "review_state",
            "is_target",
        ]


@extend_schema_view(
    list=extend_schema(
        summary="Lesion measurements: one per lesion per study",
        description="Values in force (a radiologist's override wins) beside the automated "
        "ones; volume in ml, diameters in mm, centroid in the study's own LPS mm.",
        tags=["imaging"],
    ),
    retrieve=extend_schema(summary="One lesion measurement", tags=["imaging"]),
)
class LesionMeasurementViewSet(AuditedReadOnlyViewSet):
    serializer_class = LesionMeasurementSerializer
    filterset_class = LesionMeasurementFilter
    required_permissions = (_PATIENT_READ, "imaging.view_lesionmeasurement")
    audit_noun = "measurement"
    patient_path = "lesion.patient_id"
    queryset = LesionMeasurement.objects.select_related("lesion", "study", "merged_into").order_by(
        "lesion__patient__patient_id", *study_order("study__"), "lesion__label", "pk"
    )


class ResponseAssessmentFilter(django_filters.FilterSet):
    patient = IdFilter(field_name="patient_id", help_text="patient id")
    study = IdFilter(field_name="study_id", help_text="study id")
    recist_response = django_filters.ChoiceFilter(
        choices=[(c, c) for c in ("CR", "PR", "SD", "PD", "NE", "non-CR/non-PD")]
    )
    needs_attention = django_filters.TypedChoiceFilter(
        choices=[("true", "true"), ("false", "false")], coerce=lambda value: value == "true"
    )

    class Meta:
        model = ResponseAssessment
        fields = ["patient", "study", "recist_response", "needs_attention"]


@extend_schema_view(
    list=extend_schema(
        summary="Response assessments: RECIST 1.1 and volumetric, one per study",
        tags=["analytics"],
    ),
    retrieve=extend_schema(summary="One response assessment", tags=["analytics"]),
)
class ResponseAssessmentViewSet(AuditedReadOnlyViewSet):
    serializer_class = ResponseAssessmentSerializer
    filterset_class = ResponseAssessmentFilter
    required_permissions = (_PATIENT_READ, "analytics.view_responseassessment")
    audit_noun = "response"
    queryset = ResponseAssessment.objects.select_related("study").order_by(
        "patient__patient_id", *study_order("study__")
    )


# -- routes (included by radtrack.api.urls) -----------------------------------------
router = SimpleRouter()
router.register("lesions", LesionViewSet, basename="api-lesion")
router.register("measurements", LesionMeasurementViewSet, basename="api-measurement")
router.register("responses", ResponseAssessmentViewSet, basename="api-response")
urlpatterns = router.urls + corrections_urlpatterns
