"""Every Plotly figure the dashboard draws, built as plain dicts ready for ``Plotly.newPlot``.

Figures read the typed objects the selectors return (`PatientTimeline`, `CohortSurvival`,
a model version's calibration) and never query. They are plain ``{"data", "layout"}``
dicts rather than ``plotly.graph_objects`` figures: the page only needs JSON, and
building without graph_objects' validation keeps a patient page fast (the tests check
every figure against plotly's own schema). Dates are ISO strings, times local wall-clock
ones without an offset (plotly.js ignores an offset); NaN becomes None, which plotly
draws as a gap in a line. The per-lesion chart is in `figures_lesions`; the palette,
layout, axes and value conversions every figure shares are in `figures_style`.

Colours: the Okabe-Ito palette (distinguishable with the common colour-vision
deficiencies); every trace is also named in its legend and hover text, so colour never
carries meaning alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from analytics.dashboard.cohort import CohortSurvival
from analytics.dashboard.figures_lesions import lesion_volume_figure
from analytics.dashboard.figures_style import (
    INK,
    PALETTE,
    Figure,
    _axis,
    _day,
    _layout,
    _number,
    _wall_clock,
)
from analytics.dashboard.patient import LabSeries, PatientTimeline, RiskSummary, StudySummary
from analytics.lesions.core.recist import PD_ABSOLUTE_MM, PD_INCREASE_PCT, PR_DECREASE_PCT, nadir
from analytics.lesions.selectors import ResponseRow

__all__ = [
    "TIER_COLOURS",
    "calibration_figure",
    "km_figure",
    "lesion_volume_figure",
    "patient_figures",
    "risk_explanation_figure",
    "response_timeline_figure",
]

#: One panel of the stacked response timeline: its axis title and its traces.
Panel = tuple[str, list[dict[str, Any]]]

TIER_COLOURS = {"high": "#D55E00", "intermediate": "#E69F00", "low": "#0072B2"}
THRESHOLD_PR = "#009E73"
THRESHOLD_PD = "#D55E00"


# --------------------------------------------------------------------------------------
# Patient page
# --------------------------------------------------------------------------------------


def _pd_thresholds(sums: Sequence[float | None]) -> list[float | None]:
    """The sum at or above which each study would be target PD (RECIST 1.1 section 4.3.1).

    ``sums``: baseline first, then each follow-up's sum, None where it is not part of the
    nadir (a study not evaluable: `analytics.lesions.core.assess` leaves its sum out).
    max(nadir x 1.2, nadir + 5 mm), the nadir being the smallest sum on earlier studies,
    baseline included (`analytics.lesions.core.recist.nadir`); None at baseline.
    """
    out: list[float | None] = [None]
    for k in range(1, len(sums)):
        earlier = [s for s in sums[:k] if s is not None]
        if not earlier:
            out.append(None)
            continue
        low = nadir(earlier)
        out.append(max(low * (1 + PD_INCREASE_PCT / 100.0), low + PD_ABSOLUTE_MM))
    return out


def response_timeline_figure(*, timeline: PatientTimeline) -> Figure:
    """Sum of diameters with PR and PD thresholds, total tumour burden, and each lab test,
    stacked on one shared time axis, with every CT study marked as a vertical line.

    PR threshold: 30% below the baseline sum; PD threshold: +20% and at least +5 mm over
    the nadir before each study (RECIST 1.1 section 4.3.1), drawn as a tick at each
    follow-up. Both are measured from the response baseline and the assessed studies
    only: a sum at a study not evaluable (NE) is drawn apart, hollow and not joined by
    the line. Each lab test has its own axis in its canonical unit.
    """
    responses = [r for r in timeline.responses if r.study_date is not None]
    rows = [*_diameter_rows(responses), *_burden_rows(responses), *_lab_rows(timeline.labs)]
    return _stacked_figure(rows, studies=timeline.studies)


def _response_label(r: ResponseRow) -> str:
    return r.recist_response or ("baseline" if r.is_baseline else "")


def _diameter_rows(responses: list[ResponseRow]) -> list[Panel]:
    """The sum of target diameters with its PR and PD thresholds (no panel without sums).

    The thresholds start at the row marked baseline (an earlier study that could not be
    analysed has an NE row of its own), and no threshold is drawn without one.
    """
    sums = [_number(r.sum_diameters_mm) for r in responses]
    dates = [_day(r.study_date) for r in responses]
    if not any(s is not None for s in sums):
        return []
    traces = _sum_traces(responses, sums, dates)
    base = next((k for k, r in enumerate(responses) if r.is_baseline), None)
    if base is None or sums[base] is None:
        return [("Sum of diameters (mm)", traces)]
    traces.append(_pr_threshold_trace(sums[base], x=[dates[base], dates[-1]]))
    in_nadir = [
        s if k == base or not responses[k].not_evaluable else None
        for k, s in enumerate(sums[base:], start=base)
    ]
    pd_line = [None] * base + _pd_thresholds(in_nadir)
    if any(v is not None for v in pd_line):
        traces.append(_pd_threshold_trace(dates, pd_line))
    return [("Sum of diameters (mm)", traces)]


def _sum_traces(
    responses: list[ResponseRow], sums: list[float | None], dates: list[str | None]
) -> list[dict[str, Any]]:
    """The sum of diameters at each assessed study, joined by a line, and the sums at
    studies not evaluable (NE) drawn apart, hollow."""
    assessed = [k for k, r in enumerate(responses) if not r.not_evaluable]
    traces = [
        {
            "type": "scatter",
            "mode": "lines+markers+text",
            "name": "Sum of target diameters",
            "x": [dates[k] for k in assessed],
            "y": [sums[k] for k in assessed],
            "text": [_response_label(responses[k]) for k in assessed],
            "textposition": "top center",
            "line": {"color": PALETTE[0], "width": 3},
            "marker": {"size": 9},
            "hovertemplate": "%{x|%Y-%m-%d}: %{y:.1f} mm (%{text})<extra>sum of diameters</extra>",
        }
    ]
    not_evaluable = [k for k, r in enumerate(responses) if r.not_evaluable and sums[k] is not None]
    if not_evaluable:
        traces.append(
            {
                "type": "scatter",
                "mode": "markers+text",
                "name": "Sum at a study not evaluable (NE)",
                "x": [dates[k] for k in not_evaluable],
                "y": [sums[k] for k in not_evaluable],
                "text": ["NE"] * len(not_evaluable),
                "textposition": "top center",
                "marker": {
                    "size": 11,
                    "symbol": "circle-open",
                    "color": PALETTE[0],
                    "line": {"width": 2, "color": PALETTE[0]},
                },
                "hovertemplate": "%{x|%Y-%m-%d}: %{y:.1f} mm, not evaluable (NE): this sum is "
                "not assessed and does not count toward the nadir<extra>sum of diameters</extra>",
            }
        )
    return traces


def _pr_threshold_trace(baseline_sum: float, *, x: list[str | None]) -> dict[str, Any]:
    """The PR threshold, 30% below the baseline sum (RECIST 1.1 section 4.3.1), as a
    dashed line over ``x`` (the baseline's date and the last study's)."""
    pr = baseline_sum * (1 + PR_DECREASE_PCT / 100.0)
    return {
        "type": "scatter",
        "mode": "lines",
        "name": f"PR threshold ({PR_DECREASE_PCT:.0f}% from baseline)",
        "x": x,
        "y": [pr, pr],
        "line": {"color": THRESHOLD_PR, "dash": "dash", "width": 2},
        "hovertemplate": f"PR at or below {pr:.1f} mm<extra></extra>",
    }


def _pd_threshold_trace(dates: list[str | None], pd_line: list[float | None]) -> dict[str, Any]:
    """The PD threshold (`_pd_thresholds`) at each study, None where there is none."""
    # One tick per follow-up: the threshold belongs to that study (its nadir is
    # the smallest earlier sum), so nothing is drawn between studies.
    return {
        "type": "scatter",
        "mode": "markers",
        "name": f"PD threshold (+{PD_INCREASE_PCT:.0f}% and +{PD_ABSOLUTE_MM:.0f} mm from nadir)",
        "x": dates,
        "y": pd_line,
        "marker": {
            "symbol": "line-ew-open",
            "size": 28,
            "color": THRESHOLD_PD,
            "line": {"width": 3, "color": THRESHOLD_PD},
        },
        "hovertemplate": "PD at or above %{y:.1f} mm<extra></extra>",
    }


def _burden_rows(responses: list[ResponseRow]) -> list[Panel]:
    """Total tumour burden (ml) at each assessed study (no panel without volumes)."""
    burden = [_number(r.total_volume_ml) for r in responses]
    if not any(b is not None for b in burden):
        return []
    trace = {
        "type": "scatter",
        "mode": "lines+markers",
        "name": "Total tumour burden",
        "x": [_day(r.study_date) for r in responses],
        "y": burden,
        "text": [r.volumetric_response for r in responses],
        "line": {"color": PALETTE[2], "width": 3},
        "hovertemplate": "%{x|%Y-%m-%d}: %{y:.2f} ml %{text}<extra>tumour burden</extra>",
    }
    return [("Tumour burden (ml)", [trace])]


#: Marker of a lab point by comparator: a censored result points the way its bound goes.
_BOUND_SYMBOLS = {
    "<": "triangle-down",
    "<=": "triangle-down",
    ">": "triangle-up",
    ">=": "triangle-up",
}


def _lab_rows(labs: Iterable[LabSeries]) -> list[Panel]:
    """One panel per lab test, in its canonical unit. A censored result is drawn at its
    bound with a triangle pointing the way the bound goes, and its hover text reads as
    the result does ("< 0.5 ng/mL"), never as an exact value."""
    rows = []
    for j, lab in enumerate(labs):
        name = lab.key.upper() if len(lab.key) <= 4 else lab.key.capitalize()
        comparators = lab.comparators or ("",) * len(lab.values)
        trace = {
            "type": "scatter",
            "mode": "lines+markers",
            "name": name,
            "x": [_wall_clock(at) for at in lab.observed_at],
            "y": [_number(v) for v in lab.values],
            "text": list(lab.value_labels),
            "line": {"color": PALETTE[(j + 3) % len(PALETTE)], "width": 2},
            "marker": {
                "size": [9 if c else 6 for c in comparators],
                "symbol": [_BOUND_SYMBOLS.get(c, "circle") for c in comparators],
            },
            "hovertemplate": f"%{{x|%Y-%m-%d %H:%M}}: %{{text}}<extra>{lab.display}</extra>",
        }
        rows.append((f"{name} ({lab.unit})", [trace]))
    return rows


def _stacked_figure(rows: list[Panel], *, studies: Iterable[StudySummary]) -> Figure:
    """The panels stacked top to bottom on one date axis, each CT study a dotted line."""
    data: list[dict[str, Any]] = []
    layout = _layout(
        title={"text": "Response and laboratory timeline", "x": 0, "font": {"size": 15}},
        showlegend=True,
        legend={"orientation": "h", "y": 1.0, "x": 0, "yanchor": "bottom"},
        margin={"l": 80, "r": 24, "t": 80, "b": 48},
    )
    n = len(rows)
    gap = 0.04 if n > 1 else 0.0
    height = (1.0 - gap * (n - 1)) / n if n else 1.0
    for i, (title, traces) in enumerate(rows):
        axis = "y" if i == 0 else f"y{i + 1}"
        top = 1.0 - i * (height + gap)
        layout["yaxis" if i == 0 else f"yaxis{i + 1}"] = _axis(
            title, domain=[max(0.0, top - height), top], rangemode="tozero", anchor="x"
        )
        for trace in traces:
            data.append({**trace, "xaxis": "x", "yaxis": axis})
    bottom = "y" if n <= 1 else f"y{n}"
    layout["xaxis"] = _axis("Date", type="date", anchor=bottom)
    layout["shapes"] = [
        {
            "type": "line",
            "xref": "x",
            "yref": "paper",
            "x0": _day(study.study_date),
            "x1": _day(study.study_date),
            "y0": 0,
            "y1": 1,
            "line": {"color": "#6b7684", "width": 1, "dash": "dot"},
            "layer": "below",
        }
        for study in studies
        if study.study_date is not None
    ]
    layout["height"] = max(360, 170 * n + 140)
    return {"data": data, "layout": layout}


def risk_explanation_figure(*, risk: RiskSummary, top: int = 10) -> Figure:
    """What drives the score: each feature's push (largest ``top`` by size), up or down.

    The scale is the model's (log hazard ratio for Cox, probability for the GBM);
    features pushing risk up are vermillion, down blue, and the sign is in the label.
    """
    items = sorted(risk.contributions, key=lambda c: abs(c.contribution), reverse=True)[:top]
    items.reverse()  # largest at the top of a horizontal bar chart
    labels = [
        f"{c.feature} = {c.value:.3g}" if c.value is not None else f"{c.feature} (missing)"
        for c in items
    ]
    values = [c.contribution for c in items]
    return {
        "data": [
            {
                "type": "bar",
                "orientation": "h",
                "name": "Contribution",
                "x": values,
                "y": labels,
                "text": [f"{v:+.3f}" for v in values],
                "textposition": "auto",
                "marker": {
                    "color": [
                        TIER_COLOURS["high"] if v > 0 else TIER_COLOURS["low"] for v in values
                    ]
                },
                "hovertemplate": "%{y}: %{x:+.3f}<extra></extra>",
            }
        ],
        "layout": _layout(
            title={"text": "What drives this score", "x": 0, "font": {"size": 15}},
            xaxis=_axis(
                f"Push on the score ({risk.scale or 'model scale'}); right raises risk",
                zeroline=True,
                zerolinecolor=INK,
            ),
            yaxis=_axis("", automargin=True),
            showlegend=False,
            height=max(260, 28 * len(items) + 120),
            margin={"l": 200, "r": 24, "t": 36, "b": 56},
        ),
    }


def patient_figures(*, timeline: PatientTimeline) -> dict[str, Figure]:
    """The patient page's figures by element id; a figure with nothing to draw is left out."""
    out: dict[str, Figure] = {}
    if any(t.has_measured_point for t in timeline.lesions):
        out["fig-lesions"] = lesion_volume_figure(timeline=timeline)
    if timeline.responses or timeline.labs:
        out["fig-timeline"] = response_timeline_figure(timeline=timeline)
    if timeline.risk is not None and timeline.risk.contributions:
        out["fig-risk"] = risk_explanation_figure(risk=timeline.risk)
    return out


