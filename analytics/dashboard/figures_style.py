"""The dashboard figures' shared look (Okabe-Ito palette, layout, axes) and JSON-safe values."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from django.utils import timezone

Figure = dict[str, Any]

# Okabe & Ito (2008), "Color Universal Design".
PALETTE = (
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#000000",  # black
    "#F0E442",  # yellow (last: weak on white)
)
INK = "#1b1f24"
GRID = "#d0d6dd"
_FONT = {"family": 'system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif', "size": 13}


def _number(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _day(value: dt.date | dt.datetime | None) -> str | None:
    """A date as ISO; a datetime's date where the page is (`_wall_clock`)."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return _wall_clock(value)[:10]
    return value.isoformat()


def _wall_clock(at: dt.datetime) -> str:
    """``at`` as the local wall-clock time, ISO without an offset.

    plotly.js reads the date and time of an ISO string and drops its offset, so an aware
    time sent as UTC would be drawn at the UTC wall-clock time, another day for an
    evening result than the page's tables (local time) say.
    """
    if timezone.is_aware(at):
        at = timezone.localtime(at)
    return at.replace(tzinfo=None).isoformat()


def _layout(**overrides: Any) -> dict[str, Any]:
    layout: dict[str, Any] = {
        "font": {**_FONT, "color": INK},
        "paper_bgcolor": "#ffffff",
        "plot_bgcolor": "#ffffff",
        "margin": {"l": 64, "r": 24, "t": 72, "b": 48},
        "hovermode": "closest",
        # above the plot: below it, a legend collides with the x axis title
        "legend": {"orientation": "h", "y": 1.0, "x": 0, "yanchor": "bottom"},
    }
    layout.update(overrides)
    return layout


def _axis(title: str, **extra: Any) -> dict[str, Any]:
    return {
        "title": {"text": title},
        "gridcolor": GRID,
        "zerolinecolor": GRID,
        "linecolor": INK,
        "automargin": True,
        **extra,
    }
