"""The two survival estimators behind `RiskModel`: penalised Cox and gradient boosting at a horizon.

Durations are in days; both take an imputed design table (see
`analytics.risk.core.imputation.MissingValueImputer`) with a duration and an event column.

- **Cox** (`cox_fit`): lifelines `CoxPHFitter`, Efron ties (as R's ``coxph``), elastic-net
  penalty ``penalizer * (l1_ratio * |b|_1 + (1 - l1_ratio) / 2 * |b|_2^2)`` on the
  standardised covariates. Score: the linear predictor (log relative hazard against the
  training mean). Survival curves from the Breslow baseline.
- **GBM** (`gbm_fit`): scikit-learn `HistGradientBoostingClassifier` for "event by
  ``horizon_days``". A patient censored before the horizon has unknown status: such rows
  get weight 0 and the others inverse-probability-of-censoring weights (IPCW: 1/G(T-)
  for an event by the horizon, 1/G(horizon) for follow-up past it, G the Kaplan-Meier
  estimate of staying uncensored in the training rows), which removes the bias that
  simply dropping them would leave. Score: P(event by horizon). Survival curves at other
  times (for the Brier score) come from a Breslow baseline fitted on the training rows
  with the GBM's logit as the one covariate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from lifelines import CoxPHFitter, KaplanMeierFitter
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

__all__ = [
    "DEFAULT_HORIZON_DAYS",
    "GBM_DEFAULTS",
    "CoxModel",
    "HorizonGBMModel",
    "cox_fit",
    "gbm_fit",
    "horizon_ipcw_weights",
]

DEFAULT_HORIZON_DAYS = 365.0
GBM_DEFAULTS: dict[str, Any] = {
    "max_iter": 200,
    "learning_rate": 0.05,
    "max_depth": 3,
    "min_samples_leaf": 10,
    "l2_regularization": 1.0,
    "early_stopping": False,
}


# --------------------------------------------------------------------------------------
# Cox
# --------------------------------------------------------------------------------------
@dataclass
class CoxModel:
    """A fitted lifelines Cox model and the covariates it was fitted on."""

    fitter: CoxPHFitter
    covariates: list[str]

    @property
    def coefficients(self) -> pd.Series:
        return self.fitter.params_.copy()

    @property
    def means(self) -> pd.Series:
        """Training means of the covariates (the reference of the linear predictor)."""
        return pd.Series(self.fitter._norm_mean, index=self.covariates)

    @property
    def concordance(self) -> float:
        """Harrell's C of the linear predictor on the training rows."""
        return float(self.fitter.concordance_index_)

    def linear_predictor(self, frame: pd.DataFrame) -> np.ndarray:
        x = frame.loc[:, self.covariates].astype(float)
        return ((x - self.means) @ self.coefficients.loc[self.covariates]).to_numpy(float)

    def survival_at(self, frame: pd.DataFrame, times: npt.ArrayLike) -> np.ndarray:
        """S(t | x), shape (rows, times)."""
        curves = self.fitter.predict_survival_function(
            frame.loc[:, self.covariates], times=np.asarray(times, float)
        )
        return curves.T.to_numpy(float)


def cox_fit(
    *,
    df: pd.DataFrame,
    duration_col: str,
    event_col: str,
    penalizer: float = 0.1,
    l1_ratio: float = 0.0,
) -> CoxModel:
    """Fit a Cox model on every column of ``df`` other than ``duration_col`` and ``event_col``.

    ``penalizer=0`` gives the unpenalised partial-likelihood fit (as R's ``coxph``).
    Rows with a missing value are an error here: impute first (`MissingValueImputer`).
    """
    if df.isna().any().any():
        bad = [c for c in df.columns if df[c].isna().any()]
        raise ValueError(f"missing values in {bad}: impute before fitting")
    covariates = [c for c in df.columns if c not in (duration_col, event_col)]
    fitter = CoxPHFitter(penalizer=penalizer, l1_ratio=l1_ratio)
    fitter.fit(df, duration_col=duration_col, event_col=event_col)
    return CoxModel(fitter=fitter, covariates=covariates)


# --------------------------------------------------------------------------------------
# Gradient boosting at a horizon
# --------------------------------------------------------------------------------------
def _censoring_survival(durations: np.ndarray, events: np.ndarray) -> KaplanMeierFitter:
    """Kaplan-Meier of the censoring time (censoring is the 'event')."""
    return KaplanMeierFitter().fit(durations, event_observed=~events.astype(bool))


