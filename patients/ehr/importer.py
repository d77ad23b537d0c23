"""EHR data in: one FHIR R4 Bundle, FHIR Bulk Data NDJSON or cohort CSV file, matched to
patients and written.

Reading is in `patients.ehr.fhir_bundle` and `patients.ehr.csv_files`; this module
writes what they read. Patients are matched by their identifiers
(`patients.ehr.identifiers`: the MRN in ``RADTRACK_MRN_SYSTEM``, or another (system,
value) a patient is known to carry) and never created here. A record that matches no
patient is stored, as received, in `UnmatchedEHRRecord` with the reason and counted as
unmatched. Each file is one transaction. A lab is found by the sender's identifier of
the result (the same test), else by (patient, LOINC code, observed_at), and an event by
(patient, kind, date), so importing the same data again creates nothing: it is counted
as unchanged; a lab whose value, comparator or time changed (an amended or corrected
result) is updated, unless the source last updated the record before the version
stored (``meta.lastUpdated``: an older version, from a ``_history`` Bundle listing the
newest first or a file imported again): that is counted as skipped as older. A lab value
outside its test's plausible range is rejected (`patients.units`). The labs are written
in bulk at the end; that write announces the patients whose results changed
(`patients.signals.lab_results_changed`), so what derives from them (the worklist's
marker flags) is rewritten in the same transaction. Medications
are written by `patients.ehr.medications` (keyed by the sender's identifier); one that is
an immune checkpoint inhibitor is announced there, and the iRECIST switch that answers
adds its notes to the report.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from django.db import router, transaction

from patients.ehr.csv_files import csv_records
from patients.ehr.fhir_bundle import bundle_records, ndjson_files_records, ndjson_records
from patients.ehr.fhir_resources import URI_SYSTEM
from patients.ehr.identifiers import (
    SubjectMatch,
    identifier_token,
    patient_identifiers_add,
    subjects_match,
)
from patients.ehr.medications import MedicationRecord, MedicationsWrite
from patients.ehr.records import (
    DemographicsRecord,
    EHRImportError,
    EHRImportResult,
    EHRRecord,
    EventRecord,
    LabRecord,
    Problem,
    RetractionRecord,
)
from patients.models import ClinicalEvent, LabResult, Patient, UnmatchedEHRRecord
from patients.signals import clinical_events_announce
from patients.units import CODE_ALIASES, UnitError, lab_value_to_canonical

__all__ = ["NDJSON_MEDIA_TYPES", "ProgressCallback", "ehr_import", "ehr_import_ndjson_files"]

#: Media types (and the file suffix ``.ndjson``) that say "one resource per line".
NDJSON_MEDIA_TYPES = ("application/fhir+ndjson", "application/ndjson", "application/x-ndjson")

ProgressCallback = Callable[[int, int], None]


def ehr_import(
    *,
    path_or_bytes: Path | str | bytes,
    source_name: str | None = None,
    on_progress: ProgressCallback | None = None,
    ndjson: bool | None = None,
) -> EHRImportResult:
    """Import one FHIR R4 Bundle, NDJSON or cohort CSV file (module docstring); one
    transaction.

    ``source_name`` is stored on every row written (default: the file name). ``ndjson``
    says the file is NDJSON (a ``.ndjson`` file is; None: told from the content).
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
        if ndjson is None and path.suffix.lower() == ".ndjson":
            ndjson = True
    text = _text(data, name)
    records, result = _records_read(text, name, ndjson)
    with transaction.atomic():
        _apply(records, result, name, on_progress)
    return result


def ehr_import_ndjson_files(
    *, paths: list[Path], on_progress: ProgressCallback | None = None
) -> EHRImportResult:
    """Import NDJSON files together, as one transaction (FHIR Bulk Data writes one file
    per resource type, and their references cross files). Rows are stored with the
    source ``a.ndjson+b.ndjson``."""
    files = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise EHRImportError(f"cannot read {path}: {exc.strerror or exc}") from exc
        files.append((Path(path).name, _text(data, Path(path).name)))
    name = "+".join(n for n, _ in files)[:255]
    result = EHRImportResult(name, "FHIR NDJSON")
    records = ndjson_files_records(files=files, result=result)
    with transaction.atomic():
        _apply(records, result, name, on_progress)
    return result


def _text(data: bytes, name: str) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise EHRImportError(f"{name} is not UTF-8 text (byte {exc.start})") from exc
    if not text.strip():
        raise EHRImportError(f"{name} is empty")
    # PostgreSQL text and jsonb hold no NUL character, raw or escaped in JSON.
    if "\x00" in text or "\\u0000" in text:
        raise EHRImportError(f"{name} contains a NUL character (U+0000), which no record may hold")
    return text


