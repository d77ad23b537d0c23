"""REST API for the risk-ordered worklist (``/api/v1/worklist/``), the page's data as JSON.

Read-only, behind the same view permissions as the page; every answer is audited with
one row per patient shown (`patients.api_base.api_read_audit`).
"""

from __future__ import annotations

from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from analytics.dashboard.serializers import WorklistQuerySerializer, WorklistRowSerializer
from analytics.dashboard.worklist import FLAG_NAMES, worklist
from patients.api_base import api_read_audit
from radtrack.api.base import APIPagination, HasViewPermissions

_PATIENT_READ = "patients.view_patient"


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
        api_read_audit(
            request=request,
            action="api.worklist.list",
            object=f"{request.path} page {paginator.page.number} ({len(page)} rows)",
            patient_pks=(row.pk for row in page),
        )
        return paginator.get_paginated_response(WorklistRowSerializer(page, many=True).data)


# -- routes (included by radtrack.api.urls) -----------------------------------------
urlpatterns = [path("worklist/", WorklistView.as_view(), name="api-worklist")]
