"""The patient page's per-lesion chart: each lesion's volume over time, one line per lesion."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from analytics.dashboard.figures_style import INK, PALETTE, Figure, _axis, _day, _layout, _number
from analytics.dashboard.patient import LesionPoint, LesionTrack, PatientTimeline
from imaging.models import LesionMeasurement

_STATUS_SYMBOL = {"new": "triangle-up", "tracked": "circle", "resolved": "x", "merged": "x"}
_LESION_HOVER = "<b>{label}</b><br>%{{x|%Y-%m-%d}}: %{{y:.2f}} ml<br>%{{customdata}}<extra></extra>"


def lesion_volume_figure(*, timeline: PatientTimeline) -> Figure:
    """Each lesion's volume (ml, values in force) over time: one line per lesion identity.

    A lesion's first sighting after the response baseline is drawn as a triangle (new
    lesion), one a radiologist confirmed gone (or merged into another) as a cross at 0
    ml; a study where it was not found, too small to measure, or seen but with a size
    not assessable (cut by the edge of what was imaged: its numbers only a lower bound)
    leaves a gap in its line (no size was measured there), and measurements rejected as
    false positives are left out. A point linked provisionally (no registration to the baseline) is hollow and
    joined to its neighbours by a dashed line of its own, named in the legend; the hover
    text says the link is provisional and what state the finding is in (equivocal...).
    Target lesions are named "(target)" in the legend.
    """
    data = []
    baseline = _lesion_baseline_date(timeline)
    for i, track in enumerate(timeline.lesions):
        data += _lesion_traces(track, colour=PALETTE[i % len(PALETTE)], baseline=baseline)
    return {
        "data": data,
        "layout": _layout(
            title={"text": "Lesion volumes", "x": 0, "font": {"size": 15}},
            xaxis=_axis("Study date", type="date"),
            yaxis=_axis("Volume (ml)", rangemode="tozero"),
            showlegend=True,
        ),
    }


def _lesion_traces(
    track: LesionTrack, *, colour: str, baseline: dt.date | None
) -> list[dict[str, Any]]:
    """One lesion's line and, where it has any, its provisional links; none without a
    measured volume."""
    points = [p for p in track.shown_points if p.study_date is not None]
    values = [_number(p.volume_ml) for p in points]
    if all(v is None for v in values):
        return []
    symbols, sizes, notes = [], [], []
    for p in points:
        is_new = p.status == "new" and p.study_date != baseline
        status = "new" if is_new else ("tracked" if p.status == "new" else p.status)
        symbols.append(_STATUS_SYMBOL.get(status, "circle"))
        sizes.append(12 if status in ("new", "resolved", "merged") else 8)
        notes.append(_lesion_point_note(p, is_new=is_new))
    traces = [_lesion_line(track, points, values, colour, symbols, sizes, notes)]
    provisional = _provisional_links(points, values, symbols, sizes, notes)
    if provisional is not None:
        traces.append(_provisional_line(track, provisional, colour))
    return traces


def _lesion_line(
    track: LesionTrack,
    points: Sequence[LesionPoint],
    values: Sequence[float | None],
    colour: str,
    symbols: list[str],
    sizes: list[int],
    notes: list[str],
) -> dict[str, Any]:
    """A lesion's solid (target) or dotted line through its points, provisional ones left out."""
    name = f"{track.label} (target)" if track.is_target else track.label
    return {
        "type": "scatter",
        "mode": "lines+markers",
        "name": name,
        "legendgroup": f"lesion-{track.pk}",
        "x": [_day(p.study_date) for p in points],
        # a provisional point is drawn by its own trace below, so that no solid
        # line reaches it
        "y": [None if p.link_provisional else v for p, v in zip(points, values, strict=True)],
        "connectgaps": False,
        "customdata": notes,
        "line": {
            "color": colour,
            "width": 2,
            "dash": "solid" if track.is_target else "dot",
        },
        "marker": {
            "color": colour,
            "symbol": symbols,
            "size": sizes,
            "line": {"width": 1, "color": INK},
        },
        "hovertemplate": _LESION_HOVER.format(label=track.label),
    }


def _provisional_line(
    track: LesionTrack, provisional: dict[str, Any], colour: str
) -> dict[str, Any]:
    """A lesion's provisional links (`_provisional_links`) as a dashed line of their own."""
    return {
        **provisional,
        "type": "scatter",
        "mode": "lines+markers",
        "name": f"{track.label}: provisional link",
        "legendgroup": f"lesion-{track.pk}",
        "connectgaps": False,
        "line": {"color": colour, "width": 2, "dash": "dash"},
        "marker": {
            **provisional["marker"],
            "color": colour,
            "line": {"width": 2, "color": colour},
        },
        "hovertemplate": _LESION_HOVER.format(label=track.label),
    }


def _lesion_baseline_date(timeline: PatientTimeline) -> dt.date | None:
    """The date a lesion first seen is a baseline lesion rather than a new one: the
    response baseline's, else the earliest study where any lesion was measured. Never
    simply the first study: it may have failed or not been analysed."""
    for r in timeline.responses:
        if r.is_baseline and r.study_date is not None:
            return r.study_date
    dates = [p.study_date for t in timeline.lesions for p in t.points if p.study_date]
    return min(dates, default=None)


def _lesion_point_note(p: LesionPoint, *, is_new: bool) -> str:
    """The hover text of a lesion at one study: what it is there, the finding's state
    when not confirmed, a provisional link, and its review."""
    if is_new:
        parts = ["new lesion"]
    elif p.status == "new":
        parts = ["seen at baseline"]
    else:
        parts = [p.status_label.lower()]
    if p.finding_state != LesionMeasurement.FindingState.CONFIRMED:
        parts.append((p.finding_label or p.finding_state.replace("_", " ")).lower())
    if p.link_provisional:
        parts.append("provisional link (no registration to the baseline), awaiting review")
    parts.append(p.review_label.lower())
    return "; ".join(parts)


def _provisional_links(
    points: Sequence[LesionPoint],
    values: Sequence[float | None],
    symbols: Sequence[str],
    sizes: Sequence[int],
    notes: Sequence[str],
) -> dict[str, Any] | None:
    """x, y, customdata and markers of a lesion's provisional links: each line segment
    with a provisionally linked point at either end, and each such point (hollow) with
    no measured neighbour; runs are separated by a gap. None without one."""
    runs: list[list[int]] = []
    for k in range(1, len(points)):
        a, b = k - 1, k
        measured = values[a] is not None and values[b] is not None
        if measured and (points[a].link_provisional or points[b].link_provisional):
            if runs and runs[-1][-1] == a:
                runs[-1].append(b)
            else:
                runs.append([a, b])
    joined = {k for run in runs for k in run}
    runs += [
        [k]
        for k, p in enumerate(points)
        if p.link_provisional and values[k] is not None and k not in joined
    ]
    if not runs:
        return None
    x, y, custom, symbol, size = [], [], [], [], []
    for run in sorted(runs):
        if x:  # a gap between runs
            x.append(x[-1])
            y.append(None)
            custom.append("")
            symbol.append("circle")
            size.append(0)
        for k in run:
            own = points[k].link_provisional
            x.append(_day(points[k].study_date))
            y.append(values[k])
            custom.append(notes[k])
            symbol.append(f"{symbols[k]}-open" if own else symbols[k])
            size.append(sizes[k] if own else 0)  # the main trace marks the other end
    return {"x": x, "y": y, "customdata": custom, "marker": {"symbol": symbol, "size": size}}
