"""REST API for sending images in and reading what became of them.

``POST /api/v1/instances/`` takes DICOM files as multipart form data (one or many under
the field ``file``; zip archives are expanded) or one file as an ``application/dicom``
body, and answers with the ingest session and what happened to each file.
``GET /api/v1/ingest-sessions/<id>/`` reads a session's counts and per-file issues.

It also holds the base every app's read API shares (`AuditedReadOnlyViewSet`: view
permissions, pagination, filters, one audit row per patient shown) and the imaging
reads: studies, series, lesions and lesion measurements.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import django_filters
from django import forms
from django.conf import settings
from django.db import transaction
from django.db.models import Count
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import exceptions, serializers, status, viewsets
from rest_framework.generics import ListAPIView, RetrieveAPIView
from rest_framework.pagination import PageNumberPagination
from rest_framework.parsers import BaseParser, MultiPartParser
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from imaging.models import IngestIssue, IngestSession, Lesion, LesionMeasurement, Series, Study
from imaging.serializers import (
    LesionMeasurementSerializer,
    LesionSerializer,
    SeriesSerializer,
    StudySerializer,
)
from imaging.services.ingest import FileOutcome, IngestRun, IngestSource, sources_from_upload
from patients.audit import audit_record, client_address
from patients.permissions import CanUpload, CanViewIngestSession, can_upload

UPLOAD_FIELD = "file"


# -- size limit ---------------------------------------------------------------------
class UploadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "too_large"


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MB"


def upload_limit_message(size_bytes: int | None = None) -> str:
    """The sentence a client sees when it sends more than the configured limit."""
    limit = settings.RADTRACK_MAX_UPLOAD_BYTES
    size = f"{_mb(size_bytes)} is" if size_bytes is not None else "the upload is"
    return (
        f"{size} over the upload limit of {_mb(limit)} "
        f"({limit} bytes; RADTRACK_MAX_UPLOAD_MB); send fewer files per request"
    )


def request_content_length(request) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


class DicomParser(BaseParser):
    """An ``application/dicom`` body (PS3.18 8.7.3.3), read up to the upload limit."""

    media_type = "application/dicom"

    def parse(self, stream, media_type=None, parser_context=None) -> bytes:
        limit = settings.RADTRACK_MAX_UPLOAD_BYTES
        chunks, total = [], 0
        while chunk := stream.read(1 << 20):
            total += len(chunk)
            if total > limit:
                raise UploadTooLarge(upload_limit_message())
            chunks.append(chunk)
        return b"".join(chunks)


# -- serializers --------------------------------------------------------------------
class FileOutcomeSerializer(serializers.Serializer):
    name = serializers.CharField(help_text="file name as sent; zip members as archive:member")
    status = serializers.ChoiceField(choices=["stored", "duplicate", "conflict", "rejected"])
    reason = serializers.CharField(help_text="why it was not stored; empty when stored")
    sop_instance_uid = serializers.CharField(help_text="SOP Instance UID (0008,0018) if read")
    warnings = serializers.ListField(child=serializers.CharField())


class IngestCountsSerializer(serializers.Serializer):
    files = serializers.IntegerField()
    stored = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    conflicts = serializers.IntegerField()
    rejected = serializers.IntegerField()
    warnings = serializers.IntegerField()


class IngestResultSerializer(serializers.Serializer):
    session = serializers.IntegerField(help_text="ingest session id")
    status = serializers.CharField(help_text="session status: running, done or failed")
    counts = IngestCountsSerializer()
    files = FileOutcomeSerializer(many=True)


class InstancesUploadSerializer(serializers.Serializer):
    """Multipart form: the files to import."""

    file = serializers.ListField(
        child=serializers.FileField(),
        help_text="one or more DICOM files or zip archives of them",
    )


class DetailSerializer(serializers.Serializer):
    detail = serializers.CharField()


class IngestIssueSerializer(serializers.ModelSerializer):
    class Meta:
        model = IngestIssue
        fields = ["kind", "file_name", "reason", "sop_instance_uid"]


class IngestSessionSerializer(serializers.ModelSerializer):
    user = serializers.SlugRelatedField(slug_field="username", read_only=True)
    issues = IngestIssueSerializer(many=True, read_only=True)

    class Meta:
        model = IngestSession
        fields = [
            "id",
            "source",
            "origin",
            "user",
            "status",
            "started_at",
            "finished_at",
            "files_seen",
            "stored",
            "duplicates",
            "conflicts",
            "rejected",
            "warnings",
            "issues",
        ]


def outcome_counts(outcomes: Sequence[FileOutcome]) -> dict[str, int]:
    by_status = Counter(o.status for o in outcomes)
    return {
        "files": len(outcomes),
        "stored": by_status["stored"],
        "duplicates": by_status["duplicate"],
        "conflicts": by_status["conflict"],
        "rejected": by_status["rejected"],
        "warnings": sum(len(o.warnings) for o in outcomes),
    }


def ingest_result(session: IngestSession, outcomes: Sequence[FileOutcome]) -> dict:
    """The JSON answer to an upload (shared with the web upload page)."""
    return IngestResultSerializer(
        {
            "session": session.pk,
            "status": session.status,
            "counts": outcome_counts(outcomes),
            "files": [
                {
                    "name": o.name,
                    "status": o.status,
                    "reason": o.reason,
                    "sop_instance_uid": o.sop_instance_uid,
                    "warnings": list(o.warnings),
                }
                for o in outcomes
            ],
        }
    ).data


def ingest_status_code(outcomes: Sequence[FileOutcome]) -> int:
    """201 if anything was stored; else 400 if every file was rejected (or none was
    sent), 409 if any conflicted, and 200 when the rest were already stored."""
    statuses = {o.status for o in outcomes}
    if "stored" in statuses:
        return status.HTTP_201_CREATED
    if not statuses or statuses == {"rejected"}:
        return status.HTTP_400_BAD_REQUEST
    if "conflict" in statuses:
        return status.HTTP_409_CONFLICT
    return status.HTTP_200_OK


def ingest_run(
    *,
    request,
    source: str,
    sources: Iterable[IngestSource],
    process: bool = True,
    resume: IngestSession | None = None,
    close: bool = True,
) -> tuple[IngestSession, list[FileOutcome]]:
    """Import ``sources`` in a session owned by the request's user, and audit it.

    With ``close=False`` the session stays open so that later requests (``resume``)
    add to it, and its series are queued for processing once, when it is closed.
    """
    run = IngestRun(
        source=source,
        origin=client_address(request) or "",
        user=request.user,
        process=process,
        resume=resume,
    )
    try:
        outcomes = run.add(sources)
    except Exception as exc:
        run.finish(failed=f"the import stopped: {type(exc).__name__}")
        raise
    session = run.finish() if close else IngestSession.objects.get(pk=run.session.pk)
    audit_record(request=request, action="images.upload", object=f"ingest session {session.pk}")
    return session, outcomes


def open_api_session(request: Request) -> IngestSession | None:
    """The open API session named by ``?session=``, owned by this user; None if not named."""
    raw = request.query_params.get("session", "").strip()
    if not raw:
        return None
    if not raw.isdigit():
        raise exceptions.ValidationError({"session": "must be a number"})
    session = IngestSession.objects.filter(
        pk=raw,
        user=request.user,
        source=IngestSession.Source.API,
        status=IngestSession.Status.RUNNING,
    ).first()
    if session is None:
        raise exceptions.ValidationError(
            {"session": "no open API ingest session of yours has this id"}
        )
    return session


def _close_requested(request: Request) -> bool:
    return request.query_params.get("close", "true").strip().lower() not in {"0", "false", "no"}


_FILENAME = re.compile(r"""filename\*?=(?:UTF-8'')?"?([^";]+)"?""", re.IGNORECASE)


