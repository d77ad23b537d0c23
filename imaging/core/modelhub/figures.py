"""Plotly figures of a validation report and of drift, as plain ``{"data", "layout"}`` dicts.

The page draws them with the dashboard's charts script; the HTML export embeds them with
Plotly itself. Colours are Okabe-Ito (the candidate blue, the active model orange), and
every trace is named in its legend and hover text, so colour never carries meaning alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Figure = dict[str, Any]
CANDIDATE_COLOUR = "#0072B2"
ACTIVE_COLOUR = "#E69F00"
PROTOCOL_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#56B4E9", "#E69F00", "#000000")


def _layout(title: str, x: str, y: str, **extra: Any) -> dict[str, Any]:
    return {
        "title": {"text": title},
        "xaxis": {"title": {"text": x}, **extra.pop("xaxis", {})},
        "yaxis": {"title": {"text": y}, **extra.pop("yaxis", {})},
        "margin": {"l": 60, "r": 20, "t": 50, "b": 90},
        "legend": {"orientation": "h", "y": -0.3},
        **extra,
    }


def sensitivity_figure(
    *, candidate: Sequence[Mapping[str, Any]], active: Sequence[Mapping[str, Any]] | None,
    candidate_name: str, active_name: str | None,
) -> Figure:  # fmt: skip
    """Sensitivity per organ, side and size band (``by_organ_side_band`` rows), side by side."""

    def trace(rows: Sequence[Mapping[str, Any]], name: str, colour: str) -> dict[str, Any]:
        return {
            "type": "bar", "name": name, "marker": {"color": colour},
            "x": [f"{r['organ']} {r['side']} {r['band']} mm" for r in rows],
            "y": [None if r["sensitivity"] is None else 100 * r["sensitivity"] for r in rows],
            "customdata": [[r["detected"], r["lesions"]] for r in rows],
            "hovertemplate": f"{name}<br>%{{x}}: %{{y:.0f}} % (%{{customdata[0]}} of %{{customdata[1]}})<extra></extra>",
        }  # fmt: skip

    data = [trace(candidate, candidate_name, CANDIDATE_COLOUR)]
    if active is not None and active_name:
        data.append(trace(active, active_name, ACTIVE_COLOUR))
    return {"data": data, "layout": _layout("Sensitivity by organ, side and size", "", "detected (%)",
                                            yaxis={"range": [0, 105]}, barmode="group")}  # fmt: skip


def calibration_figure(
    *, candidate: Mapping[str, Any], active: Mapping[str, Any] | None,
    candidate_name: str, active_name: str | None,
) -> Figure:  # fmt: skip
    """Reliability diagram: share of candidates that were true lesions per confidence bin."""
    data: list[dict[str, Any]] = [{
        "type": "scatter", "mode": "lines", "name": "perfect calibration", "x": [0.5, 1.0],
        "y": [0.5, 1.0], "line": {"color": "#999999", "dash": "dot"}, "hoverinfo": "skip",
    }]  # fmt: skip
    for cal, name, colour in ((candidate, candidate_name, CANDIDATE_COLOUR),
                              (active, active_name, ACTIVE_COLOUR)):  # fmt: skip
        if not cal or not name:
            continue
        bins = cal.get("bins", [])
        data.append({
            "type": "scatter", "mode": "lines+markers", "name": name, "line": {"color": colour},
            "x": [b["mean_confidence"] for b in bins], "y": [b["share_true"] for b in bins],
            "customdata": [b["n"] for b in bins],
            "hovertemplate": f"{name}<br>confidence %{{x:.2f}}: %{{y:.0%}} true (%{{customdata}} candidates)<extra></extra>",
        })  # fmt: skip
    return {"data": data, "layout": _layout("Calibration of the confidence", "mean confidence",
                                            "share that were lesions", yaxis={"range": [0, 1.05]})}  # fmt: skip


def volume_figure(
    *, candidate: Sequence[Mapping[str, Any]], active: Sequence[Mapping[str, Any]] | None,
    candidate_name: str, active_name: str | None,
) -> Figure:  # fmt: skip
    """Measured against true volume of every detected lesion (log axes, identity line)."""
    data: list[dict[str, Any]] = [{
        "type": "scatter", "mode": "lines", "name": "measured = true", "x": [0.01, 100],
        "y": [0.01, 100], "line": {"color": "#999999", "dash": "dot"}, "hoverinfo": "skip",
    }]  # fmt: skip
    for rows, name, colour, symbol in ((candidate, candidate_name, CANDIDATE_COLOUR, "circle"),
                                       (active, active_name, ACTIVE_COLOUR, "diamond")):  # fmt: skip
        if rows is None or not name:
            continue
        found = [r for r in rows if r.get("volume_ml_measured")]
        data.append({
            "type": "scatter", "mode": "markers", "name": name,
            "marker": {"color": colour, "symbol": symbol, "size": 8},
            "x": [r["volume_ml"] for r in found], "y": [r["volume_ml_measured"] for r in found],
            "text": [f"{r['case_id']} {r['lesion_id']} {r['organ']} {r['kind']}" for r in found],
            "hovertemplate": f"{name}<br>%{{text}}<br>true %{{x:.2f}} ml, measured %{{y:.2f}} ml<extra></extra>",
        })  # fmt: skip
    return {"data": data, "layout": _layout("Lesion volume", "true volume (ml)", "measured volume (ml)",
                                            xaxis={"type": "log"}, yaxis={"type": "log"})}  # fmt: skip


def time_figure(
    *, candidate: Sequence[Mapping[str, Any]], active: Sequence[Mapping[str, Any]] | None,
    candidate_name: str, active_name: str | None,
) -> Figure:  # fmt: skip
    """Seconds per study (segmentation, post-processing and measurement)."""
    data = []
    for rows, name, colour in ((candidate, candidate_name, CANDIDATE_COLOUR),
                               (active, active_name, ACTIVE_COLOUR)):  # fmt: skip
        if rows is None or not name:
            continue
        data.append({"type": "bar", "name": name, "marker": {"color": colour},
                     "x": [r["case_id"] for r in rows], "y": [r["seconds"] for r in rows],
                     "hovertemplate": f"{name}<br>%{{x}}: %{{y:.1f}} s<extra></extra>"})  # fmt: skip
    return {"data": data, "layout": _layout("Time per study", "study", "seconds", barmode="group")}


def report_figures(
    report: Mapping[str, Any], active: Mapping[str, Any] | None
) -> dict[str, Figure]:
    """Every figure of a report (``report`` and ``active``: {name, metrics, per_study, lesions})."""
    names = {"candidate_name": report["name"], "active_name": active["name"] if active else None}
    a = active or {}
    return {
        "fig-sensitivity": sensitivity_figure(
            candidate=report["metrics"]["by_organ_side_band"],
            active=a.get("metrics", {}).get("by_organ_side_band") if active else None, **names),
        "fig-calibration": calibration_figure(
            candidate=report["metrics"]["calibration"],
            active=a.get("metrics", {}).get("calibration") if active else None, **names),
        "fig-volume": volume_figure(candidate=report["lesions"],
                                    active=a.get("lesions") if active else None, **names),
        "fig-time": time_figure(candidate=report["per_study"],
                                active=a.get("per_study") if active else None, **names),
    }  # fmt: skip


def drift_figure(
    *, statistic: str, series: Mapping[str, Sequence[tuple[str, float]]],
    reference: tuple[float, float] | None, title: str,
) -> Figure:  # fmt: skip
    """One statistic over time, a trace per scanner/protocol, the model's reference band
    (5th to 95th percentile of its training and validation studies) shaded."""
    data: list[dict[str, Any]] = []
    for n, (protocol, points) in enumerate(sorted(series.items())):
        data.append({
            "type": "scatter", "mode": "markers+lines", "name": protocol,
            "marker": {"color": PROTOCOL_COLOURS[n % len(PROTOCOL_COLOURS)], "size": 7},
            "line": {"width": 1}, "x": [p[0] for p in points], "y": [p[1] for p in points],
            "hovertemplate": f"{protocol}<br>%{{x}}: %{{y:.3g}}<extra></extra>",
        })  # fmt: skip
    layout = _layout(title, "processed", statistic.replace("_", " "))
    if reference is not None:
        layout["shapes"] = [{"type": "rect", "xref": "paper", "x0": 0, "x1": 1, "yref": "y",
                             "y0": reference[0], "y1": reference[1], "fillcolor": "#999999",
                             "opacity": 0.2, "line": {"width": 0}, "layer": "below"}]  # fmt: skip
        layout["annotations"] = [{"xref": "paper", "x": 1, "y": reference[1], "yref": "y",
                                  "text": "model's reference (5-95 %)", "showarrow": False,
                                  "xanchor": "right", "yanchor": "bottom", "font": {"size": 10}}]  # fmt: skip
    return {"data": data, "layout": layout}
