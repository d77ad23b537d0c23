"""``/audit/``: the audit trail for administrators (``patients.view_auditevent``).

Filters by user, patient (MRN or ``#id``), action (prefix) and date; ``?format=csv``
downloads the filtered rows as CSV, ``?format=fhir`` as a FHIR R4 Bundle of AuditEvent
resources. Reading the trail is itself audited (``audit.read``; ``audit.export`` for a
download), with the filters used.
"""

from __future__ import annotations

import csv
import datetime as dt
import json

from django import forms
from django.contrib.auth.decorators import login_required, permission_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET

from analytics.fhir.audit import audit_bundle_fhir
from patients.audit import audit_record
from patients.audit_trail import AUDIT_CSV_COLUMNS, AuditQuery, audit_csv_row, audit_events_select

AUDIT_PER_PAGE = 100
#: A download holds at most this many rows, newest first (narrow the filters for more).
#: The FHIR Bundle validates each AuditEvent (about 1.2 ms each), so it holds fewer.
AUDIT_EXPORT_MAX_ROWS = {"csv": 100_000, "fhir": 10_000}


class AuditFilterForm(forms.Form):
    user = forms.CharField(required=False, max_length=150, label="User")
    patient = forms.CharField(required=False, max_length=64, label="Patient (MRN or #id)")
    action = forms.CharField(required=False, max_length=64, label="Action (starts with)")
    date_from = forms.DateField(
        required=False, label="From", widget=forms.DateInput({"type": "date"})
    )
    date_to = forms.DateField(required=False, label="To", widget=forms.DateInput({"type": "date"}))

    def query(self) -> AuditQuery:
        data = self.cleaned_data
        return AuditQuery(
            username=data["user"].strip(),
            patient=data["patient"].strip(),
            action=data["action"].strip(),
            date_from=data["date_from"],
            date_to=data["date_to"],
        )


class _Echo:
    def write(self, value: str) -> str:
        return value


def _csv_response(events) -> StreamingHttpResponse:
    writer = csv.writer(_Echo())
    lines = (writer.writerow(row) for row in _csv_rows(events))
    response = StreamingHttpResponse(lines, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="audit-{dt.date.today()}.csv"'
    return response


def _csv_rows(events):
    yield AUDIT_CSV_COLUMNS
    for event in events.iterator(chunk_size=2000):
        yield audit_csv_row(event)


def _fhir_response(request: HttpRequest, events) -> HttpResponse:
    base = request.build_absolute_uri(reverse("fhir-base"))
    bundle = audit_bundle_fhir(events.iterator(chunk_size=2000), base_url=base)
    response = HttpResponse(json.dumps(bundle), content_type="application/fhir+json")
    response["Content-Disposition"] = f'attachment; filename="audit-{dt.date.today()}.json"'
    return response


@require_GET
@login_required
@permission_required("patients.view_auditevent", raise_exception=True)
def audit_view(request: HttpRequest) -> HttpResponse:
    """The trail, newest first, filtered; or a download of the filtered rows."""
    form = AuditFilterForm(request.GET or None)
    if form.is_bound and not form.is_valid():
        return render(request, "analytics/audit.html", {"form": form}, status=400)
    query = form.query() if form.is_bound else AuditQuery()
    events = audit_events_select(query=query)
    export = request.GET.get("format", "")
    if export in {"csv", "fhir"}:
        events = events[: AUDIT_EXPORT_MAX_ROWS[export]]
        audit_record(
            request=request, action="audit.export", object=f"{export}: {query.describe()}"[:255]
        )
        return _csv_response(events) if export == "csv" else _fhir_response(request, events)
    page = Paginator(events, AUDIT_PER_PAGE).get_page(request.GET.get("page"))
    audit_record(
        request=request,
        action="audit.read",
        object=f"audit page {page.number}: {query.describe()}"[:255],
    )
    query_string = request.GET.copy()
    query_string.pop("page", None)
    query_string.pop("format", None)
    return render(
        request,
        "analytics/audit.html",
        {"form": form, "page": page, "filter_query": query_string.urlencode()},
    )
