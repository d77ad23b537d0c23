"""Reading header values safely for the index: text cleaned of what a database cannot
keep, numbers finite and in range, malformed values left empty with a warning.

`imaging.core.dicom.inspect` reads every attribute it indexes through these; none of
them raises on a malformed value.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import warnings

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

#: Control characters (NUL among them: PostgreSQL's text type refuses it) and lone
#: surrogates (not encodable as UTF-8), which no database column should hold.
_UNSAFE_TEXT = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


def text_clean(value: str) -> str:
    """``value`` without control characters (NUL included) and lone surrogates; a tab or
    line break becomes a space. What every text from a file passes through on its way to
    the database."""
    if _UNSAFE_TEXT.search(value) is None:
        return value
    return _UNSAFE_TEXT.sub(lambda m: " " if m.group() in "\t\n\r" else "", value)


def text_read_raw(ds: Dataset, keyword: str, found: list[str]) -> str:
    try:
        value = ds.get(keyword, "")
    except Exception as exc:  # a value pydicom cannot convert
        found.append(f"{keyword} could not be read ({type(exc).__name__}); left empty")
        return ""
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value).strip(" \x00")
    return str(value).strip(" \x00")  # NUL is the padding some writers use


def text_read(ds: Dataset, keyword: str, found: list[str]) -> str:
    raw = text_read_raw(ds, keyword, found)
    cleaned = text_clean(raw).strip()
    if cleaned != raw.strip():
        found.append(f"{keyword} held control characters (such as NUL); they were removed")
    return cleaned


#: The range of the index's integer columns (PostgreSQL integer).
_INT_RANGE = (-(2**31), 2**31 - 1)


def number_read(ds: Dataset, keyword: str, found: list[str], cast=float):
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        number = cast(value)
    except Exception as exc:
        found.append(f"{keyword} could not be read ({type(exc).__name__}); left empty")
        return None
    in_range = math.isfinite(number) if cast is float else _INT_RANGE[0] <= number <= _INT_RANGE[1]
    if not in_range:
        found.append(f"{keyword} is out of range; left empty")
        return None
    return number


def floats_parse(value, count: int) -> tuple[float, ...] | None:
    """``count`` finite numbers from a DS value (one or several), or None."""
    if value is None or isinstance(value, str | bytes) and not value:
        return None
    items = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    try:
        numbers = tuple(float(v) for v in items)
    except (TypeError, ValueError, OverflowError):
        return None
    if len(numbers) != count or not all(math.isfinite(n) for n in numbers):
        return None
    return numbers


def floats_read(
    ds: Dataset, keyword: str, count: int, found: list[str] | None = None
) -> tuple[float, ...] | None:
    """``count`` finite numbers from ``keyword``, or None (a warning when malformed)."""
    try:
        value = ds.get(keyword)
    except Exception:  # a value pydicom cannot convert
        value = "?"
    numbers = floats_parse(value, count)
    if numbers is None and value not in (None, "") and found is not None:
        found.append(f"{keyword} is not {count} finite numbers; left empty")
    return numbers


def date_read(ds: Dataset, keyword: str, found: list[str]) -> dt.date | None:
    raw = text_read(ds, keyword, found)
    if not raw:
        return None
    try:
        return dt.datetime.strptime(raw[:8], "%Y%m%d").date()
    except ValueError:
        # The value itself may be a birth date: never repeat it in a message.
        found.append(f"{keyword} is not a DICOM date (YYYYMMDD); left empty")
        return None


def time_read(ds: Dataset, keyword: str, found: list[str]) -> dt.time | None:
    raw = text_read(ds, keyword, found).replace(":", "")
    if not raw:
        return None
    digits = raw.split(".")[0]
    try:
        hour = int(digits[0:2])
        minute = int(digits[2:4] or 0)
        second = int(digits[4:6] or 0)
        return dt.time(hour, minute, min(second, 59))
    except ValueError:
        found.append(f"{keyword} is not a DICOM time (HHMMSS); left empty")
        return None


def items_read(ds: Dataset, keyword: str) -> list[Dataset]:
    """The items of a sequence; empty when absent or not a sequence of data sets."""
    try:
        value = ds.get(keyword)
    except Exception:
        return []
    if not isinstance(value, Sequence) or not all(isinstance(i, Dataset) for i in value):
        return []
    return list(value)


def group_value_read(ds: Dataset, sequence: str, keyword: str):
    """``keyword`` in the first item of functional group ``sequence``, shared groups first
    (PS3.3 C.7.6.16); None when absent or unreadable."""
    for groups in (
        items_read(ds, "SharedFunctionalGroupsSequence"),
        items_read(ds, "PerFrameFunctionalGroupsSequence"),
    ):
        if groups and sequence in groups[0]:
            inner = items_read(groups[0], sequence)
            if inner:
                try:
                    return inner[0].get(keyword)
                except Exception:
                    return None
    return None


_QUOTED = re.compile(r"('[^']*'|\"[^\"]*\")")


def warning_clean(w: warnings.WarningMessage) -> str:
    """pydicom's warning without the quoted values, which may be patient data."""
    return text_clean(_QUOTED.sub("'…'", str(w.message).splitlines()[0]))[:300]
