"""Drift, Django side: every processed study's statistics stored with its run, and the
checks after it that open alerts (a new scanner/protocol, or a shift against the model's
reference or the protocol's own first studies; `imaging.core.modelhub.drift`).

An alert stays open until someone acknowledges it; the same finding (kind, protocol,
statistic) does not open a second alert while one is open. Every test the checks ran or
could not run (no reference, too small a reference, too few studies yet) is kept with
the study's statistics (``StudyStatistics.drift_tests``), so that the drift page shows,
per protocol and statistic, "not tested" and why rather than silence. The pages
(pipeline, the worklist's "needs attention", the drift page) read
`selectors.drift_alerts_open`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from imaging.core.modelhub.drift import (
    TESTED,
    DriftFinding,
    DriftTest,
    drift_evaluate,
    flat_statistics,
    input_statistics,
    output_statistics,
    protocol_key,
)
from imaging.modelhub.models import DriftAlert, SegmentationModel, StudyStatistics
from imaging.models import LesionMeasurement, ProcessingRun, Series

logger = logging.getLogger(__name__)


def study_statistics_build(*, segmentation: Any) -> dict[str, Any]:
    """Input and output statistics of one `lesions.LesionSegmentation` (model grid)."""
    return {
        "inputs": input_statistics(
            hu=segmentation.image.array,
            organ=segmentation.label.array,
            spacing_mm=segmentation.image.spacing_mm,
        ),  # fmt: skip
        "outputs": output_statistics(confidences=[m.confidence for m in segmentation.lesions]),
    }


def study_statistics_store(
    *, run: ProcessingRun, series: Series, model_label: str, statistics: dict[str, Any]
) -> StudyStatistics:
    """The run's statistics row (a repeat of the run replaces it)."""
    pixel = series.pixel_spacing_row_mm
    row, _ = StudyStatistics.objects.update_or_create(
        run=run,
        defaults={
            "series": series, "model_label": model_label, "scanner": series.manufacturer,
            "kernel": series.kernel, "slice_thickness_mm": series.slice_thickness_mm,
            "pixel_spacing_mm": pixel,
            "protocol": protocol_key(scanner=series.manufacturer, kernel=series.kernel,
                                     slice_thickness_mm=series.slice_thickness_mm),
            "inputs": statistics["inputs"], "outputs": statistics["outputs"],
        },
    )  # fmt: skip
    return row


def _equivocal_share(series: Series) -> float | None:
    found = LesionMeasurement.objects.filter(
        study_id=series.study_id, status__in=LesionMeasurement.FOUND
    )
    n = found.count()
    if not n:
        return None
    return round(
        found.filter(finding_state=LesionMeasurement.FindingState.EQUIVOCAL).count() / n, 4
    )


def _reference(model_label: str) -> tuple[dict[str, list[float]] | None, set[str], str]:
    """The model's reference values, its protocols, and why there is none (if so)."""
    name, _, version = model_label.partition("-")
    model = SegmentationModel.objects.filter(name=name, version=version).first()
    reference = (model.reference_statistics or {}) if model else {}
    why = (f"{model_label} has no reference statistics: it was never validated "
           f"(manage.py model_validate {model_label})") if model else (
           f"{model_label} is not in the registry: no reference statistics")  # fmt: skip
    return reference.get("values") or None, set(reference.get("protocols", [])), why


def drift_after_run(*, run: ProcessingRun) -> list[DriftAlert]:
    """After tracking: the study's equivocal share, then the checks of its protocol."""
    row = StudyStatistics.objects.filter(run=run).select_related("series").first()
    if row is None:
        return []
    row.outputs = {**row.outputs, "equivocal_share": _equivocal_share(row.series)}
    row.save(update_fields=["outputs"])
    reference, known, no_reference = _reference(row.model_label)
    known |= set(StudyStatistics.objects.filter(created_at__lt=row.created_at)
                 .exclude(pk=row.pk).values_list("protocol", flat=True).distinct())  # fmt: skip
    history = [
        flat_statistics(r.inputs, r.outputs)
        for r in StudyStatistics.objects.filter(
            protocol=row.protocol, model_label=row.model_label, pk__lte=row.pk
        ).order_by("pk")  # fmt: skip
    ]
    result = drift_evaluate(
        protocol=row.protocol, history=history, reference=reference, known_protocols=known,
        window=int(getattr(settings, "RADTRACK_DRIFT_WINDOW", 10)),
        alpha=float(getattr(settings, "RADTRACK_DRIFT_ALPHA", 0.01)),
        min_reference=int(getattr(settings, "RADTRACK_DRIFT_MIN_REFERENCE", 5)),
        no_reference=no_reference,
    )  # fmt: skip
    opened = []
    with transaction.atomic():
        row.drift_tests = [t.as_json() for t in result.tests]
        row.save(update_fields=["drift_tests"])
        untested = _untested_finding(row, result.tests)
        if untested is None:
            DriftAlert.objects.filter(
                kind=DriftAlert.Kind.NOT_TESTED, protocol=row.protocol, acknowledged_at__isnull=True
            ).update(acknowledged_at=timezone.now(), acknowledged_by_name="radtrack: tested since")
        for f in [*result.findings, *([untested] if untested else [])]:
            if DriftAlert.objects.filter(kind=f.kind, protocol=f.protocol, statistic=f.statistic,
                                         acknowledged_at__isnull=True).exists():  # fmt: skip
                continue
            opened.append(DriftAlert.objects.create(
                kind=f.kind, protocol=f.protocol, statistic=f.statistic, model_label=row.model_label,
                message=f.message, detail={**f.detail, "reference": f.reference, "run": run.pk},
            ))  # fmt: skip
    return opened


