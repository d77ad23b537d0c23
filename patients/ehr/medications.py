"""Medications from the EHR import: the record read, the ``medications.csv`` layout, and
writing them per patient (`PatientMedication`).

A medication is a FHIR MedicationStatement (taken), MedicationAdministration (given) or
MedicationRequest (ordered), read by `patients.ehr.fhir_medications`, or a row of
``medications.csv`` (`MEDICATION_CSV_COLUMNS`). It is kept with its codes, dates, status
and the sender's identifiers; importing it again updates it (a new status or end date)
or leaves it unchanged. One that is an immune checkpoint inhibitor
(`patients.ehr.checkpoint_inhibitors`) is announced once the import's medications are
written (`patients.signals.checkpoint_inhibitors_announce`): the layer above switches
iRECIST on for the patient unless a clinician decided otherwise, and its notes go into
the import's report.

``medications.csv``: ``patient_id`` (RadTrack's MRN), ``code_system`` (``ATC``,
``RxNorm``, ``SNOMED`` or a URI; empty with no code), ``code``, ``name`` (the
medication as written; a code or a name is needed), ``start_date`` (ISO date, needed);
optional ``end_date``, ``kind`` (``statement``, the default, ``administration`` or
``request``), ``status`` (a FHIR status of that kind; default ``active``, ``completed``
with an end date) and ``id`` (the sender's identifier of the row, which keys it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field

from django.db import router

from patients.ehr.checkpoint_inhibitors import (
    ATC_SYSTEMS,
    RXNORM_SYSTEM,
    SNOMED_SYSTEM,
    CheckpointMatch,
    Coding,
    checkpoint_inhibitor_match,
)
from patients.ehr.identifiers import Subject
from patients.ehr.records import EHRImportResult, EHRRecord, Problem
from patients.models import Patient, PatientMedication
from patients.signals import checkpoint_inhibitors_announce

__all__ = [
    "KIND_OF_RESOURCE",
    "MEDICATION_CSV_COLUMNS",
    "STATUSES",
    "TREATED_STATUSES",
    "MedicationRecord",
    "MedicationsWrite",
    "medication_content_identity",
    "medication_csv_row",
    "medication_name",
    "medication_name_problem",
    "medication_record_key",
]

#: The FHIR resource types read, and the kind each is.
KIND_OF_RESOURCE = {
    "MedicationStatement": PatientMedication.Kind.STATEMENT,
    "MedicationAdministration": PatientMedication.Kind.ADMINISTRATION,
    "MedicationRequest": PatientMedication.Kind.REQUEST,
}
#: FHIR R4 status value sets per kind (fhir.resources does not enforce them).
STATUSES = {
    "statement": {
        "active", "completed", "entered-in-error", "intended", "stopped", "on-hold",
        "unknown", "not-taken",
    },
    "administration": {
        "in-progress", "not-done", "on-hold", "completed", "entered-in-error", "stopped",
        "unknown",
    },
    "request": {
        "active", "on-hold", "cancelled", "completed", "entered-in-error", "stopped", "draft",
        "unknown",
    },
}  # fmt: skip
#: Statuses that say the patient had the drug (taken, given or ordered for them); a
#: checkpoint inhibitor only intended, not taken, cancelled or in error switches nothing.
TREATED_STATUSES = frozenset({"active", "completed", "stopped", "on-hold", "in-progress"})
MEDICATION_CSV_COLUMNS = {"patient_id", "code_system", "code", "name", "start_date"}
#: ``code_system`` values of ``medications.csv`` and the URIs they stand for.
CSV_CODE_SYSTEMS = {"atc": ATC_SYSTEMS[0], "rxnorm": RXNORM_SYSTEM, "snomed": SNOMED_SYSTEM}
#: Code systems a medication may be named by alone, without a text.
NAMING_SYSTEMS = frozenset({*ATC_SYSTEMS, RXNORM_SYSTEM, SNOMED_SYSTEM})


@dataclass
class MedicationRecord(EHRRecord):
    """A medication read, before matching: its kind, status, name, codings and dates,
    the sender's identifiers, the identity that keys it, and the checkpoint inhibitor it
    is (None if it is none)."""

    kind: str = ""
    status: str = ""
    name: str = ""
    codings: tuple[Coding, ...] = ()
    started_on: dt.date | None = None
    ended_on: dt.date | None = None
    identifiers: list[dict[str, str]] = field(default_factory=list)
    identity: str = ""
    checkpoint: CheckpointMatch | None = None


def medication_record_key(*, kind: str, identity: str) -> str:
    """The `PatientMedication.record_key` of a record of ``kind`` known by ``identity``."""
    return hashlib.sha256(f"{kind}\n{identity}".encode()).hexdigest()


def medication_content_identity(
    *, codings: tuple[Coding, ...], name: str, started_on: dt.date | None, ended_on: dt.date | None
) -> str:
    """What identifies a record that carries no identifier of its own: its content."""
    content = {
        "codes": sorted([c.system, c.code] for c in codings),
        "name": name.casefold(),
        "start": started_on.isoformat() if started_on else None,
        "end": ended_on.isoformat() if ended_on else None,
    }
    return "content:" + json.dumps(content, sort_keys=True)


def medication_name_problem(codings: tuple[Coding, ...], text: str) -> str:
    """Why a medication coded ``codings`` with ``text`` cannot be named, or ""."""
    if text.strip() or any(c.display.strip() for c in codings):
        return ""
    if any(c.system in NAMING_SYSTEMS and c.code for c in codings):
        return ""
    if codings:
        systems = sorted({c.system or "(no system)" for c in codings})
        return (
            f"coded only in {', '.join(systems)}, not ATC, RxNorm or SNOMED CT, and no text "
            "names the medication"
        )
    return "neither a coding nor text names the medication"


def medication_name(codings: tuple[Coding, ...], text: str) -> str:
    """The medication as a person reads it: its text, else a coding's display, else
    ``ATC L01FF02``."""
    if text.strip():
        return text.strip()[:255]
    for coding in codings:
        if coding.display.strip():
            return coding.display.strip()[:255]
    first = next((c for c in codings if c.code), None)
    label = {RXNORM_SYSTEM: "RxNorm", SNOMED_SYSTEM: "SNOMED CT"}.get(first.system, "ATC")
    return f"{label if first.system in NAMING_SYSTEMS else first.system} {first.code}"[:255]


# --------------------------------------------------------------------------------------
# medications.csv
# --------------------------------------------------------------------------------------
def _csv_date(row: dict[str, str], column: str, where: str, result: EHRImportResult):
    text = row.get(column, "")
    if not text:
        return None, True
    try:
        return dt.date.fromisoformat(text[:10]), True
    except ValueError:
        result.rejected.append(Problem(where, f"column {column}: {text!r} is not a date"))
        return None, False


def _csv_coding(row: dict[str, str], where: str, result: EHRImportResult) -> tuple | None:
    """The row's coding (empty without a code), or None after rejecting it."""
    system_text, code = row.get("code_system", ""), row.get("code", "")
    if not code:
        return ()
    system = CSV_CODE_SYSTEMS.get(system_text.casefold(), system_text)
    if ":" not in system:
        result.rejected.append(
            Problem(
                where,
                f"column code_system: {system_text!r} is not ATC, RxNorm, SNOMED or a URI",
            )
        )
        return None
    return (Coding(system, code),)


