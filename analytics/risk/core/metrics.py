"""Metrics of survival predictions: concordance, time-dependent AUC, Brier score, calibration.

Durations are in days; a higher score or risk always means an earlier event.

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
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pandas as pd
from lifelines import KaplanMeierFitter
from lifelines.utils import concordance_index
from sksurv.metrics import cumulative_dynamic_auc
from sksurv.metrics import integrated_brier_score as _sksurv_ibs
from sksurv.util import Surv

from analytics.risk.core.estimators import DEFAULT_HORIZON_DAYS

__all__ = [
    "calibration_by_decile",
    "harrell_c",
    "ibs_time_grid",
    "integrated_brier_score",
    "time_dependent_auc",
]


def harrell_c(*, durations: npt.ArrayLike, events: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Harrell's concordance index; higher ``scores`` mean earlier events."""
    return float(
        concordance_index(
            np.asarray(durations, float), -np.asarray(scores, float), np.asarray(events, bool)
        )
    )


def _surv(durations: npt.ArrayLike, events: npt.ArrayLike) -> np.ndarray:
    return Surv.from_arrays(event=np.asarray(events, bool), time=np.asarray(durations, float))


def time_dependent_auc(
    *,
    durations: npt.ArrayLike,
    events: npt.ArrayLike,
    risk: npt.ArrayLike,
    times: npt.ArrayLike,
    censoring_durations: npt.ArrayLike | None = None,
    censoring_events: npt.ArrayLike | None = None,
) -> np.ndarray:
    """Uno's IPCW cumulative/dynamic AUC at each of ``times``.

    ``risk`` is (rows,) or (rows, len(times)): higher = more likely an event by t
    (e.g. 1 - S(t | x)). G comes from ``censoring_durations/events`` (default: the same
    rows). Entries are NaN where not estimable (see module docstring).
    """
    d = np.asarray(durations, float)
    e = np.asarray(events, bool)
    t_grid = np.atleast_1d(np.asarray(times, float))
    r = np.asarray(risk, float)
    if r.ndim == 1:
        r = np.repeat(r[:, None], len(t_grid), axis=1)
    train = _surv(
        d if censoring_durations is None else censoring_durations,
        e if censoring_events is None else censoring_events,
    )
    test = _surv(d, e)
    out = np.full(len(t_grid), np.nan)
    for i, t in enumerate(t_grid):
        cases = (d <= t) & e
        controls = d > t
        if not (d.min() <= t < d.max()) or not cases.any() or not controls.any():
            continue
        auc, _ = cumulative_dynamic_auc(train, test, r[:, i : i + 1], times=[t])
        out[i] = float(np.atleast_1d(auc)[0])
    return out


def ibs_time_grid(
    durations: npt.ArrayLike, *, n: int = 50, lower_q: float = 0.1, upper_q: float = 0.9
) -> np.ndarray:
    """An evenly spaced grid between the ``lower_q`` and ``upper_q`` quantiles of ``durations``."""
    lo, hi = np.quantile(np.asarray(durations, float), [lower_q, upper_q])
    return np.unique(np.linspace(lo, hi, n))


def integrated_brier_score(
    *,
    durations: npt.ArrayLike,
    events: npt.ArrayLike,
    survival: npt.ArrayLike,
    times: npt.ArrayLike,
    censoring_durations: npt.ArrayLike | None = None,
    censoring_events: npt.ArrayLike | None = None,
) -> float:
    """Graf's IPCW integrated Brier score of ``survival`` (rows, len(times)) over ``times``.

    Times outside the follow-up of these rows ([min, max)) are dropped first; NaN when
    fewer than two remain. Lower is better; 0.25 is what S = 0.5 everywhere scores.
    """
    d = np.asarray(durations, float)
    t_grid = np.asarray(times, float)
    keep = (t_grid >= d.min()) & (t_grid < d.max())
    if keep.sum() < 2:
        return math.nan
    train = _surv(
        d if censoring_durations is None else censoring_durations,
        events if censoring_events is None else censoring_events,
    )
    test = _surv(d, events)
    return float(_sksurv_ibs(train, test, np.asarray(survival, float)[:, keep], t_grid[keep]))


def calibration_by_decile(
    *,
    durations: npt.ArrayLike,
    events: npt.ArrayLike,
    risk: npt.ArrayLike,
    horizon_days: float = DEFAULT_HORIZON_DAYS,
    n_groups: int = 10,
) -> pd.DataFrame:
    """Predicted against observed P(event by horizon) per risk group (tenths by default).

    Columns: ``group`` (1 = lowest risk), ``n``, ``mean_predicted``, ``observed`` (1 -
    Kaplan-Meier survival at the horizon), ``followed_to_horizon`` (False when the
    group's follow-up ends before the horizon, so ``observed`` is carried forward).
    """
    risk_s = pd.Series(np.asarray(risk, float))
    groups = min(n_groups, len(risk_s))
    labels = pd.qcut(risk_s.rank(method="first"), q=groups, labels=False)
    d = np.asarray(durations, float)
    e = np.asarray(events, bool)
    rows = []
    for g in range(groups):
        mask = (labels == g).to_numpy()
        km = KaplanMeierFitter().fit(d[mask], event_observed=e[mask])
        rows.append(
            {
                "group": g + 1,
                "n": int(mask.sum()),
                "mean_predicted": float(risk_s[mask].mean()),
                "observed": float(1.0 - km.survival_function_at_times([horizon_days]).iloc[0]),
                "followed_to_horizon": bool(d[mask].max() >= horizon_days),
            }
        )
    return pd.DataFrame(rows)