def _untested_finding(row: StudyStatistics, tests: list[DriftTest]) -> DriftFinding | None:
    """A protocol no statistic of which could be tested against the model's reference,
    for want of a reference (none, or too small) rather than of studies still to come."""
    model_tests = [t for t in tests if t.reference == "model"]
    if not model_tests or any(t.tested or t.reason.startswith("recent n=") for t in model_tests):
        return None
    reasons = sorted({t.reason for t in model_tests})
    return DriftFinding(
        kind=DriftAlert.Kind.NOT_TESTED, protocol=row.protocol,
        message=f"drift against {row.model_label}'s reference not tested: {'; '.join(reasons)}",
        detail={"reasons": reasons},
    )  # fmt: skip


def drift_alert_acknowledge(*, alert: DriftAlert, username: str) -> None:
    alert.acknowledged_at = timezone.now()
    alert.acknowledged_by_name = username[:150]
    alert.save(update_fields=["acknowledged_at", "acknowledged_by_name"])


def drift_overview(*, since_days: int | None = None) -> dict[str, Any]:
    """Per statistic, the series of values per protocol over time, and the active model's
    reference band (5th-95th percentile), for the drift page."""
    import numpy as np

    rows = StudyStatistics.objects.order_by("created_at", "pk")
    if since_days:
        rows = rows.filter(created_at__gte=timezone.now() - timedelta(days=since_days))
    series: dict[str, dict[str, list[tuple[str, float]]]] = {k: defaultdict(list) for k in TESTED}
    protocols: dict[str, dict[str, Any]] = {}
    for r in rows:
        flat = flat_statistics(r.inputs, r.outputs)
        when = r.created_at.isoformat(timespec="seconds")
        for key in TESTED:
            if flat[key] is not None:
                series[key][r.protocol].append((when, float(flat[key])))
        entry = protocols.setdefault(r.protocol, {"protocol": r.protocol, "studies": 0, "first": when,
                                                  "models": set()})  # fmt: skip
        entry["studies"] += 1
        entry["last"] = when
        entry["models"].add(r.model_label)
    active = SegmentationModel.objects.filter(status="active").first()
    values = ((active.reference_statistics or {}).get("values") or {}) if active else {}
    bands = {
        k: (float(np.percentile(v, 5)), float(np.percentile(v, 95))) for k, v in values.items() if v
    }
    return {
        "series": {k: dict(v) for k, v in series.items()},
        "tests": drift_tests_latest(),
        "bands": bands,
        "protocols": [{**p, "models": sorted(p["models"])} for p in protocols.values()],
        "reference_protocols": (active.reference_statistics or {}).get("protocols", [])
        if active
        else [],
        "active": active,
    }


def drift_tests_latest() -> list[dict[str, Any]]:
    """Per protocol, the tests after its latest study: ``{protocol, model_label, at,
    statistics: [{statistic, model, own_start}]}`` (each a test's JSON), and how many of
    the tests against the model's reference could not be run."""
    latest = StudyStatistics.objects.values("protocol").annotate(last=Max("pk")).values("last")
    out = []
    for row in StudyStatistics.objects.filter(pk__in=latest).order_by("protocol"):
        by_statistic: dict[str, dict[str, Any]] = {}
        for test in row.drift_tests or []:
            by_statistic.setdefault(test["statistic"], {"statistic": test["statistic"]})[
                test["reference"]
            ] = test
        model_tests = [t for t in row.drift_tests or [] if t["reference"] == "model"]
        out.append({
            "protocol": row.protocol, "model_label": row.model_label,
            "at": row.created_at.isoformat(timespec="seconds"),
            "statistics": [by_statistic[k] for k in TESTED if k in by_statistic],
            "recorded": bool(row.drift_tests),
            "model_untested": sum(not t["tested"] for t in model_tests),
            "model_tests": len(model_tests),
        })  # fmt: skip
    return out