# --------------------------------------------------------------------------------------
# Cohort page
# --------------------------------------------------------------------------------------
def km_figure(*, survival: CohortSurvival) -> Figure:
    """Kaplan-Meier curves by risk tier: steps with 95% bands and censoring ticks."""
    data: list[dict[str, Any]] = []
    for curve in survival.curves:
        colour = TIER_COLOURS.get(curve.tier, PALETTE[0])
        name = f"{curve.tier_label} risk (n={curve.n}, {curve.events} events)"
        times = list(curve.times_days)
        data.append(
            {
                "type": "scatter",
                "mode": "lines",
                "x": times + times[::-1],
                "y": list(curve.upper) + list(curve.lower)[::-1],
                "fill": "toself",
                "fillcolor": _rgba(colour, 0.12),
                "line": {"width": 0, "shape": "hv"},
                "hoverinfo": "skip",
                "showlegend": False,
                "legendgroup": curve.tier,
                "name": f"{curve.tier_label} 95% CI",
            }
        )
        data.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": name,
                "legendgroup": curve.tier,
                "x": times,
                "y": list(curve.survival),
                "line": {"color": colour, "width": 3, "shape": "hv"},
                "hovertemplate": f"{curve.tier_label}: day %{{x:.0f}}, %{{y:.1%}}<extra></extra>",
            }
        )
        if curve.censored_days:
            data.append(
                {
                    "type": "scatter",
                    "mode": "markers",
                    "name": f"{curve.tier_label} censored",
                    "legendgroup": curve.tier,
                    "showlegend": False,
                    "x": list(curve.censored_days),
                    "y": list(curve.censored_survival),
                    "marker": {"symbol": "line-ns-open", "size": 10, "color": colour},
                    "hovertemplate": f"{curve.tier_label}: censored at day %{{x:.0f}}<extra></extra>",
                }
            )
    return {
        "data": data,
        "layout": _layout(
            margin={"l": 64, "r": 24, "t": 40, "b": 48},  # the page heading names it
            xaxis=_axis("Days since the scored landmark", rangemode="tozero"),
            yaxis=_axis(
                "Probability event-free" if survival.endpoint == "pfs" else "Probability alive",
                range=[0, 1.02],
                tickformat=".0%",
            ),
            showlegend=True,
        ),
    }


