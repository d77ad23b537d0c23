"""Which medications are immune checkpoint inhibitors, the drugs for which iRECIST (Seymour L
et al., Lancet Oncol 2017;18:e143-e152) reads the responses.

The drugs, their ATC and RxNorm codes and trade names are in ``checkpoint_inhibitors.csv``
beside this module, with its sources in its first line. A medication is one when a coding
says so (ATC: any code under L01FF, the PD-1/PD-L1 inhibitors, or a code of the table;
RxNorm: an ingredient code of the table), else when its text or a coding's display names
one of the drugs, generic or trade name, as a whole word. Product-level codes (an RxNorm
clinical drug such as "pembrolizumab 25 MG/ML Injectable Solution", a SNOMED CT product)
are matched through their display. Django-free.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

__all__ = [
    "ATC_SYSTEMS",
    "RXNORM_SYSTEM",
    "SNOMED_SYSTEM",
    "TABLE_PATH",
    "CheckpointInhibitor",
    "CheckpointMatch",
    "Coding",
    "checkpoint_inhibitor_match",
    "checkpoint_inhibitors",
]

TABLE_PATH = Path(__file__).with_name("checkpoint_inhibitors.csv")
#: WHO's ATC as FHIR names it, and the German edition (BfArM) some senders use.
ATC_SYSTEMS = ("http://www.whocc.no/atc", "http://fhir.de/CodeSystem/bfarm/atc")
RXNORM_SYSTEM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED_SYSTEM = "http://snomed.info/sct"
#: ATC L01FF: PD-1/PD-L1 (programmed cell death protein 1 / death ligand 1) inhibitors.
PD1_PDL1_ATC_GROUP = "L01FF"


@dataclass(frozen=True)
class Coding:
    """One code of a medication as received: ``system`` is a URI ("" when none was given)."""

    system: str
    code: str
    display: str = ""


@dataclass(frozen=True)
class CheckpointInhibitor:
    """One row of the table: the generic name, its target, ATC code, RxNorm ingredient
    code ("" where unchecked) and trade names."""

    name: str
    target: str
    atc: str
    rxnorm: str
    brands: tuple[str, ...]


@dataclass(frozen=True)
class CheckpointMatch:
    """The checkpoint inhibitor a medication is, and what said so (``ATC L01FF02``,
    ``RxNorm 1547545``, ``text 'Keytruda'``)."""

    name: str
    target: str
    via: str


@cache
def checkpoint_inhibitors() -> tuple[CheckpointInhibitor, ...]:
    """The rows of ``checkpoint_inhibitors.csv`` (lines starting with ``#`` are its notes)."""
    with TABLE_PATH.open(encoding="utf-8", newline="") as handle:
        lines = [line for line in handle if not line.startswith("#")]
    return tuple(
        CheckpointInhibitor(
            name=row["name"].strip(),
            target=row["target"].strip(),
            atc=row["atc"].strip(),
            rxnorm=row["rxnorm"].strip(),
            brands=tuple(b.strip() for b in row["brands"].split(";") if b.strip()),
        )
        for row in csv.DictReader(lines)
    )


@cache
def _names_pattern() -> tuple[re.Pattern[str], dict[str, CheckpointInhibitor]]:
    """One case-insensitive whole-word pattern over every generic and trade name, the
    longest first (so "nivolumab and relatlimab" wins over "nivolumab")."""
    by_name: dict[str, CheckpointInhibitor] = {}
    for drug in checkpoint_inhibitors():
        for name in (drug.name, *drug.brands):
            by_name.setdefault(name.casefold(), drug)
    names = sorted(by_name, key=len, reverse=True)
    alternatives = "|".join(re.escape(n).replace(r"\ ", r"\s+") for n in names)
    return re.compile(rf"(?<![\w-])({alternatives})(?![\w])", re.IGNORECASE), by_name


def _coded_match(coding: Coding) -> CheckpointMatch | None:
    code = coding.code.strip().upper()
    if coding.system in ATC_SYSTEMS and code:
        for drug in checkpoint_inhibitors():
            if drug.atc and code == drug.atc:
                return CheckpointMatch(drug.name, drug.target, f"ATC {code}")
        if code.startswith(PD1_PDL1_ATC_GROUP) and len(code) == 7:
            named = coding.display.strip() or "a PD-1/PD-L1 inhibitor"
            return CheckpointMatch(named, "PD-1/PD-L1", f"ATC {code}")
    if coding.system == RXNORM_SYSTEM and code:
        for drug in checkpoint_inhibitors():
            if drug.rxnorm and code == drug.rxnorm:
                return CheckpointMatch(drug.name, drug.target, f"RxNorm {code}")
    return None


def _text_match(text: str) -> CheckpointMatch | None:
    pattern, by_name = _names_pattern()
    found = pattern.search(text)
    if found is None:
        return None
    drug = by_name[re.sub(r"\s+", " ", found.group(1)).casefold()]
    return CheckpointMatch(drug.name, drug.target, f"text {text.strip()[:80]!r}")


def checkpoint_inhibitor_match(
    *, codings: Iterable[Coding], text: str = ""
) -> CheckpointMatch | None:
    """The checkpoint inhibitor a medication coded ``codings`` and called ``text`` is, or
    None (module docstring: codes first, then the text and the codings' displays)."""
    codings = list(codings)
    for coding in codings:
        match = _coded_match(coding)
        if match is not None:
            return match
    for candidate in (text, *(c.display for c in codings)):
        if candidate and candidate.strip():
            match = _text_match(candidate)
            if match is not None:
                return match
    return None
