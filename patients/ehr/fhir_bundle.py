"""Reading a FHIR R4 Bundle of labs and outcome events into records, before matching.

Each entry's resource is parsed with ``fhir.resources.R4B``; a resource that fails is
rejected with its entry index, type, id and the field at fault, and the rest of the
bundle is still read. Code values that library does not check (Observation.status,
Patient.gender, Condition.verificationStatus) are checked here.

- ``Patient``: the MRN is the identifier typed ``MR`` (v2-0203), else the one in
  `MRN_SYSTEM`, else the only identifier; ``birthDate`` and ``gender`` fill a matched
  patient's blanks (a disagreement is reported, never overwritten); ``deceasedDateTime``
  is a death event.
- ``Observation`` with a LOINC code of `patients.units` and a ``valueQuantity``:
  a lab, converted to the code's canonical unit (an unknown unit is rejected); other
  LOINC codes are skipped and reported.
- ``Observation`` LOINC 97509-4 (cancer disease progression) with value SNOMED
  271299001 (condition worsened), or coded `EVENT_SYSTEM` ``progression``: progression;
  `EVENT_SYSTEM` ``censor``: last follow-up alive.
- ``Condition`` coded SNOMED 271299001 or `EVENT_SYSTEM` ``progression``: progression
  at its onset (else recorded) date.
- Only Observations with status final, amended or corrected count.
- A subject is found by the entry's ``fullUrl``, ``Patient/<id>``, or a logical
  reference carrying the MRN in ``subject.identifier``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from patients.ehr.records import (
    DemographicsRecord,
    EHRImportError,
    EHRImportResult,
    EHRRecord,
    EventRecord,
    LabRecord,
    Problem,
)
from patients.models import Patient
from patients.units import ANALYTES, CODE_ALIASES

__all__ = ["EVENT_SYSTEM", "MRN_SYSTEM", "bundle_records"]

MRN_SYSTEM = "https://radtrack.example/fhir/sid/mrn"
EVENT_SYSTEM = "https://radtrack.example/fhir/CodeSystem/clinical-event"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
V2_IDENTIFIER_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0203"
LOINC_DISEASE_PROGRESSION = "97509-4"
SNOMED_CONDITION_WORSENED = "271299001"

# FHIR R4 value sets that fhir.resources does not enforce.
OBSERVATION_STATUS = {
    "registered",
    "preliminary",
    "final",
    "amended",
    "corrected",
    "cancelled",
    "entered-in-error",
    "unknown",
}
OBSERVATION_STATUS_USED = {"final", "amended", "corrected"}
GENDER_TO_SEX = {
    "male": Patient.Sex.MALE,
    "female": Patient.Sex.FEMALE,
    "other": Patient.Sex.OTHER,
    "unknown": Patient.Sex.UNKNOWN,
}
VERIFICATION_NOT_TRUE = {"refuted", "entered-in-error"}


def _field_path(loc: Iterable[Any]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(resource)"


def _validation_reason(exc: ValidationError) -> str:
    parts = [f"field {_field_path(e['loc'])}: {e['msg']}" for e in exc.errors()[:3]]
    more = len(exc.errors()) - 3
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _codings(concept: Any) -> list[tuple[str | None, str | None]]:
    if concept is None:
        return []
    return [(c.system, c.code) for c in (concept.coding or [])]


def _mrn_of(patient: Any) -> str | None:
    identifiers = [i for i in (patient.identifier or []) if i.value]
    typed = [
        i
        for i in identifiers
        if i.type is not None and ("MR" in {code for _, code in _codings(i.type)})
    ]
    if typed:
        return typed[0].value.strip()
    by_system = [i for i in identifiers if i.system == MRN_SYSTEM]
    if by_system:
        return by_system[0].value.strip()
    if len(identifiers) == 1:
        return identifiers[0].value.strip()
    return None


def _as_datetime(value: Any) -> dt.datetime | None:
    """A FHIR dateTime as an aware UTC datetime; a full date means midnight UTC; else None."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC) if value.tzinfo else None
    if isinstance(value, dt.date):
        return dt.datetime.combine(value, dt.time(0, 0), tzinfo=dt.UTC)
    return None


def _as_date(value: Any) -> dt.date | None:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return None


# --------------------------------------------------------------------------------------
# The Bundle and its entries
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _ParsedEntry:
    """A Bundle entry whose resource validated: where it is, the model, the entry as read."""

    where: str
    resource: Any
    entry: dict


def bundle_records(*, text: str, result: EHRImportResult) -> list[EHRRecord]:
    """The labs, events and demographics of a FHIR R4 Bundle (module docstring).

    Entries that cannot be used are added to ``result`` as skipped or rejected, with the
    reason; `EHRImportError` when ``text`` is not a FHIR Bundle at all.
    """
    parsed = _entries_parse(_bundle_entries(text, result), result)
    # Patients first, so that references can be resolved whatever the entry order.
    subjects: dict[str, str] = {}
    records = _patient_entries_read(parsed, subjects, result)
    records += _clinical_entries_read(parsed, subjects, result)
    return records