def medication_csv_row(
    row: dict[str, str], where: str, mrn: str, result: EHRImportResult
) -> MedicationRecord | None:
    """A ``medications.csv`` row as a record (module docstring); None after rejecting it."""
    kind = (row.get("kind") or "statement").casefold()
    if kind not in STATUSES:
        result.rejected.append(
            Problem(
                where, f"column kind: {row['kind']!r} is not statement, administration or request"
            )
        )
        return None
    codings = _csv_coding(row, where, result)
    if codings is None:
        return None
    problem = medication_name_problem(codings, row.get("name", ""))
    if problem:
        result.rejected.append(Problem(where, f"columns code and name: {problem}"))
        return None
    started_on, ok = _csv_date(row, "start_date", where, result)
    ended_on, ok_end = _csv_date(row, "end_date", where, result)
    if not (ok and ok_end):
        return None
    if started_on is None:
        result.rejected.append(Problem(where, "column start_date: a date is needed"))
        return None
    if ended_on is not None and ended_on < started_on:
        result.rejected.append(Problem(where, "column end_date: before start_date"))
        return None
    status = (row.get("status") or ("completed" if ended_on else "active")).casefold()
    if status not in STATUSES[kind]:
        result.rejected.append(
            Problem(where, f"column status: {row['status']!r} is not a {kind} status "
                    f"({', '.join(sorted(STATUSES[kind]))})")
        )  # fmt: skip
        return None
    name = medication_name(codings, row.get("name", ""))
    sender_id = row.get("id", "")
    return MedicationRecord(
        where,
        Subject.from_mrn(mrn),
        "medications.csv",
        row,
        kind=kind,
        status=status,
        name=name,
        codings=codings,
        started_on=started_on,
        ended_on=ended_on,
        identifiers=[{"system": "", "value": sender_id}] if sender_id else [],
        identity=f"id:{sender_id}"
        if sender_id
        else medication_content_identity(
            codings=codings, name=name, started_on=started_on, ended_on=ended_on
        ),
        checkpoint=checkpoint_inhibitor_match(codings=codings, text=row.get("name", "")),
    )


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------
_COMPARED = ("status", "name", "codes", "checkpoint_inhibitor", "started_on", "ended_on")


