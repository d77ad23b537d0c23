"""Writing a table as CSV or JSON for the export commands, and auditing the export."""

from __future__ import annotations

import json
import math

import pandas as pd


def _json_value(value):
    if value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return _json_value(value.item())
    return value


def table_text(table: pd.DataFrame, *, fmt: str) -> str:
    """CSV with a header row, or a JSON array of objects; NaN and inf become empty/null."""
    if fmt == "csv":
        return table.to_csv(index=False, lineterminator="\n")
    if fmt == "json":
        records = [
            {k: _json_value(v) for k, v in row.items()} for row in table.to_dict(orient="records")
        ]
        return json.dumps(records, indent=1) + "\n"
    raise ValueError(f"format must be csv or json; got {fmt!r}")
