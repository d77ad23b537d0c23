"""Write a de-identified research export: DICOM by the Annex E profile (`analytics.research.
deid`), measurements.csv, responses.csv and labs.csv under the same pseudonyms, UIDs and
shifted dates, a manifest, and, apart from the export, the key that maps pseudonyms back.

Each export draws new pseudonyms, a new date offset per patient (whole days, 1-3 years
back, the same for every date of that patient) and a new secret UID salt: two exports
cannot be linked without their keys. In the tables every value is de-identified by its
type (`_pseudonymise`): dates and date-times in any column move, UIDs are remapped as in
the DICOM, and free text has its dates moved and UIDs remapped the same way. The export
folder is written beside its final place and renamed when complete, so a failure leaves
nothing half-written; an existing folder is never overwritten. Every patient exported
gets an audit row (``research.export``).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import os
import secrets
import shutil
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pydicom
from django.conf import settings

from analytics.lesions.selectors import measurements_table, responses_table
from analytics.research.deid import (
    METHOD_CODES,
    OPTIONS,
    TABLE_PATH,
    TEXT_REMOVED,
    DeidentificationRefused,
    Deidentifier,
    PatientKey,
    UidMap,
    action_table_load,
    burned_in_check,
    value_pseudonymise,
)
from imaging.exports.services import patient_dicom_export
from imaging.models import Instance
from imaging.store import object_local
from patients.audit import audit_record
from patients.models import LabResult, Patient

PROFILE = "basic"
LAB_COLUMNS = ("patient_id", "loinc_code", "comparator", "value", "unit", "observed_at")
#: Date offsets: between one and three years back, in whole days.
OFFSET_MIN_DAYS, OFFSET_MAX_DAYS = 365, 1095


class ResearchExportError(ValueError):
    """The export cannot be written where asked (names the path and why)."""


@dataclass
class ResearchExport:
    """What an export wrote: counts, refusals (without identifiers) and paths."""

    export_id: str
    out_dir: Path | None
    key_path: Path | None
    patients: int = 0
    dicom_files: int = 0
    table_rows: dict[str, int] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)


@dataclass
class _Run:
    """One export's secrets and state."""

    export_id: str
    deidentifier: Deidentifier
    keys: dict[int, PatientKey]
    result: ResearchExport


def _identifiers(patient: Patient) -> frozenset[str]:
    """Words that must not survive in a descriptor: name parts, MRN, accession numbers,
    birth date."""
    words = {patient.patient_id.lower()}
    words |= {w.lower() for w in patient.name.replace("^", " ").split() if len(w) >= 3}
    words |= {a.lower() for a in patient.studies.values_list("accession_number", flat=True) if a}
    if patient.birth_date:
        words |= {patient.birth_date.strftime("%Y%m%d"), patient.birth_date.isoformat()}
    return frozenset(words)


def _keys_draw(patients: list[Patient]) -> dict[int, PatientKey]:
    """A pseudonym and a date offset per patient, each different from the others' (while
    the range of offsets lasts), so no two patients' dates move together."""
    keys: dict[int, PatientKey] = {}
    used: set[str] = set()
    span = OFFSET_MAX_DAYS - OFFSET_MIN_DAYS + 1
    offsets: set[int] = set()
    for patient in patients:
        pseudonym = f"RES-{secrets.token_hex(4).upper()}"
        while pseudonym in used:
            pseudonym = f"RES-{secrets.token_hex(4).upper()}"
        used.add(pseudonym)
        offset = -(OFFSET_MIN_DAYS + secrets.randbelow(span))
        while offset in offsets and len(offsets) < span:
            offset = -(OFFSET_MIN_DAYS + secrets.randbelow(span))
        offsets.add(offset)
        keys[patient.pk] = PatientKey(
            pseudonym=pseudonym, offset_days=offset, identifiers=_identifiers(patient)
        )
    return keys


def _run_start(patients: list[Patient]) -> _Run:
    export_id = dt.date.today().strftime("%Y%m%d-") + secrets.token_hex(4)
    deidentifier = Deidentifier(table=action_table_load(), uids=UidMap(secrets.token_bytes(32)))
    return _Run(
        export_id=export_id,
        deidentifier=deidentifier,
        keys=_keys_draw(patients),
        result=ResearchExport(export_id=export_id, out_dir=None, key_path=None),
    )


# -- tables -------------------------------------------------------------------------
def _pseudonymise(table: pd.DataFrame, run: _Run, by_mrn: dict[str, PatientKey]) -> pd.DataFrame:
    """MRNs to pseudonyms, and every other value of the row de-identified under its
    patient's key, whatever its column: the UID columns (``*_uid``) remapped as the
    DICOM is, any date or date-time moved by the patient's offset, and text with its
    dates and UIDs rewritten (`analytics.research.deid.value_pseudonymise`). The walk goes
    by value, not by a list of columns, so that a column added to a table later cannot
    go out with real dates."""
    table = table.copy()
    keys = list(table["patient_id"].map(by_mrn))
    uids = run.deidentifier.uids
    for column in table.columns:
        if column == "patient_id":
            continue
        by_uid = str(column).endswith("_uid")
        table[column] = pd.Series(
            [
                uids(value)
                if by_uid and isinstance(value, str)
                else value_pseudonymise(value, key=key, uids=uids)
                for value, key in zip(table[column], keys, strict=True)
            ],
            index=table.index,
            dtype=table[column].dtype if table[column].dtype.kind in "biufc" else object,
        )
    table["patient_id"] = [k.pseudonym for k in keys]
    return table


