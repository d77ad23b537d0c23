"""Reading the cohort CSVs ``generate_cohort`` writes into records, before matching.

``labs.csv`` (``patient_id, loinc_code, value, unit, observed_at`` and optional
``display``) and ``events.csv`` (``patient_id, kind, date``), told apart by header.
Date-times need a UTC offset; a date alone means midnight UTC.
"""

from __future__ import annotations

import csv
import datetime as dt
import io

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


def csv_records(*, text: str, name: str, result: EHRImportResult) -> list[EHRRecord]:
    """The labs or events of a cohort CSV called ``name`` (module docstring).

    Rows that cannot be used are added to ``result`` as rejected, with the line and the
    reason; `EHRImportError` when the header is neither layout.
    """
    reader = csv.DictReader(io.StringIO(text))
    header = {h.strip() for h in (reader.fieldnames or [])}
    if header >= LAB_CSV_COLUMNS:
        result.format, read_row = "labs CSV", _lab_row
    elif header >= EVENT_CSV_COLUMNS:
        result.format, read_row = "events CSV", _event_row
    else:
        raise EHRImportError(
            f"{name}: columns {sorted(header)} are neither labs.csv "
            f"({', '.join(sorted(LAB_CSV_COLUMNS))}) nor events.csv "
            f"({', '.join(sorted(EVENT_CSV_COLUMNS))})"
        )
    records: list[EHRRecord] = []
    for row in reader:
        result.records += 1
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
        where = f"{name} line {reader.line_num}"
        mrn = row.get("patient_id", "")
        if not mrn:
            result.rejected.append(Problem(where, "column patient_id is empty"))
            continue
        record = read_row(row, where, mrn, result)
        if record is not None:
            records.append(record)
    return records


def _lab_row(
    row: dict[str, str], where: str, mrn: str, result: EHRImportResult
) -> LabRecord | None:
    try:
        value = float(row["value"])
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
        mrn,
        "labs.csv",
        row,
        loinc_code=row["loinc_code"],
        value=value,
        unit=row["unit"],
        observed_at=observed_at,
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
    return EventRecord(where, mrn, "events.csv", row, kind=event_kind, date=date)


def _csv_datetime_parse(text: str) -> dt.datetime:
    """An ISO date-time with a UTC offset, or a date alone (midnight UTC), as UTC."""
    text = text.strip()
    if len(text) == 10:
        return dt.datetime.combine(dt.date.fromisoformat(text), dt.time(0, 0), tzinfo=dt.UTC)
    value = dt.datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError("date-time without a UTC offset")
    return value.astimezone(dt.UTC)
