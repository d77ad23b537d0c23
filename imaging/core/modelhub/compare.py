"""The promotion rule: a candidate may replace the active model only if, on the same
locked validation set, no organ regresses beyond the declared margins.

Margins (configurable, ``RADTRACK_MODEL_MARGINS``): sensitivity may fall by at most
``sensitivity_points`` percentage points, false positives per study may rise by at
most ``fp_per_study``, the median volume error may rise by at most
``volume_error_points`` percentage points; checked per organ and overall. A measure
that one of the two reports cannot give (no lesion of that organ) is not compared.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Margins:
    """How far a candidate may fall behind the active model and still be promoted."""

    sensitivity_points: float = 1.0
    fp_per_study: float = 0.2
    volume_error_points: float = 2.0

    def as_json(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Margins:
        data = dict(data or {})
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"margins: unknown field(s) {', '.join(unknown)}")
        try:
            values = {k: float(v) for k, v in data.items()}
        except (TypeError, ValueError):
            raise ValueError("margins: every margin must be a number") from None
        if any(v < 0 for v in values.values()):
            raise ValueError("margins: a margin cannot be negative")
        return cls(**values)


#: (measure, label, scale to the margin's unit, higher is better, margin field)
_MEASURES = (
    ("sensitivity", "sensitivity", 100.0, True, "sensitivity_points"),
    ("fp_per_study", "false positives per study", 1.0, False, "fp_per_study"),
    ("volume_error_median", "median volume error", 100.0, False, "volume_error_points"),
)


def regressions(
    *, candidate: Mapping[str, Any], active: Mapping[str, Any], margins: Margins
) -> list[dict[str, Any]]:
    """Every (group, measure) where ``candidate``'s metrics fall behind ``active``'s by more
    than the margin (both are `scoring.report_metrics` outputs)."""
    found = []
    groups = [("overall", candidate["overall"], active["overall"])]
    groups += [(organ, candidate["by_organ"][organ], active["by_organ"][organ])
               for organ in candidate["by_organ"] if organ in active["by_organ"]]  # fmt: skip
    for group, new, old in groups:
        for key, label, scale, higher_better, margin_field in _MEASURES:
            a, b = new.get(key), old.get(key)
            if a is None or b is None:
                continue
            change = (a - b) * scale
            worse = -change if higher_better else change
            margin = getattr(margins, margin_field)
            if worse > margin + 1e-9:
                unit = " points" if scale == 100.0 else ""
                found.append({
                    "group": group, "measure": key, "candidate": a, "active": b,
                    "worse_by": round(worse, 4), "margin": margin,
                    "text": f"{group}: {label} {'fell' if higher_better else 'rose'} by "
                            f"{worse:.2f}{unit} (margin {margin:g}{unit})",
                })  # fmt: skip
    return found
