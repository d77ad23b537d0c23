"""The read-only REST base every app's patient-data API uses: view permissions,
pagination, filters, and one audit row per patient whose data an answer shows.
"""

from __future__ import annotations

from collections.abc import Iterable

from django_filters.rest_framework import DjangoFilterBackend
from rest_framework import viewsets
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from patients.audit import audit_patients_shown
from radtrack.api.base import ID_PATTERN, APIPagination, HasViewPermissions


def api_read_audit(
    *, request: Request, action: str, object: str, patient_pks: Iterable[int | None]
) -> None:
    """One audit row per patient whose data a response shows (one without a patient if none).

    Rows per patient let the audit trail answer "who saw this patient's data", whether
    they opened the patient or paged through a list that included them.
    """
    audit_patients_shown(request=request, action=action, object=object, patient_pks=patient_pks)


def _attribute_path(obj, path: str):
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


class AuditedReadOnlyViewSet(viewsets.ReadOnlyModelViewSet):
    """List and retrieve one kind of row; every answer with patient data is audited.

    Subclasses set ``required_permissions``, ``audit_noun`` (``api.<noun>.list`` and
    ``api.<noun>.view`` are the audit actions) and ``patient_path``, the attribute path
    from a row to its patient's primary key.
    """

    permission_classes = [IsAuthenticated, HasViewPermissions]
    pagination_class = APIPagination
    filter_backends = [DjangoFilterBackend]
    lookup_value_regex = ID_PATTERN
    required_permissions: tuple[str, ...] = ()
    audit_noun = ""
    patient_path = "patient_id"

    def _audit_object(self, request: Request, count: int) -> str:
        query = request.META.get("QUERY_STRING", "")
        return f"{request.path}{'?' + query if query else ''} ({count} rows)"

    def list(self, request: Request, *args, **kwargs) -> Response:
        queryset = self.filter_queryset(self.get_queryset())
        page = self.paginate_queryset(queryset)
        rows = list(page if page is not None else queryset)
        data = self.get_serializer(rows, many=True).data
        api_read_audit(
            request=request,
            action=f"api.{self.audit_noun}.list",
            object=self._audit_object(request, len(rows)),
            patient_pks=(_attribute_path(row, self.patient_path) for row in rows),
        )
        if page is not None:
            return self.get_paginated_response(data)
        return Response(data)

    def retrieve(self, request: Request, *args, **kwargs) -> Response:
        row = self.get_object()
        data = self.get_serializer(row).data
        api_read_audit(
            request=request,
            action=f"api.{self.audit_noun}.view",
            object=f"{self.audit_noun} {row.pk}",
            patient_pks=[_attribute_path(row, self.patient_path)],
        )
        return Response(data)