def _body_name(request: Request) -> str:
    match = _FILENAME.search(request.META.get("HTTP_CONTENT_DISPOSITION", ""))
    return match.group(1).strip() if match else "(request body)"


# -- views --------------------------------------------------------------------------
_RESULT_EXAMPLE = OpenApiExample(
    "one stored, one rejected",
    value={
        "session": 12,
        "status": "done",
        "counts": {
            "files": 2,
            "stored": 1,
            "duplicates": 0,
            "conflicts": 0,
            "rejected": 1,
            "warnings": 0,
        },
        "files": [
            {
                "name": "IM000001.dcm",
                "status": "stored",
                "reason": "",
                "sop_instance_uid": "1.2.826.0.1.3680043.8.498.1",
                "warnings": [],
            },
            {
                "name": "notes.txt",
                "status": "rejected",
                "reason": "not a DICOM file (no 'DICM' prefix at byte 128)",
                "sop_instance_uid": "",
                "warnings": [],
            },
        ],
    },
    response_only=True,
    status_codes=["201"],
)


class InstancesView(APIView):
    """Store DICOM instances sent as multipart form data or an application/dicom body."""

    permission_classes = [IsAuthenticated, CanUpload]
    parser_classes = [MultiPartParser, DicomParser]

    @extend_schema(
        operation_id="instances_create",
        summary="Store DICOM instances",
        description=(
            "Send one or more DICOM files (or zip archives of them) as multipart form data "
            f"under the field `{UPLOAD_FIELD}`, or one file as an `application/dicom` body. "
            "Every file is checked and stored on its own: a bad file is reported with its "
            "name and the reason and never stops the rest. A request larger than "
            "`RADTRACK_MAX_UPLOAD_MB` is refused with 413. Image series that received new "
            "instances are queued for processing when the session closes. To send a series "
            "over several requests, pass `close=false` and then `session=<id>` from the "
            "first answer on the next ones; the last one (or "
            "`POST /api/v1/ingest-sessions/<id>/close/`) closes it."
        ),
        parameters=[
            OpenApiParameter("session", int, description="continue this open ingest session"),
            OpenApiParameter(
                "close", bool, description="close the session after this request (default true)"
            ),
        ],
        request={
            "multipart/form-data": InstancesUploadSerializer,
            "application/dicom": OpenApiTypes.BINARY,
        },
        responses={
            201: OpenApiResponse(IngestResultSerializer, "at least one file was stored"),
            200: OpenApiResponse(IngestResultSerializer, "every file was already stored"),
            409: OpenApiResponse(
                IngestResultSerializer,
                "nothing stored; a different file is already stored under a sent SOP Instance UID",
            ),
            400: OpenApiResponse(
                IngestResultSerializer, "every file was rejected, or no file was sent"
            ),
            413: OpenApiResponse(DetailSerializer, "the request is over the size limit"),
        },
        examples=[_RESULT_EXAMPLE],
        tags=["imaging"],
    )
    def post(self, request: Request) -> Response:
        length = request_content_length(request)
        if length > settings.RADTRACK_MAX_UPLOAD_BYTES:
            # Refuse before reading a byte of the body.
            raise UploadTooLarge(upload_limit_message(length))
        if request.content_type.startswith(DicomParser.media_type):
            data = request.data
            if not isinstance(data, bytes) or not data:
                return Response(
                    {"detail": "the application/dicom body is empty"},
                    status=status.HTTP_400_BAD_REQUEST,
                )
            sources = [IngestSource(_body_name(request), lambda: data, len(data))]
        else:
            files = request.FILES.getlist(UPLOAD_FIELD)
            if not files:
                sent = ", ".join(sorted(request.FILES)) or "none"
                return Response(
                    {
                        "detail": f"send the files under the form field '{UPLOAD_FIELD}' "
                        f"(file fields received: {sent})"
                    },
                    status=status.HTTP_400_BAD_REQUEST,
                )
            sources = sources_from_upload(files)
        session, outcomes = ingest_run(
            request=request,
            source=IngestSession.Source.API,
            sources=sources,
            resume=open_api_session(request),
            close=_close_requested(request),
        )
        return Response(ingest_result(session, outcomes), status=ingest_status_code(outcomes))


