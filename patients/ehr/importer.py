"""EHR data in: one FHIR R4 Bundle or cohort CSV file, matched to patients and written.

Reading is in `patients.ehr.fhir_bundle` and `patients.ehr.csv_files`; this module
writes what they read. Patients are matched by MRN (`Patient.patient_id`) and never
created here. A record whose MRN matches no patient is stored, as received, in
`UnmatchedEHRRecord` and counted as unmatched. Each file is one transaction. A lab is
keyed by (patient, LOINC code, observed_at) and an event by (patient, kind, date), so
importing the same data again creates nothing: it is counted as unchanged; a lab whose
value changed (an amended result) is updated.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from django.db import transaction

from patients.ehr.csv_files import csv_records
from patients.ehr.fhir_bundle import bundle_records
from patients.ehr.records import (
    DemographicsRecord,
    EHRImportError,
    EHRImportResult,
    EHRRecord,
    EventRecord,
    LabRecord,
    Problem,
)
from patients.models import ClinicalEvent, LabResult, Patient, UnmatchedEHRRecord
from patients.units import UnitError, lab_value_to_canonical

__all__ = ["ProgressCallback", "ehr_import"]

ProgressCallback = Callable[[int, int], None]


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
        records = bundle_records(text=text, result=result)
    else:
        result = EHRImportResult(name, "CSV")
        records = csv_records(text=text, name=name, result=result)
    with transaction.atomic():
        _apply(records, result, name, on_progress)
    return result


# --------------------------------------------------------------------------------------
# Matching and writing
# --------------------------------------------------------------------------------------
@dataclass
class _Known:
    """The matched patients' labs and events already stored, and the rows to create."""

    labs: dict[tuple[int, str, dt.datetime], LabResult]
    events: set[tuple[int, str, dt.date]]
    new_labs: list[LabResult] = field(default_factory=list)
    new_events: list[ClinicalEvent] = field(default_factory=list)


def _apply(
    records: list[EHRRecord],
    result: EHRImportResult,
    source: str,
    on_progress: ProgressCallback | None,
) -> None:
    patients = Patient.objects.in_bulk({r.mrn for r in records}, field_name="patient_id")
    matched_ids = [p.pk for p in patients.values()]
    known = _Known(
        labs={
            (lab.patient_id, lab.loinc_code, lab.observed_at): lab
            for lab in LabResult.objects.filter(patient_id__in=matched_ids)
        },
        events={
            (e.patient_id, e.kind, e.date)
            for e in ClinicalEvent.objects.filter(patient_id__in=matched_ids).only(
                "patient_id", "kind", "date"
            )
        },
    )
    unmatched_seen: set[str] = set()
    total = len(records)
    for done, record in enumerate(records, start=1):
        if on_progress:
            on_progress(done, total)
        patient = patients.get(record.mrn)
        if patient is None:
            _keep_unmatched(record, result, source, unmatched_seen)
        elif isinstance(record, LabRecord):
            _apply_lab(patient, record, known, result, source)
        elif isinstance(record, EventRecord):
            _apply_event(patient, record, known, result, source)
        elif isinstance(record, DemographicsRecord):
            _apply_demographics(patient, record, result)
    LabResult.objects.bulk_create(known.new_labs, batch_size=500)
    ClinicalEvent.objects.bulk_create(known.new_events, batch_size=500)


def _apply_lab(
    patient: Patient, record: LabRecord, known: _Known, result: EHRImportResult, source: str
) -> None:
    """Convert to the canonical unit; create the lab, update a changed value, or count it."""
    try:
        canonical = lab_value_to_canonical(
            loinc_code=record.loinc_code, value=record.value, unit=record.unit
        )
    except UnitError as exc:
        result.rejected.append(Problem(record.where, str(exc)))
        return
    key = (patient.pk, canonical.loinc_code, record.observed_at)
    existing = known.labs.get(key)
    if existing is None:
        lab = LabResult(
            patient=patient,
            loinc_code=canonical.loinc_code,
            value=canonical.value,
            unit=canonical.unit,
            observed_at=record.observed_at,
            source=source,
        )
        known.labs[key] = lab
        known.new_labs.append(lab)
        result.created += 1
        result.created_by_type["lab"] += 1
    elif math.isclose(existing.value, canonical.value, rel_tol=1e-9, abs_tol=0.0) and (
        existing.unit == canonical.unit
    ):
        result.unchanged += 1
    else:
        existing.value, existing.unit, existing.source = canonical.value, canonical.unit, source
        if existing.pk is not None:
            existing.save(update_fields=["value", "unit", "source"])
        result.updated += 1


def _apply_event(
    patient: Patient, record: EventRecord, known: _Known, result: EHRImportResult, source: str
) -> None:
    key = (patient.pk, record.kind, record.date)
    if key in known.events:
        result.unchanged += 1
        return
    known.events.add(key)
    known.new_events.append(
        ClinicalEvent(patient=patient, kind=record.kind, date=record.date, source=source)
    )
    result.created += 1
    result.created_by_type[record.kind] += 1


def _apply_demographics(
    patient: Patient, record: DemographicsRecord, result: EHRImportResult
) -> None:
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


def _keep_unmatched(
    record: EHRRecord, result: EHRImportResult, source: str, seen: set[str]
) -> None:
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


def _fingerprint(record: EHRRecord) -> str:
    text = json.dumps(
        {"type": record.record_type, "mrn": record.mrn, "payload": record.payload},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()
