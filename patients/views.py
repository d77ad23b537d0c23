"""The EHR upload page: a FHIR R4 Bundle or cohort CSV of labs and events, and its report.

Every import is audited. The patient list and page are dashboard pages
(`analytics.dashboard.views`): they show imaging and analytics results.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_http_methods

from patients.api import UPLOAD_FIELD as EHR_UPLOAD_FIELD
from patients.api import can_import_ehr, ehr_import_result, ehr_import_run
from patients.ehr.records import EHRImportError
from radtrack.api.base import upload_limit_message

EHR_PROBLEMS_SHOWN = 500  # the API answer lists them all


@require_http_methods(["GET", "POST"])
@login_required
def ehr_upload_view(request: HttpRequest) -> HttpResponse:
    """Upload a FHIR R4 Bundle or cohort CSV of labs and events, and show what became of it."""
    if not can_import_ehr(request.user):
        raise PermissionDenied("Your account may not import EHR data.")
    limit = settings.RADTRACK_MAX_UPLOAD_BYTES
    context: dict = {"max_upload_mb": f"{limit / 2**20:.0f}"}
    if request.method == "GET":
        return render(request, "patients/ehr_upload.html", context)
    upload = request.FILES.get(EHR_UPLOAD_FIELD)
    if upload is None:
        context["error"] = "Choose a FHIR Bundle (.json) or a labs/events CSV file."
        return render(request, "patients/ehr_upload.html", context, status=400)
    if upload.size > limit:
        context["error"] = upload_limit_message(upload.size)
        return render(request, "patients/ehr_upload.html", context, status=413)
    try:
        result = ehr_import_run(request=request, data=upload.read(), name=upload.name)
    except EHRImportError as exc:
        context["error"] = f"{upload.name} was not imported: {exc}"
        return render(request, "patients/ehr_upload.html", context, status=400)
    answer = ehr_import_result(result)
    rejected = answer["rejected"][:EHR_PROBLEMS_SHOWN]
    skipped = answer["skipped"][: EHR_PROBLEMS_SHOWN - len(rejected)]
    context.update(
        file_name=upload.name,
        result=answer,
        rejected=rejected,
        skipped=skipped,
        problems_hidden=len(answer["rejected"])
        + len(answer["skipped"])
        - len(rejected)
        - len(skipped),
    )
    return render(request, "patients/ehr_upload.html", context)
