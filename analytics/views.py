"""Dashboard pages: the risk-ordered worklist (the home page), the cohort and the pipeline.

Views are thin: they read the query string, call one selector, audit what was shown and
render. Figures come from `analytics.figures`.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from analytics import figures
from analytics.models import RiskScore
from analytics.selectors import (
    FLAG_NAMES,
    WorklistOrder,
    cohort_survival,
    current_model_version,
    model_metric_lines,
    pipeline_overview,
    worklist_page,
)
from patients.audit import audit_record

WORKLIST_PER_PAGE = 50
FLAG_LABELS = {
    "new_progression": "New progression",
    "new_lesion": "New lesion",
    "rising_marker": "Rising marker",
    "processing_failed": "Processing failed",
    "awaiting_review": "Awaiting review",
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
    audit_record(request=request, action="worklist.view", object=", ".join(described))
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
            counts={k: metrics.get(k) for k in ("n_rows", "n_patients", "n_events")},
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
    from imaging.services.pacs import pacs_transfers_recent
    from patients.permissions import can_upload

    overview = pipeline_overview()
    fragment = request.GET.get("fragment") == "1"
    # The live part refreshes every few seconds: a refresh is audited once per
    # PIPELINE_AUDIT_REFRESH_SECONDS per login session, not on every poll.
    now = time.time()
    last = request.session.get("pipeline_audited_at", 0.0)
    if not fragment or now - last >= PIPELINE_AUDIT_REFRESH_SECONDS:
        audit_record(
            request=request,
            action="pipeline.view",
            object=f"{len(overview.studies)} studies" + (" (refresh)" if fragment else ""),
        )
        request.session["pipeline_audited_at"] = now
    may_retrieve = can_upload(request.user)
    context = {
        "overview": overview,
        "poll_seconds": PIPELINE_POLL_SECONDS,
        "may_retrieve": may_retrieve,
        "pacs_configured": bool(settings.RADTRACK_PACS_DICOMWEB_URL),
        "transfers": pacs_transfers_recent() if may_retrieve else [],
    }
    template = "analytics/_pipeline_live.html" if fragment else "analytics/pipeline.html"
    return render(request, template, context)
