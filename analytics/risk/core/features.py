"""Landmark features from patients' timelines: labs, age and sex now, imaging as a plug-in block.

A *landmark* is a date at which a risk is estimated. Features at a landmark use only
what was known by the end of that day and nothing later:

- a lab counts when ``observed_at`` is before midnight UTC that ends the landmark date;
- a CT study counts when its ``study_date`` is on or before the landmark date;
- outcomes (`landmark_outcomes`) are counted from the landmark forwards, and a patient
  whose follow-up ended, or who already progressed, on or before it is left out.

Each group of features is a `FeatureBlock`: something with a ``name``, the ``columns`` it
fills and ``compute(patient_id, landmark)``. `feature_table_build` asks every block for
every (patient, landmark) row, so imaging features from lesion tracking plug in as one
more block (`ImagingFeatures` reads the ``export_measurements`` / ``export_responses``
layouts of `analytics.layouts`).

Missing values (policy)
-----------------------
The builder never imputes: a feature it cannot compute is NaN, for the reasons listed
in each block's docstring (no lab of that test in the look-back window, one lab only for
a slope, no birth date, sex other or unknown, no CT study by the landmark...).
`MissingValueImputer` then handles NaN for the models, and is fitted inside each
cross-validation fold on the training rows only, never on test rows:

1. a column that is entirely missing, or constant, in the training rows is dropped
   (it carries no information and would make the Cox fit singular);
2. for each remaining column with any missing value in the training rows, an indicator
   column ``<name>_missing`` (1.0 = was missing) is added;
3. missing values are filled with the training median of that column.

A value missing only in test rows (never in training) is filled with the training
median without an indicator, because the model has no coefficient for one.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd

from patients.units import ANALYTES

__all__ = [
    "DEMOGRAPHIC_COLUMNS",
    "IMAGING_COLUMNS",
    "LAB_COLUMNS",
    "RECIST_ORDINAL",
    "DemographicFeatures",
    "FeatureBlock",
    "ImagingFeatures",
    "LabFeatures",
    "LandmarkOutcomes",
    "MissingValueImputer",
    "feature_table_build",
    "landmark_cutoff",
    "landmark_outcomes",
    "landmarks_from_baseline",
    "volume_doubling_time_days",
]

DAYS_PER_YEAR = 365.25


def landmark_cutoff(landmark: dt.date) -> pd.Timestamp:
    """The first instant *after* the landmark date (midnight UTC ending it); data before it count."""
    return pd.Timestamp(landmark + dt.timedelta(days=1), tz="UTC")


class FeatureBlock(Protocol):
    """A group of features computed from one patient's data at one landmark date."""

    name: str
    columns: tuple[str, ...]

    def compute(self, patient_id: str, landmark: dt.date) -> Mapping[str, float]:
        """Values for ``columns`` (missing keys and NaN mean "not available")."""
        ...


def _groups(frame: pd.DataFrame, key: str = "patient_id") -> dict[str, pd.DataFrame]:
    if frame.empty:
        return {}
    return {str(k): g for k, g in frame.groupby(key, sort=False)}


def _slope_per_30d(days: np.ndarray, values: np.ndarray) -> float:
    """Least-squares slope of ``values`` against ``days``, per 30 days; NaN under 2 distinct days."""
    if len(days) < 2 or np.ptp(days) == 0:
        return math.nan
    slope = np.polyfit(days.astype(float), values.astype(float), 1)[0]
    return float(slope * 30.0)


# --------------------------------------------------------------------------------------
# Labs
# --------------------------------------------------------------------------------------
LAB_COLUMNS: tuple[str, ...] = tuple(
    f"{a.key}_{suffix}" for a in ANALYTES.values() for suffix in ("latest", "slope_per_30d")
)


