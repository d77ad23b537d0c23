"""FHIR R4 MedicationStatement, MedicationAdministration and MedicationRequest, once
validated and their subject found, as `MedicationRecord`s (`patients.ehr.medications`).

- The medication is ``medicationCodeableConcept``, or the Medication that
  ``medicationReference`` names (contained, ``#id``, or another entry or NDJSON line, by
  the R4 rules of `patients.ehr.fhir_references`): its ``code``, else its ingredients'
  ``itemCodeableConcept``. A reference that names nothing in the file is read from its
  ``display`` if it has one, else rejected. Codings are kept as received; ATC, RxNorm or
  SNOMED CT codes name a medication on their own, any other needs a text or display.
- Dates: a statement's and an administration's ``effectiveDateTime`` or
  ``effectivePeriod`` (start and end), a request's ``authoredOn``; a partial date (a
  month) is not used, and says so. A statement or request without a date is kept
  undated.
- The status must be one of the resource's FHIR status codes; every status is kept
  (`patients.ehr.medications.TREATED_STATUSES` says which ones count as having had it).
- The record is keyed by its first identifier, else its absolute fullUrl, else its
  ``Type/id``, else its content.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from patients.ehr.checkpoint_inhibitors import Coding, checkpoint_inhibitor_match
from patients.ehr.fhir_references import FhirEntry, ReferenceResolver
from patients.ehr.identifiers import Subject
from patients.ehr.medications import (
    KIND_OF_RESOURCE,
    STATUSES,
    MedicationRecord,
    medication_content_identity,
    medication_name,
    medication_name_problem,
)
from patients.ehr.records import EHRImportResult, Problem

__all__ = ["MEDICATION_RESOURCE_TYPES", "medication_records"]

#: The resource types read as medications.
MEDICATION_RESOURCE_TYPES = frozenset(KIND_OF_RESOURCE)
URI_SYSTEM = "urn:ietf:rfc:3986"


class _Rejected(ValueError):
    """The resource cannot be read; the message names the field and why."""


def _codings(concept: Any) -> list[Coding]:
    if concept is None:
        return []
    return [
        Coding((c.system or "").strip(), (c.code or "").strip(), (c.display or "").strip())
        for c in (concept.coding or [])
        if c.code or c.display
    ]


def _medication(
    entry: FhirEntry, resolver: ReferenceResolver
) -> tuple[tuple[Coding, ...], str, str]:
    """The medication's codings, its text, and the field they came from."""
    model = entry.model
    concept = model.medicationCodeableConcept
    if concept is not None:
        return tuple(_codings(concept)), (concept.text or "").strip(), "medicationCodeableConcept"
    reference = model.medicationReference
    if reference is None:
        raise _Rejected("field medication[x]: no medication given")
    target = resolver.resolve(reference.reference, entry)
    if target is None:
        if reference.display and reference.display.strip():
            return (), reference.display.strip(), "medicationReference.display"
        raise _Rejected(
            f"field medicationReference: {reference.reference!r} is not in this file "
            "(include the Medication, contained or as an entry, or give a display)"
        )
    if target.resource_type != "Medication":
        raise _Rejected(
            f"field medicationReference: names a {target.resource_type}, not a Medication"
        )
    medication = target.model
    codings = _codings(medication.code)
    text = (medication.code.text or "").strip() if medication.code is not None else ""
    if not codings and not text:  # a compound named by its ingredients
        items = [i.itemCodeableConcept for i in medication.ingredient or []]
        codings = [c for item in items for c in _codings(item)]
        text = " / ".join(item.text.strip() for item in items if item and item.text)
    return tuple(codings), text, f"medicationReference ({target.where})"


def _date(value: Any, field: str, where: str, result: EHRImportResult) -> dt.date | None:
    """A FHIR date or dateTime as a date; a partial one is noted and not used."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    result.notes.append(f"{where}: partial {field} {value!r} not used")
    return None


def _dates(entry: FhirEntry, result: EHRImportResult) -> tuple[dt.date | None, dt.date | None]:
    model, where = entry.model, entry.where
    if entry.resource_type == "MedicationRequest":
        return _date(model.authoredOn, "authoredOn", where, result), None
    if model.effectiveDateTime is not None:
        return _date(model.effectiveDateTime, "effectiveDateTime", where, result), None
    period = model.effectivePeriod
    if period is None:
        return None, None
    start = _date(period.start, "effectivePeriod.start", where, result)
    end = _date(period.end, "effectivePeriod.end", where, result)
    if start is not None and end is not None and end < start:
        raise _Rejected("field effectivePeriod: its end is before its start")
    return start, end


def _identifiers(entry: FhirEntry) -> list[dict[str, str]]:
    """The sender's identifiers of the record, its absolute fullUrl and its Type/id."""
    out = [
        {"system": (i.system or "").strip(), "value": i.value.strip()}
        for i in (entry.model.identifier or [])
        if i.value and i.value.strip()
    ]
    if entry.full_url and not entry.full_url.startswith("urn:uuid:"):
        out.append({"system": URI_SYSTEM, "value": entry.full_url})
    elif entry.resource_id and entry.container is None:
        out.append({"system": "", "value": f"{entry.resource_type}/{entry.resource_id}"})
    return out


def medication_records(
    entry: FhirEntry, subject: Subject, resolver: ReferenceResolver, result: EHRImportResult
) -> list[MedicationRecord]:
    """The medication of one validated resource (module docstring); [] after rejecting it."""
    kind = KIND_OF_RESOURCE[entry.resource_type]
    status = entry.model.status
    if status not in STATUSES[kind]:
        result.rejected.append(
            Problem(entry.where, f"field status: {status!r} is not a {entry.resource_type} status")
        )
        return []
    try:
        codings, text, origin = _medication(entry, resolver)
        problem = medication_name_problem(codings, text)
        if problem:
            raise _Rejected(f"field {origin.split(' ')[0]}: {problem}")
        started_on, ended_on = _dates(entry, result)
    except _Rejected as exc:
        result.rejected.append(Problem(entry.where, str(exc)))
        return []
    if kind == "administration" and started_on is None:
        result.rejected.append(
            Problem(entry.where, "field effective[x]: an administration needs a full date")
        )
        return []
    name = medication_name(codings, text)
    identifiers = _identifiers(entry)
    identity = (
        f"id:{identifiers[0]['system']}|{identifiers[0]['value']}"
        if identifiers
        else medication_content_identity(
            codings=codings, name=name, started_on=started_on, ended_on=ended_on
        )
    )
    return [
        MedicationRecord(
            entry.where,
            subject,
            entry.resource_type,
            entry.resource,
            kind=kind,
            status=status,
            name=name,
            codings=codings,
            started_on=started_on,
            ended_on=ended_on,
            identifiers=identifiers,
            identity=identity,
            checkpoint=checkpoint_inhibitor_match(codings=codings, text=text),
        )
    ]
