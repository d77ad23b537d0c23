"""Build ``annex_e_table.csv`` from a machine-readable copy of PS3.15 Table E.1-1.

The input is a JSON list with one object per row of the standard's table: ``tag``
(``"(0008,0050)"``, ``"(50XX,XXXX)"`` or the private-attribute row), ``name``,
``basicProfile`` and one key per option column (``rtnLongModifDatesOpt``,
``cleanDescOpt``, ...), the layout of the DICOM standard's tables as published in
JSON form. Run::

    python -m analytics.research.table_build TABLE.json EDITION > analytics/research/annex_e_table.csv
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

#: The table's columns: (CSV column, key in the JSON form of the standard's table).
COLUMNS = (
    ("basic", "basicProfile"),
    ("retain_safe_private", "rtnSafePrivOpt"),
    ("retain_uids", "rtnUIDsOpt"),
    ("retain_device_identity", "rtnDevIdOpt"),
    ("retain_institution_identity", "rtnInstIdOpt"),
    ("retain_patient_characteristics", "rtnPatCharsOpt"),
    ("retain_long_full_dates", "rtnLongFullDatesOpt"),
    ("retain_long_modified_dates", "rtnLongModifDatesOpt"),
    ("clean_descriptors", "cleanDescOpt"),
    ("clean_structured_content", "cleanStructContOpt"),
    ("clean_graphics", "cleanGraphOpt"),
)
PRIVATE = "private"


def tag_key(tag: str) -> str:
    """``(0008,0050)`` -> ``00080050``; ``(50XX,XXXX)`` -> ``50xxxxxx``; odd groups -> ``private``."""
    match = re.fullmatch(r"\(([0-9A-Fa-fXx]{4}),([0-9A-Fa-fXx]{4})\)", tag.strip())
    if match is None:
        if "ODD" in tag.upper():
            return PRIVATE
        raise ValueError(f"tag {tag!r} is neither (gggg,eeee) nor the private-attribute row")
    return (match.group(1) + match.group(2)).lower()


def table_rows(entries: list[dict]) -> list[list[str]]:
    rows = []
    for entry in entries:
        rows.append(
            [tag_key(entry["tag"]), entry["name"].strip()]
            + [entry.get(key, "").strip() for _, key in COLUMNS]
        )
    return sorted(rows)


def table_write(*, entries: list[dict], edition: str, out) -> None:
    out.write(f"# DICOM PS3.15 {edition}, Table E.1-1 (Application Level Confidentiality ")
    out.write("Profile Attributes); built by analytics/research/table_build.py\n")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["tag", "name", *(column for column, _ in COLUMNS)])
    writer.writerows(table_rows(entries))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m analytics.research.table_build TABLE.json EDITION")
    table_write(
        entries=json.loads(Path(sys.argv[1]).read_text()), edition=sys.argv[2], out=sys.stdout
    )
