"""Patient-level cross-validation of `risk_model_fit`, with out-of-fold predictions and metrics.

Folds split by patient (`StratifiedGroupKFold`, events balanced across folds), so no
patient is in a training and a test fold at once. The censoring distribution G for the
IPCW metrics (`analytics.risk.core.metrics`) is estimated on the whole table being
cross-validated (it weights the evaluation; it trains nothing), so every fold's test
times lie inside its support.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from analytics.risk.core.estimators import DEFAULT_HORIZON_DAYS
from analytics.risk.core.metrics import (
    calibration_by_decile,
    harrell_c,
    ibs_time_grid,
    integrated_brier_score,
    time_dependent_auc,
)
from analytics.risk.core.survival import ModelKind, RiskModel, risk_model_fit

__all__ = ["EVAL_TIMES_DAYS", "CrossValidationResult", "cross_validate"]

EVAL_TIMES_DAYS: tuple[float, float] = (182.0, 365.0)


@dataclass
class CrossValidationResult:
    """Out-of-fold predictions, per-fold metrics, their means and calibration.

    ``oof``: one row per input row (same index): ``fold``, ``score``, ``risk_<t>d`` for
    each evaluation time and ``risk_horizon``. ``fold_metrics``: per fold ``c_index``,
    ``auc_<t>d``, ``ibs``, ``n_test``, ``n_events``. ``metrics``: the mean over folds of
    each metric (NaN folds ignored), plus ``c_index_pooled`` over all out-of-fold scores.
    ``calibration``: `calibration_by_decile` of the out-of-fold P(event by horizon).
    """

    oof: pd.DataFrame
    fold_metrics: pd.DataFrame
    metrics: dict[str, float]
    calibration: pd.DataFrame


@dataclass(frozen=True)
class _Evaluation:
    """What every fold is scored against: the whole table's outcomes and the time grids."""

    durations: np.ndarray
    events: np.ndarray
    eval_times: Sequence[float]
    horizon_days: float
    ibs_grid: np.ndarray

    @property
    def risk_columns(self) -> list[str]:
        return [f"risk_{t:g}d" for t in self.eval_times]


def cross_validate(
    *,
    kind: ModelKind,
    df: pd.DataFrame,
    features: Sequence[str],
    duration_col: str = "duration_days",
    event_col: str = "event",
    group_col: str = "patient_id",
    n_splits: int = 5,
    random_state: int = 0,
    eval_times: Sequence[float] = EVAL_TIMES_DAYS,
    horizon_days: float = DEFAULT_HORIZON_DAYS,
    **fit_options: Any,
) -> CrossValidationResult:
    """Patient-level K-fold cross-validation of `risk_model_fit` (module docstring)."""
    groups = df[group_col].astype(str).to_numpy()
    n_groups = len(set(groups))
    if n_groups < n_splits:
        raise ValueError(f"{n_groups} patients cannot make {n_splits} folds")
    durations = df[duration_col].to_numpy(float)
    events = df[event_col].to_numpy(bool)
    evaluation = _Evaluation(durations, events, eval_times, horizon_days, ibs_time_grid(durations))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    oof = pd.DataFrame(
        np.nan, index=df.index, columns=["fold", "score", *evaluation.risk_columns, "risk_horizon"]
    )
    fold_rows = []
    for fold, (train, test) in enumerate(splitter.split(df, events, groups)):
        model = risk_model_fit(
            kind=kind,
            df=df.iloc[train],
            features=features,
            duration_col=duration_col,
            event_col=event_col,
            horizon_days=horizon_days,
            random_state=random_state,
            **fit_options,
        )
        fold_rows.append(_fold_evaluate(fold, model, df, test, oof, evaluation))
    fold_metrics = pd.DataFrame(fold_rows)
    metrics = _metrics_summary(fold_metrics, oof, evaluation)
    calibration = calibration_by_decile(
        durations=durations,
        events=events,
        risk=oof["risk_horizon"].to_numpy(float),
        horizon_days=horizon_days,
    )
    return CrossValidationResult(oof, fold_metrics, metrics, calibration)


def _fold_evaluate(
    fold: int,
    model: RiskModel,
    df: pd.DataFrame,
    test: np.ndarray,
    oof: pd.DataFrame,
    evaluation: _Evaluation,
) -> dict[str, Any]:
    """Score the ``test`` rows of one fold into ``oof``; that fold's metrics as one row."""
    e = evaluation
    test_rows = df.iloc[test]
    scores = model.score(test_rows)
    risk = model.risk_at(test_rows, [*e.eval_times, e.horizon_days])
    index = df.index[test]
    oof.loc[index, "fold"] = fold
    oof.loc[index, "score"] = scores
    for i, name in enumerate([*e.risk_columns, "risk_horizon"]):
        oof.loc[index, name] = risk[:, i]
    t_dur, t_ev = e.durations[test], e.events[test]
    aucs = time_dependent_auc(
        durations=t_dur,
        events=t_ev,
        risk=risk[:, : len(e.eval_times)],
        times=e.eval_times,
        censoring_durations=e.durations,
        censoring_events=e.events,
    )
    return {
        "fold": fold,
        "n_test": len(test),
        "n_events": int(t_ev.sum()),
        "c_index": harrell_c(durations=t_dur, events=t_ev, scores=scores)
        if t_ev.any()
        else math.nan,
        **{f"auc_{t:g}d": a for t, a in zip(e.eval_times, aucs, strict=True)},
        "ibs": integrated_brier_score(
            durations=t_dur,
            events=t_ev,
            survival=model.survival_at(test_rows, e.ibs_grid),
            times=e.ibs_grid,
            censoring_durations=e.durations,
            censoring_events=e.events,
        ),
    }


def _metrics_summary(
    fold_metrics: pd.DataFrame, oof: pd.DataFrame, evaluation: _Evaluation
) -> dict[str, float]:
    """Mean and SD over folds of each metric, and the C-index pooled over all folds."""
    metric_names = ["c_index", *(f"auc_{t:g}d" for t in evaluation.eval_times), "ibs"]
    metrics = {name: float(fold_metrics[name].mean(skipna=True)) for name in metric_names}
    metrics.update(
        {f"{name}_sd": float(fold_metrics[name].std(skipna=True)) for name in metric_names}
    )
    metrics["c_index_pooled"] = harrell_c(
        durations=evaluation.durations,
        events=evaluation.events,
        scores=oof["score"].to_numpy(float),
    )
    return metrics
