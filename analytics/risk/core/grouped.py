"""Whole-table arithmetic for the landmark features: many small groups computed at once.

The feature blocks of `analytics.risk.core.features` compute every (patient, landmark)
row together: landmarks are normalised once (`landmark_keys`), matched to each
patient's last dated row on or before them (`last_on_or_before`), and slopes are least
squares over many groups in one pass (`grouped_slope_per_30d`).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

__all__ = [
    "calendar_days",
    "dated_rows",
    "day_ends_ns",
    "day_numbers",
    "grouped_slope_per_30d",
    "landmark_keys",
    "last_on_or_before",
    "prefix_members",
]

# Days since 1970 fit in 31 bits for any date pandas holds; a patient's code goes above.
_DAY_BITS = 32
_DAY_OFFSET = 1 << (_DAY_BITS - 1)


def calendar_days(values: pd.Series) -> pd.Series:
    """Dates, date-times or strings as midnight ``datetime64[ns]`` of their calendar date.

    A tz-aware time keeps the date of its own time zone (as ``Timestamp.date()`` does);
    missing values stay NaT.
    """
    stamps = pd.to_datetime(pd.Series(values).reset_index(drop=True))
    if getattr(stamps.dt, "tz", None) is not None:
        stamps = stamps.dt.tz_localize(None)
    return stamps.dt.normalize().astype("datetime64[ns]")


def day_numbers(days: np.ndarray) -> np.ndarray:
    """Midnight ``datetime64`` values as whole days since 1970."""
    return days.astype("datetime64[D]").astype(np.int64)


def day_ends_ns(days: np.ndarray, tz: str | dt.tzinfo) -> np.ndarray:
    """The midnight in ``tz`` that ends each day (midnight ``datetime64[ns]``), as UTC
    nanoseconds. Where the clocks change at midnight, the day ends at the first instant
    of the next one (the earlier of two midnights, the hour after a skipped one)."""
    ends = pd.DatetimeIndex(days + np.timedelta64(1, "D")).tz_localize(
        tz, ambiguous=np.ones(len(days), dtype=bool), nonexistent="shift_forward"
    )
    return ends.tz_convert("UTC").tz_localize(None).asi8


def dated_rows(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """``frame`` with ``patient_id`` as str and ``day``, the calendar day of ``column``.

    Rows without a date are left out: such a row is never on or before a landmark.
    """
    out = frame.reset_index(drop=True).assign(
        patient_id=frame["patient_id"].astype(str).to_numpy(dtype=object),
        day=calendar_days(frame[column]).to_numpy(),
    )
    return out[out["day"].notna()].reset_index(drop=True)


def landmark_keys(landmarks: pd.DataFrame) -> pd.DataFrame:
    """``patient_id`` (str) and ``landmark_date`` (midnight ``datetime64[ns]``), in order.

    The landmark is the calendar date of each ``landmark_date`` (a date, a timestamp or
    a string), as the features' definitions take it. `ValueError` when a row has none.
    """
    days = calendar_days(landmarks["landmark_date"])
    if days.isna().any():
        raise ValueError(
            f"landmark_date is missing in {int(days.isna().sum())} of {len(days)} landmark rows"
        )
    return pd.DataFrame(
        {
            "patient_id": landmarks["patient_id"].astype(str).to_numpy(dtype=object),
            "landmark_date": days.to_numpy(),
        }
    )


def _packed(codes: np.ndarray, days: np.ndarray) -> np.ndarray:
    """(patient code, day) as one int64 that sorts as the pair does."""
    return (codes.astype(np.int64) << _DAY_BITS) + (day_numbers(days) + _DAY_OFFSET)


def last_on_or_before(
    *,
    table_patients: np.ndarray,
    table_days: np.ndarray,
    key_patients: np.ndarray,
    key_days: np.ndarray,
) -> np.ndarray:
    """Per key, the position in the table of its patient's last row dated on or before its day.

    Rows of one patient on one day count in table order (the last one wins); -1 where
    the patient has no row by that day. ``*_days`` are ``datetime64`` arrays without NaT.
    """
    if len(key_patients) == 0 or len(table_patients) == 0:
        return np.full(len(key_patients), -1, dtype=np.int64)
    codes = pd.factorize(np.concatenate([table_patients, key_patients]))[0]
    table_codes, key_codes = codes[: len(table_patients)], codes[len(table_patients) :]
    table_key = _packed(table_codes, table_days)
    order = np.argsort(table_key, kind="stable")
    at = np.searchsorted(table_key[order], _packed(key_codes, key_days), side="right") - 1
    found = at >= 0
    position = order[np.where(found, at, 0)]
    found &= table_codes[position] == key_codes
    return np.where(found, position, -1)


def prefix_members(first: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Owner and member positions that pair each row ``i`` with rows ``first[i] .. i``.

    For a table sorted by patient and date, where ``first[i]`` is the position of row
    ``i``'s patient's first row and ``count[i] = i - first[i] + 1``: every row with all
    its patient's rows up to it, for statistics "so far".
    """
    owners = np.repeat(np.arange(len(count)), count)
    starts = np.cumsum(count) - count
    members = first[owners] + (np.arange(len(owners)) - starts[owners])
    return owners, members


def grouped_slope_per_30d(
    groups: np.ndarray, days: np.ndarray, values: np.ndarray, *, n_groups: int
) -> np.ndarray:
    """Least-squares slope of ``values`` on ``days``, per 30 days, for each group 0..n_groups-1.

    NaN for a group with fewer than two points or a single distinct day, as
    ``np.polyfit(days, values, 1)`` is not asked for there. The slope is the centred
    normal equation sum((x - mean x)(y - mean y)) / sum((x - mean x)^2), the same line
    as ``np.polyfit`` (which solves by SVD) up to the last bits of rounding.
    """
    out = np.full(n_groups, np.nan)
    if len(groups) == 0:
        return out
    days = np.asarray(days, dtype=float)
    values = np.asarray(values, dtype=float)
    n = np.bincount(groups, minlength=n_groups).astype(float)
    low = np.full(n_groups, np.inf)
    high = np.full(n_groups, -np.inf)
    np.minimum.at(low, groups, days)
    np.maximum.at(high, groups, days)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_x = np.bincount(groups, weights=days, minlength=n_groups) / n
        mean_y = np.bincount(groups, weights=values, minlength=n_groups) / n
        dx = days - mean_x[groups]
        sxy = np.bincount(groups, weights=dx * (values - mean_y[groups]), minlength=n_groups)
        sxx = np.bincount(groups, weights=dx * dx, minlength=n_groups)
        slope = sxy / sxx * 30.0
    fitted = (n >= 2) & (high > low)
    out[fitted] = slope[fitted]
    return out
