"""``model_validate``: a version run on the locked validation set, judged beside the active
model, its report stored (row and HTML export) and its drift reference recorded.

The set is the generated part (`imaging.core.modelhub.validation_set`, its checksum
locked: in code for the shipped definition, else by the first report made on it) plus
the site's reviewed studies (`ValidationSetStudy`: their accepted and edited lesions are
the truth, rejected candidates are false positives). The active model's figures come
from its own report on the same set when there is one; else it is run as well (and gets
that report). A failure leaves no report and no half-written row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction

from imaging.core.modelhub.compare import Margins, regressions
from imaging.core.modelhub.drift import input_statistics
from imaging.core.modelhub.report_html import report_html
from imaging.core.modelhub.validate import cases_validate, reference_statistics
from imaging.core.modelhub.validation_set import (
    LOCKED_CHECKSUMS,
    TruthLesion,
    ValidationCase,
    ValidationSetSpec,
    case_digest,
    generated_cases,
    set_checksum,
)
from imaging.modelhub.models import (
    ModelEvent,
    SegmentationModel,
    ValidationReport,
    ValidationSetStudy,
)
from imaging.modelhub.selectors import study_review
from imaging.modelhub.services import (
    RegistryError,
    active_model,
    model_event_record,
    model_loaded,
)
from imaging.models import Study
from imaging.store import data_dir, derived_local, derived_publish

logger = logging.getLogger(__name__)

VALIDATION_FOLDER = "modelhub/validation-set"
REPORTS_FOLDER = "models/reports"


def validation_spec() -> ValidationSetSpec:
    """The locked set's definition: ``RADTRACK_VALIDATION_SET`` or the shipped one."""
    configured = getattr(settings, "RADTRACK_VALIDATION_SET", None)
    return ValidationSetSpec.from_json(configured) if configured else ValidationSetSpec()


def promotion_margins() -> Margins:
    return Margins.from_json(getattr(settings, "RADTRACK_MODEL_MARGINS", None))


def _locked_checksum(spec: ValidationSetSpec) -> str | None:
    if spec.name in LOCKED_CHECKSUMS:
        if spec != ValidationSetSpec(name=spec.name):
            raise RegistryError(
                f"{spec.name} is the shipped locked set: give your own set another name"
            )
        return LOCKED_CHECKSUMS[spec.name]
    first = ValidationReport.objects.filter(set_name=spec.name).order_by("created_at").first()
    return first.set_checksum if first else None


def _site_case(entry: ValidationSetStudy) -> tuple[ValidationCase | None, str]:
    review = study_review(entry.study)
    if not review.reviewed:
        return None, f"study {entry.study.study_instance_uid}: not fully reviewed"
    truths = []
    for d in review.decisions:
        if (
            d["kind"] == "rejected"
            or d["organ"] not in ("lung", "liver")
            or None in d["centroid_lps_mm"]
        ):
            continue
        if any(t.lesion_id == d["lesion_uid"] for t in truths):
            continue
        centre = tuple(float(v) for v in d["centroid_lps_mm"])
        truths.append(TruthLesion(d["lesion_uid"], d["organ"], "left" if centre[0] > 0 else "right",
                                  "reviewed", False, float(d["volume_ml"] or 0.0), centre,  # type: ignore[arg-type]
                                  d["longest_diameter_mm"]))  # fmt: skip
    series = entry.study.chosen_series
    volume = review.volume()
    return ValidationCase(
        case_id=entry.study.study_instance_uid, source="site", volume=volume, truths=tuple(truths),
        acquisition={"scanner": series.manufacturer, "kernel": series.kernel,
                     "slice_thickness_mm": series.slice_thickness_mm},
        truth_labels=None, digest=case_digest(volume, truths),
    ), ""  # fmt: skip


def validation_cases(
    *, spec: ValidationSetSpec, on_case: Callable[[str], None] | None = None
) -> tuple[list[ValidationCase], str, list[str]]:
    """The set's cases, the generated part's checksum (checked against the lock), notes."""
    generated = generated_cases(
        spec=spec, cache_dir=data_dir() / VALIDATION_FOLDER, on_case=on_case
    )
    checksum = set_checksum(generated)
    locked = _locked_checksum(spec)
    if locked is not None and locked != checksum:
        raise RegistryError(
            f"the validation set {spec.name} now has checksum {checksum[:16]}..., not the locked "
            f"{locked[:16]}...: the generator or its cache changed; reports would not compare"
        )
    cases, notes = list(generated), []
    for entry in ValidationSetStudy.objects.select_related("study__chosen_series").order_by(
        "added_at"
    ):
        case, note = _site_case(entry)
        if case is None:
            notes.append(note)
        else:
            cases.append(case)
    return cases, checksum, notes


def _training_inputs(model: SegmentationModel) -> list[dict[str, Any]]:
    """Input statistics of the training data: inherited, or for the shipped weights a few
    of its training generator's small studies (their exact organs)."""
    if model.parent and model.parent.reference_statistics.get("training_inputs"):
        return list(model.parent.reference_statistics["training_inputs"])
    sources = model.training.get("manifest_training", {}).get("train", [])
    small = [s for s in sources if s.get("size") == "small"][:1]
    if model.format != "radtrack" or not small:
        return []
    from imaging.core.segmentation.network import SegmenterSpec
    from imaging.core.segmentation.training.cases import CohortSource, cases_load

    spec = SegmenterSpec(spacing_mm=tuple(model.conventions["spacing_mm"]))  # type: ignore[arg-type]
    source = CohortSource(seed=small[0]["seed"], size="small", patients=(0, 1, 2), timepoints=1)
    cases = cases_load(
        sources=[source], spec=spec, cache_dir=data_dir() / "modelhub" / "training-cases"
    )
    return [input_statistics(hu=c.hu, organ=c.organ, spacing_mm=c.spacing_mm) for c in cases]


