"""The registry's pages: the versions and their history, one version with its validation
report (tables and Plotly figures, the HTML export), the drift page; and the promote,
roll-back and acknowledge actions (POST, audited through the services)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from imaging.core.modelhub.figures import drift_figure, report_figures
from imaging.core.modelhub.report_html import summary_rows
from imaging.modelhub.drift import drift_alert_acknowledge, drift_overview
from imaging.modelhub.locked_set import set_entries, validation_set_identity
from imaging.modelhub.models import (
    DriftAlert,
    SegmentationModel,
    ValidationReport,
)
from imaging.modelhub.selectors import drift_alerts_open, registry_events, registry_rows
from imaging.modelhub.services import (
    RegistryError,
    model_promote,
    model_rollback,
    promotion_check,
    shipped_model_ensure,
)
from imaging.modelhub.validation import promotion_margins, report_html_path, validation_spec
from patients.audit import audit_record

VIEW = "modelhub.view_segmentationmodel"
CHANGE = "modelhub.change_segmentationmodel"


@require_GET
@login_required
@permission_required(VIEW, raise_exception=True)
def registry_view(request: HttpRequest) -> HttpResponse:
    active = shipped_model_ensure()
    rows = registry_rows()
    identity = validation_set_identity()
    for row in rows:
        try:
            promotion_check(model=row["model"], active=active, identity=identity)
            row["promotable"] = True
        except RegistryError as exc:
            row["promotable"], row["why_not"] = False, str(exc)
    audit_record(request=request, action="model.registry.view", object="model registry")
    return render(request, "modelhub/registry.html", {
        "rows": rows, "active": active, "events": registry_events(),
        "can_change": request.user.has_perm(CHANGE), "alerts": drift_alerts_open(),
        "spec": validation_spec(), "margins": promotion_margins(),
        "site_studies": set_entries().count(),
    })  # fmt: skip


def _payload(report: ValidationReport) -> dict:
    return {"name": report.model.label, "metrics": report.metrics, "per_study": report.per_study,
            "lesions": [r for s in report.per_study for r in s["lesions"]]}  # fmt: skip


@require_GET
@login_required
@permission_required(VIEW, raise_exception=True)
def model_view(request: HttpRequest, pk: int) -> HttpResponse:
    model = get_object_or_404(SegmentationModel.objects.select_related("parent"), pk=pk)
    reports = list(model.reports.select_related("compared_with").order_by("-created_at"))
    report = reports[0] if reports else None
    if request.GET.get("report"):
        report = next((r for r in reports if str(r.pk) == request.GET["report"]), None)
        if report is None:
            raise Http404("No such report of this model.")
    context = {"model": model, "reports": reports, "report": report, "figures": {},
               "events": model.events.select_related("previous_active").order_by("-at", "-pk")}  # fmt: skip
    if report is not None:
        active_report = None
        if report.compared_with is not None:
            active_report = (report.compared_with.reports.filter(set_checksum=report.set_checksum)
                             .order_by("-created_at").first())  # fmt: skip
        active_payload = _payload(active_report) if active_report else None
        context.update(
            summary=summary_rows(
                report.metrics,
                active_report.metrics if active_report else None,
                (report.comparison or {}).get("paired_volume_error"),
            ),
            active_report=active_report,
            figures=report_figures(_payload(report), active_payload),
        )
    audit_record(request=request, action="model.view", object=f"model {model.label}")
    return render(request, "modelhub/model.html", context)


@require_GET
@login_required
@permission_required(VIEW, raise_exception=True)
def report_export_view(request: HttpRequest, pk: int) -> FileResponse:
    report = get_object_or_404(ValidationReport.objects.select_related("model"), pk=pk)
    path = report_html_path(report)
    if path is None:
        raise Http404("This report's HTML export is missing.")
    audit_record(
        request=request,
        action="model.report.export",
        object=f"report {report.pk} of {report.model.label}",
    )
    return FileResponse(
        path.open("rb"), as_attachment=True, filename=path.name, content_type="text/html"
    )


@require_POST
@login_required
@permission_required(CHANGE, raise_exception=True)
def promote_view(request: HttpRequest, pk: int) -> HttpResponse:
    model = get_object_or_404(SegmentationModel, pk=pk)
    try:
        model_promote(model=model, user=request.user, reason=request.POST.get("reason", "")[:500])
        messages.success(request, f"{model.label} is the active model.")
    except RegistryError as exc:
        messages.error(request, f"Not promoted: {exc}")
    return redirect("modelhub:registry")


@require_POST
@login_required
@permission_required(CHANGE, raise_exception=True)
def rollback_view(request: HttpRequest) -> HttpResponse:
    try:
        restored = model_rollback(user=request.user, reason=request.POST.get("reason", "")[:500])
        messages.success(request, f"Rolled back: {restored.label} is the active model again.")
    except RegistryError as exc:
        messages.error(request, f"Not rolled back: {exc}")
    return redirect("modelhub:registry")


@require_GET
@login_required
@permission_required("imaging.view_series", raise_exception=True)
def drift_view(request: HttpRequest) -> HttpResponse:
    overview = drift_overview()
    figures = {
        f"fig-drift-{key}": drift_figure(
            statistic=key,
            series=points,
            reference=overview["bands"].get(key),
            title=key.replace("_", " "),
        )  # fmt: skip
        for key, points in overview["series"].items()
        if points
    }
    audit_record(request=request, action="model.drift.view", object="drift page")
    return render(request, "modelhub/drift.html", {
        "overview": overview, "figures": figures,
        "alerts": DriftAlert.objects.order_by("-opened_at")[:100],
        "can_acknowledge": request.user.has_perm("modelhub.change_driftalert"),
    })  # fmt: skip


@require_POST
@login_required
@permission_required("modelhub.change_driftalert", raise_exception=True)
def acknowledge_view(request: HttpRequest, pk: int) -> HttpResponse:
    alert = get_object_or_404(DriftAlert, pk=pk, acknowledged_at__isnull=True)
    drift_alert_acknowledge(alert=alert, username=request.user.get_username())
    audit_record(
        request=request, action="model.drift.acknowledge", object=f"drift alert {alert.pk}"
    )
    return redirect("modelhub:drift")
