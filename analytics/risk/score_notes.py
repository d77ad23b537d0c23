"""What a risk score's page and its FHIR RiskAssessment say about it beside the number:
the features the model filled in, a progression before the landmark, values held inside
the training range (`analytics.risk.services.risk_scores_compute`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

import pandas as pd

__all__ = ["features_missing", "score_notes"]


def features_missing(features: pd.DataFrame, used: Sequence[str]) -> list[list[str]]:
    """Per row, the features the model uses (one never seen in training is dropped by
    it) that have no value there: the model fills them in."""
    absent = features.loc[:, list(used)].isna()
    return [list(absent.columns[row]) for row in absent.to_numpy()]


def score_notes(
    patient_id: str,
    landmark: dt.date,
    progressed: Mapping[str, dt.date],
    outside: Mapping[str, float],
    missing: Sequence[str] = (),
) -> list[str]:
    notes = []
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