class IngestSessionView(RetrieveAPIView):
    """One ingest session: where it came from, its counts, and every file it refused."""

    permission_classes = [IsAuthenticated, CanViewIngestSession]
    serializer_class = IngestSessionSerializer
    queryset = IngestSession.objects.select_related("user").prefetch_related("issues")

    @extend_schema(
        operation_id="ingest_sessions_retrieve",
        summary="An ingest session: counts and per-file issues",
        tags=["imaging"],
    )
    def get(self, request: Request, *args, **kwargs) -> Response:
        return super().get(request, *args, **kwargs)

    def retrieve(self, request: Request, *args, **kwargs) -> Response:
        response = super().retrieve(request, *args, **kwargs)
        audit_record(
            request=request, action="ingest_session.read", object=f"ingest session {kwargs['pk']}"
        )
        return response


class IngestSessionCloseView(APIView):
    """Close an open API ingest session and queue its series for processing."""

    permission_classes = [IsAuthenticated, CanUpload]

    @extend_schema(
        operation_id="ingest_sessions_close",
        summary="Close an open ingest session",
        request=None,
        responses={200: IngestSessionSerializer, 404: DetailSerializer},
        tags=["imaging"],
    )
    def post(self, request: Request, pk: int) -> Response:
        session = IngestSession.objects.filter(
            pk=pk, user=request.user, status=IngestSession.Status.RUNNING
        ).first()
        if session is None:
            return Response(
                {"detail": "no open ingest session of yours has this id"},
                status=status.HTTP_404_NOT_FOUND,
            )
        session = IngestRun(source=session.source, user=request.user, resume=session).finish()
        audit_record(request=request, action="images.upload", object=f"ingest session {pk}")
        return Response(IngestSessionSerializer(session).data)


