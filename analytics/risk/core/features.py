"""Landmark features from patients' timelines: labs, age and sex now, imaging as a plug-in block.

A *landmark* is a date at which a risk is estimated. Features at a landmark use only
what was known by the end of that day and nothing later:

- a lab counts when ``observed_at`` is before the midnight ending the landmark date in
  `LabFeatures` ``tz`` (UTC unless told; the services pass the site's time zone);
- a CT study counts when its ``study_date`` is on or before the landmark date;
- outcomes (`landmark_outcomes`) are counted from the landmark forwards, and a patient
  whose follow-up ended, or who already progressed, on or before it is left out.

Each group of features is a `FeatureBlock`: something with a ``name``, the ``columns`` it
fills and ``compute_table(landmarks)``, which computes every (patient, landmark) row at
once (the blocks here do it with whole-table operations, `analytics.risk.core.grouped`;
``compute(patient_id, landmark)`` gives one row). `feature_table_build` asks every block
for the table, so imaging features from lesion tracking plug in as one more block
(`ImagingFeatures` reads the ``export_measurements`` / ``export_responses`` layouts of
`analytics.layouts`).

Missing values (policy)
-----------------------
The builder never imputes: a feature it cannot compute is NaN, for the reasons listed
in each block's docstring (no lab of that test in the look-back window, one lab only for
a slope, no birth date, sex other or unknown, no CT study by the landmark...).
`analytics.risk.core.imputation.MissingValueImputer` then handles NaN for the models, and is fitted inside each
cross-validation fold on the training rows only, never on test rows:

1. a column that is entirely missing, or constant, in the training rows is dropped
   (it carries no information and would make the Cox fit singular);
2. for each remaining column with any missing value in the training rows, an indicator
   column ``<name>_missing`` (1.0 = was missing) is added;
3. missing values are filled with the training median of that column.

A value missing only in test rows (never in training) is filled with the training
median without an indicator, because the model has no coefficient for one.

What is not known is missing, never 0 (policy)
----------------------------------------------
- A censored lab result (a ``comparator``: "< 0.5 ng/mL") is a bound, not a value. It
  is never read as exact: ``<test>_latest`` is NaN when the latest result in the window
  is censored (not the earlier exact one, which would read as current), and
  ``<test>_slope_per_30d`` is NaN when any result in the window is censored (a line
  through a bound is not a trend). The feature list stays as it is: the imputer's
  ``_missing`` indicators carry "not known" to the models.
- A lesion's volume that is not known at a study (``volume_ml`` NaN: the lesion was not
  found there, is too small to measure, or was measured by hand without a volume)
  makes that study's total burden unknown: ``total_burden_ml``, its log slope and its
  ratio to the nadir are NaN at that study (the slope and the nadir use the studies
  whose burden is known). A lesion not found (no volume, no diameter) is neither present
  nor gone: ``organs_involved`` is NaN when its organ is not otherwise involved. A lesion
  seen but cut by the edge of what was imaged (``not_assessable``) is there, its volume
  not known: it counts in ``organs_involved`` and ``new_lesions``, the burden is NaN.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd

from analytics.risk.core.grouped import (
    calendar_days,
    dated_rows,
    day_ends_ns,
    day_numbers,
    grouped_slope_per_30d,
    landmark_keys,
    last_on_or_before,
    prefix_members,
)

# Model files written before the imputer moved to its own module name it here
# (pickles record a class's module): it stays importable from this path.
from analytics.risk.core.imputation import MissingValueImputer  # noqa: F401
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
    "feature_table_build",
    "landmark_cutoff",
    "study_date_features",
    "volume_doubling_time_days",
]

DAYS_PER_YEAR = 365.25


def landmark_cutoff(landmark: dt.date, tz: str | dt.tzinfo = "UTC") -> pd.Timestamp:
    """The first instant *after* the landmark date (the midnight in ``tz`` ending it), in
    UTC; data before it count."""
    return pd.Timestamp(day_ends_ns(np.array([landmark], dtype="datetime64[ns]"), tz)[0], tz="UTC")


class FeatureBlock(Protocol):
    """A group of features computed for many (patient, landmark) rows at once."""

    name: str
    columns: tuple[str, ...]

    def compute_table(self, landmarks: pd.DataFrame) -> pd.DataFrame:
        """``columns`` for each row of ``landmarks`` (``patient_id, landmark_date``), in its
        order; a missing column or NaN means "not available"."""
        ...


class _OneRow:
    """``compute(patient_id, landmark)``: one (patient, landmark) row of a `FeatureBlock`."""

    def compute(self: FeatureBlock, patient_id: str, landmark: dt.date) -> dict[str, float]:
        """Values for ``columns`` at one landmark, as `feature_table_build` gives them."""
        table = self.compute_table(
            pd.DataFrame({"patient_id": [patient_id], "landmark_date": [landmark]})
        )
        return {c: float(table[c].iloc[0]) for c in self.columns}


# --------------------------------------------------------------------------------------
# Labs
# --------------------------------------------------------------------------------------
LAB_COLUMNS: tuple[str, ...] = tuple(
    f"{a.key}_{suffix}" for a in ANALYTES.values() for suffix in ("latest", "slope_per_30d")
)
_ANALYTE_INDEX = {a.loinc_code: i for i, a in enumerate(ANALYTES.values())}
_DAY_NS = 86_400 * 10**9


@dataclass
class LabFeatures(_OneRow):
    """Latest value and linear slope per 30 days of CEA, LDH, CRP, albumin and haemoglobin.

    ``labs`` has columns ``patient_id, loinc_code, value, observed_at`` (tz-aware), values
    already in the canonical unit of `patients.units`, and optionally ``comparator``
    (``<``, ``<=``, ``>=``, ``>`` for a censored result; blank or absent: exact). Only
    labs observed before `landmark_cutoff` and within ``lookback_days`` of it count;
    ``tz`` is the time zone whose midnight ends a landmark date (a name or a tzinfo).

    - ``<test>_latest``: the value at the latest observation time (the mean if one time
      has several values); NaN when no such lab is in the window, or when a result at
      that time is censored.
    - ``<test>_slope_per_30d``: ordinary least-squares slope of value on time, in the
      canonical unit per 30 days, over the window; NaN with fewer than two distinct
      times, or when a result in the window is censored.
    """

    labs: pd.DataFrame
    lookback_days: float = 365.0
    tz: str | dt.tzinfo = "UTC"
    name: str = "labs"
    columns: tuple[str, ...] = LAB_COLUMNS
    _labs: pd.DataFrame = field(init=False, repr=False)

    def __post_init__(self) -> None:
        labs = self.labs.loc[:, ["patient_id", "loinc_code", "value", "observed_at"]]
        analyte = labs["loinc_code"].map(_ANALYTE_INDEX)
        known = analyte.notna().to_numpy()
        observed = pd.to_datetime(labs["observed_at"], utc=True).dt.tz_localize(None)
        self._labs = pd.DataFrame(
            {
                "patient_id": labs["patient_id"].astype(str).to_numpy(dtype=object)[known],
                "analyte": analyte.to_numpy()[known].astype(np.int64),
                "value": labs["value"].astype(float).to_numpy()[known],
                "observed_ns": observed.astype("datetime64[ns]").to_numpy().view(np.int64)[known],
                "censored": lab_censored(self.labs)[known],
            }
        )

    def compute_table(self, landmarks: pd.DataFrame) -> pd.DataFrame:
        keys = landmark_keys(landmarks)
        n_analytes = len(_ANALYTE_INDEX)
        n_groups = len(keys) * n_analytes
        # Each landmark row against every lab of its patient, then only those in its window.
        cutoffs = day_ends_ns(keys["landmark_date"].to_numpy(), self.tz)
        pairs = pd.DataFrame(
            {"row": np.arange(len(keys)), "patient_id": keys["patient_id"], "cutoff": cutoffs}
        ).merge(self._labs, on="patient_id", how="inner", sort=False)
        observed, cutoff = pairs["observed_ns"].to_numpy(), pairs["cutoff"].to_numpy()
        inside = (observed < cutoff) & (
            observed >= cutoff - pd.Timedelta(days=self.lookback_days).value
        )
        observed, cutoff = observed[inside], cutoff[inside]
        values = pairs["value"].to_numpy()[inside]
        censored = pairs["censored"].to_numpy(dtype=float)[inside]
        groups = pairs["row"].to_numpy()[inside] * n_analytes + pairs["analyte"].to_numpy()[inside]
        # Latest: the mean of the values at the latest observation time of the window,
        # unless one of them is censored (a bound, not a value).
        latest_at = np.full(n_groups, np.iinfo(np.int64).min)
        np.maximum.at(latest_at, groups, observed)
        at_latest = observed == latest_at[groups]
        count = np.bincount(groups[at_latest], minlength=n_groups)
        total = np.bincount(groups[at_latest], weights=values[at_latest], minlength=n_groups)
        bound = np.bincount(groups[at_latest], weights=censored[at_latest], minlength=n_groups)
        with np.errstate(invalid="ignore", divide="ignore"):
            latest = np.where((count > 0) & (bound == 0), total / count, np.nan)
        days = (observed - cutoff).astype(float) / float(_DAY_NS)
        slope = grouped_slope_per_30d(groups, days, values, n_groups=n_groups)
        slope[np.bincount(groups, weights=censored, minlength=n_groups) > 0] = np.nan
        out = np.empty((len(keys), 2 * n_analytes))
        out[:, 0::2] = latest.reshape(len(keys), n_analytes)
        out[:, 1::2] = slope.reshape(len(keys), n_analytes)
        return pd.DataFrame(out, columns=list(LAB_COLUMNS))


def lab_censored(labs: pd.DataFrame) -> np.ndarray:
    """Per row of ``labs``, whether the result is censored (a ``comparator`` is set)."""
    if "comparator" not in labs:
        return np.zeros(len(labs), dtype=bool)
    return labs["comparator"].fillna("").astype(str).str.strip().ne("").to_numpy()


# --------------------------------------------------------------------------------------
# Age and sex
# --------------------------------------------------------------------------------------
DEMOGRAPHIC_COLUMNS: tuple[str, ...] = ("age_years", "sex_male")


@dataclass
class DemographicFeatures(_OneRow):
    """Age at the landmark and sex.

    ``patients`` has columns ``patient_id, birth_date, sex`` (``F``/``M``/``O``/blank).

    - ``age_years``: (landmark - birth date) in years of 365.25 days; NaN without a birth date.
    - ``sex_male``: 1.0 for M, 0.0 for F, NaN for other or unknown (too few to model
      as their own level; the missing indicator keeps them distinguishable).
    """

    patients: pd.DataFrame
    name: str = "demographics"
    columns: tuple[str, ...] = DEMOGRAPHIC_COLUMNS
    _by_patient: pd.DataFrame = field(init=False, repr=False)

    def __post_init__(self) -> None:
        patients = self.patients.loc[:, ["patient_id", "birth_date", "sex"]]
        by_patient = pd.DataFrame(
            {
                "birth": calendar_days(patients["birth_date"]).to_numpy(),
                "sex_male": [
                    {"M": 1.0, "F": 0.0}.get(str(s or ""), math.nan) for s in patients["sex"]
                ],
            },
            index=patients["patient_id"].astype(str).to_numpy(dtype=object),
        )
        # A patient listed twice counts with the last row.
        self._by_patient = by_patient[~by_patient.index.duplicated(keep="last")]

    def compute_table(self, landmarks: pd.DataFrame) -> pd.DataFrame:
        keys = landmark_keys(landmarks)
        mine = self._by_patient.reindex(keys["patient_id"])
        birth = mine["birth"].to_numpy()
        known = ~np.isnat(birth)
        age = np.full(len(keys), np.nan)
        whole_days = day_numbers(keys["landmark_date"].to_numpy()[known]) - day_numbers(
            birth[known]
        )
        age[known] = whole_days.astype(float) / DAYS_PER_YEAR
        return pd.DataFrame({"age_years": age, "sex_male": mine["sex_male"].to_numpy(dtype=float)})


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
#: The last RECIST 1.1 category as a number; "non-CR/non-PD" (only non-target disease,
#: persisting) sits where SD does (RECIST 1.1 section 4.4.2, Table 2). NE is missing.
RECIST_ORDINAL = {"CR": 0.0, "PR": 1.0, "SD": 2.0, "non-CR/non-PD": 2.0, "PD": 3.0}
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
class ImagingFeatures(_OneRow):
    """Tumour-burden features from tracked lesions, at the last CT study on or before the landmark.

    ``measurements`` has the ``export_measurements`` columns this block needs:
    ``patient_id, study_date, lesion_uid, organ, volume_ml`` and, optionally,
    ``longest_diameter_mm`` and ``finding_state``. A lesion confirmed gone or merged into
    another has volume (and diameter) 0; a volume not known is NaN (not found: no
    diameter either; seen but cut by the edge of what was imaged, whose numbers are only
    a lower bound: no sizes, and finding state ``not_assessable``, so it is there;
    measured by hand or too small to measure: a diameter). ``responses`` (optional) has
    ``patient_id, study_date, recist_response``.

    - ``total_burden_ml``: sum of lesion volumes at the last study; NaN when one of
      them is not known.
    - ``burden_log_slope_per_30d``: least-squares slope of ln(burden + 0.1 ml) per 30
      days over the studies up to the landmark whose burden is known; NaN with one such
      study, or when the last study's burden is not known.
    - ``burden_ratio_to_nadir``: (burden + 0.1) / (lowest known burden so far + 0.1); 1 at
      baseline; NaN when the last study's burden is not known.
    - ``new_lesions``: lesions first seen (volume > 0, or without a volume a diameter
      > 0) after the first study.
    - ``organs_involved``: distinct organs with a lesion seen at the last study; NaN when
      a lesion there was not found and no lesion seen there is in its organ.
    - ``fastest_doubling_time_days``: shortest `volume_doubling_time_days` over lesions
      measured (> 0) at the last two studies; capped at 3650 days (also for no growth);
      NaN with one study or no lesion present at both. (A lesion measured in two
      studies of one date counts with its mean volume there.)
    - ``last_recist_ordinal``: the last RECIST 1.1 response by the landmark as CR 0,
      PR 1, SD 2, PD 3; NaN for NE or no assessment.

    All are NaN for a patient with no CT study by the landmark. "Studies" here are study
    dates: every feature of a landmark is the one of the patient's last study date on or
    before it, so they are computed once per study date (`study_date_features`).
    """

    measurements: pd.DataFrame
    responses: pd.DataFrame | None = None
    name: str = "imaging"
    columns: tuple[str, ...] = IMAGING_COLUMNS
    _by_date: pd.DataFrame = field(init=False, repr=False)
    _responses: pd.DataFrame = field(init=False, repr=False)

    def __post_init__(self) -> None:
        measurements = self.measurements.loc[
            :, ["patient_id", "study_date", "lesion_uid", "organ", "volume_ml"]
        ].assign(
            longest_diameter_mm=_optional(self.measurements, "longest_diameter_mm"),
            size_not_assessable=_size_not_assessable(self.measurements),
        )
        self._by_date = study_date_features(
            dated_rows(measurements, "study_date").astype(
                {"volume_ml": float, "longest_diameter_mm": float}
            )
        )
        responses = self.responses
        if responses is None:
            responses = pd.DataFrame(columns=["patient_id", "study_date", "recist_response"])
        responses = dated_rows(
            responses.loc[:, ["patient_id", "study_date", "recist_response"]], "study_date"
        )
        self._responses = responses.assign(
            ordinal=responses["recist_response"].astype(str).map(RECIST_ORDINAL).astype(float)
        )

    def compute_table(self, landmarks: pd.DataFrame) -> pd.DataFrame:
        keys = landmark_keys(landmarks)
        patients, days = keys["patient_id"].to_numpy(), keys["landmark_date"].to_numpy()
        out = pd.DataFrame(np.nan, index=range(len(keys)), columns=list(IMAGING_COLUMNS))
        by_date = self._by_date
        last = last_on_or_before(
            table_patients=by_date["patient_id"].to_numpy(),
            table_days=by_date["day"].to_numpy(),
            key_patients=patients,
            key_days=days,
        )
        seen = last >= 0
        dated_columns = [c for c in IMAGING_COLUMNS if c in by_date]
        out.loc[seen, dated_columns] = by_date[dated_columns].to_numpy()[last[seen]]
        responses = self._responses
        response = last_on_or_before(
            table_patients=responses["patient_id"].to_numpy(),
            table_days=responses["day"].to_numpy(),
            key_patients=patients,
            key_days=days,
        )
        # Responses count only for a patient with a CT study by the landmark.
        assessed = seen & (response >= 0)
        out.loc[assessed, "last_recist_ordinal"] = responses["ordinal"].to_numpy()[
            response[assessed]
        ]
        return out


#: The finding state of a lesion seen whose size is not known: cut by the edge of what
#: was imaged (`imaging.models.LesionMeasurement.FindingState.NOT_ASSESSABLE`).
NOT_ASSESSABLE_STATE = "not_assessable"


def _size_not_assessable(frame: pd.DataFrame) -> np.ndarray:
    """Per row: the lesion was seen, its size not assessable (no ``finding_state``: none)."""
    if "finding_state" not in frame:
        return np.zeros(len(frame), dtype=bool)
    return (frame["finding_state"] == NOT_ASSESSABLE_STATE).to_numpy(dtype=bool)


def _optional(frame: pd.DataFrame, column: str) -> np.ndarray:
    """``frame[column]`` as floats, or NaN throughout when the frame has no such column."""
    if column not in frame:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)


def study_date_features(measurements: pd.DataFrame) -> pd.DataFrame:
    """The imaging features at each of each patient's study dates, sorted by patient and date.

    ``measurements``: ``patient_id`` (str), ``day`` (midnight datetime64, no NaT),
    ``lesion_uid``, ``organ``, ``volume_ml`` and ``longest_diameter_mm`` (floats, NaN when
    not known) and, optionally, ``size_not_assessable`` (seen, its size not known). Columns: ``patient_id, day`` and every `IMAGING_COLUMNS` but
    ``last_recist_ordinal``, each as a landmark on that date (or before the patient's
    next study date) would see it.
    """
    keys = ["patient_id", "day"]
    volume = measurements["volume_ml"]
    unknown = volume.isna().groupby([measurements[k] for k in keys], sort=True).any()
    burden = measurements.groupby(keys, sort=True)["volume_ml"].sum().where(~unknown)
    out = burden.rename("total_burden_ml").reset_index()
    patient = out.groupby("patient_id", sort=False)
    index_in_patient = patient.cumcount().to_numpy()
    first = np.arange(len(out)) - index_in_patient
    total = out["total_burden_ml"].to_numpy()
    out["burden_log_slope_per_30d"] = _burden_log_slopes(out, first, index_in_patient)
    nadir = patient["total_burden_ml"].cummin().to_numpy()  # of the known burdens so far
    out["burden_ratio_to_nadir"] = (total + BURDEN_LOG_OFFSET_ML) / (nadir + BURDEN_LOG_OFFSET_ML)
    # Seen: a known volume decides; without one, a diameter or a size not assessable
    # (cut by the edge of what was imaged) says the lesion is there.
    seen = (volume > 0) | (volume.isna() & (measurements["longest_diameter_mm"] > 0))
    if "size_not_assessable" in measurements:
        seen |= volume.isna() & measurements["size_not_assessable"].astype(bool)
    present = measurements[seen]
    key = pd.MultiIndex.from_frame(out.loc[:, ["patient_id", "day"]])
    # New lesions: first seen after the patient's first study date, counted up to each date.
    first_seen = (
        present.groupby(["patient_id", "lesion_uid"], sort=False)["day"].min().reset_index()
    )
    first_date = patient["day"].first()
    first_seen = first_seen[first_seen["day"] > first_seen["patient_id"].map(first_date)]
    arrivals = first_seen.groupby(["patient_id", "day"]).size().reindex(key, fill_value=0)
    out["new_lesions"] = (
        pd.Series(arrivals.to_numpy(), index=out.index)
        .groupby(out["patient_id"])
        .cumsum()
        .astype(float)
    )
    organs = present.groupby(["patient_id", "day"])["organ"].nunique()
    out["organs_involved"] = organs.reindex(key, fill_value=0).to_numpy().astype(float)
    out.loc[_organs_unknown(measurements, seen).reindex(key, fill_value=False).to_numpy(),
            "organs_involved"] = np.nan  # fmt: skip
    fastest = _fastest_doubling_times(measurements[volume > 0], out, index_in_patient)
    out["fastest_doubling_time_days"] = fastest.reindex(key).to_numpy(dtype=float)
    return out


def _organs_unknown(measurements: pd.DataFrame, seen: pd.Series) -> pd.Series:
    """Per (patient, day): a lesion not found there (not seen: neither volume nor diameter
    known) is in an organ in which no lesion was seen there, so the organ count is not
    known."""
    keys = ["patient_id", "day", "organ"]
    not_found = (
        measurements["volume_ml"].isna() & measurements["longest_diameter_mm"].isna() & ~seen
    )
    doubtful = measurements.loc[not_found, keys].drop_duplicates()
    involved = measurements.loc[seen, keys].drop_duplicates().assign(involved=True)
    doubtful = doubtful.merge(involved, on=keys, how="left")
    doubtful = doubtful[doubtful["involved"].isna()]
    return doubtful.groupby(["patient_id", "day"]).size() > 0


def _burden_log_slopes(
    by_date: pd.DataFrame, first: np.ndarray, index_in_patient: np.ndarray
) -> np.ndarray:
    """Slope of ln(burden + 0.1) per 30 days over each date and the patient's dates before
    it whose burden is known; NaN where the date's own burden is not known."""
    owners, members = prefix_members(first, index_in_patient + 1)
    day = day_numbers(by_date["day"].to_numpy())
    burden = by_date["total_burden_ml"].to_numpy()
    known = ~np.isnan(burden[members])
    owners, members = owners[known], members[known]
    since_first = (day[members] - day[first[owners]]).astype(float)
    log_burden = np.log(burden + BURDEN_LOG_OFFSET_ML)
    slopes = grouped_slope_per_30d(owners, since_first, log_burden[members], n_groups=len(by_date))
    slopes[np.isnan(burden)] = np.nan
    return slopes


