"""``model_validate``: a version run on the locked validation set, judged beside the active
model, its report stored (row and HTML export) and its drift reference recorded.

The set is the generated part (`imaging.core.modelhub.validation_set`, its checksum
locked: in code for the shipped definition, else by the first report made on it) plus
the site's reviewed studies (`ValidationSetStudy`: their accepted and edited lesions are
the truth, rejected candidates are false positives). The active model's figures come
from its own report on the same set when there is one; else it is run as well (and gets
that report). A failure leaves no report and no half-written row.

A report does not pass when it judged nothing (no study, no lesion that counts), when
the version was trained on a study of the set (under any name: `content.same_data`), or
when it regresses beyond the margins (a measure the candidate could not give while the
active model could counts as a regression). A study joins the set only when no version
in use learnt from it, and both joining and leaving the set are audited; a study that
left stays out of training.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from imaging.core.modelhub.compare import (
    Margins,
    paired_volume_errors,
    regressions,
    report_refusals,
)
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
from imaging.modelhub.content import first_match, study_contents, trained_on_matches
from imaging.modelhub.locked_set import (
    locked_checksum,
    set_entries,
    site_review_key,
    validation_set_identity,
    validation_spec,
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
    cohort_training_sources,
    model_event_record,
    model_loaded,
    shipped_model_ensure,
)
from imaging.models import Study
from imaging.store import data_dir, derived_local, derived_publish

logger = logging.getLogger(__name__)

VALIDATION_FOLDER = "modelhub/validation-set"
REPORTS_FOLDER = "models/reports"


def promotion_margins() -> Margins:
    return Margins.from_json(getattr(settings, "RADTRACK_MODEL_MARGINS", None))


def _locked_checksum(spec: ValidationSetSpec) -> str | None:
    if spec.name in LOCKED_CHECKSUMS and spec != ValidationSetSpec(name=spec.name):
        raise RegistryError(
            f"{spec.name} is the shipped locked set: give your own set another name"
        )
    return locked_checksum(spec)


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
    for entry in set_entries().select_related("study__chosen_series").order_by("added_at"):
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
    sources = cohort_training_sources(model)
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


def _trained_on_refusals(model: SegmentationModel, site: list[dict[str, Any]]) -> list[str]:
    """A site study of the set that ``model`` learnt from (under any name) makes its
    figures on the set its training figures: the report cannot pass."""
    uids = [s["study_instance_uid"] for s in site]
    ids = dict(
        Study.objects.filter(study_instance_uid__in=uids).values_list("pk", "study_instance_uid")
    )
    found = trained_on_matches(model, set(ids))
    return [f"study {ids[pk]} of the validation set: {why}" for pk, why in sorted(found.items())]


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
                       "failures": report.failures,
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
               detail={"passed": passed, "regressions": len(comparison.get("regressions", [])),
                       "refusals": comparison.get("refusals", [])})  # fmt: skip
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
    keys = validation_set_identity().review_keys()
    site = [{"study_instance_uid": c.case_id, "digest": c.digest, "review_key": keys.get(c.case_id, "")}
            for c in cases if c.source == "site"]  # fmt: skip
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
    refusals = report_refusals(result["metrics"]) + _trained_on_refusals(model, site)
    comparison: dict[str, Any] = {"margins": margins.as_json(), "notes": notes, "regressions": [],
                                  "refusals": refusals}  # fmt: skip
    if active_report is not None:
        paired = paired_volume_errors(
            [row for s in result["per_study"] for row in s["lesions"]],
            [row for s in active_report.per_study for row in s.get("lesions", [])],
        )
        comparison["paired_volume_error"] = paired
        comparison["regressions"] = regressions(candidate=result["metrics"], active=active_report.metrics,
                                                margins=margins, paired=paired)  # fmt: skip
    else:
        comparison["notes"] = [
            *notes,
            f"{model.label} is the active model: nothing to compare with",
        ]
    passed = not comparison["regressions"] and not refusals
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


def _set_event_model() -> SegmentationModel:
    """The version a change of the set is recorded on: the active one (whose reports the
    change outdates), else the newest registered."""
    model = shipped_model_ensure() or SegmentationModel.objects.order_by("-registered_at").first()
    if model is None:
        raise RegistryError("no model version is registered: nothing to record the change on")
    return model


def _in_use_trained_on(study: Study) -> list[str]:
    """Why ``study`` cannot be judged on: a version not retired learnt from it."""
    found = []
    for model in SegmentationModel.objects.exclude(status=SegmentationModel.Status.RETIRED):
        found += list(trained_on_matches(model, {study.pk}).values())
    return found


def validation_set_add(
    *, study: Study, username: str = "", reason: str = "", user: Any = None
) -> ValidationSetStudy:
    """Add a fully reviewed study to the locked set (it will never be trained on); refused
    when a version in use (candidate or active) was trained on it under any name. A study
    removed before comes back with its removal kept in the events."""
    review = study_review(study)
    if not review.reviewed:
        raise RegistryError(f"study {study.study_instance_uid} is not fully reviewed: every candidate "
                            "of its latest segmentation needs a decision first")  # fmt: skip
    trained = _in_use_trained_on(study)
    if trained:
        raise RegistryError(f"study {study.study_instance_uid} cannot join the validation set: "
                            f"{'; '.join(trained)}; retire that version first")  # fmt: skip
    with transaction.atomic():
        entry, created = ValidationSetStudy.objects.select_for_update().get_or_create(
            study=study, defaults={"added_by_name": username, "reason": reason}
        )
        if not created and entry.removed_at is None:
            return entry
        if not created:
            entry.removed_at, entry.removed_by_name, entry.removal_reason = None, "", ""
            entry.added_by_name, entry.reason = username[:150], reason
            entry.save(update_fields=["removed_at", "removed_by_name", "removal_reason",
                                      "added_by_name", "reason"])  # fmt: skip
        model_event_record(
            _set_event_model(), ModelEvent.Action.SET_ADD, user=user, username=username,
            reason=reason, detail={"study_instance_uid": study.study_instance_uid,
                                   "review_key": site_review_key(review)},
        )  # fmt: skip
    return entry


def validation_set_remove(
    *, entry: ValidationSetStudy, username: str = "", reason: str = "", user: Any = None
) -> ValidationSetStudy:
    """Take a study out of the locked set: recorded (`ModelEvent` and the audit trail), its
    row kept so that it stays out of training (it was judged on); every report made with
    it no longer allows a promotion (`locked_set.identity_mismatch`)."""
    with transaction.atomic():
        entry = (
            ValidationSetStudy.objects.select_for_update().select_related("study").get(pk=entry.pk)
        )
        if entry.removed_at is not None:
            raise RegistryError(
                f"study {entry.study.study_instance_uid} is not in the validation set"
            )
        entry.removed_at, entry.removed_by_name = timezone.now(), username[:150]
        entry.removal_reason = reason
        entry.save(update_fields=["removed_at", "removed_by_name", "removal_reason"])
        model_event_record(
            _set_event_model(), ModelEvent.Action.SET_REMOVE, user=user, username=username,
            reason=reason, detail={"study_instance_uid": entry.study.study_instance_uid,
                                   "added_at": entry.added_at.isoformat(timespec="seconds"),
                                   "added_by": entry.added_by_name},
        )  # fmt: skip
    return entry


def set_study_content_matches(study_ids: set[int]) -> dict[int, str]:
    """Which of ``study_ids`` are the same data (`content.same_data`) as a study that is or
    was in the locked set, each with why (the set's own studies included)."""
    entries = list(ValidationSetStudy.objects.select_related("study"))
    if not entries or not study_ids:
        return {}
    contents = study_contents(study_ids | {e.study_id for e in entries})
    locked = {e.study_id: e for e in entries}
    others = [contents[i] for i in locked if i in contents]
    out = {}
    for study_id in sorted(study_ids):
        if study_id not in contents:
            continue
        if study_id in locked:
            continue  # said by the caller, in its own words
        match = first_match(contents[study_id], others)
        if match is not None:
            other, why = match
            entry = locked[other.study_id]
            where = ("in the locked validation set" if entry.removed_at is None
                     else f"removed from the locked validation set on {entry.removed_at:%Y-%m-%d}")  # fmt: skip
            out[study_id] = f"{why} as study {other.study_instance_uid}, {where}: never trained on"
    return out
