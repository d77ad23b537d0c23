"""Risk models on a landmark feature table: penalised Cox and gradient boosting at a horizon.

This is the one code path for fitting, cross-validating, scoring and explaining risk
models; ``manage.py fit_risk_model`` maps its results onto `RiskModelVersion` and
`RiskScore`. Durations are in days; a higher ``score`` always means higher risk.

Models
------
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

Both go through `MissingValueImputer` fitted on the training rows (see `features`).

Metrics
-------
- Harrell's C (`harrell_c`): the share of comparable pairs (the shorter time is an
  event) ordered correctly by score, score ties counting 1/2 (lifelines
  ``concordance_index``).
- Time-dependent AUC at t (`time_dependent_auc`): cumulative/dynamic AUC with IPCW
  (Uno et al. 2007; cases T <= t with an event, controls T > t), P(event by t) as the
  marker; scikit-survival's ``cumulative_dynamic_auc``. NaN when t is outside the
  follow-up of the rows scored or there is no case or no control at t.
- Integrated Brier score (`integrated_brier_score`): the IPCW Brier score of the
  predicted survival (Graf et al. 1999) averaged over a time grid by the trapezoid rule;
  scikit-survival's ``integrated_brier_score``.
- Calibration by risk decile (`calibration_by_decile`): mean predicted P(event by
  horizon) against the Kaplan-Meier observed proportion in each tenth of patients.

The censoring distribution G for the IPCW metrics is estimated on the whole table being
cross-validated (it weights the evaluation; it trains nothing), so every fold's test
times lie inside its support.

Cross-validation (`cross_validate`) splits by patient (`StratifiedGroupKFold`, events
balanced across folds), so no patient is in a training and a test fold at once.

Risk tiers (`tier_thresholds`): low below the 1/3 quantile, high from the 2/3 quantile
of the final model's scores on its own training rows; intermediate between.

Explanations (`RiskModel.explain`): per raw feature, how far this patient's value moves
the score from a reference patient. Cox: sum over that feature's design columns (value
and missing indicator) of coefficient x (value - training mean), in log hazard ratio;
the contributions add up exactly to the score. GBM: P(event by horizon) for the patient
minus the same with that one feature set to its training median (and not missing), in
probability; with interactions these need not add up to the score exactly.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.utils import concordance_index
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import StratifiedGroupKFold
from sksurv.metrics import cumulative_dynamic_auc
from sksurv.metrics import integrated_brier_score as _sksurv_ibs
from sksurv.util import Surv
from threadpoolctl import threadpool_limits

from analytics.risk.core.features import MissingValueImputer
from radtrack import provenance

__all__ = [
    "EVAL_TIMES_DAYS",
    "Contribution",
    "CoxModel",
    "CrossValidationResult",
    "Explanation",
    "HorizonGBMModel",
    "RiskModel",
    "TierThresholds",
    "calibration_by_decile",
    "cox_fit",
    "cross_validate",
    "gbm_fit",
    "harrell_c",
    "ibs_time_grid",
    "integrated_brier_score",
    "library_versions",
    "risk_model_fit",
    "risk_model_load",
    "risk_model_save",
    "table_fingerprint",
    "tier_thresholds",
    "time_dependent_auc",
]

ModelKind = Literal["cox", "gbm"]
EVAL_TIMES_DAYS: tuple[float, float] = (182.0, 365.0)
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

    def survival_at(self, frame: pd.DataFrame, times: Sequence[float]) -> np.ndarray:
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

    def survival_at(self, frame: pd.DataFrame, times: Sequence[float]) -> np.ndarray:
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


# --------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------
def harrell_c(
    *, durations: Sequence[float], events: Sequence[bool], scores: Sequence[float]
) -> float:
    """Harrell's concordance index; higher ``scores`` mean earlier events."""
    return float(
        concordance_index(
            np.asarray(durations, float), -np.asarray(scores, float), np.asarray(events, bool)
        )
    )


def _surv(durations: Sequence[float], events: Sequence[bool]) -> np.ndarray:
    return Surv.from_arrays(event=np.asarray(events, bool), time=np.asarray(durations, float))


