"""REST API for patients: reads of patients and labs, and EHR data in.

``GET /api/v1/patients/`` and ``/api/v1/labs/`` read (audited, per patient shown);
``POST /api/v1/ehr/`` takes a FHIR R4 Bundle, FHIR Bulk Data NDJSON
(``application/fhir+ndjson``) or a cohort CSV.

The file goes through `patients.ehr` (patients matched by their identifiers, records
that match nobody kept apart with the reason, one transaction, idempotent) and the
answer lists what was created, updated, left unchanged, kept apart as unmatched, skipped
and rejected, with where and why. A file that cannot be read at all (not UTF-8, JSON
nested too deeply, a CSV field over the limit) is a 400 with the reason. Shared with
the upload page (`patients.views.ehr_upload_view`).
"""

from __future__ import annotations

import datetime as dt

import django_filters
from django.conf import settings
from django.urls import path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import exceptions, serializers, status
from rest_framework.parsers import BaseParser, MultiPartParser
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter
from rest_framework.views import APIView

from patients.api_base import AuditedReadOnlyViewSet
from patients.audit import audit_record
from patients.ehr.importer import NDJSON_MEDIA_TYPES, ehr_import
from patients.ehr.records import EHRImportError, EHRImportResult
from patients.models import LabResult, Patient
from patients.selectors import patient_search_filter
from patients.serializers import LabResultSerializer, PatientSerializer
from radtrack.api.base import (
    DetailSerializer,
    IdFilter,
    UploadTooLarge,
    request_content_length,
    upload_limit_message,
)

EHR_IMPORT_PERMISSION = "patients.add_labresult"
UPLOAD_FIELD = "file"


def can_import_ehr(user) -> bool:
    """Whether ``user`` may bring labs and events in (radiologist and admin groups)."""
    return bool(user is not None and user.is_authenticated and user.has_perm(EHR_IMPORT_PERMISSION))


class CanImportEHR(BasePermission):
    message = "Your account may not import EHR data (radiologist or admin group needed)."

    def has_permission(self, request, view) -> bool:
        return can_import_ehr(request.user)


# -- parsers: the body is handed to the importer as bytes ---------------------------
class _RawBodyParser(BaseParser):
    """Read the body as bytes, up to the upload limit."""

    def parse(self, stream, media_type=None, parser_context=None) -> bytes:
        limit = settings.RADTRACK_MAX_UPLOAD_BYTES
        chunks, total = [], 0
        while stream is not None and (chunk := stream.read(1 << 20)):
            total += len(chunk)
            if total > limit:
                raise UploadTooLarge(upload_limit_message())
            chunks.append(chunk)
        return b"".join(chunks)


class FHIRJSONParser(_RawBodyParser):
    media_type = "application/fhir+json"


class JSONBodyParser(_RawBodyParser):
    media_type = "application/json"


class CSVParser(_RawBodyParser):
    media_type = "text/csv"


class FHIRNDJSONParser(_RawBodyParser):
    media_type = "application/fhir+ndjson"


class NDJSONParser(_RawBodyParser):
    media_type = "application/ndjson"


# -- serializers --------------------------------------------------------------------
class ProblemSerializer(serializers.Serializer):
    where = serializers.CharField(help_text="entry index and resource, or CSV line")
    reason = serializers.CharField()


class EHRImportResultSerializer(serializers.Serializer):
    source = serializers.CharField(help_text="the file name the rows were stored under")
    format = serializers.CharField(help_text="FHIR Bundle, FHIR NDJSON, labs CSV or events CSV")
    records = serializers.IntegerField(help_text="bundle entries, NDJSON lines or CSV rows read")
    created = serializers.IntegerField()
    updated = serializers.IntegerField(help_text="labs whose value changed (amended results)")
    unchanged = serializers.IntegerField(help_text="already stored as sent")
    skipped_older = serializers.IntegerField(
        help_text="labs not applied: the source last updated them (meta.lastUpdated) before "
        "the version stored (an older version of an amended or corrected result)"
    )
    retracted = serializers.IntegerField(
        help_text="results and progressions the EHR withdrew (entered in error, refuted), "
        "removed from RadTrack"
    )
    unmatched = serializers.IntegerField(help_text="records that match no patient (kept apart)")
    unmatched_identifiers = serializers.ListField(
        child=serializers.CharField(),
        help_text="the identifiers that matched nobody: an MRN, or system|value",
    )
    rejected = ProblemSerializer(many=True)
    skipped = ProblemSerializer(many=True)
    notes = serializers.ListField(child=serializers.CharField())