def _labs_table(patients: list[Patient], run: _Run) -> pd.DataFrame:
    rows = LabResult.objects.filter(patient__in=patients).select_related("patient")
    rows = rows.order_by("patient__patient_id", "loinc_code", "observed_at", "pk")
    records = [
        (
            lab.patient.patient_id,
            lab.loinc_code,
            getattr(lab, "comparator", ""),
            lab.value,
            lab.unit,
            lab.observed_at,
        )
        for lab in rows
    ]
    table = pd.DataFrame.from_records(records, columns=list(LAB_COLUMNS))
    by_mrn = {p.patient_id: run.keys[p.pk] for p in patients}
    table = _pseudonymise(table, run, by_mrn)
    table["observed_at"] = [
        "" if value is None or pd.isna(value) else value.isoformat()
        for value in table["observed_at"]
    ]
    return table


def research_tables(*, patients: list[Patient], run: _Run) -> dict[str, pd.DataFrame]:
    """measurements.csv, responses.csv and labs.csv, pseudonymised."""
    mrns = [p.patient_id for p in patients]
    by_mrn = {p.patient_id: run.keys[p.pk] for p in patients}
    return {
        "measurements.csv": _pseudonymise(measurements_table(patient_ids=mrns), run, by_mrn),
        "responses.csv": _pseudonymise(responses_table(patient_ids=mrns), run, by_mrn),
        "labs.csv": _labs_table(patients, run),
    }


# -- DICOM --------------------------------------------------------------------------
def _data_path(relative: str) -> Path:
    return Path(settings.DATA_DIR) / relative


def _series_files(patient: Patient) -> dict[tuple[str, str], list[Path]]:
    """The patient's stored instances, by (study UID, series UID)."""
    grouped: dict[tuple[str, str], list[Path]] = {}
    instances = (
        Instance.objects.filter(series__study__patient=patient)
        .select_related("series__study")
        .order_by("series__study__pk", "series__pk", "pk")
    )
    for instance in instances:
        key = (instance.series.study.study_instance_uid, instance.series.series_instance_uid)
        grouped.setdefault(key, []).append(object_local(instance.stored_path))
    return grouped


def _write_deidentified(paths: list[Path], *, run: _Run, key: PatientKey, out: Path) -> int:
    for path in paths:  # one file in memory at a time
        dataset = run.deidentifier.dataset_deidentify(pydicom.dcmread(path), key=key)
        folder = out / key.pseudonym / dataset.StudyInstanceUID / dataset.SeriesInstanceUID
        folder.mkdir(parents=True, exist_ok=True)
        dataset.save_as(folder / f"{dataset.SOPInstanceUID}.dcm", enforce_file_format=True)
    return len(paths)


def _series_export(paths: list[Path], *, run: _Run, key: PatientKey, out: Path, what: str) -> bool:
    """De-identify one series whole, or refuse it whole (named in the result): every
    header is checked before any file is written."""
    try:
        for path in paths:
            burned_in_check(pydicom.dcmread(path, stop_before_pixels=True))
    except DeidentificationRefused as exc:
        run.result.refused.append(f"{key.pseudonym} {what}: {exc}")
        return False
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        run.result.refused.append(f"{key.pseudonym} {what}: unreadable ({type(exc).__name__})")
        return False
    run.result.dicom_files += _write_deidentified(paths, run=run, key=key, out=out)
    return True


def _patient_dicom(patient: Patient, *, run: _Run, out: Path, username: str) -> None:
    key = run.keys[patient.pk]
    refused_studies: set[str] = set()
    for number, ((study_uid, _), paths) in enumerate(_series_files(patient).items(), 1):
        if not _series_export(paths, run=run, key=key, out=out, what=f"series {number}"):
            refused_studies.add(study_uid)
    derived = patient_dicom_export(patient=patient, send=False, username=username)
    for error in derived.errors:
        run.result.refused.append(f"{key.pseudonym} SEG/SR: {error.split(':')[0]}")
    for number, study in enumerate(derived.exports, 1):
        paths = [_data_path(p) for p in (study.seg_path, study.sr_path) if p]
        study_uid = pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID
        if study_uid in refused_studies:
            run.result.refused.append(
                f"{key.pseudonym} SEG/SR {number}: its source series was refused"
            )
            continue
        _series_export(paths, run=run, key=key, out=out, what=f"SEG/SR {number}")


# -- files --------------------------------------------------------------------------
def _private_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


