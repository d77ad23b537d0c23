"""Patient pages: the list, one patient's page (risk, charts, responses, lesions, studies
and series), and the EHR upload.

Every view of patient data, and every import, is audited.
"""

from django.conf import settings
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.template import TemplateDoesNotExist
from django.template.loader import get_template
from django.urls import NoReverseMatch, reverse
from django.views.decorators.http import require_GET, require_http_methods

from analytics.figures import patient_figures
from analytics.models import RiskModelVersion
from imaging.api import upload_limit_message
from patients.api import UPLOAD_FIELD as EHR_UPLOAD_FIELD
from patients.api import can_import_ehr, ehr_import_result, ehr_import_run
from patients.audit import audit_record
from patients.models import Patient
from patients.selectors import patient_list, patient_timeline
from patients.services.ehr_import import EHRImportError

PATIENTS_PER_PAGE = 50
EHR_PROBLEMS_SHOWN = 500  # the API answer lists them all


@require_GET
@login_required
@permission_required("patients.view_patient", raise_exception=True)
def patient_list_view(request: HttpRequest) -> HttpResponse:
    search = request.GET.get("q", "").strip()[:100]
    rows = patient_list(search=search)
    page = Paginator(rows, PATIENTS_PER_PAGE).get_page(request.GET.get("page"))
    audit_record(
        request=request,
        action="patient.list",
        object=f"search {search!r}, page {page.number}" if search else f"page {page.number}",
    )
    return render(
        request,
        "patients/patient_list.html",
        {"page": page, "search": search, "total": len(rows)},
    )


@require_GET
@login_required
@permission_required("patients.view_patient", raise_exception=True)
def patient_detail_view(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        timeline = patient_timeline(pk=pk)
    except Patient.DoesNotExist:
        raise Http404("No such patient.") from None
    audit_record(
        request=request,
        action="patient.view",
        object=f"patient {timeline.patient_id}",
        patient=timeline.pk,
    )
    return render(
        request,
        "patients/patient_detail.html",
        {
            "timeline": timeline,
            "figures": patient_figures(timeline=timeline),
            "has_model": timeline.risk is not None or RiskModelVersion.objects.exists(),
            "viewer_available": _viewer_available(timeline.pk),
            "review_available": _review_available(),
            "can_review": request.user.has_perm("imaging.change_lesionmeasurement"),
        },
    )


def _viewer_available(patient_pk: int) -> bool:
    """Whether the image viewer (``imaging:viewer``) is part of this installation."""
    try:
        reverse("imaging:viewer", args=[patient_pk])
    except NoReverseMatch:
        return False
    return True


def _review_available() -> bool:
    """Whether the lesion review form (``imaging:measurement-review`` and its partial) exists."""
    try:
        reverse("imaging:measurement-review", args=[1])
        get_template("imaging/_review_form.html")
    except (NoReverseMatch, TemplateDoesNotExist):
        return False
    return True


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
