"""Reads of the lesion data for pages, exports and review records: the review history
with what each event was about, the measurements table (values in force) and the table
of RECIST 1.1 and volumetric responses."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import pandas as pd

from analytics.layouts import EXPORT_RESPONSE_COLUMNS, MEASUREMENT_COLUMNS
from analytics.models import ResponseAssessment
from imaging.models import (
    Lesion,
    LesionMeasurement,
    ReviewEvent,
    Study,
    study_order,
)
from patients.models import Patient

ACTION_NAMES = {
    "accept": "Accepted",
    "reject": "Rejected as a false positive",
    "override": "Measurement overridden",
    "relink": "Relinked",
    "split": "Split off",
    "merge": "Merged",
    "targets": "Targets chosen",
    "targets_automatic": "Targets returned to the RECIST rules",
    "carry_over": "Re-tracked: decisions carried or dropped",
}


@dataclass(frozen=True)
class ReviewHistoryRow:
    """One review event with the stable keys of what it was about.

    ``event.measurement`` is lost when the rows are rebuilt (every re-track); the
    Tracking UID, Study Instance UID, segmentation and candidates stored in the event
    are not. ``lesion`` is the identity that UID names now (None once it ended).
    """

    event: ReviewEvent
    action: str
    lesion_uid: str
    lesion_label: str
    lesion: Lesion | None
    into_label: str
    study_instance_uid: str
    study_date: str
    segmentation: int | None
    component_labels: list[int]
    notes: list[str]


def _event_subject(event: ReviewEvent) -> dict[str, Any]:
    before = event.before or {}
    subject = before.get("subject")
    if subject:
        return subject
    # events written before subjects were stored: their measurement or lesion state
    return before.get("measurement") or before.get("lesion") or {}


def review_history(*, patient: Patient) -> list[ReviewHistoryRow]:
    """``patient``'s review events, newest first, each with what it was about."""
    events = list(
        ReviewEvent.objects.filter(patient=patient).select_related("user").order_by("-at", "-pk")
    )
    subjects = [_event_subject(e) for e in events]
    uids = {s.get("lesion_uid") for s in subjects} | {s.get("into_lesion_uid") for s in subjects}
    lesions = {
        lesion.tracking_uid: lesion
        for lesion in Lesion.objects.filter(patient=patient, tracking_uid__in=uids - {None})
    }
    study_dates = dict(
        Study.objects.filter(patient=patient).values_list("study_instance_uid", "study_date")
    )
    rows = []
    for event, subject in zip(events, subjects, strict=True):
        uid = subject.get("lesion_uid") or ""
        lesion = lesions.get(uid)
        label = subject.get("lesion_label") or ", ".join(subject.get("lesion_labels") or [])
        into = lesions.get(subject.get("into_lesion_uid") or "")
        study_uid = subject.get("study_instance_uid") or ""
        when = subject.get("study_date") or (
            study_dates[study_uid].isoformat() if study_dates.get(study_uid) else ""
        )
        after = event.after or {}
        notes = [
            entry.get("message", "")
            for name in ("stale_reviews", "stale_targets", "stale_links", "carried")
            for entry in after.get(name) or []
            if isinstance(entry, dict)
        ]
        rows.append(
            ReviewHistoryRow(
                event=event,
                action=ACTION_NAMES.get(event.action, event.action),
                lesion_uid=uid,
                lesion_label=lesion.label if lesion is not None else label,
                lesion=lesion,
                into_label=into.label if into else subject.get("into_lesion_label") or "",
                study_instance_uid=study_uid,
                study_date=when,
                segmentation=subject.get("segmentation"),
                component_labels=list(subject.get("component_labels") or []),
                notes=notes,
            )
        )
    return rows


