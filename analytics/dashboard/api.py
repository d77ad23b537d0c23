"""REST API for the risk-ordered worklist (``/api/v1/worklist/``), the page's data as JSON.

Read-only, behind the same view permissions as the page; every answer is audited with
one row per patient shown (`patients.api_base.api_read_audit`). Paginated as every list
of the API (``?page=``, ``?page_size=``; ``count``, ``next``, ``previous``, ``results``),
and cut in the database (`worklist_page`): a page costs the same at 100 patients as at
10,000.
"""

from __future__ import annotations

from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework.exceptions import NotFound
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import remove_query_param, replace_query_param
from rest_framework.views import APIView

from analytics.dashboard.serializers import WorklistQuerySerializer, WorklistRowSerializer
from analytics.dashboard.worklist import FLAG_NAMES, WorklistPage, worklist_page
from patients.api_base import api_read_audit
from radtrack.api.base import APIPagination, HasViewPermissions

_PATIENT_READ = "patients.view_patient"
#: Past any page: `worklist_page` clamps it to the last one.
_LAST = 2**62


class WorklistPagination(APIPagination):
    """The API's page parameters and answer over a `WorklistPage` cut by the database.

    As `PageNumberPagination`: ``page`` from 1 or ``last``, and a page past the end (or
    not a whole number) answers 404 "Invalid page."; ``page_size`` from 1 to 500, 50
    when absent or not a number, 500 when over.
    """

    page_query_description = "page number, from 1 (or `last`); past the last page: 404"
    page_size_query_description = "rows per page: 50 unless given, at most 500"

    def page_requested(self, request: Request) -> int:
        """The page number asked for (`_LAST` for ``last``); 404 when it is not one."""
        value = request.query_params.get(self.page_query_param) or "1"
        if value in self.last_page_strings:
            return _LAST
        try:
            number = int(value)
        except ValueError:
            number = 0
        if number < 1:
            raise NotFound(self.invalid_page_message.format(page_number=value, message=""))
        return number

    def worklist_response(
        self, request: Request, page: WorklistPage, requested: int, results: list
    ) -> Response:
        if requested not in (page.number, _LAST):
            raise NotFound(self.invalid_page_message.format(page_number=requested, message=""))
        url = request.build_absolute_uri()
        previous = None
        if page.has_previous:
            previous = (
                remove_query_param(url, self.page_query_param)
                if page.previous_page_number == 1
                else replace_query_param(url, self.page_query_param, page.previous_page_number)
            )
        following = (
            replace_query_param(url, self.page_query_param, page.next_page_number)
            if page.has_next
            else None
        )
        return Response(
            {"count": page.total, "next": following, "previous": previous, "results": results}
        )


class WorklistView(APIView):
    """Every patient with the current model's latest risk and the flags to act on."""

    permission_classes = [IsAuthenticated, HasViewPermissions]
    required_permissions = (_PATIENT_READ, "analytics.view_riskscore")
    pagination_class = WorklistPagination

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
        paginator = self.pagination_class()
        requested = paginator.page_requested(request)
        page = worklist_page(
            page=requested,
            per_page=paginator.get_page_size(request),
            tier=params.get("tier"),
            search=params.get("search", ""),
            flags=params.get("flags"),
            order=params["order"],
        )
        if requested in (page.number, _LAST):  # nothing shown, nothing audited, on a 404
            api_read_audit(
                request=request,
                action="api.worklist.list",
                object=f"{request.path} page {page.number} ({len(page.rows)} rows)",
                patient_pks=(row.pk for row in page.rows),
            )
        data = WorklistRowSerializer(page.rows, many=True).data
        return paginator.worklist_response(request, page, requested, data)


# -- routes (included by radtrack.api.urls) -----------------------------------------
urlpatterns = [path("worklist/", WorklistView.as_view(), name="api-worklist")]
