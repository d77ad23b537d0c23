"""The dashboard's pages: the worklist (the home page), the cohort and pipeline pages, the
patient list and one patient's page (risk, charts, responses, lesions, studies, series).

Every view of patient data is audited.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.contrib.auth.decorators import login_required, permission_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.template import TemplateDoesNotExist
from django.template.loader import get_template
from django.urls import NoReverseMatch, reverse
from django.views.decorators.http import require_GET

from analytics.dashboard import figures
from analytics.dashboard.cohort import cohort_survival, model_metric_lines
from analytics.dashboard.figures import patient_figures
from analytics.dashboard.patient import patient_list, patient_timeline
from analytics.dashboard.pipeline import pipeline_overview, processing_summary
from analytics.dashboard.worklist import FLAG_NAMES, WorklistOrder, worklist_page
from analytics.lesions.review.irecist import can_set_irecist
from analytics.models import RiskModelVersion, RiskScore
from analytics.risk.selectors import current_model_version
from imaging.ingest.pacs import pacs_transfers_recent
from imaging.modelhub.selectors import drift_alerts_open
from imaging.models import Lesion
from patients.audit import audit_patients_shown, audit_record
from patients.models import Patient
from patients.permissions import can_upload


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
            "can_set_irecist": can_set_irecist(request.user),
            "organ_choices": Lesion.Organ.choices,
        },
    )


def _viewer_available(patient_pk: int) -> bool:
    """Whether the image viewer (``lesions:viewer``) is part of this installation."""
    try:
        reverse("lesions:viewer", args=[patient_pk])
    except NoReverseMatch:
        return False
    return True


def _review_available() -> bool:
    """Whether the lesion review form (``lesions:measurement-review`` and its partial) exists."""
    try:
        reverse("lesions:measurement-review", args=[1])
        get_template("imaging/_review_form.html")
    except (NoReverseMatch, TemplateDoesNotExist):
        return False
    return True


WORKLIST_PER_PAGE = 50


FLAG_LABELS = {
    "new_progression": "New progression",
    "new_lesion": "New lesion",
    "rising_marker": "Rising marker",
    "processing_failed": "Processing failed",
    "awaiting_review": "Awaiting review",
    "needs_attention": "Needs attention",
}


ORDER_LABELS = {
    WorklistOrder.RISK: "Risk (tier, then score)",
    WorklistOrder.LAST_STUDY: "Latest study first",
    WorklistOrder.PATIENT: "MRN",
}


PIPELINE_POLL_SECONDS = 3


PIPELINE_AUDIT_REFRESH_SECONDS = 300


def _page_number(value: str | None) -> int:
    try:
        return max(1, int(value or 1))
    except ValueError:
        return 1


@require_GET
@login_required
@permission_required("patients.view_patient", raise_exception=True)
def worklist_view(request: HttpRequest) -> HttpResponse:
    """Patients ordered by risk, with flags; filter by tier and flags, search, sort, page."""
    search = request.GET.get("q", "").strip()[:100]
    tier = request.GET.get("tier", "")
    tier = tier if tier in RiskScore.Tier.values else None
    flags = [f for f in request.GET.getlist("flag") if f in FLAG_NAMES]
    order = request.GET.get("order", WorklistOrder.RISK)
    order = order if order in {o.value for o in WorklistOrder} else WorklistOrder.RISK
    page = worklist_page(
        page=_page_number(request.GET.get("page")),
        per_page=WORKLIST_PER_PAGE,
        tier=tier,
        search=search,
        flags=flags,
        order=order,
    )
    described = [f"page {page.number}", f"order {order}"]
    if tier:
        described.append(f"tier {tier}")
    if flags:
        described.append("flags " + ",".join(flags))
    if search:
        described.append(f"search {search!r}")
    audit_patients_shown(
        request=request,
        action="worklist.view",
        object=", ".join(described),
        patient_pks=[row.pk for row in page.rows],
    )
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "analytics/worklist.html",
        {
            "page": page,
            "search": search,
            "tier": tier or "",
            "flags": flags,
            "order": str(order),
            "tiers": RiskScore.Tier.choices,
            "flag_choices": [(name, FLAG_LABELS[name]) for name in FLAG_NAMES],
            "order_choices": [(str(k), v) for k, v in ORDER_LABELS.items()],
            "filter_query": query.urlencode(),
            "filtered": bool(search or tier or flags),
            "processing": processing_summary(),
            "poll_seconds": PIPELINE_POLL_SECONDS,
            "model_alerts": drift_alerts_open(),
        },
    )


@require_GET
@login_required
@permission_required("analytics.view_riskmodelversion", raise_exception=True)
def cohort_view(request: HttpRequest) -> HttpResponse:
    """Kaplan-Meier curves by risk tier, and the current model's metrics and calibration."""
    version = current_model_version()
    context: dict = {"version": version}
    if version is not None:
        survival = cohort_survival(model_version=version)
        metrics = version.metrics or {}
        context.update(
            survival=survival,
            metric_lines=model_metric_lines(version),
            counts={
                k: metrics.get(k) for k in ("n_rows", "n_patients", "n_events", "n_event_patients")
            },
            figures={
                "fig-km": figures.km_figure(survival=survival),
                "fig-calibration": figures.calibration_figure(
                    calibration=metrics.get("calibration") or [],
                    horizon_days=metrics.get("horizon_days"),
                ),
            },
        )
    audit_record(
        request=request,
        action="cohort.view",
        object=f"model version {version.pk}" if version else "no model",
    )
    return render(request, "analytics/cohort.html", context)