def _key_text(patients: list[Patient], run: _Run) -> str:
    """The key: pseudonym to patient, date offsets, and the UID salt (maps UIDs back)."""
    return json.dumps(
        {
            "export_id": run.export_id,
            "uid_salt_hex": run.deidentifier.uids.salt.hex(),
            "uid_rule": "2.25.<first 128 bits of SHA-256(salt + original UID) as decimal>",
            "patients": [
                {
                    "pseudonym": run.keys[p.pk].pseudonym,
                    "patient_pk": p.pk,
                    "mrn": p.patient_id,
                    "date_offset_days": run.keys[p.pk].offset_days,
                }
                for p in patients
            ],
        },
        indent=2,
    )


def _manifest(run: _Run, *, dicom: bool) -> dict:
    table = run.deidentifier.table
    return {
        "export_id": run.export_id,
        "profile": "PS3.15 Annex E Basic Application Level Confidentiality Profile",
        "options": list(OPTIONS),
        "method_codes": [{"code": c, "scheme": "DCM", "meaning": m} for c, m in METHOD_CODES],
        "action_table": f"PS3.15 {table.edition} Table E.1-1",
        "action_table_sha256": hashlib.sha256(TABLE_PATH.read_bytes()).hexdigest(),
        "dates": (
            "every date of a patient moved by the same whole number of days, in free text "
            f"too; text that could not be made safe reads {TEXT_REMOVED!r}"
        ),
        "patients": run.result.patients,
        "dicom_files": run.result.dicom_files if dicom else None,
        "table_rows": run.result.table_rows,
        "refused": run.result.refused,
    }


def _tables_write(tables: dict[str, pd.DataFrame], folder: Path, run: _Run) -> None:
    for name, table in tables.items():
        table.to_csv(folder / name, index=False, quoting=csv.QUOTE_MINIMAL)
        run.result.table_rows[name] = len(table)


def _audit(patients: Iterable[Patient], run: _Run, *, user, username: str, request) -> None:
    for patient in patients:
        audit_record(
            request=request,
            user=user,
            username=username,
            action="research.export",
            object=f"research export {run.export_id} as {run.keys[patient.pk].pseudonym}",
            patient=patient,
        )


def research_keys_dir() -> Path:
    """Where keys are kept on the server when no other place is named (0700)."""
    return Path(settings.DATA_DIR) / "research" / "keys"


def research_export(
    *,
    patients: list[Patient],
    out_dir: Path,
    username: str,
    key_path: Path | None = None,
    profile: str = PROFILE,
) -> ResearchExport:
    """Write the export to ``out_dir`` (must not exist) and its key to ``key_path``
    (default ``DATA_DIR/research/keys/<export id>.json``; must not exist nor lie inside
    ``out_dir``; written 0600). Audited per patient."""
    if profile != PROFILE:
        raise ResearchExportError(f"unknown profile {profile!r} (only {PROFILE!r})")
    if not patients:
        raise ResearchExportError("no patient to export")
    run = _run_start(patients)
    key_path = key_path or research_keys_dir() / f"{run.export_id}.json"
    out_dir, key_path = out_dir.resolve(), key_path.resolve()
    for path, what in ((out_dir, "--out"), (key_path, "--key")):
        if path.exists():
            raise ResearchExportError(f"{what} {path} exists: an export never overwrites")
    if key_path.is_relative_to(out_dir):
        raise ResearchExportError(f"--key {key_path} is inside --out: the key is kept apart")
    staging = out_dir.with_name(f".{out_dir.name}.partial-{run.export_id}")
    try:
        (staging / "dicom").mkdir(parents=True)
        for patient in patients:
            _patient_dicom(patient, run=run, out=staging / "dicom", username=username)
        _tables_write(research_tables(patients=patients, run=run), staging, run)
        run.result.patients = len(patients)
        (staging / "manifest.json").write_text(json.dumps(_manifest(run, dicom=True), indent=2))
        _private_write(key_path, _key_text(patients, run))
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    run.result.out_dir, run.result.key_path = out_dir, key_path
    _audit(patients, run, user=None, username=username, request=None)
    return run.result


def research_tables_zip(*, request, keys_dir: Path | None = None) -> tuple[str, bytes]:
    """The researcher's download: every patient's tables, pseudonymised, as a zip (no
    DICOM, no key). The key is kept on the server for administrators
    (``DATA_DIR/research/keys/<export id>.json``, 0600). Returns (file name, bytes)."""
    patients = list(Patient.objects.order_by("pk"))
    run = _run_start(patients)
    tables = research_tables(patients=patients, run=run)
    run.result.patients = len(patients)
    run.result.table_rows = {name: len(t) for name, t in tables.items()}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, table in tables.items():
            archive.writestr(name, table.to_csv(index=False))
        archive.writestr("manifest.json", json.dumps(_manifest(run, dicom=False), indent=2))
    keys_dir = keys_dir or research_keys_dir()
    _private_write(keys_dir / f"{run.export_id}.json", _key_text(patients, run))
    _audit(patients, run, user=request.user, username="", request=request)
    return f"radtrack-research-{run.export_id}.zip", buffer.getvalue()