@dataclass
class LabFeatures:
    """Latest value and linear slope per 30 days of CEA, LDH, CRP, albumin and haemoglobin.

    ``labs`` has columns ``patient_id, loinc_code, value, observed_at`` (tz-aware), values
    already in the canonical unit of `patients.units`. Only labs observed before
    `landmark_cutoff` and within ``lookback_days`` of it count.

    - ``<test>_latest``: the value at the latest observation time (the mean if one time
      has several values); NaN when no such lab is in the window.
    - ``<test>_slope_per_30d``: ordinary least-squares slope of value on time, in the
      canonical unit per 30 days, over the window; NaN with fewer than two distinct times.
    """

    labs: pd.DataFrame
    lookback_days: float = 365.0
    name: str = "labs"
    columns: tuple[str, ...] = LAB_COLUMNS
    _by_patient: dict[str, pd.DataFrame] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        labs = self.labs.loc[:, ["patient_id", "loinc_code", "value", "observed_at"]].copy()
        labs["observed_at"] = pd.to_datetime(labs["observed_at"], utc=True)
        labs["value"] = labs["value"].astype(float)
        self._by_patient = _groups(labs)

    def compute(self, patient_id: str, landmark: dt.date) -> dict[str, float]:
        out = dict.fromkeys(self.columns, math.nan)
        labs = self._by_patient.get(patient_id)
        if labs is None:
            return out
        cutoff = landmark_cutoff(landmark)
        start = cutoff - pd.Timedelta(days=self.lookback_days)
        window = labs[(labs["observed_at"] < cutoff) & (labs["observed_at"] >= start)]
        for analyte in ANALYTES.values():
            rows = window[window["loinc_code"] == analyte.loinc_code]
            if rows.empty:
                continue
            latest_at = rows["observed_at"].max()
            out[f"{analyte.key}_latest"] = float(
                rows.loc[rows["observed_at"] == latest_at, "value"].mean()
            )
            days = ((rows["observed_at"] - cutoff) / pd.Timedelta(days=1)).to_numpy()
            out[f"{analyte.key}_slope_per_30d"] = _slope_per_30d(days, rows["value"].to_numpy())
        return out


# --------------------------------------------------------------------------------------
# Age and sex
# --------------------------------------------------------------------------------------
DEMOGRAPHIC_COLUMNS: tuple[str, ...] = ("age_years", "sex_male")