def _bundle_entries(text: str, result: EHRImportResult) -> list:
    """The entries of the Bundle in ``text``, once the Bundle itself (without them) validates."""
    try:
        bundle = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EHRImportError(
            f"{result.source_name} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
            f"{exc.msg})"
        ) from exc
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        kind = bundle.get("resourceType") if isinstance(bundle, dict) else type(bundle).__name__
        raise EHRImportError(f"{result.source_name} is not a FHIR Bundle (resourceType {kind!r})")
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise EHRImportError(f"{result.source_name}: Bundle.entry is not a list")
    result.records = len(entries)
    try:
        get_fhir_model_class("Bundle").model_validate({**bundle, "entry": []})
    except ValidationError as exc:
        raise EHRImportError(f"{result.source_name}: Bundle {_validation_reason(exc)}") from exc
    return entries


def _entries_parse(entries: list, result: EHRImportResult) -> list[_ParsedEntry]:
    """Each entry's resource validated against its R4B model; the others rejected."""
    parsed: list[_ParsedEntry] = []
    for index, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            result.rejected.append(Problem(f"entry[{index}]", "entry has no resource object"))
            continue
        rtype = str(resource.get("resourceType", ""))
        where = f"entry[{index}] {rtype or '(no resourceType)'}"
        if resource.get("id"):
            where += f"/{resource['id']}"
        try:
            model = get_fhir_model_class(rtype)
        except (ValueError, KeyError):
            result.rejected.append(Problem(where, f"unknown FHIR R4 resourceType {rtype!r}"))
            continue
        try:
            obj = model.model_validate(resource)
        except ValidationError as exc:
            result.rejected.append(Problem(where, _validation_reason(exc)))
            continue
        parsed.append(_ParsedEntry(where, obj, entry | {"resource": resource}))
    return parsed


def _patient_entries_read(
    parsed: list[_ParsedEntry], subjects: dict[str, str], result: EHRImportResult
) -> list[EHRRecord]:
    """The Patients' records; each Patient's references are added to ``subjects`` (to MRN)."""
    records: list[EHRRecord] = []
    for item in parsed:
        obj = item.resource
        if obj.get_resource_type() != "Patient":
            continue
        mrn = _mrn_of(obj)
        if mrn is None:
            result.rejected.append(
                Problem(
                    item.where,
                    "field identifier: no MRN (no identifier typed MR, nor a single one)",
                )
            )
            continue
        for key in (item.entry.get("fullUrl"), f"Patient/{obj.id}" if obj.id else None):
            if key:
                subjects[key] = mrn
        records += _patient_records(obj, item.where, mrn, item.entry["resource"], result)
    return records


def _clinical_entries_read(
    parsed: list[_ParsedEntry], subjects: dict[str, str], result: EHRImportResult
) -> list[EHRRecord]:
    """The Observations' and Conditions' records; other resource types are skipped."""
    records: list[EHRRecord] = []
    for item in parsed:
        obj, where = item.resource, item.where
        rtype = obj.get_resource_type()
        if rtype == "Patient":
            continue
        if rtype not in {"Observation", "Condition"}:
            result.skipped.append(Problem(where, f"{rtype} resources are not imported"))
            continue
        mrn = _subject_mrn(obj.subject, subjects)
        if mrn is None:
            reference = obj.subject.reference if obj.subject else None
            result.rejected.append(
                Problem(
                    where,
                    f"field subject: {reference!r} is not a Patient in this bundle "
                    "(include the Patient, or give subject.identifier with the MRN)",
                )
            )
            continue
        payload = item.entry["resource"]
        if rtype == "Observation":
            record = _observation_record(obj, where, mrn, payload, result)
        else:
            record = _condition_record(obj, where, mrn, payload, result)
        if record is not None:
            records.append(record)
    return records


def _subject_mrn(subject: Any, subjects: dict[str, str]) -> str | None:
    if subject is None:
        return None
    if subject.reference:
        reference = subject.reference
        if reference in subjects:
            return subjects[reference]
        tail = "/".join(reference.rstrip("/").split("/")[-2:])  # absolute URL -> Patient/id
        if tail in subjects:
            return subjects[tail]
    identifier = subject.identifier
    if identifier is not None and identifier.value:
        return identifier.value.strip()
    return None


