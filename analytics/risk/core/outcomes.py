"""Outcomes after each landmark (time to progression or death, or censoring) and landmarks
at a fixed offset from each patient's baseline, for the landmark risk models
(`analytics.risk.core.features` defines the landmark and re-exports these).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pandas as pd

from analytics.risk.core.grouped import landmark_keys

__all__ = ["LandmarkOutcomes", "landmark_outcomes", "landmarks_from_baseline"]


@dataclass(frozen=True)
class LandmarkOutcomes:
    """Time from landmark to event per eligible (patient, landmark), and why others were left out."""

    table: pd.DataFrame  # patient_id, landmark_date, duration_days, event
    excluded: dict[tuple[str, dt.date], str]


def landmark_outcomes(
    *,
    events: pd.DataFrame,
    landmarks: pd.DataFrame,
    endpoint: str = "pfs",
) -> LandmarkOutcomes:
    """Outcome after each landmark from ``events`` (``patient_id, kind, date``).

    ``endpoint``: ``"pfs"`` (progression or death, whichever first) or ``"os"`` (death).
    End of follow-up is the death date, else the latest censor date. Left out, with the
    reason: no death or censor row; follow-up ending on or before the landmark; for
    PFS, a progression on or before the landmark (the model estimates risk for
    patients still progression-free at the landmark).
    """
    if endpoint not in {"pfs", "os"}:
        raise ValueError(f"endpoint must be 'pfs' or 'os', not {endpoint!r}")
    ev = events.loc[:, ["patient_id", "kind", "date"]]
    ev = ev[ev["patient_id"].notna()]
    by_patient: dict[str, dict[str, list[dt.date]]] = {}
    for pid, kind, date in zip(
        ev["patient_id"].astype(str), ev["kind"], pd.to_datetime(ev["date"]).dt.date, strict=True
    ):
        by_patient.setdefault(pid, {}).setdefault(str(kind), []).append(date)
    rows, excluded = [], {}
    keys = landmark_keys(landmarks)
    for pid, landmark in zip(
        keys["patient_id"].tolist(), keys["landmark_date"].dt.date.tolist(), strict=True
    ):
        kinds = by_patient.get(pid, {})
        deaths, censors = kinds.get("death", []), kinds.get("censor", [])
        if not deaths and not censors:
            excluded[(pid, landmark)] = "no death or censor (last follow-up) date"
            continue
        end = min(deaths) if deaths else max(censors)
        progressions = sorted(kinds.get("progression", []))
        if endpoint == "pfs" and progressions and progressions[0] <= landmark:
            excluded[(pid, landmark)] = "progressed on or before the landmark"
            continue
        if end <= landmark:
            excluded[(pid, landmark)] = "follow-up ended on or before the landmark"
            continue
        event_dates = list(deaths)
        if endpoint == "pfs":
            event_dates += progressions
        event_dates = [d for d in event_dates if d > landmark]
        if event_dates:
            first = min(event_dates)
            rows.append((pid, landmark, float((first - landmark).days), True))
        else:
            rows.append((pid, landmark, float((end - landmark).days), False))
    table = pd.DataFrame(rows, columns=["patient_id", "landmark_date", "duration_days", "event"])
    table["event"] = table["event"].astype(bool)
    return LandmarkOutcomes(table=table, excluded=excluded)


def landmarks_from_baseline(
    baselines: Mapping[str, dt.date] | Iterable[tuple[str, dt.date]], *, offset_days: int
) -> pd.DataFrame:
    """A landmark per patient at baseline + ``offset_days`` (``patient_id, landmark_date``)."""
    items = baselines.items() if isinstance(baselines, Mapping) else baselines
    return pd.DataFrame(
        [(str(pid), date + dt.timedelta(days=offset_days)) for pid, date in items],
        columns=["patient_id", "landmark_date"],
    )