# -- read-only resources: the base every app's read API shares ----------------------
#: Primary keys in URLs: at most 18 digits, so every one fits a 64-bit database integer.
ID_PATTERN = r"[0-9]{1,18}"


class APIPagination(PageNumberPagination):
    """``?page=`` (from 1) and ``?page_size=`` (default 50, at most 500)."""

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class IdFilter(django_filters.NumberFilter):
    """A primary key in a query parameter: a whole number a database integer can hold."""

    field_class = forms.IntegerField

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", 2**63 - 1)
        super().__init__(*args, **kwargs)


class HasViewPermissions(BasePermission):
    """The account holds every Django permission in the view's ``required_permissions``.

    These are the permissions the pages check; `patients.groups` gives them to the
    clinician, radiologist and admin groups.
    """

    message = "Your account may not read these records (clinician, radiologist or admin needed)."

    def has_permission(self, request, view) -> bool:
        user = request.user
        wanted = getattr(view, "required_permissions", ())
        return bool(user is not None and user.is_authenticated and user.has_perms(wanted))


def api_read_audit(
    *, request: Request, action: str, object: str, patient_pks: Iterable[int | None]
) -> None:
    """One audit row per patient whose data a response shows (one without a patient if none).

    Rows per patient let the audit trail answer "who saw this patient's data", whether
    they opened the patient or paged through a list that included them.
    """
    pks = sorted({pk for pk in patient_pks if pk is not None})
    if not pks:
        audit_record(request=request, action=action, object=object)
        return
    with transaction.atomic():
        for pk in pks:
            audit_record(request=request, action=action, object=object, patient=pk)


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
        "patient__patient_id", "study_date", "study_time", "pk"
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
    review_state = django_filters.ChoiceFilter(choices=LesionMeasurement.Review.choices)
    # "true" or "false"; anything else is a 400 rather than silently no filter.
    is_target = django_filters.TypedChoiceFilter(
        choices=[("true", "true"), ("false", "false")], coerce=lambda value: value == "true"
    )

    class Meta:
        model = LesionMeasurement
        fields = ["patient", "study", "lesion", "status", "review_state", "is_target"]


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
    queryset = LesionMeasurement.objects.select_related("lesion", "study").order_by(
        "lesion__patient__patient_id", "study__study_date", "study_id", "lesion__label", "pk"
    )


class IngestSessionFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=IngestSession.Status.choices)
    source = django_filters.ChoiceFilter(choices=IngestSession.Source.choices)

    class Meta:
        model = IngestSession
        fields = ["status", "source"]


class IngestSessionListView(ListAPIView):
    """Ingest sessions, newest first: an account's own, or every one for those who may upload."""

    permission_classes = [IsAuthenticated]
    serializer_class = IngestSessionSerializer
    pagination_class = APIPagination
    filter_backends = [DjangoFilterBackend]
    filterset_class = IngestSessionFilter

    def get_queryset(self):
        sessions = IngestSession.objects.select_related("user").prefetch_related("issues")
        if getattr(self, "swagger_fake_view", False):  # drf-spectacular reading the model
            return sessions.none()
        if not can_upload(self.request.user):
            sessions = sessions.filter(user=self.request.user)
        return sessions.order_by("-started_at", "-pk")

    @extend_schema(
        operation_id="ingest_sessions_list",
        summary="Ingest sessions, newest first",
        tags=["imaging"],
    )
    def get(self, request: Request, *args, **kwargs) -> Response:
        response = super().get(request, *args, **kwargs)
        audit_record(request=request, action="ingest_session.list", object=request.path)
        return response


class PacsRetrieveView(APIView):
    """POST ``{"study_instance_uid": ...}``: queue that study's retrieve from the PACS.

    Answers 202 at once; the transfer's outcome (retried on connection failures) is
    recorded and shown on the pipeline page.
    """

    permission_classes = [IsAuthenticated, CanUpload]

    @extend_schema(
        request=inline_serializer(
            "PacsRetrieveRequest", {"study_instance_uid": serializers.CharField(max_length=64)}
        ),
        responses={
            202: inline_serializer("PacsRetrieveQueued", {"queued": serializers.CharField()}),
            400: DetailSerializer,
        },
        operation_id="pacs_retrieve",
    )
    def post(self, request):
        from imaging.services.pacs import RetrieveRequestError, pacs_retrieve_queue

        data = request.data if isinstance(request.data, dict) else {}
        try:
            uid = pacs_retrieve_queue(
                study_instance_uid=str(data.get("study_instance_uid", "")), request=request
            )
        except RetrieveRequestError as exc:
            return Response({"detail": str(exc)}, status=400)
        return Response({"queued": uid}, status=202)