def time_dependent_auc(
    *,
    durations: Sequence[float],
    events: Sequence[bool],
    risk: np.ndarray,
    times: Sequence[float],
    censoring_durations: Sequence[float] | None = None,
    censoring_events: Sequence[bool] | None = None,
) -> np.ndarray:
    """Uno's IPCW cumulative/dynamic AUC at each of ``times``.

    ``risk`` is (rows,) or (rows, len(times)): higher = more likely an event by t
    (e.g. 1 - S(t | x)). G comes from ``censoring_durations/events`` (default: the same
    rows). Entries are NaN where not estimable (see module docstring).
    """
    durations = np.asarray(durations, float)
    events = np.asarray(events, bool)
    risk = np.asarray(risk, float)
    if risk.ndim == 1:
        risk = np.repeat(risk[:, None], len(times), axis=1)
    train = _surv(
        durations if censoring_durations is None else censoring_durations,
        events if censoring_events is None else censoring_events,
    )
    test = _surv(durations, events)
    out = np.full(len(times), np.nan)
    for i, t in enumerate(times):
        cases = (durations <= t) & events
        controls = durations > t
        if not (durations.min() <= t < durations.max()) or not cases.any() or not controls.any():
            continue
        auc, _ = cumulative_dynamic_auc(train, test, risk[:, i : i + 1], times=[t])
        out[i] = float(np.atleast_1d(auc)[0])
    return out


def ibs_time_grid(
    durations: Sequence[float], *, n: int = 50, lower_q: float = 0.1, upper_q: float = 0.9
) -> np.ndarray:
    """An evenly spaced grid between the ``lower_q`` and ``upper_q`` quantiles of ``durations``."""
    lo, hi = np.quantile(np.asarray(durations, float), [lower_q, upper_q])
    return np.unique(np.linspace(lo, hi, n))


def integrated_brier_score(
    *,
    durations: Sequence[float],
    events: Sequence[bool],
    survival: np.ndarray,
    times: Sequence[float],
    censoring_durations: Sequence[float] | None = None,
    censoring_events: Sequence[bool] | None = None,
) -> float:
    """Graf's IPCW integrated Brier score of ``survival`` (rows, len(times)) over ``times``.

    Times outside the follow-up of these rows ([min, max)) are dropped first; NaN when
    fewer than two remain. Lower is better; 0.25 is what S = 0.5 everywhere scores.
    """
    durations = np.asarray(durations, float)
    times = np.asarray(times, float)
    keep = (times >= durations.min()) & (times < durations.max())
    if keep.sum() < 2:
        return math.nan
    train = _surv(
        durations if censoring_durations is None else censoring_durations,
        events if censoring_events is None else censoring_events,
    )
    test = _surv(durations, events)
    return float(_sksurv_ibs(train, test, np.asarray(survival, float)[:, keep], times[keep]))


