"""The RECIST 1.1, volumetric and (when it applies) iRECIST response of every study of a
patient, and the patient's best overall response, recomputed from the measurements in
force and stored as `ResponseAssessment` and `BestOverallResponse` rows.

Rows are updated in place, study by study: a category that changes (a later study
confirmed an equivocal new lesion, so PD is dated from its first sighting; a review)
keeps its earlier value in ``revisions`` with when, why and what caused it. A study
whose lesions cannot be followed (no segmentation), or whose links are provisional,
gets a row too: NE, with the reason.

Once a patient's rows are written, `responses_written` is sent (inside the writing
transaction), so that what answers to a new or changed response (the HL7 results out,
`analytics.hl7.events`) can act on it without this layer importing upward.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import numpy as np
from django.conf import settings
from django.dispatch import Signal
from django.utils import timezone

from analytics.lesions.core.bor import BestResponseSettings
from analytics.lesions.core.patient import PatientResponses, patient_responses_assess
from analytics.lesions.core.readings import StudyReading, timeline_from_measurements
from analytics.lesions.core.timepoints import time_point_notes, time_points_merge
from analytics.lesions.selectors import measurements_table
from analytics.lesions.tracking.chain import baseline_time_point
from analytics.models import (
    BestOverallResponse,
    ResponseAssessment,
    ResponseSettings,
    StudyResponseReview,
)
from imaging.models import Study
from patients.models import Patient

#: Sent after `responses_recompute` wrote a patient's responses, before the transaction
#: commits: ``patient`` and ``assessments`` (every study's row as written). Receivers
#: that act outside the database queue that work with ``transaction.on_commit``.
responses_written = Signal()


def best_response_settings() -> BestResponseSettings:
    """The confirmation interval and minimum duration of stable disease in force
    (settings ``RADTRACK_RECIST_*``; RECIST 1.1 sections 4.4.3 and 4.6)."""
    return BestResponseSettings(
        confirmation_days=getattr(settings, "RADTRACK_RECIST_CONFIRMATION_DAYS", 28),
        min_sd_days=getattr(settings, "RADTRACK_RECIST_MIN_SD_DAYS", 42),
        require_confirmation=getattr(settings, "RADTRACK_RECIST_REQUIRE_CONFIRMATION", True),
    )


def irecist_applies(patient: Patient) -> bool:
    """Whether a clinician set iRECIST for ``patient`` (`ResponseSettings`)."""
    return ResponseSettings.objects.filter(patient=patient, irecist=True).exists()


def responses_recompute(
    *,
    patient: Patient,
    chain: Sequence[Any] = (),
    gaps: Sequence[Any] = (),
    trigger: str = "recomputed",
) -> list[ResponseAssessment]:
    """Recompute the responses of every study of ``patient`` (module docstring).

    ``chain``: the studies followed (`analytics.lesions.tracking.chain.StudyInput`, with
    the slice thickness and why their links are provisional; without it, the studies
    with measurements, as read); ``gaps``: the studies not
    followed (`StudyGap`), each NE with its reason. Rejected findings are left out; a
    radiologist's overrides and verdicts are in force. ``trigger``: what caused it, for
    the record of any revision.
    """
    read, undated = _timeline(patient, chain)
    timeline, members = time_points_merge(read)
    disagreements = time_point_notes(read)
    result = patient_responses_assess(
        timeline=timeline, irecist=irecist_applies(patient), settings=best_response_settings()
    )
    existing = {r.study_id: r for r in ResponseAssessment.objects.filter(patient=patient)}
    studies = {
        s.study_instance_uid: s
        for s in Study.objects.filter(patient=patient).only(
            "pk", "study_instance_uid", "study_date"
        )
    }
    kept: list[ResponseAssessment] = []
    for index, reading in enumerate(timeline):
        values = _values(result, index, reading)
        if index == 0:
            _baseline_substitution_note(values, reading.study_date, gaps)
        uids = members[reading.study_uid]
        if len(uids) > 1:
            _one_time_point_note(values, len(uids), disagreements.get(reading.study_uid, ()))
        for uid in uids:  # the same-day studies share the time point's assessment
            study = studies[uid]
            row = existing.pop(study.pk, None)
            kept.append(
                _save(patient, study, row, {**values, "notes": list(values["notes"])}, trigger)
            )
    for study, reason in [*((g.study, g.reason) for g in gaps), *undated]:
        if study.pk in {r.study_id for r in kept}:
            continue
        values = _not_evaluable_values(reason)
        kept.append(_save(patient, study, existing.pop(study.pk, None), values, trigger))
    for stale in existing.values():
        stale.delete()
    _best_save(patient, result)
    responses_written.send(sender=ResponseAssessment, patient=patient, assessments=kept)
    return kept


def _timeline(patient: Patient, chain: Sequence[Any]) -> tuple[list[StudyReading], list]:
    """The patient's dated studies as readings (every study followed, with or without
    lesions), and the undated ones with the reason they cannot be assessed."""
    table = measurements_table(patient_ids=[patient.patient_id], include_rejected=False)
    read = {s.study_uid: s for s in timeline_from_measurements(table).get(patient.patient_id, ())}
    verdicts = dict(
        StudyResponseReview.objects.filter(study__patient=patient).values_list(
            "study_id", "non_target_progression"
        )
    )
    study_pk = dict(Study.objects.filter(patient=patient).values_list("study_instance_uid", "pk"))
    timeline, undated = [], []
    if not chain:  # no rebuild said which studies it followed: those with measurements
        for reading in read.values():
            verdict = verdicts.get(study_pk.get(reading.study_uid))
            timeline.append(
                StudyReading(**{**reading.__dict__, "non_target_unequivocal_progression": verdict})
            )
        return timeline, undated
    # Every response is measured from the baseline (every study of its date, one time
    # point): when its CT numbers cannot be trusted, neither can a comparison with it.
    baseline = baseline_time_point(chain)
    baseline_unreliable = next(
        (f"its baseline's {e.unreliable.removeprefix('its ')}" for e in baseline if e.unreliable),
        "",
    )
    baseline_studies = {e.study.pk for e in baseline}
    for entry in chain:
        study = entry.study
        if study.study_date is None:
            undated.append((study, "the study has no date, so it cannot be placed in time"))
            continue
        base = read.get(study.study_instance_uid)
        later = study.pk not in baseline_studies
        reasons = (entry.provisional, entry.unreliable, baseline_unreliable if later else "")
        timeline.append(
            StudyReading(
                study_uid=study.study_instance_uid,
                study_date=study.study_date,
                lesions=base.lesions if base is not None else (),
                non_target_unequivocal_progression=verdicts.get(study.pk),
                not_evaluable=tuple(r for r in reasons if r),
                slice_thickness_mm=entry.slice_thickness_mm,
            )
        )
    return timeline, undated


def _values(result: PatientResponses, index: int, reading: StudyReading) -> dict[str, Any]:
    """The stored fields of one study's assessment."""
    r, v = result.recist[index], result.volumetric[index]
    i = result.irecist[index] if result.irecist is not None else None
    notes = list(r.notes)
    if i is not None and i.notes:
        notes += [f"iRECIST: {n}" for n in i.notes]
    if v.category == "NE" and not r.is_baseline and not reading.not_evaluable:
        notes.append("volumetric NE: a lesion's volume is not known at this study")
    total = finite_or_none(r.sum_diameters_mm)
    if r.targets_not_evaluated and total is not None:
        # A partial sum is not the sum of the targets: shown, charted or sent on as one
        # it would read as a response nobody measured.
        measured = len(r.target_uids) - r.targets_not_evaluated
        notes.append(
            f"sum of diameters unknown: {r.targets_not_evaluated} of {len(r.target_uids)} "
            f"targets not evaluated (the {measured} measured sum to {total:.1f} mm)"
        )
        total = None
    return {
        "is_baseline": r.is_baseline,
        "sum_diameters_mm": total,
        "total_volume_ml": finite_or_none(v.total_volume_ml),
        "pct_change_baseline": finite_or_none(r.pct_change_baseline),
        "pct_change_nadir": finite_or_none(r.pct_change_nadir),
        "recist_response": r.category or "",
        "volumetric_response": v.category or "",
        "irecist_response": (i.category or "") if i is not None else "",
        "new_lesions": r.new_lesions,
        "pending_new_lesions": len(r.pending),
        "possible_non_target_progression": r.possible_non_target_progression,
        "progression_dated_from": r.progression_dated_from,
        "needs_attention": r.attention,
        "response_note": "; ".join(notes),
        "notes": notes,
        "inputs": {
            "lesions": len(reading.lesions),
            "targets": list(r.target_uids),
            "non_targets": list(r.non_target_uids),
            "new_lesions": list(r.new_lesion_uids),
            "pending": [p.lesion_uid for p in r.pending],
            "category_as_read": r.category_as_read,
        },
    }


