"""``/research/``: the researcher's page and download of pseudonymised tables.

Needs ``patients.export_research`` (the researcher and admin groups). The researcher
group has no view permission, so no identified page, REST or FHIR answer opens to it:
this download (tables under fresh pseudonyms and shifted dates, no key) is what it
sees. Each download is audited per patient (``research.export``).
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_http_methods

from analytics.research.export import research_tables_zip
from patients.models import Patient
from patients.permissions import RESEARCH_PERMISSION


@require_http_methods(["GET", "POST"])
@login_required
@permission_required(RESEARCH_PERMISSION, raise_exception=True)
def research_view(request: HttpRequest) -> HttpResponse:
    """GET: what the download holds. POST: the zip of pseudonymised tables."""
    if request.method == "GET":
        return render(request, "analytics/research.html", {"patients": Patient.objects.count()})
    name, data = research_tables_zip(request=request)
    response = HttpResponse(data, content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response
