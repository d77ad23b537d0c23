"""Reads of the registry and of reviewed studies, for the pages, commands and services.

`study_review` gathers what a radiologist decided about one study's newest segmentation
version (one query per table) into a `StudyReview`; the validation set and the training
examples both start from it. A radiologist's additions and redrawn outlines are
components of that version's label map (`analytics.lesions.review.versions`), so the
training labels read them from it like the model's own candidates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db.models import Prefetch

from imaging.core.geometry.nifti import volume_read_nifti
from imaging.core.geometry.volume import Volume
from imaging.modelhub.models import DriftAlert, ModelEvent, SegmentationModel, ValidationReport
from imaging.models import (
    LesionMeasurement,
    ManualFinding,
    ProcessingRun,
    ReviewEvent,
    Segmentation,
    Study,
)
from imaging.store import derived_local

REVIEWED = (
    LesionMeasurement.Review.ACCEPTED,
    LesionMeasurement.Review.REJECTED,
    LesionMeasurement.Review.EDITED,
)


@dataclass
class StudyReview:
    """One study's latest segmentation and every decision on its candidates."""

    study: Study
    segmentation: Segmentation | None
    run: ProcessingRun | None
    decisions: list[dict[str, Any]] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    manual: list[dict[str, Any]] = field(default_factory=list)
    review_events: list[int] = field(default_factory=list)

    @property
    def reviewed(self) -> bool:
        """Every candidate decided, and at least one decision."""
        return bool(self.segmentation and self.decisions and not self.pending)

    def volume(self) -> Volume:
        return volume_read_nifti(path=derived_local(self.run.volume_path), kind="scalar")

    def candidate_mask(self) -> Volume:
        return volume_read_nifti(path=derived_local(self.segmentation.mask_path), kind="label")


def latest_segmentation(study: Study) -> Segmentation | None:
    """The newest segmentation of the study's analysed series made by a succeeded run."""
    if study.chosen_series_id is None:
        return None
    return (
        Segmentation.objects.filter(
            series_id=study.chosen_series_id,
            processing_run__status=ProcessingRun.Status.SUCCEEDED,
        )
        .select_related("processing_run")
        .order_by("-created_at", "-pk")
        .first()
    )


def _decision(m: LesionMeasurement) -> str | None:
    """What was decided about a row's candidate: ``accepted``, ``rejected``, ``edited``
    (its outline redrawn in the segmentation version), ``added`` (drawn by a radiologist:
    a decision in itself unless rejected since), or None (awaiting review; a propagated
    addition too until someone accepts it)."""
    if m.review_state == LesionMeasurement.Review.REJECTED:
        return "rejected"
    if getattr(m, "origin", "") == "added":
        return "added"
    return str(m.review_state) if m.review_state in REVIEWED else None


def study_review(study: Study) -> StudyReview:
    """What was decided about ``study``'s latest segmentation (see `StudyReview`)."""
    segmentation = latest_segmentation(study)
    review = StudyReview(study=study, segmentation=segmentation,
                         run=segmentation.processing_run if segmentation else None)  # fmt: skip
    if segmentation is None:
        return review
    measurements = (
        LesionMeasurement.objects.filter(study=study, segmentation=segmentation)
        .select_related("lesion", "reviewed_by")
        .prefetch_related(
            Prefetch("review_events", queryset=ReviewEvent.objects.only("pk", "measurement_id"))
        )
    )
    decided_labels: set[int] = set()
    for m in measurements:
        labels = sorted(
            {*(m.component_labels or []), *([m.component_label] if m.component_label else [])}
        )
        kind = _decision(m)
        if kind is None:
            if m.status in LesionMeasurement.FOUND:
                review.pending += labels
            continue
        decided_labels |= set(labels)
        review.review_events += [e.pk for e in m.review_events.all()]
        for label in labels:
            review.decisions.append({
                "kind": kind, "component_label": label, "organ": m.lesion.organ,
                "measurement": m.pk, "lesion_uid": m.lesion.tracking_uid,
                "centroid_lps_mm": [m.centroid_x_mm, m.centroid_y_mm, m.centroid_z_mm],
                "volume_ml": m.effective_volume_ml,
                "longest_diameter_mm": m.effective_longest_diameter_mm,
                "reviewed_by": m.reviewed_by.get_username() if m.reviewed_by else "",
                "reviewed_at": m.reviewed_at.isoformat() if m.reviewed_at else None,
            })  # fmt: skip
    known = {int(c["component_label"]) for c in segmentation.lesions if c.get("component_label")}
    review.pending = sorted(set(review.pending) | (known - decided_labels - set(review.pending)))
    review.manual = [
        {"finding": f.pk, "organ": f.organ, "lesion_uid": f.lesion_uid, "mask_path": ""}
        for f in ManualFinding.objects.filter(study=study)
    ]
    return review


# --------------------------------------------------------------------------- registry
def registry_rows() -> list[dict[str, Any]]:
    """Every version with its latest report's verdict, newest first."""
    reports = {}
    for report in ValidationReport.objects.select_related("compared_with").order_by("created_at"):
        reports[report.model_id] = report
    return [{"model": m, "report": reports.get(m.pk)}
            for m in SegmentationModel.objects.select_related("parent").order_by("-registered_at")]  # fmt: skip


def registry_events(limit: int = 30) -> list[ModelEvent]:
    return list(
        ModelEvent.objects.select_related("model", "previous_active").order_by("-at", "-pk")[:limit]
    )


class DriftAlertList(list[DriftAlert]):
    """Open alerts, newest first; ``changes``: those that say the studies changed (a new
    protocol, a shift), ``untested``: the protocols drift could not be tested for against
    the model's reference, so that a page never shows that silence as "no drift"."""

    @property
    def changes(self) -> list[DriftAlert]:
        return [a for a in self if a.kind != DriftAlert.Kind.NOT_TESTED]

    @property
    def untested(self) -> list[DriftAlert]:
        return [a for a in self if a.kind == DriftAlert.Kind.NOT_TESTED]


def drift_alerts_open() -> DriftAlertList:
    """Alerts nobody has acknowledged yet, newest first (one query)."""
    return DriftAlertList(
        DriftAlert.objects.filter(acknowledged_at__isnull=True).order_by("-opened_at")[:20]
    )
