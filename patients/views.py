"""Patient pages: the list and one patient's studies and series. Every view is audited."""

from django.contrib.auth.decorators import login_required, permission_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from patients.audit import audit_record
from patients.models import Patient
from patients.selectors import patient_list, patient_timeline

PATIENTS_PER_PAGE = 50


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
    return render(request, "patients/patient_detail.html", {"timeline": timeline})