def _fastest_doubling_times(
    present: pd.DataFrame, by_date: pd.DataFrame, index_in_patient: np.ndarray
) -> pd.Series:
    """Per (patient, day) with an earlier study date: the shortest doubling time since it."""
    volumes = (
        present.groupby(["patient_id", "lesion_uid", "day"], sort=False)["volume_ml"]
        .mean()
        .reset_index()
    )
    order = by_date.loc[:, ["patient_id", "day"]].assign(k=index_in_patient)
    volumes = volumes.merge(order, on=["patient_id", "day"], how="inner")
    before = volumes.assign(k=volumes["k"] + 1)
    both = volumes.merge(before, on=["patient_id", "lesion_uid", "k"], suffixes=("", "_before"))
    intervals = day_numbers(both["day"].to_numpy()) - day_numbers(both["day_before"].to_numpy())
    times = [
        volume_doubling_time_days(volume1_ml=v1, volume2_ml=v2, interval_days=days)
        for v1, v2, days in zip(
            both["volume_ml_before"].tolist(),
            both["volume_ml"].tolist(),
            intervals.tolist(),
            strict=True,
        )
    ]
    both = both.assign(doubling=np.asarray(times, dtype=float)).dropna(subset=["doubling"])
    return both.groupby(["patient_id", "day"])["doubling"].min()


# --------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------
def feature_table_build(*, landmarks: pd.DataFrame, blocks: Sequence[FeatureBlock]) -> pd.DataFrame:
    """One row per (patient, landmark): ``patient_id, landmark_date`` and every block's columns.

    ``landmarks`` has columns ``patient_id, landmark_date`` (a patient may have several
    landmarks). Values are floats; NaN marks a missing value (see the module docstring).
    Every block computes all rows at once (`FeatureBlock.compute_table`).
    """
    names = [c for block in blocks for c in block.columns]
    if len(set(names)) != len(names):
        raise ValueError(f"feature blocks share column names: {sorted(names)}")
    keys = landmark_keys(landmarks)
    columns: dict[str, object] = {
        "patient_id": keys["patient_id"],
        "landmark_date": keys["landmark_date"].dt.date,
    }
    for block in blocks:
        values = block.compute_table(keys)
        if len(values) != len(keys):
            raise ValueError(
                f"feature block {block.name!r} gave {len(values)} rows for {len(keys)} landmarks"
            )
        for column in block.columns:
            columns[column] = values[column].to_numpy(dtype=float) if column in values else np.nan
    return pd.DataFrame(columns, index=pd.RangeIndex(len(keys)))