@require_GET
@login_required
@permission_required("imaging.view_series", raise_exception=True)
def pipeline_view(request: HttpRequest) -> HttpResponse:
    """Imports and processing state per study; ``?fragment=1`` gives the live part alone."""

    if request.GET.get("fragment") == "processing":  # the worklist's line: counts only
        return render(
            request,
            "analytics/_processing_banner.html",
            {"processing": processing_summary(), "polled": True},
        )
    overview = pipeline_overview()
    fragment = request.GET.get("fragment") == "1"
    # The live part refreshes every few seconds: a refresh is audited once per
    # PIPELINE_AUDIT_REFRESH_SECONDS per login session, not on every poll.
    now = time.time()
    last = request.session.get("pipeline_audited_at", 0.0)
    if not fragment or now - last >= PIPELINE_AUDIT_REFRESH_SECONDS:
        audit_patients_shown(
            request=request,
            action="pipeline.view",
            object=f"{len(overview.studies)} studies" + (" (refresh)" if fragment else ""),
            patient_pks=[study.patient_pk for study in overview.studies],
        )
        request.session["pipeline_audited_at"] = now
    may_retrieve = can_upload(request.user)
    context = {
        "overview": overview,
        "poll_seconds": PIPELINE_POLL_SECONDS,
        "may_retrieve": may_retrieve,
        "pacs_configured": bool(settings.RADTRACK_PACS_DICOMWEB_URL),
        "transfers": pacs_transfers_recent() if may_retrieve else [],
        "model_alerts": [] if fragment else drift_alerts_open(),
    }
    template = "analytics/_pipeline_live.html" if fragment else "analytics/pipeline.html"
    return render(request, template, context)


PATIENTS_PER_PAGE = 50


@require_GET
@login_required
@permission_required("patients.view_patient", raise_exception=True)
def patient_list_view(request: HttpRequest) -> HttpResponse:
    search = request.GET.get("q", "").strip()[:100]
    rows = patient_list(search=search)
    page = Paginator(rows, PATIENTS_PER_PAGE).get_page(request.GET.get("page"))
    audit_patients_shown(
        request=request,
        action="patient.list",
        object=f"search {search!r}, page {page.number}" if search else f"page {page.number}",
        patient_pks=[row.pk for row in page.object_list],
    )
    return render(
        request,
        "patients/patient_list.html",
        {"page": page, "search": search, "total": len(rows)},
    )
