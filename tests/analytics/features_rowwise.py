"""The landmark features as they were computed before they were vectorised: one row at a time.

Kept only as the reference that `tests/analytics/test_features_vectorised.py` compares
`analytics.risk.core.features` with, and that ``benchmarks/risk.py --reference`` times
it against. The code is the row-by-row implementation as it stood (each block's
``compute(patient_id, landmark)`` filtering one patient's rows with pandas), with the
constants and the doubling-time rule imported from the module it was part of. The rules
for what is not known were added to both, in step (features' "What is not known is
missing" policy): a censored lab result is never read as exact, and a volume not known
makes the study's burden not known.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analytics.risk.core.features import (
    BURDEN_LOG_OFFSET_ML,
    DAYS_PER_YEAR,
    DEMOGRAPHIC_COLUMNS,
    IMAGING_COLUMNS,
    LAB_COLUMNS,
    RECIST_ORDINAL,
    landmark_cutoff,
    volume_doubling_time_days,
)
from analytics.risk.core.outcomes import LandmarkOutcomes
from patients.units import ANALYTES

__all__ = [
    "DemographicFeatures",
    "ImagingFeatures",
    "LabFeatures",
    "feature_table_build",
    "landmark_outcomes",
]


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
        comparator = pd.Series(self.labs.get("comparator", ""), index=labs.index)
        labs["censored"] = [bool(str(c or "").strip()) for c in comparator]
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
            latest = rows[rows["observed_at"] == latest_at]
            if not latest["censored"].any():  # a bound is not the latest value
                out[f"{analyte.key}_latest"] = float(latest["value"].mean())
            if rows["censored"].any():  # a line through a bound is not a trend
                continue
            days = ((rows["observed_at"] - cutoff) / pd.Timedelta(days=1)).to_numpy()
            out[f"{analyte.key}_slope_per_30d"] = _slope_per_30d(days, rows["value"].to_numpy())
        return out


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
        m["longest_diameter_mm"] = (
            self.measurements["longest_diameter_mm"].astype(float)
            if "longest_diameter_mm" in self.measurements
            else math.nan
        )
        if "finding_state" in self.measurements:
            m["finding_state"] = self.measurements["finding_state"]
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
        sums = rows.groupby("study_date")["volume_ml"].sum()
        unknown = rows["volume_ml"].isna().groupby(rows["study_date"]).any()
        burden = sums.where(~unknown).sort_index()
        dates = list(burden.index)
        last = dates[-1]
        out["total_burden_ml"] = float(burden.iloc[-1])
        known = burden[burden.notna()]
        if not math.isnan(burden.iloc[-1]):
            log_burden = np.log(known.to_numpy() + BURDEN_LOG_OFFSET_ML)
            days = np.array([(d - dates[0]).days for d in known.index], dtype=float)
            out["burden_log_slope_per_30d"] = _slope_per_30d(days, log_burden)
            out["burden_ratio_to_nadir"] = float(
                (burden.iloc[-1] + BURDEN_LOG_OFFSET_ML) / (known.min() + BURDEN_LOG_OFFSET_ML)
            )
        volume, longest = rows["volume_ml"], rows["longest_diameter_mm"]
        cut = (
            rows["finding_state"] == "not_assessable"
            if "finding_state" in rows
            else pd.Series(False, index=rows.index)
        )
        seen = rows[(volume > 0) | (volume.isna() & ((longest > 0) | cut))]
        first_seen = seen.groupby("lesion_uid")["study_date"].min()
        out["new_lesions"] = float((first_seen > dates[0]).sum())
        involved = set(seen.loc[seen["study_date"] == last, "organ"])
        not_found = rows[(rows["study_date"] == last) & volume.isna() & longest.isna() & ~cut]
        doubtful = set(not_found["organ"]) - involved
        out["organs_involved"] = math.nan if doubtful else float(len(involved))
        present = rows[volume > 0]
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


def feature_table_build(*, landmarks: pd.DataFrame, blocks: Sequence) -> pd.DataFrame:
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
