"""EHR data in: a FHIR R4 Bundle, or the labs/events CSVs ``generate_cohort`` writes.

What is read
------------
FHIR R4 Bundle (JSON), each entry's resource parsed with ``fhir.resources.R4B``; a
resource that fails is rejected with its entry index, type, id and the field at fault,
and the rest of the bundle is still read. Code values that library does not check
(Observation.status, Patient.gender, Condition.verificationStatus) are checked here.

- ``Patient``: the MRN is the identifier typed ``MR`` (v2-0203), else the only
  identifier; ``birthDate`` and ``gender`` fill a matched patient's blanks (a
  disagreement is reported, never overwritten); ``deceasedDateTime`` is a death event.
- ``Observation`` with a LOINC code of `analytics.core.units` and a ``valueQuantity``:
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

CSV: ``labs.csv`` (``patient_id, loinc_code, value, unit, observed_at`` and optional
``display``) and ``events.csv`` (``patient_id, kind, date``), told apart by header.
Date-times need a UTC offset; a date alone means midnight UTC.

What is written
---------------
Patients are matched by MRN (`Patient.patient_id`) and never created here. A record
whose MRN matches no patient is stored, as received, in `UnmatchedEHRRecord` and counted
as unmatched. Each file is one transaction. A lab is keyed by (patient, LOINC code,
observed_at) and an event by (patient, kind, date), so importing the same data again
creates nothing: it is counted as unchanged; a lab whose value changed (an amended
result) is updated.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db import transaction
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from patients.models import ClinicalEvent, LabResult, Patient, UnmatchedEHRRecord
from patients.units import ANALYTES, CODE_ALIASES, UnitError, lab_value_to_canonical

__all__ = ["EHRImportError", "EHRImportResult", "Problem", "ehr_import"]

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
LAB_CSV_COLUMNS = {"patient_id", "loinc_code", "value", "unit", "observed_at"}
EVENT_CSV_COLUMNS = {"patient_id", "kind", "date"}

ProgressCallback = Callable[[int, int], None]


class EHRImportError(Exception):
    """The file as a whole cannot be read (not UTF-8, not JSON, not a Bundle, unknown CSV)."""


@dataclass(frozen=True)
class Problem:
    """Where a record is (``entry[3] Observation/abc``, ``labs.csv line 7``) and why it was not used."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class EHRImportResult:
    """Counts per outcome, the MRNs that matched nobody, and every skip and rejection.

    ``records`` counts bundle entries or CSV rows read; ``created``, ``updated``,
    ``unchanged`` and ``unmatched`` count the records derived from them (a Patient with
    a ``deceasedDateTime`` gives two: its demographics and a death event).
    """

    source_name: str
    format: str
    records: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    unmatched: int = 0
    unmatched_identifiers: set[str] = field(default_factory=set)
    skipped: list[Problem] = field(default_factory=list)
    rejected: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    created_by_type: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        return (
            f"{self.source_name} ({self.format}): {self.records} records: "
            f"{self.created} created, {self.updated} updated, {self.unchanged} unchanged, "
            f"{self.unmatched} unmatched ({len(self.unmatched_identifiers)} unknown MRNs), "
            f"{len(self.skipped)} skipped, {len(self.rejected)} rejected"
        )


# --------------------------------------------------------------------------------------
# Parsed records, before matching
# --------------------------------------------------------------------------------------
@dataclass
class _Record:
    where: str
    mrn: str
    record_type: str
    payload: dict[str, Any]


@dataclass
class _Lab(_Record):
    loinc_code: str = ""
    value: float = math.nan
    unit: str = ""
    observed_at: dt.datetime | None = None


@dataclass
class _Event(_Record):
    kind: str = ""
    date: dt.date | None = None


@dataclass
class _Demographics(_Record):
    birth_date: dt.date | None = None
    sex: str | None = None


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------
def ehr_import(
    *,
    path_or_bytes: Path | str | bytes,
    source_name: str | None = None,
    on_progress: ProgressCallback | None = None,
) -> EHRImportResult:
    """Import one FHIR R4 Bundle or cohort CSV file (module docstring); one transaction.

    ``source_name`` is stored on every row written (default: the file name).
    Raises `EHRImportError` when the file as a whole cannot be read.
    """
    if isinstance(path_or_bytes, bytes):
        data, name = path_or_bytes, source_name or "upload"
    else:
        path = Path(path_or_bytes)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise EHRImportError(f"cannot read {path}: {exc.strerror or exc}") from exc
        name = source_name or path.name
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise EHRImportError(f"{name} is not UTF-8 text (byte {exc.start})") from exc
    if not text.strip():
        raise EHRImportError(f"{name} is empty")
    if text.lstrip().startswith("{"):
        result = EHRImportResult(name, "FHIR Bundle")
        records = _bundle_records(text, result)
    else:
        records = _csv_records(text, name, result := EHRImportResult(name, "CSV"))
    with transaction.atomic():
        _apply(records, result, name, on_progress)
    return result