class EHRUploadSerializer(serializers.Serializer):
    file = serializers.FileField(
        help_text="a FHIR R4 Bundle (JSON), FHIR NDJSON (.ndjson), labs.csv or events.csv"
    )


def ehr_import_result(result: EHRImportResult) -> dict:
    """The JSON answer to an EHR import (also what the upload page shows)."""
    return EHRImportResultSerializer(
        {
            "source": result.source_name,
            "format": result.format,
            "records": result.records,
            "created": result.created,
            "updated": result.updated,
            "unchanged": result.unchanged,
            "skipped_older": result.skipped_older,
            "retracted": result.retracted,
            "unmatched": result.unmatched,
            "unmatched_identifiers": sorted(result.unmatched_identifiers),
            "rejected": [{"where": p.where, "reason": p.reason} for p in result.rejected],
            "skipped": [{"where": p.where, "reason": p.reason} for p in result.skipped],
            "notes": list(result.notes),
        }
    ).data


def ehr_import_run(
    *, request, data: bytes, name: str, ndjson: bool | None = None
) -> EHRImportResult:
    """Import one uploaded file and write the audit row; `EHRImportError` if unreadable.

    Rows are stored with the source ``upload <name> by <username>``. ``ndjson``: the
    body is NDJSON (None: a ``.ndjson`` name says so, else the content).
    """
    username = request.user.get_username()
    source = f"upload {name} by {username}"[:255]
    if ndjson is None and name.lower().endswith(".ndjson"):
        ndjson = True
    try:
        result = ehr_import(path_or_bytes=data, source_name=source, ndjson=ndjson)
    except EHRImportError as exc:
        audit_record(request=request, action="ehr.import", object=f"{name}: refused: {exc}")
        raise
    audit_record(request=request, action="ehr.import", object=result.summary())
    return result


_EXAMPLE = OpenApiExample(
    "a bundle with an unknown MRN and a bad unit",
    value={
        "source": "upload ehr_bundle.json by rad1",
        "format": "FHIR Bundle",
        "records": 4,
        "created": 2,
        "updated": 0,
        "unchanged": 0,
        "skipped_older": 0,
        "retracted": 0,
        "unmatched": 1,
        "unmatched_identifiers": ["MRN-UNKNOWN"],
        "rejected": [
            {
                "where": "entry[3] Observation/cea-7",
                "reason": "unit 'mmol/L' cannot be converted to ng/mL for LOINC 2039-6",
            }
        ],
        "skipped": [],
        "notes": [],
    },
    response_only=True,
    status_codes=["201"],
)


class EHRImportView(APIView):
    """Import laboratory results and outcome events from a FHIR R4 Bundle or cohort CSV."""

    permission_classes = [IsAuthenticated, CanImportEHR]
    parser_classes = [
        MultiPartParser,
        FHIRJSONParser,
        JSONBodyParser,
        CSVParser,
        FHIRNDJSONParser,
        NDJSONParser,
    ]

    @extend_schema(
        operation_id="ehr_import",
        summary="Import EHR labs and events",
        description=(
            "Send one file: a FHIR R4 Bundle (`application/fhir+json` or `application/json` "
            "body), FHIR Bulk Data NDJSON (`application/fhir+ndjson`: one resource per "
            "line, problems named by line number) or the `labs.csv` / `events.csv` layout "
            f"`generate_cohort` writes (`text/csv` body), or any of them as multipart form "
            f"data under `{UPLOAD_FIELD}`. Patients are matched by identifier (the MRN in "
            "RADTRACK_MRN_SYSTEM, or another system's identifier a patient is known to "
            "carry) and never created; records that match nobody are kept apart with the "
            "reason and counted as unmatched. A lab value outside its test's plausible range "
            "is rejected. The file is one transaction, and sending it again changes nothing "
            "(counted as unchanged). Every record not used is listed with where it was and why."
        ),
        request={
            "multipart/form-data": EHRUploadSerializer,
            "application/fhir+json": OpenApiTypes.OBJECT,
            "application/json": OpenApiTypes.OBJECT,
            "text/csv": OpenApiTypes.STR,
            "application/fhir+ndjson": OpenApiTypes.STR,
            "application/ndjson": OpenApiTypes.STR,
        },
        responses={
            201: OpenApiResponse(EHRImportResultSerializer, "something was created or updated"),
            200: OpenApiResponse(EHRImportResultSerializer, "nothing new: all unchanged"),
            400: OpenApiResponse(DetailSerializer, "the file cannot be read, or none was sent"),
            413: OpenApiResponse(DetailSerializer, "the request is over the size limit"),
        },
        examples=[_EXAMPLE],
        tags=["patients"],
    )
    def post(self, request: Request) -> Response:
        length = request_content_length(request)
        if length > settings.RADTRACK_MAX_UPLOAD_BYTES:
            raise UploadTooLarge(upload_limit_message(length))
        if request.content_type.startswith("multipart/form-data"):
            upload = request.FILES.get(UPLOAD_FIELD)
            if upload is None:
                return Response(
                    {"detail": f"send the file under the form field '{UPLOAD_FIELD}'"},
                    status=status.HTTP_400_BAD_REQUEST,
                )
            if upload.size > settings.RADTRACK_MAX_UPLOAD_BYTES:
                raise UploadTooLarge(upload_limit_message(upload.size))
            data, name = upload.read(), upload.name
        else:
            data = request.data
            name = "(request body)"
            if not isinstance(data, bytes) or not data.strip():
                return Response(
                    {"detail": "the request body is empty"}, status=status.HTTP_400_BAD_REQUEST
                )
        ndjson = True if request.content_type.split(";")[0].strip() in NDJSON_MEDIA_TYPES else None
        try:
            result = ehr_import_run(request=request, data=data, name=name, ndjson=ndjson)
        except EHRImportError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        changed = result.created or result.updated
        return Response(
            ehr_import_result(result),
            status=status.HTTP_201_CREATED if changed else status.HTTP_200_OK,
        )


