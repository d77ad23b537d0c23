"""Upload pages: the upload form, the chunked upload it drives, and an import's report.

The page's script sends a few files per request to ``upload/chunk/``; every chunk of
one upload goes into the same ingest session, and ``upload/<id>/finish/`` closes it and
queues its series for processing once, after every slice has arrived. Without
JavaScript the form posts all files at once to ``upload/``.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from imaging.ingest.api import UPLOAD_FIELD, ingest_result
from imaging.ingest.retrieve import RetrieveRequestError, pacs_retrieve_queue
from imaging.ingest.service import IngestRun, ingest_run
from imaging.ingest.sources import sources_from_upload
from imaging.models import IngestSession, Instance
from patients.audit import audit_record, client_address
from patients.models import Patient
from patients.permissions import can_upload, can_view_ingest_session
from radtrack.api.base import request_content_length, upload_limit_message

ISSUES_PER_PAGE = 200


def _json_error(message: str, status: int) -> JsonResponse:
    return JsonResponse({"detail": message}, status=status)


def _open_upload_session(request: HttpRequest, pk: int | str) -> IngestSession | None:
    return IngestSession.objects.filter(
        pk=pk,
        user=request.user,
        source=IngestSession.Source.UPLOAD,
        status=IngestSession.Status.RUNNING,
    ).first()


@require_http_methods(["GET", "POST"])
@login_required
def upload_view(request: HttpRequest) -> HttpResponse:
    """The upload page; a plain form post (no JavaScript) imports everything at once."""
    if not can_upload(request.user):
        raise PermissionDenied("Your account may not upload images.")
    limit = settings.RADTRACK_MAX_UPLOAD_BYTES
    context = {"max_upload_bytes": limit, "max_upload_mb": f"{limit / 2**20:.0f}"}
    if request.method == "POST":
        files = request.FILES.getlist(UPLOAD_FIELD)
        if not files:
            context["error"] = "Choose at least one file, folder or zip archive."
            return render(request, "imaging/upload.html", context, status=400)
        session, _ = ingest_run(
            request=request, source=IngestSession.Source.UPLOAD, sources=sources_from_upload(files)
        )
        return redirect("imaging:ingest-session", pk=session.pk)
    return render(request, "imaging/upload.html", context)


@require_POST
def upload_chunk_view(request: HttpRequest) -> JsonResponse:
    """Import a few files; the first chunk opens the session the later ones name."""
    if not request.user.is_authenticated:
        return _json_error("Your login has expired: log in again and resend.", 401)
    if not can_upload(request.user):
        return _json_error("Your account may not upload images.", 403)
    length = request_content_length(request)
    if length > settings.RADTRACK_MAX_UPLOAD_BYTES:
        return _json_error(upload_limit_message(length), 413)
    files = request.FILES.getlist(UPLOAD_FIELD)
    if not files:
        return _json_error(f"send the files under the form field '{UPLOAD_FIELD}'", 400)
    session_id = request.POST.get("session", "").strip()
    session = None
    if session_id:
        if not session_id.isdigit():
            return _json_error("session must be a number", 400)
        session = _open_upload_session(request, session_id)
        if session is None:
            return _json_error("that upload session is not open for this account", 409)
    run = IngestRun(
        source=IngestSession.Source.UPLOAD,
        origin=client_address(request) or "",
        user=request.user,
        process=False,
        resume=session,
    )
    try:
        outcomes = run.add(sources_from_upload(files))
    except Exception as exc:
        run.finish(failed=f"the upload stopped: {type(exc).__name__}")
        raise
    run.release()  # the next chunk may come to another process
    session = IngestSession.objects.get(pk=run.session.pk)
    if session_id == "":
        audit_record(request=request, action="images.upload", object=f"ingest session {session.pk}")
    return JsonResponse(ingest_result(session, outcomes))


@require_POST
def upload_finish_view(request: HttpRequest, pk: int) -> JsonResponse:
    """Close an upload session and queue its series for processing."""
    if not request.user.is_authenticated:
        return _json_error("Your login has expired: log in again.", 401)
    if not can_upload(request.user):
        return _json_error("Your account may not upload images.", 403)
    session = _open_upload_session(request, pk)
    if session is None:
        return _json_error("that upload session is not open for this account", 409)
    session = IngestRun(source=session.source, user=request.user, resume=session).finish()
    return JsonResponse(
        {
            "session": session.pk,
            "status": session.status,
            "url": reverse("imaging:ingest-session", args=[session.pk]),
            "counts": {
                "files": session.files_seen,
                "stored": session.stored,
                "duplicates": session.duplicates,
                "conflicts": session.conflicts,
                "rejected": session.rejected,
                "warnings": session.warnings,
            },
        }
    )


@require_GET
@login_required
def ingest_session_view(request: HttpRequest, pk: int) -> HttpResponse:
    """What one import did: counts, the studies it brought in, and every refused file."""
    session = get_object_or_404(IngestSession.objects.select_related("user"), pk=pk)
    if not can_view_ingest_session(request.user, session):
        raise PermissionDenied("Only the account that ran this import may see it.")
    studies = list(
        Instance.objects.filter(ingest_session=session)
        .values(
            "series__study_id",
            "series__study__study_date",
            "series__study__description",
            "series__study__patient_id",
            "series__study__patient__patient_id",
            "series__study__patient__name",
        )
        .annotate(instances=Count("pk"), series=Count("series", distinct=True))
        .order_by("series__study__patient__patient_id", "series__study__study_date")
    )
    for row in studies:
        row["patient_display_name"] = Patient(name=row["series__study__patient__name"]).display_name
    issues = Paginator(session.issues.all(), ISSUES_PER_PAGE).get_page(request.GET.get("page"))
    patients = {row["series__study__patient_id"] for row in studies}
    audit_record(
        request=request,
        action="ingest_session.view",
        object=f"ingest session {session.pk}",
        patient=next(iter(patients)) if len(patients) == 1 else None,
    )
    return render(
        request,
        "imaging/ingest_session.html",
        {"session": session, "studies": studies, "issues": issues},
    )


@login_required
@require_POST
def pacs_retrieve_view(request: HttpRequest) -> HttpResponse:
    """Queue the retrieve of one study from the PACS, then back to the pipeline page."""

    if not can_upload(request.user):
        raise PermissionDenied("Your account may not bring images in.")
    try:
        uid = pacs_retrieve_queue(
            study_instance_uid=request.POST.get("study_instance_uid", ""), request=request
        )
    except RetrieveRequestError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Retrieve of study {uid} from the PACS queued.")
    return redirect("analytics:pipeline")
