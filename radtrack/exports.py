"""Writing a table as CSV or JSON for the export commands, and auditing the export."""

from __future__ import annotations

import json

import pandas as pd

from radtrack.provenance import json_safe


def table_text(table: pd.DataFrame, *, fmt: str) -> str:
    """CSV with a header row, or a JSON array of objects; NaN and inf become empty/null."""
    if fmt == "csv":
        return table.to_csv(index=False, lineterminator="\n")
    if fmt == "json":
        records = [
            {k: json_safe(v) for k, v in row.items()} for row in table.to_dict(orient="records")
        ]
        return json.dumps(records, indent=1) + "\n"
    raise ValueError(f"format must be csv or json; got {fmt!r}")