def calibration_by_decile(
    *,
    durations: Sequence[float],
    events: Sequence[bool],
    risk: Sequence[float],
    horizon_days: float = DEFAULT_HORIZON_DAYS,
    n_groups: int = 10,
) -> pd.DataFrame:
    """Predicted against observed P(event by horizon) per risk group (tenths by default).

    Columns: ``group`` (1 = lowest risk), ``n``, ``mean_predicted``, ``observed`` (1 -
    Kaplan-Meier survival at the horizon), ``followed_to_horizon`` (False when the
    group's follow-up ends before the horizon, so ``observed`` is carried forward).
    """
    risk = pd.Series(np.asarray(risk, float))
    groups = min(n_groups, len(risk))
    labels = pd.qcut(risk.rank(method="first"), q=groups, labels=False)
    durations = np.asarray(durations, float)
    events = np.asarray(events, bool)
    rows = []
    for g in range(groups):
        mask = (labels == g).to_numpy()
        km = KaplanMeierFitter().fit(durations[mask], event_observed=events[mask])
        rows.append(
            {
                "group": g + 1,
                "n": int(mask.sum()),
                "mean_predicted": float(risk[mask].mean()),
                "observed": float(1.0 - km.survival_function_at_times([horizon_days]).iloc[0]),
                "followed_to_horizon": bool(durations[mask].max() >= horizon_days),
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------
# Tiers and explanations
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TierThresholds:
    """Score cut-points: low below ``low_below``, high from ``high_from``, else intermediate."""

    low_below: float
    high_from: float
    quantiles: tuple[float, float] = (1 / 3, 2 / 3)

    def tier(self, score: float) -> str:
        if score < self.low_below:
            return "low"
        return "high" if score >= self.high_from else "intermediate"

    def as_dict(self) -> dict[str, Any]:
        return {
            "low_below": self.low_below,
            "high_from": self.high_from,
            "quantiles": list(self.quantiles),
        }


def tier_thresholds(
    scores: Sequence[float], *, quantiles: tuple[float, float] = (1 / 3, 2 / 3)
) -> TierThresholds:
    """Tier cut-points at the given quantiles (tertiles by default) of training scores."""
    low, high = np.quantile(np.asarray(scores, float), quantiles)
    return TierThresholds(float(low), float(high), quantiles)


@dataclass(frozen=True)
class Contribution:
    """How much one feature moves this patient's score, and the value it had (None: missing)."""

    feature: str
    value: float | None
    contribution: float

    def as_dict(self) -> dict[str, Any]:
        return {"feature": self.feature, "value": self.value, "contribution": self.contribution}


@dataclass(frozen=True)
class Explanation:
    """A patient's score, the reference score, the scale, and contributions (largest first)."""

    score: float
    reference_score: float
    scale: str
    contributions: tuple[Contribution, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "reference_score": self.reference_score,
            "scale": self.scale,
            "contributions": [c.as_dict() for c in self.contributions],
        }


# --------------------------------------------------------------------------------------
# The fitted pipeline
# --------------------------------------------------------------------------------------
@dataclass
class RiskModel:
    """Imputer + Cox or GBM, with tier thresholds from its training rows."""

    kind: ModelKind
    features: list[str]
    imputer: MissingValueImputer
    estimator: CoxModel | HorizonGBMModel
    horizon_days: float
    tiers: TierThresholds | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    def design(self, frame: pd.DataFrame) -> pd.DataFrame:
        return self.imputer.transform(frame.loc[:, self.features])

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        """Cox: log relative hazard against the training mean; GBM: P(event by horizon)."""
        x = self.design(frame)
        if isinstance(self.estimator, CoxModel):
            return self.estimator.linear_predictor(x)
        return self.estimator.risk(x)

    def survival_at(self, frame: pd.DataFrame, times: Sequence[float]) -> np.ndarray:
        return self.estimator.survival_at(self.design(frame), times)

    def risk_at(self, frame: pd.DataFrame, times: Sequence[float]) -> np.ndarray:
        """P(event by t) for each t, shape (rows, times)."""
        return 1.0 - self.survival_at(frame, times)

    def tier(self, scores: Sequence[float]) -> list[str]:
        if self.tiers is None:
            raise ValueError("this model has no tier thresholds")
        return [self.tiers.tier(float(s)) for s in scores]

    def explain(self, frame: pd.DataFrame, *, top: int | None = None) -> list[Explanation]:
        """Per row, each raw feature's push on the score (module docstring), largest first."""
        x = self.design(frame)
        raw = frame.loc[:, self.features].astype(float)
        per_feature: dict[str, np.ndarray] = {}
        if isinstance(self.estimator, CoxModel):
            scale = "log hazard ratio against the average training patient"
            coef, means = self.estimator.coefficients, self.estimator.means
            terms = (x - means) * coef.loc[x.columns]
            for column in x.columns:
                source = self.imputer.source_of(column)
                per_feature[source] = per_feature.get(source, 0.0) + terms[column].to_numpy()
            scores = terms.sum(axis=1).to_numpy()
            reference = np.zeros(len(x))
        else:
            scale = f"probability of an event by {self.horizon_days:g} days"
            scores = self.estimator.risk(x)
            reference_row = self._reference_design()
            reference = np.full(len(x), float(self.estimator.risk(reference_row)[0]))
            for source in self.imputer.inputs:
                swapped = x.copy()
                for column in self._design_columns_of(source):
                    swapped[column] = reference_row[column].iloc[0]
                per_feature[source] = scores - self.estimator.risk(swapped)
        explanations = []
        for i in range(len(x)):
            contributions = [
                Contribution(
                    feature=f,
                    value=None
                    if f not in raw or pd.isna(raw[f].iloc[i])
                    else float(raw[f].iloc[i]),
                    contribution=float(values[i]),
                )
                for f, values in per_feature.items()
            ]
            contributions.sort(key=lambda c: abs(c.contribution), reverse=True)
            explanations.append(
                Explanation(
                    score=float(scores[i]),
                    reference_score=float(reference[i]),
                    scale=scale,
                    contributions=tuple(contributions[:top] if top else contributions),
                )
            )
        return explanations

    def _design_columns_of(self, source: str) -> list[str]:
        names = self.imputer.feature_names_out
        return [c for c in names if self.imputer.source_of(c) == source]

    def _reference_design(self) -> pd.DataFrame:
        """The training-median patient, not missing anything, as one design row."""
        row = {c: self.imputer.medians[c] for c in self.imputer.columns}
        row.update({f"{c}_missing": 0.0 for c in self.imputer.indicators})
        return pd.DataFrame([row], columns=self.imputer.feature_names_out)


def risk_model_fit(
    *,
    kind: ModelKind,
    df: pd.DataFrame,
    features: Sequence[str],
    duration_col: str = "duration_days",
    event_col: str = "event",
    penalizer: float = 0.1,
    l1_ratio: float = 0.0,
    horizon_days: float = DEFAULT_HORIZON_DAYS,
    random_state: int = 0,
    gbm_params: dict[str, Any] | None = None,
) -> RiskModel:
    """Impute (fitted on ``df``), fit a Cox or GBM model, and set tiers from its training scores."""
    features = list(features)
    imputer = MissingValueImputer().fit(df.loc[:, features])
    design = imputer.transform(df.loc[:, features])
    if design.shape[1] == 0:
        raise ValueError(f"no usable feature: {imputer.dropped}")
    table = design.assign(
        **{duration_col: df[duration_col].astype(float), event_col: df[event_col].astype(bool)}
    )
    parameters: dict[str, Any] = {"horizon_days": horizon_days}
    if kind == "cox":
        estimator: CoxModel | HorizonGBMModel = cox_fit(
            df=table,
            duration_col=duration_col,
            event_col=event_col,
            penalizer=penalizer,
            l1_ratio=l1_ratio,
        )
        parameters.update(penalizer=penalizer, l1_ratio=l1_ratio)
    elif kind == "gbm":
        estimator = gbm_fit(
            df=table,
            duration_col=duration_col,
            event_col=event_col,
            horizon_days=horizon_days,
            random_state=random_state,
            params=gbm_params,
        )
        parameters.update({**GBM_DEFAULTS, **(gbm_params or {}), "random_state": random_state})
    else:
        raise ValueError(f"kind must be 'cox' or 'gbm', not {kind!r}")
    model = RiskModel(kind, features, imputer, estimator, float(horizon_days), None, parameters)
    model.tiers = tier_thresholds(model.score(df))
    return model


# --------------------------------------------------------------------------------------
# Cross-validation
# --------------------------------------------------------------------------------------
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
    grid = ibs_time_grid(durations)
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    risk_columns = [f"risk_{t:g}d" for t in eval_times]
    oof = pd.DataFrame(
        np.nan, index=df.index, columns=["fold", "score", *risk_columns, "risk_horizon"]
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
        test_rows = df.iloc[test]
        scores = model.score(test_rows)
        risk = model.risk_at(test_rows, [*eval_times, horizon_days])
        index = df.index[test]
        oof.loc[index, "fold"] = fold
        oof.loc[index, "score"] = scores
        for i, name in enumerate([*risk_columns, "risk_horizon"]):
            oof.loc[index, name] = risk[:, i]
        t_dur, t_ev = durations[test], events[test]
        aucs = time_dependent_auc(
            durations=t_dur,
            events=t_ev,
            risk=risk[:, : len(eval_times)],
            times=eval_times,
            censoring_durations=durations,
            censoring_events=events,
        )
        fold_rows.append(
            {
                "fold": fold,
                "n_test": len(test),
                "n_events": int(t_ev.sum()),
                "c_index": harrell_c(durations=t_dur, events=t_ev, scores=scores)
                if t_ev.any()
                else math.nan,
                **{f"auc_{t:g}d": a for t, a in zip(eval_times, aucs, strict=True)},
                "ibs": integrated_brier_score(
                    durations=t_dur,
                    events=t_ev,
                    survival=model.survival_at(test_rows, grid),
                    times=grid,
                    censoring_durations=durations,
                    censoring_events=events,
                ),
            }
        )
    fold_metrics = pd.DataFrame(fold_rows)
    metric_names = ["c_index", *(f"auc_{t:g}d" for t in eval_times), "ibs"]
    metrics = {name: float(fold_metrics[name].mean(skipna=True)) for name in metric_names}
    metrics.update(
        {f"{name}_sd": float(fold_metrics[name].std(skipna=True)) for name in metric_names}
    )
    metrics["c_index_pooled"] = harrell_c(
        durations=durations, events=events, scores=oof["score"].to_numpy(float)
    )
    calibration = calibration_by_decile(
        durations=durations,
        events=events,
        risk=oof["risk_horizon"].to_numpy(float),
        horizon_days=horizon_days,
    )
    return CrossValidationResult(oof, fold_metrics, metrics, calibration)


# --------------------------------------------------------------------------------------
# Provenance and storage
# --------------------------------------------------------------------------------------
def table_fingerprint(df: pd.DataFrame) -> str:
    """SHA-256 of a table's content, independent of row and column order."""
    columns = sorted(map(str, df.columns))
    frame = df.copy()
    frame.columns = list(map(str, df.columns))
    frame = frame.loc[:, columns]
    text = frame.astype(str).sort_values(columns).to_csv(index=False, lineterminator="\n")
    return hashlib.sha256(text.encode()).hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of what fits and scores the models, to store with each model version."""
    return provenance.library_versions(
        "python", "lifelines", "scikit-learn", "scikit-survival", "pandas", "numpy", "scipy"
    )


def risk_model_save(model: RiskModel, path: Path) -> Path:
    """Write a fitted `RiskModel` (joblib pickle; only ever load files RadTrack wrote)."""
    import joblib

    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, path)
    return path


def risk_model_load(path: Path) -> RiskModel:
    import joblib

    model = joblib.load(path)
    if not isinstance(model, RiskModel):
        raise TypeError(f"{path} does not hold a RiskModel")
    return model
