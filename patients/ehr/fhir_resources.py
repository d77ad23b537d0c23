"""FHIR R4 resources, once validated and their subject found, as records before matching.

- ``Patient``: its identifiers (`patients.ehr.identifiers`: the MRN is the one in
  ``RADTRACK_MRN_SYSTEM``; others are kept as identifiers); ``birthDate`` and ``gender``
  fill a matched patient's blanks (a disagreement is reported, never overwritten);
  ``deceasedDateTime`` is a death event; ``deceasedBoolean`` false withdraws one stored.
- ``Observation`` with a LOINC code of `patients.units` and a ``valueQuantity``: a lab,
  its ``comparator`` (a censored result, ``<0.5``) kept; each ``component`` with such a
  code is a lab too, and every other component is named as skipped. Other codes are
  skipped and reported; so is a panel (``hasMember``), whose members are entries of
  their own.
- ``Observation`` LOINC 97509-4 (cancer disease progression) with value SNOMED
  271299001 (condition worsened), or coded `EVENT_SYSTEM` ``progression``: progression;
  `EVENT_SYSTEM` ``censor``: last follow-up alive.
- ``Condition`` coded SNOMED 271299001 or `EVENT_SYSTEM` ``progression``: progression
  at its onset (else recorded) date.
- Only Observations with status final, amended or corrected count. One
  ``entered-in-error`` (withdrawn after release), and a progression Condition
  ``refuted`` or ``entered-in-error``, retract what an earlier import stored of it. The time is
  ``effectiveDateTime``, ``effectiveInstant`` or ``effectivePeriod.start``; an
  Observation without one takes that of the DiagnosticReport or panel that lists it
  (``inherited``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from patients.ehr.identifiers import V2_IDENTIFIER_TYPE, Identifier, Subject
from patients.ehr.records import (
    DemographicsRecord,
    EHRImportResult,
    EHRRecord,
    EventRecord,
    LabRecord,
    Problem,
    RetractionRecord,
)
from patients.models import Patient
from patients.units import ANALYTES, CODE_ALIASES

__all__ = [
    "EVENT_SYSTEM",
    "Effective",
    "ObservationContext",
    "condition_record",
    "observation_effective",
    "observation_records",
    "patient_records",
    "patient_subject",
]

EVENT_SYSTEM = "https://radtrack.example/fhir/CodeSystem/clinical-event"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
URI_SYSTEM = "urn:ietf:rfc:3986"
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
#: FHIR R4 QuantityComparator.
COMPARATORS = {"<", "<=", ">=", ">"}
GENDER_TO_SEX = {
    "male": Patient.Sex.MALE,
    "female": Patient.Sex.FEMALE,
    "other": Patient.Sex.OTHER,
    "unknown": Patient.Sex.UNKNOWN,
}
VERIFICATION_NOT_TRUE = {"refuted", "entered-in-error"}


@dataclass(frozen=True)
class Effective:
    """When an Observation was made, and where that time came from (its own, or the
    DiagnosticReport or panel that lists it)."""

    value: Any
    origin: str = ""


def _codings(concept: Any) -> list[tuple[str | None, str | None]]:
    if concept is None:
        return []
    return [(c.system, c.code) for c in (concept.coding or [])]


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


def observation_effective(obj: Any) -> Any:
    """An Observation's or DiagnosticReport's own time: effectiveDateTime,
    effectiveInstant (Observation only) or the start of effectivePeriod; else None."""
    for name in ("effectiveDateTime", "effectiveInstant"):
        value = getattr(obj, name, None)
        if value is not None:
            return value
    period = getattr(obj, "effectivePeriod", None)
    return period.start if period is not None else None


# --------------------------------------------------------------------------------------
# Patient
# --------------------------------------------------------------------------------------
def patient_subject(obj: Any) -> Subject:
    """The identifiers of a Patient resource (those with a value), in order."""
    identifiers = []
    for identifier in obj.identifier or []:
        if not identifier.value or not identifier.value.strip():
            continue
        type_codes = [code for system, code in _codings(identifier.type) if code]
        v2 = [c for s, c in _codings(identifier.type) if s == V2_IDENTIFIER_TYPE and c]
        identifiers.append(
            Identifier(
                system=(identifier.system or "").strip(),
                value=identifier.value.strip(),
                type_code=(v2 or type_codes or [""])[0],
            )
        )
    return Subject(tuple(identifiers))


def patient_records(
    obj: Any, where: str, subject: Subject, payload: dict, result: EHRImportResult
) -> list[EHRRecord]:
    """A Patient's demographics and, with a ``deceasedDateTime``, its death event; with
    ``deceasedBoolean`` false, the withdrawal of any death stored for it."""
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
            subject,
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
                EventRecord(where, subject, "Patient.deceased", payload, kind="death", date=date)
            )
    elif obj.deceasedBoolean:
        result.skipped.append(Problem(where, "deceasedBoolean without a date: no death event"))
    elif obj.deceasedBoolean is False:
        # Alive: a death an earlier import stored (recorded in error) is withdrawn.
        out.append(RetractionRecord(where, subject, "Patient.deceased", payload, kind="death"))
    return out


# --------------------------------------------------------------------------------------
# Observation
# --------------------------------------------------------------------------------------
@dataclass
class ObservationContext:
    """What reading one Observation needs besides the resource: where it is, its subject,
    its time (own or inherited), its payload and fullUrl, where problems go, and when the
    source last updated it (``meta.lastUpdated``, its container's for a contained one)."""

    where: str
    subject: Subject
    effective: Effective | None
    payload: dict
    full_url: str | None
    result: EHRImportResult
    last_updated: dt.datetime | None = None

    @property
    def skipped(self) -> list[Problem]:
        return self.result.skipped

    @property
    def rejected(self) -> list[Problem]:
        return self.result.rejected


def _lab_codes(codings: list[tuple[str | None, str | None]]) -> list[str]:
    return [c for s, c in codings if s == LOINC and c and (c in ANALYTES or c in CODE_ALIASES)]


def _shown_codes(codings: list[tuple[str | None, str | None]]) -> str:
    return ", ".join(f"{s}|{c}" for s, c in codings) or "no coding"


def observation_records(obj: Any, ctx: ObservationContext) -> list[EHRRecord]:
    """A final Observation as an event, a lab, or labs from its components (module doc)."""
    if obj.status not in OBSERVATION_STATUS:
        ctx.rejected.append(
            Problem(ctx.where, f"field status: {obj.status!r} is not an Observation status")
        )
        return []
    if obj.status == "entered-in-error":
        return _observation_retractions(obj, ctx)
    if obj.status not in OBSERVATION_STATUS_USED:
        ctx.skipped.append(Problem(ctx.where, f"status {obj.status!r}: not a final result"))
        return []
    codings = _codings(obj.code)
    loinc_codes = [code for system, code in codings if system == LOINC and code]
    own_codes = {code for system, code in codings if system == EVENT_SYSTEM}
    if LOINC_DISEASE_PROGRESSION in loinc_codes or own_codes & {"progression", "censor"}:
        event = _observation_event(obj, ctx, own_codes)
        return [event] if event is not None else []
    records: list[EHRRecord] = []
    lab_codes = _lab_codes(codings)
    if lab_codes:
        lab = _lab_record(obj.valueQuantity, obj, ctx, lab_codes[0], ctx.where)
        if lab is not None:
            records.append(lab)
    components = _component_records(obj, ctx)
    records += components
    if not lab_codes and not components and not (obj.component or []):
        if obj.hasMember:
            ctx.skipped.append(
                Problem(
                    ctx.where,
                    f"a panel ({_shown_codes(codings)}): its {len(obj.hasMember)} members are "
                    "read as entries of their own",
                )
            )
        else:
            ctx.skipped.append(
                Problem(ctx.where, f"not a lab test RadTrack uses ({_shown_codes(codings)})")
            )
    return records


def _observation_retractions(obj: Any, ctx: ObservationContext) -> list[EHRRecord]:
    """An Observation withdrawn after release (``entered-in-error``): what it gave,
    as retractions (a lab per code it and its components carry, or a progression)."""
    codings = _codings(obj.code)
    own_codes = {code for system, code in codings if system == EVENT_SYSTEM}
    when = ctx.effective.value if ctx.effective else None
    common = (ctx.where, ctx.subject, "Observation", ctx.payload)
    if LOINC_DISEASE_PROGRESSION in {c for s, c in codings if s == LOINC} or "progression" in (
        own_codes
    ):
        date = _as_date(when)
        if date is None:
            ctx.rejected.append(
                Problem(ctx.where, "field effectiveDateTime: a retracted event needs its date")
            )
            return []
        return [RetractionRecord(*common, kind="progression", date=date)]
    out: list[EHRRecord] = []
    holders = [(obj, ctx.where, _lab_codes(codings))] + [
        (c, f"{ctx.where} component[{i}]", _lab_codes(_codings(c.code)))
        for i, c in enumerate(obj.component or [])
    ]
    for holder, where, codes in holders:
        if not codes:
            continue
        identifiers = _result_identifiers(holder, ctx.full_url)
        if where != ctx.where:
            identifiers = [{**i, "component": where.rsplit(" ", 1)[-1]} for i in identifiers]
        out.append(
            RetractionRecord(
                where,
                ctx.subject,
                "Observation",
                ctx.payload,
                loinc_code=codes[0],
                observed_at=_as_datetime(when),
                identifiers=identifiers,
            )
        )
    if not out:
        ctx.skipped.append(Problem(ctx.where, "entered in error, and not a result RadTrack uses"))
    return out


def _component_records(obj: Any, ctx: ObservationContext) -> list[EHRRecord]:
    """Each component with a RadTrack LOINC code as a lab; every other one named as skipped."""
    records: list[EHRRecord] = []
    for index, component in enumerate(obj.component or []):
        where = f"{ctx.where} component[{index}]"
        codings = _codings(component.code)
        codes = _lab_codes(codings)
        if not codes:
            ctx.skipped.append(
                Problem(where, f"component not a lab test RadTrack uses ({_shown_codes(codings)})")
            )
            continue
        lab = _lab_record(component.valueQuantity, component, ctx, codes[0], where)
        if lab is not None:
            records.append(lab)
    return records


def _observation_event(obj: Any, ctx: ObservationContext, own_codes: set) -> EventRecord | None:
    """A disease-status Observation: censoring, progression, or skipped if not worsened."""
    date = _as_date(ctx.effective.value) if ctx.effective else None
    if date is None:
        ctx.rejected.append(
            Problem(ctx.where, "field effectiveDateTime: a full date is needed for an event")
        )
        return None
    if "censor" in own_codes:
        return EventRecord(
            ctx.where, ctx.subject, "Observation", ctx.payload, kind="censor", date=date
        )
    worsened = (SNOMED, SNOMED_CONDITION_WORSENED) in _codings(obj.valueCodeableConcept)
    if "progression" in own_codes or worsened:
        return EventRecord(
            ctx.where, ctx.subject, "Observation", ctx.payload, kind="progression", date=date
        )
    ctx.skipped.append(Problem(ctx.where, "disease status is not 'condition worsened'"))
    return None


def _result_identifiers(obj: Any, full_url: str | None) -> list[dict[str, str]]:
    """The sender's identifiers of an Observation, and its absolute fullUrl."""
    out = [
        {"system": i.system or "", "value": i.value}
        for i in (getattr(obj, "identifier", None) or [])
        if i.value
    ]
    if full_url and not full_url.startswith("urn:uuid:"):
        out.append({"system": URI_SYSTEM, "value": full_url})
    return out


def _lab_record(
    quantity: Any, holder: Any, ctx: ObservationContext, loinc_code: str, where: str
) -> LabRecord | None:
    """A lab's value, comparator, unit and time; rejected when one of them is missing."""
    if quantity is None or quantity.value is None:
        absent = _codings(getattr(holder, "dataAbsentReason", None))
        if absent:
            ctx.skipped.append(
                Problem(where, f"no value: dataAbsentReason {absent[0][1] or 'given'}")
            )
        else:
            ctx.rejected.append(Problem(where, "field valueQuantity: a lab needs a value"))
        return None
    comparator = quantity.comparator or ""
    if comparator and comparator not in COMPARATORS:
        ctx.rejected.append(
            Problem(where, f"field valueQuantity.comparator: {comparator!r} is not <, <=, >= or >")
        )
        return None
    unit = quantity.code if quantity.system == UCUM and quantity.code else quantity.unit
    if not unit:
        ctx.rejected.append(Problem(where, "field valueQuantity: no unit (code or unit)"))
        return None
    observed_at = _as_datetime(ctx.effective.value) if ctx.effective else None
    if observed_at is None:
        ctx.rejected.append(
            Problem(
                where,
                "field effective[x]: a lab needs a full date or date-time (its own, or its "
                "DiagnosticReport's)",
            )
        )
        return None
    identifiers = _result_identifiers(holder, ctx.full_url) if holder is not None else []
    if where != ctx.where:
        identifiers = [{**i, "component": where.rsplit(" ", 1)[-1]} for i in identifiers]
    return LabRecord(
        where,
        ctx.subject,
        "Observation",
        ctx.payload,
        loinc_code=loinc_code,
        value=float(quantity.value),
        unit=unit,
        observed_at=observed_at,
        comparator=comparator,
        identifiers=identifiers,
        last_updated=ctx.last_updated,
    )


# --------------------------------------------------------------------------------------
# Condition
# --------------------------------------------------------------------------------------
def condition_record(
    obj: Any, where: str, subject: Subject, payload: dict, result: EHRImportResult
) -> EHRRecord | None:
    """A progression Condition as an event; anything else skipped (module docstring)."""
    codings = set(_codings(obj.code))
    if not ({(SNOMED, SNOMED_CONDITION_WORSENED), (EVENT_SYSTEM, "progression")} & codings):
        result.skipped.append(Problem(where, "Condition is not a progression"))
        return None
    verification = {code for _, code in _codings(obj.verificationStatus)}
    date = _as_date(obj.onsetDateTime) or _as_date(obj.recordedDate)
    if date is None and verification & VERIFICATION_NOT_TRUE:
        result.skipped.append(
            Problem(where, f"verificationStatus {sorted(verification)}, and no date to retract by")
        )
        return None
    if date is None:
        result.rejected.append(
            Problem(where, "field onsetDateTime: a progression needs a full onset or recorded date")
        )
        return None
    if verification & VERIFICATION_NOT_TRUE:
        # Refuted or entered in error: a progression RadTrack may hold from an earlier
        # import is withdrawn.
        return RetractionRecord(where, subject, "Condition", payload, kind="progression", date=date)
    return EventRecord(where, subject, "Condition", payload, kind="progression", date=date)
