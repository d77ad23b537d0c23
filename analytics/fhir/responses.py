"""FHIR R4 resources of the response assessments: a `DiagnosticReport` per assessed study,
and the patient's best overall response (RECIST 1.1 and iRECIST) as `Observation`s.

A study's report:

- ``conclusion`` is the assessment's ``response_note`` (what the category rests on, why
  a study is NE, what is pending), or a summary of the categories and changes when the
  note is empty (a baseline, a plain follow-up);
- ``conclusionCode`` carries each category in its own code system: RECIST 1.1
  (including NE and, for non-target disease only, non-CR/non-PD), volumetric, and
  iRECIST when it applies to the patient; an NE says its reason in the concept's text;
- ``status`` is ``final`` when the response is final by the one rule HL7 v2 follows too
  (`analytics.lesions.finality`: reviewed, not NE, nothing pending or flagged, no
  provisional link), else ``preliminary``. A recomputation that changed a category
  (``revisions``) rides along, each as a `RESPONSE_REVISION_EXTENSION` with the field,
  the earlier and the new category, when and why; it does not make the report
  ``amended`` here: only a report the EHR already holds as final can be amended, and
  what the EHR holds is known where it is pushed (`analytics.fhir.push.fhir_push_plan`);
- ``progression_dated_from`` (PD resting on a new lesion dates from its first sighting,
  RECIST 1.1 section 4.3.5) is the `PROGRESSION_DATED_FROM_EXTENSION`.

The best overall response is an Observation, not a DiagnosticReport: it is one assessed
value about the patient, derived across every report rather than the findings of one
imaging study (a DiagnosticReport is tied to the tests it reports, with ``result`` and
``imagingStudy`` naming them). Its value is the category, ``effectiveDateTime`` the date
of the time point it rests on, ``derivedFrom`` that study, ``note`` why, ``method`` the
confirmation and minimum stable-disease intervals used. One Observation per criterion
(RECIST 1.1, and iRECIST when it applies), each with its own code.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from analytics.fhir.codes import (
    BEST_RESPONSE,
    IMAGING_REPORT,
    IRECIST_BEST_RESPONSE,
    IRECIST_DISPLAY,
    IRECIST_SYSTEM,
    OBSERVATION_CATEGORY,
    PROGRESSION_DATED_FROM_EXTENSION,
    RECIST_DISPLAY,
    RECIST_SYSTEM,
    RESPONSE_REVISION_EXTENSION,
    V2_DIAGNOSTIC_SERVICE,
    VOLUMETRIC_SYSTEM,
)
from analytics.fhir.ids import best_response_fhir_id, patient_fhir_id, response_fhir_id
from analytics.fhir.validation import FHIRBuildError, fhir_resource_validate
from analytics.models import BestOverallResponse, ResponseAssessment

__all__ = ["fhir_best_responses_build", "fhir_response_build"]

#: Each category field of an assessment: (field, code system, displays, name).
_CATEGORIES = (
    ("recist_response", RECIST_SYSTEM, RECIST_DISPLAY, "RECIST 1.1"),
    ("volumetric_response", VOLUMETRIC_SYSTEM, RECIST_DISPLAY, "Volumetric"),
    ("irecist_response", IRECIST_SYSTEM, IRECIST_DISPLAY, "iRECIST"),
)
_FIELD_NAMES = {name: what for name, _, _, what in _CATEGORIES}
_NOT_EVALUABLE = "not evaluable: "


def _ref(resource_type: str, resource_id: str) -> dict:
    return {"reference": f"{resource_type}/{resource_id}"}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f}%"


def _summary(a: ResponseAssessment) -> str:
    """The categories and changes in one sentence (a conclusion without a note)."""
    if a.is_baseline:
        return (
            f"Baseline: sum of diameters {a.sum_diameters_mm or 0:.1f} mm, "
            f"total volume {a.total_volume_ml or 0:.2f} mL."
        )
    text = (
        f"RECIST 1.1: {a.recist_response or 'not assessed'} "
        f"({_pct(a.pct_change_baseline)} from baseline, {_pct(a.pct_change_nadir)} from "
        f"nadir sum of diameters); volumetric: {a.volumetric_response or 'not assessed'}; "
    )
    if a.irecist_response:
        text += f"iRECIST: {a.irecist_response}; "
    return text + f"new lesions: {'yes' if a.new_lesions else 'no'}."


def not_evaluable_reason(a: ResponseAssessment) -> str:
    """Why the study is NE, as its notes say (the whole note when none says it alone)."""
    for note in a.notes or []:
        if isinstance(note, str) and note.startswith(_NOT_EVALUABLE):
            return note[len(_NOT_EVALUABLE) :]
    return (a.response_note or "").removeprefix(_NOT_EVALUABLE)


def _category_codes(a: ResponseAssessment) -> list[dict]:
    codes = []
    for name, system, displays, what in _CATEGORIES:
        value = getattr(a, name, "") or ""
        if not value:
            continue
        if value not in displays:
            raise FHIRBuildError(
                f"response assessment {a.pk}: {what} category {value!r} is not one of "
                f"{', '.join(displays)}"
            )
        text = f"{what}: {displays[value]}"
        reason = not_evaluable_reason(a) if value == "NE" else ""
        if reason:
            text += f" ({reason})"
        codes.append(
            {
                "coding": [{"system": system, "code": value, "display": displays[value]}],
                "text": text,
            }
        )
    return codes


def _revision_extensions(a: ResponseAssessment) -> list[dict]:
    """One extension per recorded revision: what changed, from, to, when and why."""
    out = []
    for revision in a.revisions or []:
        if not isinstance(revision, dict):
            continue
        parts = [
            ("field", _FIELD_NAMES.get(revision.get("field", ""), str(revision.get("field", "")))),
            ("from", str(revision.get("from", ""))),
            ("to", str(revision.get("to", ""))),
            ("reason", str(revision.get("reason", ""))),
        ]
        extension = [{"url": key, "valueString": value} for key, value in parts if value]
        at = revision.get("at")
        if at:
            extension.append({"url": "at", "valueDateTime": str(at)})
        out.append({"url": RESPONSE_REVISION_EXTENSION, "extension": extension})
    return out


def fhir_response_build(
    *,
    assessment: ResponseAssessment,
    measurement_ids: Iterable[str] = (),
    final: bool = False,
) -> dict:
    """DiagnosticReport: the response assessment of one study (module docstring).

    ``measurement_ids`` are the ids of the study's measurement groups; ``final`` whether
    the response is final (`analytics.lesions.finality.response_is_final`).
    """
    a = assessment
    resource: dict = {
        "resourceType": "DiagnosticReport",
        "id": response_fhir_id(a.study.study_instance_uid),
        "status": "final" if final else "preliminary",
        "category": [
            {"coding": [{"system": V2_DIAGNOSTIC_SERVICE, "code": "RAD", "display": "Radiology"}]}
        ],
        "code": {
            "coding": [dict(zip(("system", "code", "display"), IMAGING_REPORT, strict=True))],
            "text": "Tumour response assessment (RECIST 1.1, volumetric)",
        },
        "subject": _ref("Patient", patient_fhir_id(a.patient_id)),
        "issued": a.computed_at.isoformat(),
        "imagingStudy": [_ref("ImagingStudy", f"study-{a.study_id}")],
        "result": [_ref("Observation", group_id) for group_id in measurement_ids],
        "conclusion": (a.response_note or "").strip() or _summary(a),
    }
    if a.study.study_date:
        resource["effectiveDateTime"] = a.study.study_date.isoformat()
    codes = _category_codes(a)
    if codes:
        resource["conclusionCode"] = codes
    extensions = _revision_extensions(a)
    if a.progression_dated_from:
        extensions.append(
            {
                "url": PROGRESSION_DATED_FROM_EXTENSION,
                "valueDate": a.progression_dated_from.isoformat(),
            }
        )
    if extensions:
        resource["extension"] = extensions
    if not resource["result"]:
        del resource["result"]
    return fhir_resource_validate(resource)


# --------------------------------------------------------------------------- best response
def _method_text(settings: dict, criterion: str) -> str:
    days = settings.get("confirmation_days")
    min_sd = settings.get("min_sd_days")
    confirmed = settings.get("require_confirmation", True)
    text = f"{criterion} best overall response"
    if confirmed and days:
        text += f"; CR and PR confirmed at least {days} days later"
    elif not confirmed:
        text += "; CR and PR without confirmation"
    if min_sd:
        text += f"; stable disease at least {min_sd} days after baseline"
    return text


def _best_response(
    best: BestOverallResponse,
    *,
    irecist: bool,
    studies_by_date: dict[dt.date, list[int]],
    all_reviewed: bool,
) -> dict:
    category = best.irecist if irecist else best.recist
    date = best.irecist_date if irecist else best.recist_date
    note = best.irecist_note if irecist else best.recist_note
    concept, system, displays, criterion = (
        (IRECIST_BEST_RESPONSE, IRECIST_SYSTEM, IRECIST_DISPLAY, "iRECIST")
        if irecist
        else (BEST_RESPONSE, RECIST_SYSTEM, RECIST_DISPLAY, "RECIST 1.1")
    )
    if category not in displays:
        raise FHIRBuildError(
            f"best overall response of patient {best.patient_id}: {criterion} category "
            f"{category!r} is not one of {', '.join(displays)}"
        )
    resource: dict = {
        "resourceType": "Observation",
        "id": best_response_fhir_id(best.patient_id, irecist=irecist),
        "status": "final" if all_reviewed else "preliminary",
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "imaging"}]}],
        "code": {"coding": [dict(zip(("system", "code", "display"), concept, strict=True))]},
        "subject": _ref("Patient", patient_fhir_id(best.patient_id)),
        "issued": best.computed_at.isoformat(),
        "valueCodeableConcept": {
            "coding": [{"system": system, "code": category, "display": displays[category]}],
            "text": f"{criterion}: {displays[category]}",
        },
        "method": {"text": _method_text(best.settings or {}, criterion)},
    }
    if date is not None:
        resource["effectiveDateTime"] = date.isoformat()
        studies = studies_by_date.get(date, [])
        if studies:
            resource["derivedFrom"] = [_ref("ImagingStudy", f"study-{pk}") for pk in studies]
    if note:
        resource["note"] = [{"text": note}]
    return fhir_resource_validate(resource)


def fhir_best_responses_build(
    *,
    best: BestOverallResponse | None,
    assessments: Iterable[ResponseAssessment],
    all_reviewed: bool = False,
) -> list[dict]:
    """The patient's best overall response Observations: RECIST 1.1, then iRECIST when it
    applies (none before a follow-up is assessed). ``assessments`` place each date on its
    studies; ``all_reviewed``: every measurement of the patient signed off."""
    if best is None or not best.recist:
        return []
    studies_by_date: dict[dt.date, list[int]] = {}
    for a in assessments:
        if a.study.study_date is not None:
            studies_by_date.setdefault(a.study.study_date, []).append(a.study_id)
    out = [
        _best_response(
            best, irecist=False, studies_by_date=studies_by_date, all_reviewed=all_reviewed
        )
    ]
    if best.irecist:
        out.append(
            _best_response(
                best, irecist=True, studies_by_date=studies_by_date, all_reviewed=all_reviewed
            )
        )
    return out