def calibration_figure(
    *, calibration: Iterable[dict[str, Any]], horizon_days: float | None
) -> Figure:
    """Predicted against observed risk by decile of predicted risk (cross-validated).

    Points on the diagonal are perfectly calibrated; a hollow marker is a group whose
    follow-up ended before the horizon (its observed value is carried forward).
    """
    rows = [r for r in calibration if _number(r.get("mean_predicted")) is not None]
    followed = [bool(r.get("followed_to_horizon", True)) for r in rows]
    horizon = f" by day {horizon_days:.0f}" if horizon_days else ""
    return {
        "data": [
            {
                "type": "scatter",
                "mode": "lines",
                "name": "Perfect calibration",
                "x": [0, 1],
                "y": [0, 1],
                "line": {"color": "#6b7684", "dash": "dash", "width": 1},
                "hoverinfo": "skip",
            },
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": "Risk deciles (out-of-fold)",
                "x": [_number(r.get("mean_predicted")) for r in rows],
                "y": [_number(r.get("observed")) for r in rows],
                "customdata": [[r.get("group"), r.get("n")] for r in rows],
                "line": {"color": PALETTE[0], "width": 2},
                "marker": {
                    "size": 10,
                    "color": PALETTE[0],
                    "symbol": ["circle" if f else "circle-open" for f in followed],
                },
                "hovertemplate": "group %{customdata[0]} (n=%{customdata[1]}): predicted %{x:.1%}, observed %{y:.1%}<extra></extra>",
            },
        ],
        "layout": _layout(
            title={"text": f"Calibration{horizon}", "x": 0, "font": {"size": 15}},
            xaxis=_axis("Predicted risk", range=[0, 1], tickformat=".0%"),
            yaxis=_axis("Observed (Kaplan-Meier)", range=[0, 1], tickformat=".0%"),
            showlegend=True,
        ),
    }


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"