def horizon_ipcw_weights(
    *, durations: np.ndarray, events: np.ndarray, horizon_days: float
) -> tuple[np.ndarray, np.ndarray]:
    """(label, weight) for "event by horizon": weight 0 when censored before it, else IPCW.

    Weights are 1/G(T-) for an event at T <= horizon and 1/G(horizon) for T > horizon,
    rescaled to mean 1 over the rows that count.
    """
    durations = np.asarray(durations, float)
    events = np.asarray(events, bool)
    g = _censoring_survival(durations, events)
    case = events & (durations <= horizon_days)
    control = durations > horizon_days
    weights = np.zeros(len(durations))
    # G(T-): just before T, so a censoring at the same time does not count against it.
    g_before = g.survival_function_at_times(durations - 1e-9).to_numpy(float)
    g_horizon = float(g.survival_function_at_times([horizon_days]).iloc[0])
    weights[case] = 1.0 / np.maximum(g_before[case], 1e-12)
    if control.any():
        weights[control] = 1.0 / max(g_horizon, 1e-12)
    counted = case | control
    if counted.any():
        weights[counted] /= weights[counted].mean()
    return case.astype(int), weights


def _one_thread() -> threadpool_limits:
    """Run histogram boosting on one OpenMP thread.

    Cohorts are hundreds of rows: threads gain nothing there, and on a machine whose
    cores are busy OpenMP's spinning barriers made one fit 50 times slower.
    """
    return threadpool_limits(limits=1, user_api="openmp")


@dataclass
class HorizonGBMModel:
    """Gradient boosting for P(event by ``horizon_days``), with a Breslow curve on its logit."""

    classifier: HistGradientBoostingClassifier
    covariates: list[str]
    horizon_days: float
    curve: CoxPHFitter

    def risk(self, frame: pd.DataFrame) -> np.ndarray:
        """P(event by the horizon)."""
        with _one_thread():
            return self.classifier.predict_proba(frame.loc[:, self.covariates])[:, 1]

    def logit(self, frame: pd.DataFrame) -> np.ndarray:
        p = np.clip(self.risk(frame), 1e-6, 1 - 1e-6)
        return np.log(p / (1 - p))

    def survival_at(self, frame: pd.DataFrame, times: npt.ArrayLike) -> np.ndarray:
        x = pd.DataFrame({"gbm_logit": self.logit(frame)}, index=frame.index)
        return self.curve.predict_survival_function(x, times=np.asarray(times, float)).T.to_numpy()


def gbm_fit(
    *,
    df: pd.DataFrame,
    duration_col: str,
    event_col: str,
    horizon_days: float = DEFAULT_HORIZON_DAYS,
    random_state: int = 0,
    params: dict[str, Any] | None = None,
) -> HorizonGBMModel:
    """Fit gradient boosting for "event by ``horizon_days``" with IPCW (module docstring)."""
    covariates = [c for c in df.columns if c not in (duration_col, event_col)]
    durations = df[duration_col].to_numpy(float)
    events = df[event_col].to_numpy(bool)
    labels, weights = horizon_ipcw_weights(
        durations=durations, events=events, horizon_days=horizon_days
    )
    counted = weights > 0
    classes = set(labels[counted].tolist())
    if classes != {0, 1}:
        raise ValueError(
            f"the training rows need both an event by {horizon_days:g} days and follow-up "
            f"past it (found only {sorted(classes)} among {int(counted.sum())} usable rows)"
        )
    classifier = HistGradientBoostingClassifier(
        **{**GBM_DEFAULTS, **(params or {})}, random_state=random_state
    )
    x = df.loc[counted, covariates]
    with _one_thread():
        classifier.fit(x, labels[counted], sample_weight=weights[counted])
    model = HorizonGBMModel(classifier, covariates, float(horizon_days), CoxPHFitter())
    table = pd.DataFrame(
        {"gbm_logit": model.logit(df), "duration": durations, "event": events}, index=df.index
    )
    # A small ridge keeps the one-covariate fit finite when the logit separates perfectly.
    model.curve = CoxPHFitter(penalizer=0.01).fit(table, "duration", "event")
    return model
