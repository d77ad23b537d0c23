"""REST API for analytics: response assessments, risk scores and the risk-ordered worklist.

Read-only, behind the same view permissions as the pages; every answer is audited with
one row per patient shown (see `imaging.api.AuditedReadOnlyViewSet`).
"""

from __future__ import annotations

import django_filters
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from analytics.models import ResponseAssessment, RiskScore
from analytics.selectors import FLAG_NAMES, worklist
from analytics.serializers import (
    ResponseAssessmentSerializer,
    RiskScoreSerializer,
    WorklistQuerySerializer,
    WorklistRowSerializer,
)
from imaging.api import APIPagination, AuditedReadOnlyViewSet, HasViewPermissions, IdFilter
from imaging.api import api_read_audit as _api_read_audit

_PATIENT_READ = "patients.view_patient"


class ResponseAssessmentFilter(django_filters.FilterSet):
    patient = IdFilter(field_name="patient_id", help_text="patient id")
    study = IdFilter(field_name="study_id", help_text="study id")
    recist_response = django_filters.ChoiceFilter(
        choices=[(c, c) for c in ("CR", "PR", "SD", "PD", "NE")]
    )

    class Meta:
        model = ResponseAssessment
        fields = ["patient", "study", "recist_response"]


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
        "patient__patient_id", "study__study_date", "pk"
    )


class RiskScoreFilter(django_filters.FilterSet):
    patient = IdFilter(field_name="patient_id", help_text="patient id")
    model_version = IdFilter(field_name="model_version_id", help_text="risk model version id")
    tier = django_filters.ChoiceFilter(choices=RiskScore.Tier.choices)

    class Meta:
        model = RiskScore
        fields = ["patient", "model_version", "tier"]


@extend_schema_view(
    list=extend_schema(summary="Risk scores with their model version", tags=["analytics"]),
    retrieve=extend_schema(summary="One risk score and its explanation", tags=["analytics"]),
)
class RiskScoreViewSet(AuditedReadOnlyViewSet):
    serializer_class = RiskScoreSerializer
    filterset_class = RiskScoreFilter
    required_permissions = (_PATIENT_READ, "analytics.view_riskscore")
    audit_noun = "risk_score"
    queryset = RiskScore.objects.select_related("model_version").order_by(
        "patient__patient_id", "-landmark_date", "-computed_at", "pk"
    )


class WorklistView(APIView):
    """Every patient with the current model's latest risk and the flags to act on."""

    permission_classes = [IsAuthenticated, HasViewPermissions]
    required_permissions = (_PATIENT_READ, "analytics.view_riskscore")
    pagination_class = APIPagination

    @extend_schema(
        operation_id="worklist_list",
        summary="The risk-ordered worklist",
        description="Ordered by tier (high first, unscored last) then score, by MRN, or by "
        "the latest study. Flags: " + ", ".join(FLAG_NAMES) + ".",
        parameters=[WorklistQuerySerializer],
        responses=WorklistRowSerializer(many=True),
        tags=["analytics"],
    )
    def get(self, request: Request) -> Response:
        query = WorklistQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = query.validated_data
        rows = worklist(
            tier=params.get("tier"),
            search=params.get("search", ""),
            flags=params.get("flags"),
            order=params["order"],
        )
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(rows, request, view=self)
        _api_read_audit(
            request=request,
            action="api.worklist.list",
            object=f"{request.path} page {paginator.page.number} ({len(page)} rows)",
            patient_pks=(row.pk for row in page),
        )
        return paginator.get_paginated_response(WorklistRowSerializer(page, many=True).data)
