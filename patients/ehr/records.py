"""What reading an EHR file yields: the records parsed before matching, the problems found
on the way, the import's result, and the error for a file that cannot be read at all."""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from patients.ehr.identifiers import Subject

__all__ = [
    "DemographicsRecord",
    "EHRImportError",
    "EHRImportResult",
    "EHRRecord",
    "EventRecord",
    "LabRecord",
    "Problem",
    "RetractionRecord",
]


class EHRImportError(Exception):
    """The file as a whole cannot be read (not UTF-8, not JSON, not a Bundle, unknown CSV,
    nested too deeply, a CSV field over the limit)."""


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

    ``records`` counts bundle entries (nested bundles' too), NDJSON lines or CSV rows
    read; ``created``, ``updated``, ``unchanged``, ``skipped_older`` and ``unmatched``
    count the records derived from them (a Patient with a ``deceasedDateTime`` gives two:
    its demographics and a death event). ``skipped_older`` counts labs not applied because
    the source last updated them before the version stored (an older version of an
    amended result). ``outcomes`` lists (where, outcome) for every record written,
    left unchanged or kept apart, beside ``skipped`` and ``rejected``.
    """

    source_name: str
    format: str
    records: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped_older: int = 0
    retracted: int = 0
    unmatched: int = 0
    unmatched_identifiers: set[str] = field(default_factory=set)
    skipped: list[Problem] = field(default_factory=list)
    rejected: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    created_by_type: Counter = field(default_factory=Counter)
    outcomes: list[tuple[str, str]] = field(default_factory=list)

    def outcome(self, where: str, what: str) -> None:
        """Note that the record at ``where`` was created, updated, unchanged, skipped as
        older or unmatched."""
        self.outcomes.append((where, what))

    def summary(self) -> str:
        return (
            f"{self.source_name} ({self.format}): {self.records} records: "
            f"{self.created} created, {self.updated} updated, {self.unchanged} unchanged, "
            f"{self.skipped_older} older than stored, {self.retracted} retracted, "
            f"{self.unmatched} unmatched ({len(self.unmatched_identifiers)} unknown patients), "
            f"{len(self.skipped)} skipped, {len(self.rejected)} rejected"
        )


# --------------------------------------------------------------------------------------
# Parsed records, before matching
# --------------------------------------------------------------------------------------
@dataclass
class EHRRecord:
    """One record read: where it is, whom it names, its type and the data as received."""

    where: str
    subject: Subject
    record_type: str
    payload: dict[str, Any]


@dataclass
class LabRecord(EHRRecord):
    """A lab result in the unit it came in (converted to the canonical unit on writing).

    ``comparator`` is FHIR's QuantityComparator (``<``, ``<=``, ``>=``, ``>``) of a
    censored result, "" for an exact one; ``identifiers`` are the sender's identifiers
    of the result (``[{"system", "value"}]``), kept with it; ``last_updated`` is when the
    source last changed it (FHIR ``meta.lastUpdated``, UTC), None when not given, so that
    an older version never overwrites a newer one.
    """

    loinc_code: str = ""
    value: float = math.nan
    unit: str = ""
    observed_at: dt.datetime | None = None
    comparator: str = ""
    identifiers: list[dict[str, str]] = field(default_factory=list)
    last_updated: dt.datetime | None = None


@dataclass
class EventRecord(EHRRecord):
    """A clinical event: progression, death or censoring (`ClinicalEvent.Kind`)."""

    kind: str = ""
    date: dt.date | None = None


@dataclass
class DemographicsRecord(EHRRecord):
    """A Patient resource's birth date and sex, to fill a matched patient's blanks."""

    birth_date: dt.date | None = None
    sex: str | None = None


@dataclass
class RetractionRecord(EHRRecord):
    """The EHR withdrew a result it had sent (an Observation ``entered-in-error``) or a
    progression (a Condition ``refuted`` or ``entered-in-error``): what RadTrack holds of
    it is removed. A lab is found by the sender's identifiers, else by code and time; an
    event by its kind and date."""

    loinc_code: str = ""
    observed_at: dt.datetime | None = None
    identifiers: list[dict[str, str]] = field(default_factory=list)
    kind: str = ""
    date: dt.date | None = None
