"""What a risk score's page and its FHIR RiskAssessment say about it beside the number:
the features the model filled in, a progression before the landmark, values held inside
the training range (`analytics.risk.services.risk_scores_compute`), and the holding
itself (`feature_ranges` at fitting, `features_clip` at scoring)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "feature_ranges",
    "features_clip",
    "features_missing",
    "latest_on_or_before",
    "score_notes",
]


def features_missing(features: pd.DataFrame, used: Sequence[str]) -> list[list[str]]:
    """Per row, the features the model uses (one never seen in training is dropped by
    it) that have no value there: the model fills them in."""
    absent = features.loc[:, list(used)].isna()
    return [list(absent.columns[row]) for row in absent.to_numpy()]


#: Imaging older than this at a landmark is said beside the score (restaging CTs are
#: 6 to 12 weeks apart; the model was fitted on landmarks at CT dates).
IMAGING_STALE_DAYS = 120


def score_notes(
    patient_id: str,
    landmark: dt.date,
    progressed: Mapping[str, dt.date],
    outside: Mapping[str, float],
    missing: Sequence[str] = (),
    imaging_from: dt.date | None = None,
) -> list[str]:
    """The notes of one score. ``imaging_from``: the latest CT with measurements on or
    before the landmark, whose lesions the imaging features read."""
    notes = []
    if imaging_from is not None and (landmark - imaging_from).days > IMAGING_STALE_DAYS:
        notes.append(
            f"imaging features from the CT of {imaging_from:%Y-%m-%d}, "
            f"{(landmark - imaging_from).days} days before this landmark: no CT since"
        )
    if patient_id in progressed and progressed[patient_id] <= landmark:
        notes.append(
            f"progressed on {progressed[patient_id]:%Y-%m-%d}, before this landmark; the "
            "model was fitted on landmarks before progression"
        )
    if outside:
        notes.append(
            "held inside the training range: "
            + ", ".join(f"{k} (was {v:.3g})" for k, v in outside.items())
        )
    if missing:
        notes.append(
            "no value at this landmark, so the model filled in its training cohort's: "
            + ", ".join(missing)
        )
    return notes


def latest_on_or_before(dates: Sequence[dt.date], day: dt.date) -> dt.date | None:
    """The latest of ``dates`` on or before ``day`` (None: none)."""
    return max((d for d in dates if d <= day), default=None)


def feature_ranges(table: pd.DataFrame, features: list[str]) -> dict[str, list[float]]:
    """[lowest, highest] of each feature in the training rows (features never seen: absent)."""
    out = {}
    for name in features:
        values = table[name].astype(float).dropna()
        if not values.empty:
            out[name] = [float(values.min()), float(values.max())]
    return out


def features_clip(
    frame: pd.DataFrame, ranges: Mapping[str, list[float]]
) -> tuple[pd.DataFrame, list[dict[str, float]]]:
    """Hold each feature inside its training range; per row, the raw values that were moved.

    A model says nothing reliable about values it never saw: a patient whose tumour
    burden has grown 25-fold since its nadir (someone who progressed long ago, when
    training rows stop at progression) would otherwise get an extrapolated score far
    beyond any training patient's. Missing values stay missing.
    """
    clipped = frame.copy()
    moved: list[dict[str, float]] = [{} for _ in range(len(frame))]
    for name, (low, high) in ranges.items():
        if name not in frame:
            continue
        raw = frame[name].astype(float)
        clipped[name] = raw.clip(lower=low, upper=high)
        outside = ((raw < low) | (raw > high)).to_numpy()
        for i in np.flatnonzero(outside):
            moved[i][name] = float(raw.iloc[i])
    return clipped, moved
