"""Reading the cohort CSVs ``generate_cohort`` writes into records, before matching.

``labs.csv`` (``patient_id, loinc_code, value, unit, observed_at`` and optional
``display`` and ``comparator``), ``events.csv`` (``patient_id, kind, date``) and
``medications.csv`` (``patient_id, code_system, code, name, start_date`` and optional
``end_date, kind, status, id``: `patients.ehr.medications`), told apart by header. ``patient_id`` is RadTrack's MRN. A censored lab value gives its bound
as ``<0.5`` in ``value`` or ``<`` in ``comparator``. Date-times need a UTC offset; a
date alone means midnight UTC. A file with a field longer than `MAX_FIELD_CHARS` is
refused whole; a row with more cells than the header is rejected (which column an extra
cell belongs to is unknown). A first line that is no known header is refused by its
number of columns and the required columns it lacks, never its cells (a file sent
without its header has a patient's row there).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re

from patients.ehr.identifiers import Subject
from patients.ehr.medications import MEDICATION_CSV_COLUMNS, medication_csv_row
from patients.ehr.records import (
    EHRImportError,
    EHRImportResult,
    EHRRecord,
    EventRecord,
    LabRecord,
    Problem,
)
from patients.models import ClinicalEvent

__all__ = ["EVENT_CSV_COLUMNS", "LAB_CSV_COLUMNS", "csv_records"]

LAB_CSV_COLUMNS = {"patient_id", "loinc_code", "value", "unit", "observed_at"}
EVENT_CSV_COLUMNS = {"patient_id", "kind", "date"}
#: The longest field read (Python's csv module stops at 131 072 characters): no column
#: of these layouts comes near it.
MAX_FIELD_CHARS = 4096
_COMPARATOR = re.compile(r"^\s*(<=|>=|<|>)\s*(.*)$")


def csv_records(*, text: str, name: str, result: EHRImportResult) -> list[EHRRecord]:
    """The labs, events or medications of a CSV called ``name`` (module docstring).

    Rows that cannot be used are added to ``result`` as rejected, with the line and the
    reason; `EHRImportError` when the header is neither layout.
    """
    reader = csv.DictReader(io.StringIO(text))
    try:
        fieldnames = list(reader.fieldnames or [])
    except csv.Error as exc:
        raise EHRImportError(f"{name} line 1: not a CSV header ({exc})") from exc
    header = {h.strip() for h in fieldnames}
    if header >= LAB_CSV_COLUMNS:
        result.format, read_row = "labs CSV", _lab_row
    elif header >= MEDICATION_CSV_COLUMNS:
        result.format, read_row = "medications CSV", medication_csv_row
    elif header >= EVENT_CSV_COLUMNS:
        result.format, read_row = "events CSV", _event_row
    else:
        raise EHRImportError(_header_problem(name, header, len(fieldnames)))
    records: list[EHRRecord] = []
    for row in _rows(reader, name):
        result.records += 1
        where = f"{name} line {reader.line_num}"
        if None in row:
            # csv.DictReader puts the cells beyond the header under None: which column
            # each belongs to is unknown, so nothing of the row is read.
            cells = len(fieldnames) + len(row[None])
            result.rejected.append(
                Problem(
                    where,
                    f"{cells} cells but the header has {len(fieldnames)} columns; "
                    "the row is not read",
                )
            )
            continue
        row = {(k or "").strip(): _text(v) for k, v in row.items()}
        too_long = [k for k, v in row.items() if len(v) > MAX_FIELD_CHARS]
        if too_long:
            # No cell of these layouts is anywhere near this: the file is not one of them.
            raise EHRImportError(
                f"{where}: column {too_long[0][:40]} is longer than {MAX_FIELD_CHARS} "
                "characters; not a labs, events or medications CSV"
            )
        mrn = row.get("patient_id", "")
        if not mrn:
            result.rejected.append(Problem(where, "column patient_id is empty"))
            continue
        record = read_row(row, where, mrn, result)
        if record is not None:
            records.append(record)
    return records


def _header_problem(name: str, header: set[str], columns: int) -> str:
    """Why a first line is no known header: how many columns it has and which required
    ones each layout misses. Never the cells themselves: a file sent without its header
    has a patient's row there, and this message is kept in the audit trail."""
    layouts = (
        ("labs.csv", LAB_CSV_COLUMNS),
        ("events.csv", EVENT_CSV_COLUMNS),
        ("medications.csv", MEDICATION_CSV_COLUMNS),
    )
    missing = " nor ".join(
        f"{layout} ({', '.join(sorted(required - header))} missing)" for layout, required in layouts
    )
    return (
        f"{name} line 1: its {columns} columns are neither {missing}; is the header line missing?"
    )


def _text(value: object) -> str:
    """A cell as stripped text (a missing cell, None, as "")."""
    return (value or "").strip() if isinstance(value, str | type(None)) else str(value)


def _rows(reader: csv.DictReader, name: str):
    """The reader's rows; a row the csv module cannot read (a field over its limit, a
    broken quote) stops the file with its line number."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            # The row being read when the csv module gave up starts after the last line read.
            raise EHRImportError(
                f"{name} line {reader.line_num + 1}: cannot be read as CSV ({exc})"
            ) from exc


def _lab_row(
    row: dict[str, str], where: str, mrn: str, result: EHRImportResult
) -> LabRecord | None:
    text = row["value"]
    comparator = row.get("comparator", "")
    match = _COMPARATOR.match(text)
    if match:
        if comparator and comparator != match.group(1):
            result.rejected.append(
                Problem(where, f"column value {text!r} disagrees with comparator {comparator!r}")
            )
            return None
        comparator, text = match.group(1), match.group(2)
    if comparator not in ("", "<", "<=", ">=", ">"):
        result.rejected.append(
            Problem(where, f"column comparator: {comparator!r} is not <, <=, >= or >")
        )
        return None
    try:
        value = float(text)
    except ValueError:
        result.rejected.append(Problem(where, f"column value: {row['value']!r} is not a number"))
        return None
    try:
        observed_at = _csv_datetime_parse(row["observed_at"])
    except ValueError as exc:
        result.rejected.append(Problem(where, f"column observed_at: {row['observed_at']!r}: {exc}"))
        return None
    return LabRecord(
        where,
        Subject.from_mrn(mrn),
        "labs.csv",
        row,
        loinc_code=row["loinc_code"],
        value=value,
        unit=row["unit"],
        observed_at=observed_at,
        comparator=comparator,
    )


def _event_row(
    row: dict[str, str], where: str, mrn: str, result: EHRImportResult
) -> EventRecord | None:
    event_kind = row["kind"].lower()
    if event_kind not in ClinicalEvent.Kind.values:
        result.rejected.append(
            Problem(
                where,
                f"column kind: {row['kind']!r} is not one of "
                f"{', '.join(ClinicalEvent.Kind.values)}",
            )
        )
        return None
    try:
        date = dt.date.fromisoformat(row["date"][:10])
    except ValueError:
        result.rejected.append(Problem(where, f"column date: {row['date']!r} is not a date"))
        return None
    return EventRecord(where, Subject.from_mrn(mrn), "events.csv", row, kind=event_kind, date=date)


def _csv_datetime_parse(text: str) -> dt.datetime:
    """An ISO date-time with a UTC offset, or a date alone (midnight UTC), as UTC."""
    text = text.strip()
    if len(text) == 10:
        return dt.datetime.combine(dt.date.fromisoformat(text), dt.time(0, 0), tzinfo=dt.UTC)
    value = dt.datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError("date-time without a UTC offset")
    return value.astimezone(dt.UTC)