def _report_payload(model: SegmentationModel, result: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": model.label,
        "metrics": result["metrics"],
        "per_study": result["per_study"],
        "lesions": [row for s in result["per_study"] for row in s["lesions"]],
    }


def _comparable(report: ValidationReport | None, checksum: str, digests: list[str]) -> bool:
    return bool(report and report.set_checksum == checksum
                and [s["digest"] for s in report.site_studies] == digests)  # fmt: skip


def _html_write(report: ValidationReport, active_payload: dict[str, Any] | None) -> str:
    from plotly.offline import get_plotlyjs

    model = report.model
    payload = {
        **_report_payload(model, {"metrics": report.metrics, "per_study": report.per_study}),
        "model": {"name": model.name, "version": model.version, "format": model.format,
                  "status": model.status, "sha256": model.sha256, "files": model.files,
                  "labels": model.labels, "conventions": model.conventions},
        "set": {"name": report.set_name, "checksum": report.set_checksum, "spec": report.set_spec,
                "site_studies": report.site_studies},
        "comparison": {**report.comparison, "passed": report.passed,
                       "active": report.compared_with.label if report.compared_with else None},
        "margins": report.comparison.get("margins", {}),
        "created_at": report.created_at.isoformat(timespec="seconds"),
        "created_by": report.created_by_name, "seconds": report.seconds,
    }  # fmt: skip
    relative = f"{REPORTS_FOLDER}/{model.label}-report-{report.pk}.html"
    path = data_dir() / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(report_html(report=payload, active=active_payload, plotly_js=get_plotlyjs()))
    tmp.replace(path)
    derived_publish(relative)
    return relative


def _run(model: SegmentationModel, cases: list[ValidationCase], device: str,
         on_case: Callable[[str, float], None] | None) -> tuple[dict[str, Any], float]:  # fmt: skip
    started = time.perf_counter()
    loaded = model_loaded(model=model, device=device)
    return cases_validate(
        model=loaded, cases=cases, device=device, on_case=on_case
    ), time.perf_counter() - started


def _store(
    *, model, result, seconds, spec, checksum, site, compared_with, comparison, passed, username
) -> ValidationReport:
    training = _training_inputs(model)  # rendered before the transaction: it takes seconds
    with transaction.atomic():
        report = ValidationReport.objects.create(
            model=model, set_name=spec.name, set_checksum=checksum, set_spec=spec.as_json(),
            site_studies=site, metrics=result["metrics"], per_study=result["per_study"],
            compared_with=compared_with, comparison=comparison, passed=passed,
            created_by_name=username, seconds=round(seconds, 1),
        )  # fmt: skip
        model.reference_statistics = {
            **reference_statistics(per_study=result["per_study"], training=training),
            "training_inputs": training, "report": report.pk,
        }  # fmt: skip
        model.save(update_fields=["reference_statistics"])
        model_event_record(model, ModelEvent.Action.VALIDATE, username=username, report=report,
               detail={"passed": passed, "regressions": len(comparison.get("regressions", []))})  # fmt: skip
    return report


def model_validate(
    *,
    model: SegmentationModel,
    device: str = "cpu",
    username: str = "",
    on_case: Callable[[str, float], None] | None = None,
) -> ValidationReport:
    """Validate ``model`` on the locked set beside the active model (see the module docs)."""
    spec, margins = validation_spec(), promotion_margins()
    cases, checksum, notes = validation_cases(spec=spec)
    site = [
        {"study_instance_uid": c.case_id, "digest": c.digest} for c in cases if c.source == "site"
    ]
    digests = [s["digest"] for s in site]
    active = active_model()
    active_report: ValidationReport | None = None
    if active.pk != model.pk:
        active_report = active.reports.order_by("-created_at").first()
        if not _comparable(active_report, checksum, digests):
            active_report = model_validate(
                model=active, device=device, username=username, on_case=on_case
            )
    result, seconds = _run(model, cases, device, on_case)
    comparison: dict[str, Any] = {"margins": margins.as_json(), "notes": notes, "regressions": []}
    passed = True
    if active_report is not None:
        comparison["regressions"] = regressions(candidate=result["metrics"], active=active_report.metrics,
                                                margins=margins)  # fmt: skip
        passed = not comparison["regressions"]
    else:
        comparison["notes"] = [
            *notes,
            f"{model.label} is the active model: nothing to compare with",
        ]
    report = _store(model=model, result=result, seconds=seconds, spec=spec, checksum=checksum, site=site,
                    compared_with=active if active_report is not None else None, comparison=comparison,
                    passed=passed, username=username)  # fmt: skip
    active_payload = None
    if active_report is not None:
        active_payload = {**_report_payload(active, {"metrics": active_report.metrics,
                                                     "per_study": active_report.per_study})}  # fmt: skip
    report.html_path = _html_write(report, active_payload)
    report.save(update_fields=["html_path"])
    return report


def report_html_path(report: ValidationReport) -> Path | None:
    if not report.html_path:
        return None
    try:
        path = derived_local(report.html_path)
    except OSError:
        return None
    return path if path.is_file() else None


def validation_set_add(*, study: Study, username: str = "", reason: str = "") -> ValidationSetStudy:
    """Add a fully reviewed study to the locked set (it will never be trained on)."""
    review = study_review(study)
    if not review.reviewed:
        raise RegistryError(f"study {study.study_instance_uid} is not fully reviewed: every candidate "
                            "of its latest segmentation needs a decision first")  # fmt: skip
    entry, _ = ValidationSetStudy.objects.get_or_create(
        study=study, defaults={"added_by_name": username, "reason": reason}
    )
    return entry