# --------------------------------------------------------------------------- measurements
def measurements_table(
    *, patient_ids: list[str] | None = None, include_rejected: bool = True
) -> pd.DataFrame:
    """One row per lesion per study, values as in force (a radiologist's override wins).

    A lesion gone at a study has a row there with status ``resolved`` and volume 0.
    Centroids are LPS mm in that study's own patient coordinates. Rows a radiologist
    rejected as false positives are kept with ``review_state`` "rejected" unless
    ``include_rejected`` is false (the response assessment leaves them out).
    """
    rows = LesionMeasurement.objects.select_related("lesion__patient", "study").order_by(
        "lesion__patient__patient_id", *study_order("study__"), "lesion__label"
    )
    if patient_ids is not None:
        rows = rows.filter(lesion__patient__patient_id__in=patient_ids)
    if not include_rejected:
        rows = rows.exclude(review_state=LesionMeasurement.Review.REJECTED)
    records = [
        (
            m.lesion.patient.patient_id,
            m.study.study_instance_uid,
            m.study.study_date,
            m.lesion.tracking_uid,
            m.lesion.label,
            m.lesion.organ,
            m.status,
            m.effective_volume_ml,
            m.effective_longest_diameter_mm,
            m.effective_short_axis_mm,
            m.centroid_x_mm,
            m.centroid_y_mm,
            m.centroid_z_mm,
            m.is_target,
            m.review_state,
        )
        for m in rows
    ]
    return pd.DataFrame.from_records(records, columns=list(MEASUREMENT_COLUMNS))


# --------------------------------------------------------------------------- responses
@dataclass(frozen=True)
class ResponseRow:
    """The RECIST 1.1 and volumetric response at one study (`ResponseAssessment`)."""

    study_pk: int
    study_date: dt.date | None
    is_baseline: bool
    sum_diameters_mm: float | None
    total_volume_ml: float | None
    pct_change_baseline: float | None
    pct_change_nadir: float | None
    recist_response: str
    volumetric_response: str
    new_lesions: bool
    notes: tuple[str, ...]
    patient_id: str = ""
    study_instance_uid: str = ""

    def export_record(self) -> tuple:
        """The row in `analytics.layouts.EXPORT_RESPONSE_COLUMNS` order."""
        return (
            self.patient_id,
            self.study_instance_uid,
            self.study_date,
            self.sum_diameters_mm,
            self.total_volume_ml,
            self.pct_change_baseline,
            self.pct_change_nadir,
            self.recist_response,
            self.volumetric_response,
            self.new_lesions,
        )


def response_rows(
    *, patient: Patient | None = None, patient_ids: Collection[str] | None = None
) -> list[ResponseRow]:
    """The response table, one row per assessed study, by MRN and then chronologically;
    for one ``patient``, or for ``patient_ids`` (MRNs), or for everyone. The one place
    it is read: the patient page, the export and the review record use it."""
    rows = ResponseAssessment.objects.select_related("patient", "study").order_by(
        "patient__patient_id", *study_order("study__")
    )
    if patient is not None:
        rows = rows.filter(patient=patient)
    if patient_ids is not None:
        rows = rows.filter(patient__patient_id__in=patient_ids)
    return [
        ResponseRow(
            study_pk=r.study_id,
            study_date=r.study.study_date,
            is_baseline=r.is_baseline,
            sum_diameters_mm=r.sum_diameters_mm,
            total_volume_ml=r.total_volume_ml,
            pct_change_baseline=r.pct_change_baseline,
            pct_change_nadir=r.pct_change_nadir,
            recist_response=r.recist_response,
            volumetric_response=r.volumetric_response,
            new_lesions=r.new_lesions,
            notes=tuple(str(n) for n in (r.notes or ())),
            patient_id=r.patient.patient_id,
            study_instance_uid=r.study.study_instance_uid,
        )
        for r in rows
    ]


def responses_table(*, patient_ids: Collection[str] | None = None) -> pd.DataFrame:
    """``export_responses``: one row per assessed study, in the published columns."""
    records = [row.export_record() for row in response_rows(patient_ids=patient_ids)]
    return pd.DataFrame.from_records(records, columns=list(EXPORT_RESPONSE_COLUMNS))
