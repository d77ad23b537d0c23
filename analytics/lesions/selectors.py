"""Reads of the lesion data for pages, exports and review records: the review history
with what each event was about, the measurements table (values in force) and the table
of RECIST 1.1, volumetric and iRECIST responses with each patient's best overall
response."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import pandas as pd
from django.core.exceptions import ObjectDoesNotExist

from analytics.layouts import (
    EXPORT_RESPONSE_COLUMNS,
    EXPORT_RESPONSE_EXTRA_COLUMNS,
    MEASUREMENT_COLUMNS,
    MEASUREMENT_EXTRA_COLUMNS,
)
from analytics.lesions.core.readings import TOO_SMALL_MM
from analytics.models import BestOverallResponse, ResponseAssessment
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
    "gone": "Confirmed gone",
    "too_small": "Present, too small to measure",
    "add": "Measured by hand",
    "links_confirm": "Proposed links confirmed",
    "non_target_verdict": "Non-target progression decided",
    "irecist": "iRECIST setting changed",
    "lesion_add_click": "Added with one click, followed through the studies",
    "mask_edit": "Mask edited",
    "organ": "Filed under another organ",
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
    """One row per lesion per study, values as in force (a radiologist's override wins),
    in the published columns then `MEASUREMENT_EXTRA_COLUMNS`.

    A lesion not seen at a study has a row there: ``not_found`` with empty sizes (never
    0), ``merged`` or ``resolved`` (confirmed gone) with 0. One seen but cut by the edge
    of what was imaged (finding state ``not_assessable``) has empty sizes too: what was
    measured is only part of it. One a radiologist says is too small to measure reads
    5 mm (RECIST 1.1 section 4.3.2) with no volume. Centroids are
    LPS mm in that study's own patient coordinates. Rows rejected as false positives
    (the row, or its whole lesion) are kept with their state unless
    ``include_rejected`` is false (the response assessment leaves them out).
    """
    rows = LesionMeasurement.objects.select_related(
        "lesion__patient", "study", "merged_into"
    ).order_by("lesion__patient__patient_id", *study_order("study__"), "lesion__label")
    if patient_ids is not None:
        rows = rows.filter(lesion__patient__patient_id__in=patient_ids)
    if not include_rejected:
        rows = rows.exclude(review_state=LesionMeasurement.Review.REJECTED).exclude(
            finding_state=LesionMeasurement.FindingState.REJECTED
        )
    records = [(*_published(m), *_extra(m)) for m in rows]
    return pd.DataFrame.from_records(
        records, columns=[*MEASUREMENT_COLUMNS, *MEASUREMENT_EXTRA_COLUMNS]
    )


def size_not_assessable(m: LesionMeasurement) -> bool:
    """The lesion was seen at this study but reaches the edge of what was imaged, so its
    stored numbers are only a lower bound and never a size (finding state
    ``not_assessable``, `analytics.lesions.core.findings`)."""
    return m.finding_state == LesionMeasurement.FindingState.NOT_ASSESSABLE


#: What an edge of what was imaged (`LesionMeasurement.edges_reached`) is called on a page.
_EDGE_NAMES = {
    "scan_start": "the edge of the scanned range",
    "scan_end": "the edge of the scanned range",
    "field_of_view": "the edge of the field of view",
    "padding": "the edge of the field of view",
}


def size_not_assessable_note(m: LesionMeasurement) -> str:
    """What a page shows instead of the sizes of a lesion whose size is not assessable
    (`size_not_assessable`): seen, and which edge it reaches; "" for any other row."""
    if not size_not_assessable(m):
        return ""
    edges = [_EDGE_NAMES.get(str(e), "the edge of what was imaged") for e in m.edges_reached or ()]
    reached = " and ".join(dict.fromkeys(edges)) or "the edge of what was imaged"
    return f"seen, size not assessable (reaches {reached})"


#: How a page names the outer layer a volume was measured with (`two_level` layers).
_LAYER_NAMES = {"ground_glass": "ground glass", "hypodense_wall": "wall"}


def volume_layer_note(m: LesionMeasurement, entry: dict | None) -> str:
    """How the automated volume was read, when with an outer layer of the lesion's own
    (``entry``: its candidate in `Segmentation.lesions`, `imaging.core.segmentation
    .two_level`): "with its ground glass; without it 1.43 ml"; "" for any other row and
    for a volume a radiologist gave."""
    if entry is None or m.override_volume_ml is not None or not entry.get("volume_layer"):
        return ""
    layer = str(entry["volume_layer"])
    note = f"with its {_LAYER_NAMES.get(layer, layer.replace('_', ' '))}"
    core = entry.get("volume_core_ml")
    return note if core is None else f"{note}; without it {float(core):.2f} ml"


def _sizes(m: LesionMeasurement) -> tuple[float, float, float]:
    """(volume ml, longest mm, short axis mm) as the export gives them: none for a lesion
    not found, nor for one seen whose size is not assessable (its cut numbers are not a
    size; ``finding_state`` and ``state_reason`` say why)."""
    if m.status == LesionMeasurement.Status.NOT_FOUND or size_not_assessable(m):
        return math.nan, math.nan, math.nan
    if m.too_small:
        return math.nan, TOO_SMALL_MM, TOO_SMALL_MM
    volume = m.effective_volume_ml
    return (
        math.nan if volume is None else volume,
        m.effective_longest_diameter_mm,
        m.effective_short_axis_mm,
    )


def _published(m: LesionMeasurement) -> tuple:
    volume, longest, short = _sizes(m)
    return (
        m.lesion.patient.patient_id,
        m.study.study_instance_uid,
        m.study.study_date,
        m.lesion.tracking_uid,
        m.lesion.label,
        m.lesion.organ,
        m.status,
        volume,
        longest,
        short,
        m.centroid_x_mm,
        m.centroid_y_mm,
        m.centroid_z_mm,
        m.is_target,
        m.review_state,
    )


def _extra(m: LesionMeasurement) -> tuple:
    return (
        m.finding_state,
        m.state_reason,
        m.link_provisional,
        m.too_small,
        m.merged_into.tracking_uid if m.merged_into is not None else "",
        m.confidence,
        m.manual_finding_id is not None,
        _core_volume_in_force(m),
    )


def _core_volume_in_force(m: LesionMeasurement) -> float:
    """The volume without the lesion's outer layer where the volume in force was measured
    with one (`LesionMeasurement.volume_core_ml`); NaN otherwise (a radiologist's volume,
    no size, no layer)."""
    if m.volume_core_ml is None or m.override_volume_ml is not None:
        return math.nan
    if m.status not in LesionMeasurement.FOUND:
        return math.nan
    if size_not_assessable(m) or m.too_small:
        return math.nan
    return float(m.volume_core_ml)


# --------------------------------------------------------------------------- responses
@dataclass(frozen=True)
class ResponseRow:
    """The RECIST 1.1, volumetric and iRECIST response at one study (`ResponseAssessment`).

    ``response_note``: what the category rests on, and why a study is NE;
    ``needs_attention``: a person should look (NE, equivocal new lesions pending,
    possible non-target progression, a lesion not found, provisional links);
    ``revisions``: earlier categories of this study and why they changed.
    """

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
    irecist_response: str = ""
    response_note: str = ""
    needs_attention: bool = False
    pending_new_lesions: int = 0
    possible_non_target_progression: bool = False
    progression_dated_from: dt.date | None = None
    revisions: tuple[dict[str, Any], ...] = ()

    @property
    def not_evaluable(self) -> bool:
        return self.recist_response == "NE"

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

    def export_extra(self, best: BestOverallResponse | None) -> tuple:
        """The row's `analytics.layouts.EXPORT_RESPONSE_EXTRA_COLUMNS`, with the patient's
        best overall response (``best``)."""
        return (
            self.response_note,
            self.needs_attention,
            self.pending_new_lesions,
            self.possible_non_target_progression,
            self.progression_dated_from,
            self.irecist_response,
            best.recist if best else "",
            best.recist_date if best else None,
            best.irecist if best else "",
            best.irecist_date if best else None,
            json.dumps(list(self.revisions)) if self.revisions else "",
        )


def response_row(r: ResponseAssessment) -> ResponseRow:
    """One stored assessment as a `ResponseRow` (its patient and study loaded)."""
    return ResponseRow(
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
        irecist_response=r.irecist_response,
        response_note=r.response_note,
        needs_attention=r.needs_attention,
        pending_new_lesions=r.pending_new_lesions,
        possible_non_target_progression=r.possible_non_target_progression,
        progression_dated_from=r.progression_dated_from,
        revisions=tuple(r.revisions or ()),
    )


def response_rows(
    *, patient: Patient | None = None, patient_ids: Collection[str] | None = None
) -> list[ResponseRow]:
    """The response table, one row per study assessed (or found not evaluable), by MRN
    and then chronologically; for one ``patient``, or for ``patient_ids`` (MRNs), or for
    everyone. The one place it is read: the patient page, the export and the review
    record use it."""
    rows = ResponseAssessment.objects.select_related("patient", "study").order_by(
        "patient__patient_id", *study_order("study__")
    )
    if patient is not None:
        rows = rows.filter(patient=patient)
    if patient_ids is not None:
        rows = rows.filter(patient__patient_id__in=patient_ids)
    return [response_row(r) for r in rows]


@dataclass(frozen=True)
class BestResponseRow:
    """A patient's best overall response (RECIST 1.1, and iRECIST when it applies)."""

    recist: str
    recist_date: dt.date | None
    recist_note: str
    irecist: str
    irecist_date: dt.date | None
    irecist_note: str
    settings: dict[str, Any]


def best_response_of(patient: Patient) -> BestResponseRow | None:
    """``patient``'s best overall response, None before any follow-up is assessed (load
    the patient with ``select_related("best_overall_response")`` to read it for free)."""
    try:
        best = patient.best_overall_response
    except ObjectDoesNotExist:
        return None
    return BestResponseRow(
        recist=best.recist,
        recist_date=best.recist_date,
        recist_note=best.recist_note,
        irecist=best.irecist,
        irecist_date=best.irecist_date,
        irecist_note=best.irecist_note,
        settings=dict(best.settings or {}),
    )


def irecist_of(patient: Patient) -> bool:
    """Whether iRECIST applies to ``patient`` (load with ``select_related(
    "response_settings")`` to read it for free)."""
    try:
        return bool(patient.response_settings.irecist)
    except ObjectDoesNotExist:
        return False


def responses_table(*, patient_ids: Collection[str] | None = None) -> pd.DataFrame:
    """``export_responses``: one row per study assessed or not evaluable, in the published
    columns then `analytics.layouts.EXPORT_RESPONSE_EXTRA_COLUMNS`."""
    rows = response_rows(patient_ids=patient_ids)
    best = {
        b.patient.patient_id: b
        for b in BestOverallResponse.objects.select_related("patient").filter(
            patient__patient_id__in={r.patient_id for r in rows}
        )
    }
    records = [(*row.export_record(), *row.export_extra(best.get(row.patient_id))) for row in rows]
    return pd.DataFrame.from_records(
        records, columns=[*EXPORT_RESPONSE_COLUMNS, *EXPORT_RESPONSE_EXTRA_COLUMNS]
    )
