"""REST reads of studies and series (``/api/v1/studies/``, ``/api/v1/series/``), audited
per patient shown; lesions and their measurements are read under `analytics.lesions.api`.
"""

from __future__ import annotations

import django_filters
from django.db.models import Count
from drf_spectacular.utils import (
    extend_schema,
    extend_schema_view,
)
from rest_framework.routers import SimpleRouter

from imaging.models import Series, Study, study_order
from imaging.serializers import SeriesSerializer, StudySerializer
from patients.api_base import AuditedReadOnlyViewSet
from radtrack.api.base import IdFilter

# -- imaging reads ------------------------------------------------------------------
_PATIENT_READ = "patients.view_patient"


class StudyFilter(django_filters.FilterSet):
    patient = IdFilter(field_name="patient_id", help_text="patient id")
    study_date = django_filters.DateFromToRangeFilter(
        help_text="study_date_after / study_date_before (YYYY-MM-DD, inclusive)"
    )
    study_instance_uid = django_filters.CharFilter(help_text="Study Instance UID (0020,000D)")

    class Meta:
        model = Study
        fields = ["patient", "study_date", "study_instance_uid"]


@extend_schema_view(
    list=extend_schema(summary="Studies, oldest first per patient", tags=["imaging"]),
    retrieve=extend_schema(summary="One study", tags=["imaging"]),
)
class StudyViewSet(AuditedReadOnlyViewSet):
    serializer_class = StudySerializer
    filterset_class = StudyFilter
    required_permissions = (_PATIENT_READ, "imaging.view_study")
    audit_noun = "study"
    queryset = Study.objects.annotate(series_count=Count("series")).order_by(
        "patient__patient_id", *study_order()
    )


class SeriesFilter(django_filters.FilterSet):
    patient = IdFilter(field_name="study__patient_id", help_text="patient id")
    study = IdFilter(field_name="study_id", help_text="study id")
    state = django_filters.ChoiceFilter(choices=Series.State.choices)
    modality = django_filters.CharFilter()

    class Meta:
        model = Series
        fields = ["patient", "study", "state", "modality"]


@extend_schema_view(
    list=extend_schema(summary="Series and their processing state", tags=["imaging"]),
    retrieve=extend_schema(summary="One series", tags=["imaging"]),
)
class SeriesViewSet(AuditedReadOnlyViewSet):
    serializer_class = SeriesSerializer
    filterset_class = SeriesFilter
    required_permissions = (_PATIENT_READ, "imaging.view_series")
    audit_noun = "series"
    patient_path = "study.patient_id"
    queryset = (
        Series.objects.select_related("study")
        .annotate(instance_count=Count("instances"))
        .order_by(
            "study__patient__patient_id", "study__study_date", "study_id", "series_number", "pk"
        )
    )


# -- routes (included by radtrack.api.urls) -----------------------------------------
router = SimpleRouter()
router.register("studies", StudyViewSet, basename="api-study")
router.register("series", SeriesViewSet, basename="api-series")
urlpatterns = router.urls