@dataclass
class MedicationsWrite:
    """The matched patients' medications already stored, the rows to create and change,
    and the patients for whom the import carried a checkpoint inhibitor."""

    stored: dict[tuple[int, str], PatientMedication]
    new: list[PatientMedication] = field(default_factory=list)
    changed: dict[int, PatientMedication] = field(default_factory=dict)
    checkpoint_patients: set[int] = field(default_factory=set)

    @classmethod
    def for_patients(cls, patient_pks: list[int]) -> MedicationsWrite:
        rows = PatientMedication.objects.filter(patient_id__in=patient_pks)
        return cls(stored={(m.patient_id, m.record_key): m for m in rows})

    def apply(
        self, patient: Patient, record: MedicationRecord, result: EHRImportResult, source: str
    ) -> None:
        """Create the medication, update a changed one, or count it as unchanged."""
        values = {
            "kind": record.kind,
            "status": record.status,
            "name": record.name[:255],
            "codes": [
                {"system": c.system, "code": c.code, "display": c.display} for c in record.codings
            ],
            "checkpoint_inhibitor": record.checkpoint.name[:64] if record.checkpoint else "",
            "started_on": record.started_on,
            "ended_on": record.ended_on,
        }
        if record.checkpoint is not None:
            self.checkpoint_patients.add(patient.pk)
        key = (patient.pk, medication_record_key(kind=record.kind, identity=record.identity))
        existing = self.stored.get(key)
        if existing is None:
            row = PatientMedication(
                patient=patient,
                record_key=key[1],
                source=source,
                identifiers=record.identifiers,
                **values,
            )
            self.stored[key] = row
            self.new.append(row)
            result.created += 1
            result.created_by_type["medication"] += 1
            result.outcome(record.where, "created")
        elif all(getattr(existing, name) == values[name] for name in _COMPARED):
            result.unchanged += 1
            result.outcome(record.where, "unchanged")
        else:
            for name, value in values.items():
                setattr(existing, name, value)
            existing.source = source
            existing.identifiers = record.identifiers or existing.identifiers
            if existing.pk is not None:  # else it is created at the end, as it is now
                self.changed[existing.pk] = existing
            result.updated += 1
            result.outcome(record.where, "updated")

    def finish(self, result: EHRImportResult) -> None:
        """Write the rows, then announce the patients given a checkpoint inhibitor; the
        listeners' notes go into ``result``."""
        PatientMedication.objects.bulk_create(self.new, batch_size=500)
        PatientMedication.objects.bulk_update(
            self.changed.values(), [*_COMPARED, "source", "identifiers"], batch_size=500
        )
        result.notes += checkpoint_inhibitors_announce(
            patient_pks=sorted(self.checkpoint_patients),
            using=router.db_for_write(PatientMedication),
        )