# -- reads --------------------------------------------------------------------------
class PatientFilter(django_filters.FilterSet):
    search = django_filters.CharFilter(
        method="search_filter", max_length=100, help_text="words in the MRN or name"
    )
    sex = django_filters.ChoiceFilter(choices=[c for c in Patient.Sex.choices if c[0]])

    class Meta:
        model = Patient
        fields = ["search", "sex"]

    def search_filter(self, queryset, name, value):
        return queryset.filter(patient_search_filter(value))


@extend_schema_view(
    list=extend_schema(summary="Patients, in MRN order", tags=["patients"]),
    retrieve=extend_schema(summary="One patient", tags=["patients"]),
)
class PatientViewSet(AuditedReadOnlyViewSet):
    serializer_class = PatientSerializer
    filterset_class = PatientFilter
    required_permissions = ("patients.view_patient",)
    audit_noun = "patient"
    patient_path = "pk"
    queryset = Patient.objects.order_by("patient_id")


class UTCDateTimeRangeFilter(django_filters.IsoDateTimeFromToRangeFilter):
    """``<name>_after`` / ``<name>_before`` in ISO 8601, compared in UTC.

    Converting first matters: PostgreSQL refuses UTC offsets past 15:59, which ISO 8601
    allows, and an instant that falls outside years 1-9999 in UTC is a client error.
    """

    def filter(self, qs, value):
        if value:
            try:
                value = slice(
                    *(
                        v.astimezone(dt.UTC) if v is not None else None
                        for v in (value.start, value.stop)
                    )
                )
            except OverflowError:
                raise exceptions.ValidationError(
                    {self.field_name: "the instant is outside years 1-9999 in UTC"}
                ) from None
        return super().filter(qs, value)


class LabResultFilter(django_filters.FilterSet):
    patient = IdFilter(field_name="patient_id", help_text="patient id")
    loinc_code = django_filters.CharFilter(help_text="LOINC code, e.g. 2039-6 (CEA)")
    observed_at = UTCDateTimeRangeFilter(
        help_text="observed_at_after / observed_at_before (ISO 8601, inclusive)"
    )

    class Meta:
        model = LabResult
        fields = ["patient", "loinc_code", "observed_at"]


@extend_schema_view(
    list=extend_schema(summary="Laboratory results in canonical units", tags=["patients"]),
    retrieve=extend_schema(summary="One laboratory result", tags=["patients"]),
)
class LabResultViewSet(AuditedReadOnlyViewSet):
    serializer_class = LabResultSerializer
    filterset_class = LabResultFilter
    required_permissions = ("patients.view_patient", "patients.view_labresult")
    audit_noun = "lab"
    queryset = LabResult.objects.order_by("patient__patient_id", "loinc_code", "observed_at", "pk")


# -- routes (included by radtrack.api.urls) -----------------------------------------
router = SimpleRouter()
router.register("patients", PatientViewSet, basename="api-patient")
router.register("labs", LabResultViewSet, basename="api-lab")
urlpatterns = [path("ehr/", EHRImportView.as_view(), name="api-ehr-import"), *router.urls]