@dataclass
class DemographicFeatures:
    """Age at the landmark and sex.

    ``patients`` has columns ``patient_id, birth_date, sex`` (``F``/``M``/``O``/blank).

    - ``age_years``: (landmark - birth date) in years of 365.25 days; NaN without a birth date.
    - ``sex_male``: 1.0 for M, 0.0 for F, NaN for other or unknown (too few to model
      as their own level; the missing indicator keeps them distinguishable).
    """

    patients: pd.DataFrame
    name: str = "demographics"
    columns: tuple[str, ...] = DEMOGRAPHIC_COLUMNS
    _by_patient: dict[str, tuple[dt.date | None, str]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_patient = {}
        for row in self.patients.itertuples(index=False):
            birth = row.birth_date
            birth = None if birth is None or pd.isna(birth) else pd.Timestamp(birth).date()
            self._by_patient[str(row.patient_id)] = (birth, str(row.sex or ""))

    def compute(self, patient_id: str, landmark: dt.date) -> dict[str, float]:
        birth, sex = self._by_patient.get(patient_id, (None, ""))
        age = (landmark - birth).days / DAYS_PER_YEAR if birth else math.nan
        return {"age_years": age, "sex_male": {"M": 1.0, "F": 0.0}.get(sex, math.nan)}


# --------------------------------------------------------------------------------------
# Imaging
# --------------------------------------------------------------------------------------
IMAGING_COLUMNS: tuple[str, ...] = (
    "total_burden_ml",
    "burden_log_slope_per_30d",
    "burden_ratio_to_nadir",
    "new_lesions",
    "organs_involved",
    "fastest_doubling_time_days",
    "last_recist_ordinal",
)
# RECIST 1.1 overall response as an ordered number; NE (not evaluable) is missing.
RECIST_ORDINAL = {"CR": 0.0, "PR": 1.0, "SD": 2.0, "PD": 3.0}
# Burden is logged as ln(ml + this) so that a burden that resolves to 0 stays finite.
BURDEN_LOG_OFFSET_ML = 0.1
# A lesion that is not growing, or doubles more slowly than this, is given this
# doubling time (~10 years): "not doubling" stays an ordered number, not a gap.
DOUBLING_TIME_CAP_DAYS = 3650.0


def volume_doubling_time_days(
    *, volume1_ml: float, volume2_ml: float, interval_days: float
) -> float:
    """Volume doubling time between two measurements (Schwartz 1956: VDT = t ln2 / ln(V2/V1)).

    Returns `DOUBLING_TIME_CAP_DAYS` for a lesion that does not grow (V2 <= V1) or
    doubles more slowly than that; NaN when a volume is not positive or no time passed.
    """
    if volume1_ml <= 0 or volume2_ml <= 0 or interval_days <= 0:
        return math.nan
    if volume2_ml <= volume1_ml:
        return DOUBLING_TIME_CAP_DAYS
    return min(
        interval_days * math.log(2.0) / math.log(volume2_ml / volume1_ml), DOUBLING_TIME_CAP_DAYS
    )


@dataclass
class ImagingFeatures:
    """Tumour-burden features from tracked lesions, at the last CT study on or before the landmark.

    ``measurements`` has the ``export_measurements`` columns this block needs:
    ``patient_id, study_date, lesion_uid, organ, volume_ml`` (a resolved lesion has
    volume 0). ``responses`` (optional) has ``patient_id, study_date, recist_response``.

    - ``total_burden_ml``: sum of lesion volumes at the last study.
    - ``burden_log_slope_per_30d``: least-squares slope of ln(burden + 0.1 ml) per 30
      days over all studies up to the landmark; NaN with one study.
    - ``burden_ratio_to_nadir``: (burden + 0.1) / (lowest burden so far + 0.1); 1 at baseline.
    - ``new_lesions``: lesions first seen (volume > 0) after the first study.
    - ``organs_involved``: distinct organs with a lesion of volume > 0 at the last study.
    - ``fastest_doubling_time_days``: shortest `volume_doubling_time_days` over lesions
      measured (> 0) at the last two studies; capped at 3650 days (also for no growth);
      NaN with one study or no lesion present at both.
    - ``last_recist_ordinal``: the last RECIST 1.1 response by the landmark as CR 0,
      PR 1, SD 2, PD 3; NaN for NE or no assessment.

    All are NaN for a patient with no CT study by the landmark.
    """

    measurements: pd.DataFrame
    responses: pd.DataFrame | None = None
    name: str = "imaging"
    columns: tuple[str, ...] = IMAGING_COLUMNS
    _by_patient: dict[str, pd.DataFrame] = field(init=False, repr=False)
    _responses: dict[str, pd.DataFrame] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        m = self.measurements.loc[
            :, ["patient_id", "study_date", "lesion_uid", "organ", "volume_ml"]
        ].copy()
        m["study_date"] = pd.to_datetime(m["study_date"]).dt.date
        m["volume_ml"] = m["volume_ml"].astype(float)
        self._by_patient = _groups(m)
        r = self.responses
        if r is None:
            self._responses = {}
        else:
            r = r.loc[:, ["patient_id", "study_date", "recist_response"]].copy()
            r["study_date"] = pd.to_datetime(r["study_date"]).dt.date
            self._responses = _groups(r)

    def compute(self, patient_id: str, landmark: dt.date) -> dict[str, float]:
        out = dict.fromkeys(self.columns, math.nan)
        rows = self._by_patient.get(patient_id)
        if rows is None:
            return out
        rows = rows[rows["study_date"] <= landmark]
        if rows.empty:
            return out
        burden = rows.groupby("study_date")["volume_ml"].sum().sort_index()
        dates = list(burden.index)
        last = dates[-1]
        out["total_burden_ml"] = float(burden.iloc[-1])
        log_burden = np.log(burden.to_numpy() + BURDEN_LOG_OFFSET_ML)
        days = np.array([(d - dates[0]).days for d in dates], dtype=float)
        out["burden_log_slope_per_30d"] = _slope_per_30d(days, log_burden)
        out["burden_ratio_to_nadir"] = float(
            (burden.iloc[-1] + BURDEN_LOG_OFFSET_ML) / (burden.min() + BURDEN_LOG_OFFSET_ML)
        )
        present = rows[rows["volume_ml"] > 0]
        first_seen = present.groupby("lesion_uid")["study_date"].min()
        out["new_lesions"] = float((first_seen > dates[0]).sum())
        out["organs_involved"] = float(
            present.loc[present["study_date"] == last, "organ"].nunique()
        )
        if len(dates) >= 2:
            previous = dates[-2]
            before = present[present["study_date"] == previous].set_index("lesion_uid")["volume_ml"]
            now = present[present["study_date"] == last].set_index("lesion_uid")["volume_ml"]
            both = before.index.intersection(now.index)
            vdts = [
                volume_doubling_time_days(
                    volume1_ml=float(before[uid]),
                    volume2_ml=float(now[uid]),
                    interval_days=(last - previous).days,
                )
                for uid in both
            ]
            vdts = [v for v in vdts if not math.isnan(v)]
            if vdts:
                out["fastest_doubling_time_days"] = min(vdts)
        responses = self._responses.get(patient_id)
        if responses is not None:
            known = responses[responses["study_date"] <= landmark].sort_values("study_date")
            if not known.empty:
                out["last_recist_ordinal"] = RECIST_ORDINAL.get(
                    str(known["recist_response"].iloc[-1]), math.nan
                )
        return out


# --------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------
def feature_table_build(*, landmarks: pd.DataFrame, blocks: Sequence[FeatureBlock]) -> pd.DataFrame:
    """One row per (patient, landmark): ``patient_id, landmark_date`` and every block's columns.

    ``landmarks`` has columns ``patient_id, landmark_date`` (a patient may have several
    landmarks). Values are floats; NaN marks a missing value (see the module docstring).
    """
    names = [c for block in blocks for c in block.columns]
    if len(set(names)) != len(names):
        raise ValueError(f"feature blocks share column names: {sorted(names)}")
    records = []
    for row in landmarks.itertuples(index=False):
        landmark = pd.Timestamp(row.landmark_date).date()
        record: dict[str, object] = {"patient_id": str(row.patient_id), "landmark_date": landmark}
        for block in blocks:
            values = block.compute(str(row.patient_id), landmark)
            record.update({c: float(values.get(c, math.nan)) for c in block.columns})
        records.append(record)
    return pd.DataFrame.from_records(records, columns=["patient_id", "landmark_date", *names])


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
    ev = events.loc[:, ["patient_id", "kind", "date"]].copy()
    ev["date"] = pd.to_datetime(ev["date"]).dt.date
    by_patient = _groups(ev)
    rows, excluded = [], {}
    for lm in landmarks.itertuples(index=False):
        pid, landmark = str(lm.patient_id), pd.Timestamp(lm.landmark_date).date()
        mine = by_patient.get(pid)
        kinds: dict[str, list[dt.date]] = {}
        if mine is not None:
            for kind, date in zip(mine["kind"], mine["date"], strict=True):
                kinds.setdefault(str(kind), []).append(date)
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


# --------------------------------------------------------------------------------------
# Missing values, for the models
# --------------------------------------------------------------------------------------
@dataclass
class MissingValueImputer:
    """Indicator + training-median imputation (the policy in the module docstring).

    Fit it on training rows only; `transform` then applies the training medians and
    indicators to any rows. ``dropped`` records each dropped column and why. A column
    that is constant where present but sometimes missing keeps only its indicator.
    """

    columns: list[str] = field(default_factory=list)
    medians: dict[str, float] = field(default_factory=dict)
    indicators: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)

    def fit(self, frame: pd.DataFrame) -> MissingValueImputer:
        self.columns, self.medians, self.indicators, self.dropped = [], {}, [], {}
        for column in frame.columns:
            values = frame[column].astype(float)
            has_missing = bool(values.isna().any())
            if values.isna().all():
                self.dropped[column] = "missing in every training row"
                continue
            if values.nunique(dropna=True) < 2:
                if not has_missing:
                    self.dropped[column] = "constant in the training rows"
                    continue
                self.dropped[column] = "constant where present: only its missing indicator is kept"
            else:
                self.columns.append(column)
                self.medians[column] = float(values.median())
            if has_missing:
                self.indicators.append(column)
        return self

    @property
    def inputs(self) -> list[str]:
        """The raw columns `transform` reads."""
        return list(dict.fromkeys([*self.columns, *self.indicators]))

    @property
    def feature_names_out(self) -> list[str]:
        return [*self.columns, *(f"{c}_missing" for c in self.indicators)]

    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        absent = [c for c in self.inputs if c not in frame.columns]
        if absent:
            raise KeyError(f"columns the imputer was fitted with are absent: {absent}")
        values = frame.loc[:, self.inputs].astype(float)
        out = values.loc[:, self.columns].fillna(self.medians)
        for column in self.indicators:
            out[f"{column}_missing"] = values[column].isna().astype(float)
        return out

    def fit_transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        return self.fit(frame).transform(frame)

    def source_of(self, design_column: str) -> str:
        """The raw feature a design column comes from (``x_missing`` -> ``x``)."""
        stem = design_column.removesuffix("_missing")
        return stem if design_column != stem and stem in self.indicators else design_column


def landmarks_from_baseline(
    baselines: Mapping[str, dt.date] | Iterable[tuple[str, dt.date]], *, offset_days: int
) -> pd.DataFrame:
    """A landmark per patient at baseline + ``offset_days`` (``patient_id, landmark_date``)."""
    items = baselines.items() if isinstance(baselines, Mapping) else baselines
    return pd.DataFrame(
        [(str(pid), date + dt.timedelta(days=offset_days)) for pid, date in items],
        columns=["patient_id", "landmark_date"],
    )