def _looks_like_ndjson(text: str) -> bool:
    """Several non-blank lines, the first of them a whole JSON object on its own."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2 or not lines[0].lstrip().startswith("{"):
        return False
    try:
        return isinstance(json.loads(lines[0]), dict)
    except (ValueError, RecursionError):
        return False


def _records_read(
    text: str, name: str, ndjson: bool | None
) -> tuple[list[EHRRecord], EHRImportResult]:
    if ndjson or (ndjson is None and _looks_like_ndjson(text)):
        result = EHRImportResult(name, "FHIR NDJSON")
        return ndjson_records(text=text, name=name, result=result), result
    if text.lstrip().startswith(("{", "[")):
        result = EHRImportResult(name, "FHIR Bundle")
        return bundle_records(text=text, result=result), result
    result = EHRImportResult(name, "CSV")
    return csv_records(text=text, name=name, result=result), result


# --------------------------------------------------------------------------------------
# Matching and writing
# --------------------------------------------------------------------------------------
_LabKey = tuple[int, str, dt.datetime]
#: A fullUrl's version (``.../Observation/7/_history/2``): every version is one result.
_HISTORY = re.compile(r"/_history/[^/]+$")


@dataclass
class _Known:
    """The matched patients' labs and events already stored, and the rows to create.

    ``labs`` holds each lab kept now by its key, ``by_identifier`` by (patient, LOINC code)
    and each of the sender's identifiers, and ``stored_keys`` the lab keys stored when
    the import began (with the lab's primary key).
    """

    labs: dict[_LabKey, LabResult]
    events: set[tuple[int, str, dt.date]]
    new_labs: list[LabResult] = field(default_factory=list)
    changed_labs: dict[int, LabResult] = field(default_factory=dict)
    new_events: list[ClinicalEvent] = field(default_factory=list)
    retracted_labs: set[int] = field(default_factory=set)
    retracted_events: set[tuple[int, str, dt.date]] = field(default_factory=set)
    by_identifier: dict[tuple, LabResult] = field(default_factory=dict)
    stored_keys: dict[_LabKey, int] = field(default_factory=dict)
    #: (patient, kind) of every event held or added (never shrinks): a withdrawal of all
    #: of a kind (a Patient said alive, in every Patient resource) scans only for these.
    event_kinds: set[tuple[int, str]] = field(default_factory=set)

    def lab_keep(self, lab: LabResult) -> None:
        """Hold ``lab`` under its key and its identifiers."""
        self.labs[_lab_key(lab)] = lab
        for key in _identifier_keys(lab.identifiers or []):
            self.by_identifier[(lab.patient_id, lab.loinc_code, *key)] = lab


def _lab_key(lab: LabResult) -> _LabKey:
    return (lab.patient_id, lab.loinc_code, lab.observed_at)


def _apply(
    records: list[EHRRecord],
    result: EHRImportResult,
    source: str,
    on_progress: ProgressCallback | None,
) -> None:
    matches = subjects_match(r.subject for r in records)
    matched_ids = [m.patient.pk for m in matches.values() if m.patient is not None]
    known = _Known(
        labs={},
        events={
            (e.patient_id, e.kind, e.date)
            for e in ClinicalEvent.objects.filter(patient_id__in=matched_ids).only(
                "patient_id", "kind", "date"
            )
        },
    )
    known.event_kinds = {(pk, kind) for pk, kind, _ in known.events}
    for lab in LabResult.objects.filter(patient_id__in=matched_ids):
        known.lab_keep(lab)
        known.stored_keys[_lab_key(lab)] = lab.pk
    medications = MedicationsWrite.for_patients(matched_ids)
    unmatched_seen: set[str] = set()
    total = len(records)
    for done, record in enumerate(records, start=1):
        if on_progress:
            on_progress(done, total)
        match = matches[record.subject]
        patient = match.patient
        if patient is None:
            _keep_unmatched(record, match, result, source, unmatched_seen)
        elif isinstance(record, LabRecord):
            _apply_lab(patient, record, known, result, source)
        elif isinstance(record, EventRecord):
            _apply_event(patient, record, known, result, source)
        elif isinstance(record, DemographicsRecord):
            _apply_demographics(patient, record, result, source)
        elif isinstance(record, MedicationRecord):
            medications.apply(patient, record, result, source)
        elif isinstance(record, RetractionRecord):
            _apply_retraction(patient, record, known, result)
    # Withdrawn by the EHR: deleted (the deletes announce, so flags and scores follow).
    # Deletes, then updates, then inserts: a key a withdrawn or corrected result leaves
    # is free before a new result takes it.
    LabResult.objects.filter(pk__in=known.retracted_labs).delete()
    LabResult.objects.bulk_update(
        known.changed_labs.values(),
        [
            "value",
            "unit",
            "source",
            "comparator",
            "identifiers",
            "observed_at",
            "source_last_updated",
        ],
        batch_size=500,
    )
    LabResult.objects.bulk_create(known.new_labs, batch_size=500)
    for patient_pk, kind, date in known.retracted_events:
        ClinicalEvent.objects.filter(patient_id=patient_pk, kind=kind, date=date).delete()
    ClinicalEvent.objects.bulk_create(known.new_events, batch_size=500)
    clinical_events_announce(
        patient_pks={e.patient_id for e in known.new_events}
        | {patient_pk for patient_pk, _, _ in known.retracted_events},
        using=router.db_for_write(ClinicalEvent),
    )
    medications.finish(result)


def _apply_lab(
    patient: Patient, record: LabRecord, known: _Known, result: EHRImportResult, source: str
) -> None:
    """Convert to the canonical unit; create the lab, or update the stored one it amends
    or corrects (`_stored_lab`), unless the source updated it before the version stored
    (skipped as older); else count it unchanged."""
    try:
        canonical = lab_value_to_canonical(
            loinc_code=record.loinc_code, value=record.value, unit=record.unit
        )
    except UnitError as exc:
        result.rejected.append(Problem(record.where, str(exc)))
        return
    existing = _stored_lab(patient, record, known)
    if existing is None:
        lab = LabResult(
            patient=patient,
            loinc_code=canonical.loinc_code,
            comparator=record.comparator,
            value=canonical.value,
            unit=canonical.unit,
            observed_at=record.observed_at,
            source=source,
            identifiers=record.identifiers,
            source_last_updated=record.last_updated,
        )
        known.lab_keep(lab)
        known.new_labs.append(lab)
        result.created += 1
        result.created_by_type["lab"] += 1
        result.outcome(record.where, "created")
        return
    stored_version = existing.source_last_updated
    if record.last_updated and stored_version and record.last_updated < stored_version:
        result.skipped_older += 1
        result.outcome(record.where, "skipped-older")
        return
    if (
        math.isclose(existing.value, canonical.value, rel_tol=1e-9, abs_tol=0.0)
        and existing.unit == canonical.unit
        and existing.comparator == record.comparator
        and existing.observed_at == record.observed_at
    ):
        if record.last_updated and (stored_version is None or record.last_updated > stored_version):
            existing.source_last_updated = record.last_updated  # the newest version seen
            _lab_changed(existing, known)
        result.unchanged += 1
        result.outcome(record.where, "unchanged")
        return
    if not _lab_move(existing, (patient.pk, canonical.loinc_code, record.observed_at), known):
        result.rejected.append(
            Problem(
                record.where,
                "its corrected time is that of another result of this test already stored; "
                "not applied",
            )
        )
        return
    existing.value, existing.unit, existing.source = canonical.value, canonical.unit, source
    existing.comparator = record.comparator
    existing.source_last_updated = record.last_updated
    if record.identifiers:
        existing.identifiers = record.identifiers
        known.lab_keep(existing)
    _lab_changed(existing, known)
    result.updated += 1
    result.outcome(record.where, "updated")


def _lab_changed(lab: LabResult, known: _Known) -> None:
    if lab.pk is not None:  # else it is created at the end, as it is now
        known.changed_labs[lab.pk] = lab


def _lab_move(lab: LabResult, key: _LabKey, known: _Known) -> bool:
    """Give ``lab`` the key ``key`` (a corrected time); False when another result holds
    it: one kept now, or one stored when the import began and not withdrawn (it may have
    moved in this import, but one UPDATE writes every change, and the database checks
    each row's key as it goes)."""
    if key == _lab_key(lab):
        return True
    holder, stored = known.labs.get(key), known.stored_keys.get(key)
    if (holder is not None and holder is not lab) or (
        stored is not None and stored != lab.pk and stored not in known.retracted_labs
    ):
        return False
    known.labs.pop(_lab_key(lab), None)
    lab.observed_at = key[2]
    known.lab_keep(lab)
    return True


def _apply_event(
    patient: Patient, record: EventRecord, known: _Known, result: EHRImportResult, source: str
) -> None:
    key = (patient.pk, record.kind, record.date)
    if key in known.events:
        result.unchanged += 1
        result.outcome(record.where, "unchanged")
        return
    known.events.add(key)
    known.event_kinds.add(key[:2])
    known.new_events.append(
        ClinicalEvent(patient=patient, kind=record.kind, date=record.date, source=source)
    )
    result.created += 1
    result.created_by_type[record.kind] += 1
    result.outcome(record.where, "created")


def _apply_retraction(
    patient: Patient, record: RetractionRecord, known: _Known, result: EHRImportResult
) -> None:
    """Remove what RadTrack holds of a result or progression the EHR withdrew; a
    withdrawal of something never stored is noted as skipped."""
    if record.kind:
        # No date: every event of the kind (a Patient now said alive has no death).
        if record.date is None and (patient.pk, record.kind) not in known.event_kinds:
            return  # the usual case: a living patient said to be alive
        keys = [
            key
            for key in known.events
            if key[:2] == (patient.pk, record.kind) and record.date in (None, key[2])
        ]
        for key in keys:
            known.events.discard(key)
            known.new_events = [
                e for e in known.new_events if (e.patient_id, e.kind, e.date) != key
            ]
            known.retracted_events.add(key)
            result.retracted += 1
        if keys:
            result.outcome(record.where, "retracted")
        elif record.date is not None:  # a living patient saying so withdraws nothing
            result.skipped.append(
                Problem(
                    record.where, f"withdrawn by the EHR, and no {record.kind} stored on that date"
                )
            )
        return
    lab = _stored_lab(patient, record, known)
    if lab is None:
        result.skipped.append(Problem(record.where, "entered in error, and no such result stored"))
        return
    known.labs.pop(_lab_key(lab), None)
    if lab.pk is None:  # stored earlier in this same import: not stored after all
        known.new_labs = [x for x in known.new_labs if x is not lab]
    else:
        known.changed_labs.pop(lab.pk, None)
        known.retracted_labs.add(lab.pk)
    result.retracted += 1
    result.outcome(record.where, "retracted")


def _stored_lab(
    patient: Patient, record: LabRecord | RetractionRecord, known: _Known
) -> LabResult | None:
    """The result kept now that an amendment, correction or withdrawal names: the one of
    the same test (LOINC code, aliases read as the code RadTrack keeps) carrying one of
    the sender's identifiers, else the one at the record's code and time. By identifier
    first, since a correction may change the time."""
    code = CODE_ALIASES.get(record.loinc_code, record.loinc_code)
    for key in sorted(_identifier_keys(record.identifiers)):
        lab = known.by_identifier.get((patient.pk, code, *key))
        if lab is not None and known.labs.get(_lab_key(lab)) is lab:  # not withdrawn
            return lab
    return known.labs.get((patient.pk, code, record.observed_at))


def _identifier_keys(identifiers: list[dict[str, str]]) -> set[tuple[str, str, str]]:
    """(system, value, component) of each identifier; a fullUrl without its version."""
    return {
        (
            i.get("system", ""),
            _HISTORY.sub("", i["value"]) if i.get("system") == URI_SYSTEM else i["value"],
            i.get("component", ""),
        )
        for i in identifiers
    }


def _apply_demographics(
    patient: Patient, record: DemographicsRecord, result: EHRImportResult, source: str
) -> None:
    """Fill the patient's blank birth date and sex; keep its other identifiers."""
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
    before = patient.identifiers.count()
    for problem in patient_identifiers_add(patient=patient, subject=record.subject, source=source):
        result.notes.append(f"{record.where}: {problem}")
    added = patient.identifiers.count() - before
    if changed:
        patient.save(update_fields=changed)
    if changed or added:
        result.updated += 1
        result.outcome(record.where, "updated")
    else:
        result.unchanged += 1
        result.outcome(record.where, "unchanged")


def _keep_unmatched(
    record: EHRRecord, match: SubjectMatch, result: EHRImportResult, source: str, seen: set[str]
) -> None:
    fingerprint = _fingerprint(record)
    result.unmatched += 1
    result.unmatched_identifiers.add(record.subject.shown)
    result.outcome(record.where, f"unmatched: {match.reason}")
    if fingerprint in seen:
        return
    seen.add(fingerprint)
    first = record.subject.identifiers[0] if record.subject.identifiers else None
    UnmatchedEHRRecord.objects.get_or_create(
        fingerprint=fingerprint,
        defaults={
            "source": source,
            "record_type": record.record_type,
            "patient_identifier": (record.subject.mrn or (first.value if first else ""))[:64],
            "identifier_system": ("" if record.subject.mrn or first is None else first.system)[
                :255
            ],
            "payload": record.payload,
            "reason": match.reason[:255],
        },
    )


def _fingerprint(record: EHRRecord) -> str:
    # Named by the MRN alone, the key is the one earlier versions wrote (re-importing an
    # old file adds nothing); otherwise by every identifier given.
    key: dict = {"type": record.record_type, "payload": record.payload}
    if record.subject.mrn:
        key["mrn"] = record.subject.mrn
    else:
        key["subject"] = [identifier_token(i) for i in record.subject.identifiers]
    text = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()