# --------------------------------------------------------------------------------------
# FHIR
# --------------------------------------------------------------------------------------
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


def _bundle_records(text: str, result: EHRImportResult) -> list[_Record]:
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

    parsed: list[tuple[int, str, Any, dict]] = []
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
        parsed.append((index, where, obj, entry | {"resource": resource}))

    # Patients first, so that references can be resolved whatever the entry order.
    subjects: dict[str, str] = {}
    records: list[_Record] = []
    for _, where, obj, entry in parsed:
        if obj.get_resource_type() != "Patient":
            continue
        mrn = _mrn_of(obj)
        if mrn is None:
            result.rejected.append(
                Problem(
                    where, "field identifier: no MRN (no identifier typed MR, nor a single one)"
                )
            )
            continue
        for key in (entry.get("fullUrl"), f"Patient/{obj.id}" if obj.id else None):
            if key:
                subjects[key] = mrn
        records += _patient_records(obj, where, mrn, entry["resource"], result)

    for _, where, obj, entry in parsed:
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
        payload = entry["resource"]
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
) -> list[_Record]:
    out: list[_Record] = []
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
        _Demographics(
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
            out.append(_Event(where, mrn, "Patient.deceased", payload, kind="death", date=date))
    elif obj.deceasedBoolean:
        result.skipped.append(Problem(where, "deceasedBoolean without a date: no death event"))
    return out


def _observation_record(
    obj: Any, where: str, mrn: str, payload: dict, result: EHRImportResult
) -> _Record | None:
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
        date = _as_date(effective)
        if date is None:
            result.rejected.append(
                Problem(where, "field effectiveDateTime: a full date is needed for an event")
            )
            return None
        if "censor" in own_codes:
            return _Event(where, mrn, "Observation", payload, kind="censor", date=date)
        worsened = (SNOMED, SNOMED_CONDITION_WORSENED) in _codings(obj.valueCodeableConcept)
        if "progression" in own_codes or worsened:
            return _Event(where, mrn, "Observation", payload, kind="progression", date=date)
        result.skipped.append(Problem(where, "disease status is not 'condition worsened'"))
        return None

    lab_codes = [c for c in loinc_codes if c in ANALYTES or c in CODE_ALIASES]
    if not lab_codes:
        shown = ", ".join(f"{s}|{c}" for s, c in codings) or "no coding"
        result.skipped.append(Problem(where, f"not a lab test RadTrack uses ({shown})"))
        return None
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
    return _Lab(
        where,
        mrn,
        "Observation",
        payload,
        loinc_code=lab_codes[0],
        value=float(quantity.value),
        unit=unit,
        observed_at=observed_at,
    )


def _condition_record(
    obj: Any, where: str, mrn: str, payload: dict, result: EHRImportResult
) -> _Record | None:
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
    return _Event(where, mrn, "Condition", payload, kind="progression", date=date)


# --------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------
def _parse_csv_datetime(text: str) -> dt.datetime:
    text = text.strip()
    if len(text) == 10:
        return dt.datetime.combine(dt.date.fromisoformat(text), dt.time(0, 0), tzinfo=dt.UTC)
    value = dt.datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError("date-time without a UTC offset")
    return value.astimezone(dt.UTC)


def _csv_records(text: str, name: str, result: EHRImportResult) -> list[_Record]:
    reader = csv.DictReader(io.StringIO(text))
    header = {h.strip() for h in (reader.fieldnames or [])}
    if header >= LAB_CSV_COLUMNS:
        result.format, kind = "labs CSV", "lab"
    elif header >= EVENT_CSV_COLUMNS:
        result.format, kind = "events CSV", "event"
    else:
        raise EHRImportError(
            f"{name}: columns {sorted(header)} are neither labs.csv "
            f"({', '.join(sorted(LAB_CSV_COLUMNS))}) nor events.csv "
            f"({', '.join(sorted(EVENT_CSV_COLUMNS))})"
        )
    records: list[_Record] = []
    for row in reader:
        result.records += 1
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
        where = f"{name} line {reader.line_num}"
        mrn = row.get("patient_id", "")
        if not mrn:
            result.rejected.append(Problem(where, "column patient_id is empty"))
            continue
        if kind == "lab":
            try:
                value = float(row["value"])
            except ValueError:
                result.rejected.append(
                    Problem(where, f"column value: {row['value']!r} is not a number")
                )
                continue
            try:
                observed_at = _parse_csv_datetime(row["observed_at"])
            except ValueError as exc:
                result.rejected.append(
                    Problem(where, f"column observed_at: {row['observed_at']!r}: {exc}")
                )
                continue
            records.append(
                _Lab(
                    where,
                    mrn,
                    "labs.csv",
                    row,
                    loinc_code=row["loinc_code"],
                    value=value,
                    unit=row["unit"],
                    observed_at=observed_at,
                )
            )
        else:
            event_kind = row["kind"].lower()
            if event_kind not in ClinicalEvent.Kind.values:
                result.rejected.append(
                    Problem(
                        where,
                        f"column kind: {row['kind']!r} is not one of "
                        f"{', '.join(ClinicalEvent.Kind.values)}",
                    )
                )
                continue
            try:
                date = dt.date.fromisoformat(row["date"][:10])
            except ValueError:
                result.rejected.append(
                    Problem(where, f"column date: {row['date']!r} is not a date")
                )
                continue
            records.append(_Event(where, mrn, "events.csv", row, kind=event_kind, date=date))
    return records


# --------------------------------------------------------------------------------------
# Matching and writing
# --------------------------------------------------------------------------------------
def _fingerprint(record: _Record) -> str:
    text = json.dumps(
        {"type": record.record_type, "mrn": record.mrn, "payload": record.payload},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _apply(
    records: list[_Record],
    result: EHRImportResult,
    source: str,
    on_progress: ProgressCallback | None,
) -> None:
    patients = Patient.objects.in_bulk({r.mrn for r in records}, field_name="patient_id")
    matched_ids = [p.pk for p in patients.values()]
    labs = {
        (lab.patient_id, lab.loinc_code, lab.observed_at): lab
        for lab in LabResult.objects.filter(patient_id__in=matched_ids)
    }
    events = {
        (e.patient_id, e.kind, e.date)
        for e in ClinicalEvent.objects.filter(patient_id__in=matched_ids).only(
            "patient_id", "kind", "date"
        )
    }
    new_labs: list[LabResult] = []
    new_events: list[ClinicalEvent] = []
    unmatched_seen: set[str] = set()
    total = len(records)
    for done, record in enumerate(records, start=1):
        if on_progress:
            on_progress(done, total)
        patient = patients.get(record.mrn)
        if patient is None:
            _keep_unmatched(record, result, source, unmatched_seen)
            continue
        if isinstance(record, _Lab):
            try:
                canonical = lab_value_to_canonical(
                    loinc_code=record.loinc_code, value=record.value, unit=record.unit
                )
            except UnitError as exc:
                result.rejected.append(Problem(record.where, str(exc)))
                continue
            key = (patient.pk, canonical.loinc_code, record.observed_at)
            existing = labs.get(key)
            if existing is None:
                lab = LabResult(
                    patient=patient,
                    loinc_code=canonical.loinc_code,
                    value=canonical.value,
                    unit=canonical.unit,
                    observed_at=record.observed_at,
                    source=source,
                )
                labs[key] = lab
                new_labs.append(lab)
                result.created += 1
                result.created_by_type["lab"] += 1
            elif math.isclose(existing.value, canonical.value, rel_tol=1e-9, abs_tol=0.0) and (
                existing.unit == canonical.unit
            ):
                result.unchanged += 1
            else:
                existing.value, existing.unit, existing.source = (
                    canonical.value,
                    canonical.unit,
                    source,
                )
                if existing.pk is not None:
                    existing.save(update_fields=["value", "unit", "source"])
                result.updated += 1
        elif isinstance(record, _Event):
            key = (patient.pk, record.kind, record.date)
            if key in events:
                result.unchanged += 1
                continue
            events.add(key)
            new_events.append(
                ClinicalEvent(patient=patient, kind=record.kind, date=record.date, source=source)
            )
            result.created += 1
            result.created_by_type[record.kind] += 1
        elif isinstance(record, _Demographics):
            _apply_demographics(patient, record, result)
    LabResult.objects.bulk_create(new_labs, batch_size=500)
    ClinicalEvent.objects.bulk_create(new_events, batch_size=500)


def _apply_demographics(patient: Patient, record: _Demographics, result: EHRImportResult) -> None:
    changed = []
    for name, value in (("birth_date", record.birth_date), ("sex", record.sex)):
        if value in (None, ""):
            continue
        current = getattr(patient, name)
        if current in (None, ""):
            setattr(patient, name, value)
            changed.append(name)
        elif current != value:
            result.notes.append(
                f"{record.where}: {name} differs from the patient's record; kept the record's"
            )
    if changed:
        patient.save(update_fields=changed)
        result.updated += 1
    else:
        result.unchanged += 1


def _keep_unmatched(record: _Record, result: EHRImportResult, source: str, seen: set[str]) -> None:
    fingerprint = _fingerprint(record)
    result.unmatched += 1
    result.unmatched_identifiers.add(record.mrn)
    if fingerprint in seen:
        return
    seen.add(fingerprint)
    UnmatchedEHRRecord.objects.get_or_create(
        fingerprint=fingerprint,
        defaults={
            "source": source,
            "record_type": record.record_type,
            "patient_identifier": record.mrn[:64],
            "payload": record.payload,
            "reason": "MRN matches no patient",
        },
    )