def _baseline_substitution_note(
    values: dict[str, Any], baseline_date: dt.date, gaps: Sequence[Any]
) -> None:
    """The baseline is the first study followed; when an earlier study could not be
    analysed (failed, or still without a segmentation), that earlier one may be the
    pre-treatment scan the responses should be measured from. Said on the baseline row,
    which then needs attention, rather than every later response resting on it quietly."""
    earlier = sorted(
        (g for g in gaps if g.study.study_date is not None and g.study.study_date < baseline_date),
        key=lambda g: g.study.study_date,
    )
    if not earlier:
        return
    which = "; ".join(f"{g.study.study_date} ({g.reason})" for g in earlier)
    note = (
        f"baseline taken from this study, but an earlier study could not be analysed: "
        f"{which}. If that was the pre-treatment scan, the responses are measured from the "
        "wrong baseline until it is analysed"
    )
    values["notes"] = [note, *values["notes"]]
    values["response_note"] = "; ".join(values["notes"])
    values["needs_attention"] = True


def _one_time_point_note(
    values: dict[str, Any], studies: int, disagreements: Sequence[str] = ()
) -> None:
    """Studies of one date are one time point (`core.timepoints`): each row says so, and
    names the lesions its studies measure materially apart, which a person should look
    at (which reading is used can change the response)."""
    values["notes"] = [
        *values["notes"],
        f"one time point with the other {studies - 1} "
        f"{'study' if studies == 2 else 'studies'} of this date (read together)",
        *disagreements,
    ]
    values["response_note"] = "; ".join(values["notes"])
    if disagreements:
        values["needs_attention"] = True


