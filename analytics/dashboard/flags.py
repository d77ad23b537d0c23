"""The worklist's flags, worked out per patient when what they rest on changes.

The worklist filters and orders every patient on its flags before it cuts a page, so
they are stored (`analytics.models.WorklistFlags`, one row per patient) rather than
worked out per patient on every request. The rules:

- ``new_progression``: the latest dated response assessment is RECIST PD;
- ``new_lesion``: the latest dated assessment found a lesion absent at baseline;
- ``rising_marker``: a marker's two latest results moved the wrong way by more than its
  rule allows (`analytics.dashboard.markers`);
- ``awaiting_review``: a lesion measurement still awaits a radiologist (a finding
  rejected as a whole awaits nothing);
- ``needs_attention``: an assessment cannot be assessed or waits on a person
  (`ResponseAssessment.needs_attention`), or the latest run of a series could not carry
  a radiologist's corrections onto its new segmentation (run flag
  ``corrections_not_carried``) and no correction was made on that series since, or a
  rebuild dropped a radiologist's decision that no longer fits (a "carry_over" review
  event with ``needs_review``) and no radiologist has acted on the patient since;
- ``processing_failed``: a series of the patient is in state failed;

and, for the order "latest study first", the date of the latest dated study.

`worklist_flags_refresh` rewrites the rows of some patients inside the caller's
transaction; `analytics.apps` connects it to the three announcements of a change: the
responses written by every tracking rebuild and review (`responses_written`), every
write of lab results (`patients.signals.lab_results_changed`) and every write of a
study or of a series' state (`imaging.signals.patient_imaging_changed`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from django.db import router
from django.db.models import Exists, OuterRef, Subquery
from django.utils import timezone

from analytics.dashboard.markers import MarkerChange, rising_markers_load
from analytics.models import ResponseAssessment, WorklistFlags
from imaging.models import (
    LesionMeasurement,
    ProcessingRun,
    ReviewEvent,
    Segmentation,
    Series,
    Study,
)
from patients.models import Patient

#: Patients per refresh query: under SQLite's limit on bound parameters.
_CHUNK = 500
_FIELDS = (
    "last_recist",
    "last_assessment_date",
    "new_progression",
    "new_lesion",
    "rising_marker",
    "rising_markers",
    "awaiting_review",
    "needs_attention",
    "processing_failed",
    "last_study_date",
    "computed_at",
)


def worklist_flags_refresh(
    *, patient_pks: Iterable[int] | None = None, using: str | None = None
) -> int:
    """Rewrite the `WorklistFlags` of these patients (of every patient with None) from
    their responses, measurements and lab results; the number of rows written.

    Three queries per 500 patients (responses, reviews and imaging; markers; one
    upsert). Call it inside the transaction that changed what the flags rest on.
    """
    using = using or router.db_for_write(WorklistFlags)
    if patient_pks is None:
        pks = list(Patient.objects.using(using).order_by("pk").values_list("pk", flat=True))
    else:
        pks = sorted(set(patient_pks))
    written = 0
    for start in range(0, len(pks), _CHUNK):
        written += _refresh_some(pks[start : start + _CHUNK], using)
    return written


def _latest_assessment(field: str, *, assessed_only: bool = False) -> Subquery:
    """``field`` of the patient's latest dated assessment; with ``assessed_only`` the
    latest with a category other than NE."""
    rows = ResponseAssessment.objects.filter(
        patient=OuterRef("pk"), study__study_date__isnull=False
    )
    if assessed_only:
        rows = rows.exclude(recist_response__in=("", "NE"))
    return Subquery(rows.order_by("-study__study_date", "-pk").values(field)[:1])


def _decisions_left_behind() -> Exists:
    """A rebuild (new imaging, a study moved) dropped radiologists' decisions that no
    longer fit (a rejection, an acceptance, a hand-chosen target or link: the
    "carry_over" event's ``needs_review``), and no radiologist has acted on the patient
    since. Without this, a false positive a radiologist had rejected, outlined again by
    a new model a few millimetres away, came back as a new lesion and PD unflagged."""
    acted_since = ReviewEvent.objects.filter(
        patient=OuterRef("patient"), at__gt=OuterRef("at")
    ).exclude(action="carry_over")
    return Exists(
        ReviewEvent.objects.filter(
            patient=OuterRef("pk"), action="carry_over", after__needs_review=True
        ).exclude(Exists(acted_since))
    )


def _corrections_not_carried() -> Exists:
    """A series whose latest run left a radiologist's corrections behind, untouched since
    (a correction made on the series after the run means a person has looked). Only a
    later run that succeeded replaces it: one queued, running or failed has not shown
    anything new, and the corrections are still left behind."""
    later_run = ProcessingRun.objects.filter(
        series=OuterRef("series"), pk__gt=OuterRef("pk"), status=ProcessingRun.Status.SUCCEEDED
    )
    correction_since = Segmentation.objects.filter(
        series=OuterRef("series"), parent__isnull=False, created_at__gt=OuterRef("finished_at")
    )
    return Exists(
        ProcessingRun.objects.filter(
            series__study__patient=OuterRef("pk"), flags__has_key="corrections_not_carried"
        )
        .exclude(Exists(later_run))
        .exclude(Exists(correction_since))
    )


def _refresh_some(pks: list[int], using: str) -> int:
    patients = Patient.objects.using(using).filter(pk__in=pks)
    rows = patients.annotate(
        last_recist=_latest_assessment("recist_response"),
        # A follow-up that could not be assessed after a PD does not undo it (PD ends
        # the course): the progression stays flagged.
        last_assessed_recist=_latest_assessment("recist_response", assessed_only=True),
        last_new_lesions=_latest_assessment("new_lesions"),
        last_assessment_date=_latest_assessment("study__study_date"),
        awaiting_review=Exists(
            LesionMeasurement.objects.filter(
                lesion__patient=OuterRef("pk"), review_state=LesionMeasurement.Review.PENDING
            ).exclude(finding_state=LesionMeasurement.FindingState.REJECTED)
        ),
        needs_attention=Exists(
            ResponseAssessment.objects.filter(patient=OuterRef("pk"), needs_attention=True)
        )
        | _corrections_not_carried()
        | _decisions_left_behind(),
        processing_failed=Exists(
            Series.objects.filter(study__patient=OuterRef("pk"), state=Series.State.FAILED)
        ),
        last_study_date=Subquery(
            Study.objects.filter(patient=OuterRef("pk"), study_date__isnull=False)
            .order_by("-study_date")
            .values("study_date")[:1]
        ),
    ).values_list(
        "pk",
        "last_recist",
        "last_assessed_recist",
        "last_new_lesions",
        "last_assessment_date",
        "awaiting_review",
        "needs_attention",
        "processing_failed",
        "last_study_date",
    )
    markers = rising_markers_load(patients=patients)
    now = timezone.now()
    flags = [
        WorklistFlags(
            patient_id=pk,
            last_recist=recist or "",
            last_assessment_date=assessed,
            new_progression=assessed_recist == "PD",
            new_lesion=bool(new_lesions),
            rising_marker=pk in markers,
            rising_markers=[marker_to_json(m) for m in markers.get(pk, ())],
            awaiting_review=review,
            needs_attention=attention,
            processing_failed=failed,
            last_study_date=last_study,
            computed_at=now,
        )
        for (
            pk,
            recist,
            assessed_recist,
            new_lesions,
            assessed,
            review,
            attention,
            failed,
            last_study,
        ) in rows
    ]
    WorklistFlags.objects.using(using).bulk_create(
        flags, update_conflicts=True, unique_fields=["patient"], update_fields=list(_FIELDS)
    )
    return len(flags)


def marker_to_json(change: MarkerChange) -> dict[str, Any]:
    return {
        "key": change.key,
        "previous": change.previous,
        "latest": change.latest,
        "unit": change.unit,
        "previous_at": change.previous_at.isoformat(),
        "latest_at": change.latest_at.isoformat(),
        "previous_comparator": change.previous_comparator,
        "latest_comparator": change.latest_comparator,
    }


def markers_from_json(stored: list[dict[str, Any]] | None) -> tuple[MarkerChange, ...]:
    """The `MarkerChange`s a `WorklistFlags.rising_markers` holds, in its order."""
    return tuple(
        MarkerChange(
            key=m["key"],
            previous=m["previous"],
            latest=m["latest"],
            unit=m["unit"],
            previous_at=dt.datetime.fromisoformat(m["previous_at"]),
            latest_at=dt.datetime.fromisoformat(m["latest_at"]),
            previous_comparator=m.get("previous_comparator", ""),
            latest_comparator=m.get("latest_comparator", ""),
        )
        for m in stored or ()
    )


# -- receivers (connected in analytics.apps) -------------------------------------------
def worklist_flags_responses_receive(sender: Any, *, patient: Patient, **_signal: object) -> None:
    """A patient's responses were rebuilt (tracking or a review): their flags follow."""
    worklist_flags_refresh(patient_pks=[patient.pk])


def worklist_flags_patients_receive(
    sender: Any, *, patient_pks: frozenset[int], using: str, **_signal: object
) -> None:
    """Lab results, studies or series' states were written: these patients' flags follow."""
    worklist_flags_refresh(patient_pks=patient_pks, using=using)
