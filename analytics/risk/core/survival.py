"""Risk models on a landmark feature table: imputer + Cox or GBM, tiers, explanations, storage.

`risk_model_fit` is the one code path for fitting a `RiskModel`; ``manage.py
fit_risk_model`` maps its results onto `RiskModelVersion` and `RiskScore`. Durations are
in days; a higher ``score`` always means higher risk. The estimators are in
`analytics.risk.core.estimators`, both behind a `MissingValueImputer` fitted on the
training rows (see `analytics.risk.core.features`).

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
import importlib
import math
import sys
import types
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import joblib
import numpy as np
import numpy.typing as npt
import pandas as pd

from analytics.risk.core.estimators import (
    DEFAULT_HORIZON_DAYS,
    GBM_DEFAULTS,
    CoxModel,
    HorizonGBMModel,
    cox_fit,
    gbm_fit,
)
from analytics.risk.core.imputation import MissingValueImputer
from radtrack import provenance

__all__ = [
    "Contribution",
    "Explanation",
    "ModelKind",
    "RiskModel",
    "TierThresholds",
    "library_versions",
    "risk_model_fit",
    "risk_model_load",
    "risk_model_save",
    "table_fingerprint",
    "tier_thresholds",
]

ModelKind = Literal["cox", "gbm"]


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
    scores: npt.ArrayLike, *, quantiles: tuple[float, float] = (1 / 3, 2 / 3)
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

    def survival_at(self, frame: pd.DataFrame, times: npt.ArrayLike) -> np.ndarray:
        return self.estimator.survival_at(self.design(frame), times)

    def risk_at(self, frame: pd.DataFrame, times: npt.ArrayLike) -> np.ndarray:
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
        # Plain lists per feature: reading a DataFrame cell by cell costs more than the rest.
        raw_values: dict[str, list[float | None]] = {
            f: [None if math.isnan(v) else v for v in raw[f].tolist()]
            if f in raw
            else [None] * len(x)
            for f in per_feature
        }
        pushes = {f: np.asarray(values, dtype=float).tolist() for f, values in per_feature.items()}
        explanations = []
        for i in range(len(x)):
            contributions = [
                Contribution(
                    feature=f,
                    value=raw_values[f][i],
                    contribution=pushes[f][i],
                )
                for f in per_feature
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
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, path)
    return path


#: Where the classes of model files written before the layout of docs/ARCHITECTURE.md
#: live now: a fitted model stays usable across the move (its rows point at its file).
_MOVED_MODULES = {
    "analytics.core.survival": ("survival", "estimators", "metrics", "validation"),
    "analytics.core.features": ("features", "imputation"),
}


class _MovedModule(types.ModuleType):
    """An old module path whose names are looked up where they live now."""

    def __init__(self, name: str, homes: tuple[str, ...]) -> None:
        super().__init__(name)
        self._homes = homes

    def __getattr__(self, attribute: str) -> Any:
        for home in self._homes:
            module = importlib.import_module(f"analytics.risk.core.{home}")
            if hasattr(module, attribute):
                return getattr(module, attribute)
        raise AttributeError(f"{self.__name__} has no {attribute}")


@contextmanager
def _moved_modules() -> Iterator[None]:
    added: dict[str, types.ModuleType] = {}
    for name, homes in _MOVED_MODULES.items():
        if name not in sys.modules:
            added[name] = sys.modules[name] = _MovedModule(name, homes)
    if "analytics.core" not in sys.modules:
        added["analytics.core"] = sys.modules["analytics.core"] = types.ModuleType("analytics.core")
    try:
        yield
    finally:
        for name in added:
            sys.modules.pop(name, None)


def risk_model_load(path: Path) -> RiskModel:
    """Read a `RiskModel` written by `risk_model_save` (`TypeError` if the file holds another)."""
    with _moved_modules():
        model = joblib.load(path)
    if not isinstance(model, RiskModel):
        raise TypeError(f"{path} does not hold a RiskModel")
    return model