def _patient_records(
    obj: Any, where: str, mrn: str, payload: dict, result: EHRImportResult
) -> list[EHRRecord]:
    out: list[EHRRecord] = []
    gender = obj.gender
    if gender is not None and gender not in GENDER_TO_SEX:
        result.rejected.append(
            Problem(where, f"field gender: {gender!r} is not male, female, other or unknown")
        )
        return out
    birth = obj.birthDate if isinstance(obj.birthDate, dt.date) else None
    if obj.birthDate is not None and birth is None:
        result.notes.append(f"{where}: partial birthDate {obj.birthDate!r} not used")
    out.append(
        DemographicsRecord(
            where,
            mrn,
            "Patient",
            payload,
            birth_date=birth,
            sex=GENDER_TO_SEX[gender] if gender else None,
        )
    )
    if obj.deceasedDateTime is not None:
        date = _as_date(obj.deceasedDateTime)
        if date is None:
            result.rejected.append(
                Problem(
                    where, f"field deceasedDateTime: {obj.deceasedDateTime!r} is not a full date"
                )
            )
        else:
            out.append(
                EventRecord(where, mrn, "Patient.deceased", payload, kind="death", date=date)
            )
    elif obj.deceasedBoolean:
        result.skipped.append(Problem(where, "deceasedBoolean without a date: no death event"))
    return out


def _observation_record(
    obj: Any, where: str, mrn: str, payload: dict, result: EHRImportResult
) -> EHRRecord | None:
    """A final Observation as a progression or censoring event, or as a lab."""
    if obj.status not in OBSERVATION_STATUS:
        result.rejected.append(
            Problem(where, f"field status: {obj.status!r} is not an Observation status")
        )
        return None
    if obj.status not in OBSERVATION_STATUS_USED:
        result.skipped.append(Problem(where, f"status {obj.status!r}: not a final result"))
        return None
    codings = _codings(obj.code)
    loinc_codes = [code for system, code in codings if system == LOINC and code]
    own_codes = {code for system, code in codings if system == EVENT_SYSTEM}
    effective = obj.effectiveDateTime
    if effective is None and obj.effectivePeriod is not None:
        effective = obj.effectivePeriod.start
    if LOINC_DISEASE_PROGRESSION in loinc_codes or own_codes & {"progression", "censor"}:
        return _observation_event(obj, where, mrn, payload, result, own_codes, effective)
    lab_codes = [c for c in loinc_codes if c in ANALYTES or c in CODE_ALIASES]
    if not lab_codes:
        shown = ", ".join(f"{s}|{c}" for s, c in codings) or "no coding"
        result.skipped.append(Problem(where, f"not a lab test RadTrack uses ({shown})"))
        return None
    return _observation_lab(obj, where, mrn, payload, result, lab_codes[0], effective)


def _observation_event(
    obj: Any,
    where: str,
    mrn: str,
    payload: dict,
    result: EHRImportResult,
    own_codes: set[str | None],
    effective: Any,
) -> EventRecord | None:
    """A disease-status Observation: censoring, progression, or skipped if not worsened."""
    date = _as_date(effective)
    if date is None:
        result.rejected.append(
            Problem(where, "field effectiveDateTime: a full date is needed for an event")
        )
        return None
    if "censor" in own_codes:
        return EventRecord(where, mrn, "Observation", payload, kind="censor", date=date)
    worsened = (SNOMED, SNOMED_CONDITION_WORSENED) in _codings(obj.valueCodeableConcept)
    if "progression" in own_codes or worsened:
        return EventRecord(where, mrn, "Observation", payload, kind="progression", date=date)
    result.skipped.append(Problem(where, "disease status is not 'condition worsened'"))
    return None


def _observation_lab(
    obj: Any,
    where: str,
    mrn: str,
    payload: dict,
    result: EHRImportResult,
    loinc_code: str,
    effective: Any,
) -> LabRecord | None:
    """A lab Observation's value, unit and time; rejected when any of them is missing."""
    quantity = obj.valueQuantity
    if quantity is None or quantity.value is None:
        result.rejected.append(Problem(where, "field valueQuantity: a lab needs a value"))
        return None
    unit = quantity.code if quantity.system == UCUM and quantity.code else quantity.unit
    if not unit:
        result.rejected.append(Problem(where, "field valueQuantity: no unit (code or unit)"))
        return None
    observed_at = _as_datetime(effective)
    if observed_at is None:
        result.rejected.append(
            Problem(where, "field effectiveDateTime: a lab needs a full date or date-time")
        )
        return None
    return LabRecord(
        where,
        mrn,
        "Observation",
        payload,
        loinc_code=loinc_code,
        value=float(quantity.value),
        unit=unit,
        observed_at=observed_at,
    )


def _condition_record(
    obj: Any, where: str, mrn: str, payload: dict, result: EHRImportResult
) -> EHRRecord | None:
    codings = set(_codings(obj.code))
    if not ({(SNOMED, SNOMED_CONDITION_WORSENED), (EVENT_SYSTEM, "progression")} & codings):
        result.skipped.append(Problem(where, "Condition is not a progression"))
        return None
    verification = {code for _, code in _codings(obj.verificationStatus)}
    if verification & VERIFICATION_NOT_TRUE:
        result.skipped.append(Problem(where, f"verificationStatus {sorted(verification)}"))
        return None
    date = _as_date(obj.onsetDateTime) or _as_date(obj.recordedDate)
    if date is None:
        result.rejected.append(
            Problem(where, "field onsetDateTime: a progression needs a full onset or recorded date")
        )
        return None
    return EventRecord(where, mrn, "Condition", payload, kind="progression", date=date)
