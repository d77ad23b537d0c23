"""REST API for sending images in and reading what became of them.

``POST /api/v1/instances/`` takes DICOM files as multipart form data (one or many under
the field ``file``; zip archives are expanded) or one file as an ``application/dicom``
body, and answers with the ingest session and what happened to each file.
``GET /api/v1/ingest-sessions/<id>/`` reads a session's counts and per-file issues;
``POST /api/v1/pacs/retrieve/`` asks for a study from the PACS.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence

import django_filters
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.urls import path, re_path
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import exceptions, serializers, status
from rest_framework.generics import ListAPIView, RetrieveAPIView
from rest_framework.parsers import BaseParser, MultiPartParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from imaging.ingest.retrieve import RetrieveRequestError, pacs_retrieve_queue
from imaging.ingest.service import FileOutcome, IngestRun, ingest_run
from imaging.ingest.sources import IngestSource, sources_from_upload
from imaging.models import IngestIssue, IngestSession
from patients.audit import audit_patients_shown, audit_record
from patients.permissions import CanUpload, CanViewIngestSession, can_upload
from radtrack.api.base import (
    ID_PATTERN,
    APIPagination,
    DetailSerializer,
    UploadTooLarge,
    request_content_length,
    upload_limit_message,
)

logger = logging.getLogger(__name__)

UPLOAD_FIELD = "file"


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


class IngestIssueSerializer(serializers.ModelSerializer):
    class Meta:
        model = IngestIssue
        fields = ["kind", "file_name", "reason", "sop_instance_uid"]


def ingest_session_patient_pks(session: IngestSession) -> list[int]:
    """The patients whose images the session stored (their API ids), in id order."""
    return sorted(session.instances.values_list("series__study__patient_id", flat=True).distinct())


class IngestSessionSerializer(serializers.ModelSerializer):
    user = serializers.SlugRelatedField(
        slug_field="username",
        read_only=True,
        allow_null=True,
        help_text="the account that ran it; null for the command line, listener and PACS",
    )
    issues = IngestIssueSerializer(many=True, read_only=True)
    patients = serializers.SerializerMethodField(
        help_text="ids of the patients whose images it stored (/api/v1/patients/{id}/)"
    )

    @extend_schema_field(serializers.ListField(child=serializers.IntegerField()))
    def get_patients(self, session: IngestSession) -> list[int]:
        return ingest_session_patient_pks(session)

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
            "patients",
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
        resume = open_api_session(request)
        try:
            session, outcomes = ingest_run(
                request=request,
                source=IngestSession.Source.API,
                sources=sources,
                resume=resume,
                close=_close_requested(request),
            )
        except (OperationalError, InterfaceError) as exc:
            # The session is marked failed; files stored before are kept. Only the type
            # is logged: a database message can quote the values it refused.
            logger.error("an API import stopped: %s", type(exc).__name__)
            return Response(
                {"detail": "the database is unavailable: send the files again later"},
                status=status.HTTP_503_SERVICE_UNAVAILABLE,
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
        audit_patients_shown(
            request=request,
            action="ingest_session.read",
            object=f"ingest session {kwargs['pk']}",
            patient_pks=response.data.get("patients", []),
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
        rows = (response.data or {}).get("results", []) if response.status_code == 200 else []
        audit_patients_shown(
            request=request,
            action="ingest_session.list",
            object=request.path,
            patient_pks=[pk for row in rows for pk in row.get("patients", [])],
        )
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

        data = request.data if isinstance(request.data, dict) else {}
        try:
            uid = pacs_retrieve_queue(
                study_instance_uid=str(data.get("study_instance_uid", "")), request=request
            )
        except RetrieveRequestError as exc:
            return Response({"detail": str(exc)}, status=400)
        return Response({"queued": uid}, status=202)


# -- routes (included by radtrack.api.urls) -----------------------------------------
urlpatterns = [
    path("instances/", InstancesView.as_view(), name="api-instances"),
    path("ingest-sessions/", IngestSessionListView.as_view(), name="api-ingest-session-list"),
    re_path(
        rf"^ingest-sessions/(?P<pk>{ID_PATTERN})/$",
        IngestSessionView.as_view(),
        name="api-ingest-session",
    ),
    re_path(
        rf"^ingest-sessions/(?P<pk>{ID_PATTERN})/close/$",
        IngestSessionCloseView.as_view(),
        name="api-ingest-session-close",
    ),
    path("pacs/retrieve/", PacsRetrieveView.as_view(), name="api-pacs-retrieve"),
]