def _not_evaluable_values(reason: str) -> dict[str, Any]:
    note = f"not evaluable: {reason}"
    return {
        "is_baseline": False,
        "sum_diameters_mm": None,
        "total_volume_ml": None,
        "pct_change_baseline": None,
        "pct_change_nadir": None,
        "recist_response": "NE",
        "volumetric_response": "NE",
        "irecist_response": "",
        "new_lesions": False,
        "pending_new_lesions": 0,
        "possible_non_target_progression": False,
        "progression_dated_from": None,
        "needs_attention": True,
        "response_note": note,
        "notes": [note],
        "inputs": {"lesions": 0},
    }


#: Fields whose change is recorded as a revision of the study's assessment.
_REVISED = ("recist_response", "irecist_response", "volumetric_response")


def _save(
    patient: Patient,
    study: Study,
    row: ResponseAssessment | None,
    values: dict[str, Any],
    trigger: str,
) -> ResponseAssessment:
    """Write one study's assessment in place, recording any revised category."""
    if row is None:
        return ResponseAssessment.objects.create(patient=patient, study=study, **values)
    revisions = list(row.revisions or [])
    for name in _REVISED:
        before, after = getattr(row, name), values[name]
        if before and before != after:
            revisions.append(
                {
                    "at": timezone.now().isoformat(),
                    "field": name,
                    "from": before,
                    "to": after,
                    "reason": f"{trigger}; now: {values['response_note'] or 'no note'}",
                }
            )
    for name, value in values.items():
        setattr(row, name, value)
    row.revisions = revisions
    row.save()
    return row


def _best_save(patient: Patient, result: PatientResponses) -> None:
    """The patient's best overall response (none before a follow-up is assessed)."""
    best, best_i = result.best, result.best_irecist
    if best is None or len(result.recist) < 2:
        BestOverallResponse.objects.filter(patient=patient).delete()
        return
    BestOverallResponse.objects.update_or_create(
        patient=patient,
        defaults={
            "recist": best.category,
            "recist_date": best.date,
            "recist_note": best.note,
            "irecist": best_i.category if best_i else "",
            "irecist_date": best_i.date if best_i else None,
            "irecist_note": best_i.note if best_i else "",
            "settings": best_response_settings().as_dict(),
        },
    )


def finite_or_none(value: object) -> float | None:
    """``value`` as a float, or None when it is not a finite number (the database and
    JSON hold no NaN or infinity)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None
