"""The promotion rule: a candidate may replace the active model only if, on the same
locked validation set, no organ regresses beyond the declared margins.

Margins (configurable, ``RADTRACK_MODEL_MARGINS``): sensitivity may fall by at most
``sensitivity_points`` percentage points, false positives per study may rise by at
most ``fp_per_study``, the median volume error may rise by at most
``volume_error_points`` percentage points; checked per organ and overall. A measure
that neither report can give (no lesion of that organ) is not compared; one that the
active model's report gives and the candidate's cannot (it found no lesion to measure)
is a regression: what was not measured is never a pass. A report on no study, or on no
lesion that counts, cannot pass at all (`report_refusals`).

Measurement is compared on the same lesions: where both reports' lesion rows are given,
the median volume error of each group is taken over the lesions of 0.5 ml or more that
both models found (`paired_volume_errors`), not over each model's own finds. A candidate
that finds more, harder lesions would otherwise be refused for measuring lesions the
active model never measured (on the locked set the 900-step candidate measured the
lesions both found better per organ, lung 8.9 -> 3.5 %, liver 31.2 -> 19.5 %, while its
unpaired median rose by 7.4 points on three liver lesions only it found). Each model's
median over its own finds stays in its report; a group where the two found no lesion in
common is compared on those.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from imaging.core.modelhub.scoring import MIN_VOLUME_ML


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


def paired_volume_errors(
    candidate_rows: Iterable[Mapping[str, Any]], active_rows: Iterable[Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Median volume error of each model over the lesions (of ``MIN_VOLUME_ML`` or more)
    both found, overall and per organ: ``{group: {"lesions", "candidate", "active"}}``
    from the two reports' lesion rows (`scoring.LesionRow.as_json`), matched by study and
    lesion; groups with no lesion in common are left out."""

    def measured(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], Mapping[str, Any]]:
        return {(str(r["case_id"]), str(r["lesion_id"])): r for r in rows
                if r.get("detected") and r.get("volume_error") is not None
                and float(r["volume_ml"]) >= MIN_VOLUME_ML}  # fmt: skip

    new, old = measured(candidate_rows), measured(active_rows)
    pairs = [(new[k], old[k]) for k in sorted(set(new) & set(old))]
    out: dict[str, dict[str, Any]] = {}
    if not pairs:
        return out
    for group in ("overall", *sorted({str(a["organ"]) for a, _ in pairs})):
        chosen = [(a, b) for a, b in pairs if group == "overall" or a["organ"] == group]
        out[group] = {
            "lesions": len(chosen),
            "candidate": statistics.median(float(a["volume_error"]) for a, _ in chosen),
            "active": statistics.median(float(b["volume_error"]) for _, b in chosen),
        }
    return out


def regressions(
    *,
    candidate: Mapping[str, Any],
    active: Mapping[str, Any],
    margins: Margins,
    paired: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Every (group, measure) where ``candidate``'s metrics fall behind ``active``'s by more
    than the margin (both are `scoring.report_metrics` outputs); the median volume error
    on the lesions both found where ``paired`` (`paired_volume_errors`) has the group."""
    found = []
    groups = [("overall", candidate["overall"], active["overall"])]
    groups += [(organ, candidate["by_organ"][organ], active["by_organ"][organ])
               for organ in candidate["by_organ"] if organ in active["by_organ"]]  # fmt: skip
    for group, new, old in groups:
        for key, label, scale, higher_better, margin_field in _MEASURES:
            a, b = new.get(key), old.get(key)
            if b is None:
                continue
            both = (paired or {}).get(group) if key == "volume_error_median" else None
            if both and a is not None:
                a, b = both["candidate"], both["active"]
                label = f"{label} on the {both['lesions']} lesion(s) both found"
            if a is None:
                found.append({
                    "group": group, "measure": key, "candidate": None, "active": b,
                    "worse_by": None, "margin": getattr(margins, margin_field),
                    "text": f"{group}: {label} could not be measured for the candidate "
                            f"(the active model's: {b:.4g})",
                })  # fmt: skip
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


def report_refusals(metrics: Mapping[str, Any]) -> list[str]:
    """Why a report cannot pass whatever it is compared with: it judged the model on no
    study, or on no lesion that counts (sensitivity then measures nothing)."""
    refusals = []
    studies = int(metrics.get("studies") or 0)
    if studies == 0:
        refusals.append("the validation set had no study: nothing was measured")
    counted = int((metrics.get("overall") or {}).get("lesions_counted") or 0)
    if studies and counted == 0:
        refusals.append(
            f"the {studies} validation stud{'y' if studies == 1 else 'ies'} had no lesion that "
            "counts: sensitivity was not measured"
        )
    return refusals
