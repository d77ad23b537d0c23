"""A patient's timeline of lesion readings, the input of the RECIST 1.1, iRECIST and
volumetric assessments: one lesion at one study (`LesionReading`), one study
(`StudyReading`), and the timelines read from an export table
(`timeline_from_measurements`).

Absence and missing data are kept apart: a lesion confirmed gone has diameter 0 (and
volume 0); a lesion not found, or not assessed, has state ``not_found``, NaN, or no
reading there at all, and is never read as gone. What a reading may count for is its
``state`` (`analytics.lesions.core.findings`).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

__all__ = [
    "CONFIRMED",
    "EQUIVOCAL",
    "LYMPH_NODE",
    "NOT_ASSESSABLE",
    "NOT_FOUND",
    "REJECTED",
    "TOO_SMALL_MM",
    "LesionReading",
    "StudyReading",
    "timeline_from_measurements",
]

#: Finding states (`analytics.lesions.core.findings`).
CONFIRMED, EQUIVOCAL, NOT_FOUND, REJECTED = "confirmed", "equivocal", "not_found", "rejected"
#: The finding state of a lesion seen whose size cannot be read at its study (it reaches
#: the edge of what was imaged): a `LesionReading` holds it as confirmed with
#: ``size_assessable`` false.
NOT_ASSESSABLE = "not_assessable"
#: The organ whose lesions are measured by their short axis (RECIST 1.1 section 3.1.1).
LYMPH_NODE = "lymph_node"
#: RECIST 1.1 section 4.3.2: a target present but too small to measure counts 5 mm (the
#: working group's clarification: a lesion that can be measured keeps its measurement,
#: even below 5 mm; only one that cannot be measured gets the default).
TOO_SMALL_MM = 5.0


@dataclass(frozen=True)
class LesionReading:
    """One lesion identity at one study.

    ``longest_diameter_mm`` is the longest axial diameter; 0 when the lesion is confirmed
    gone, NaN when it was not evaluated. ``volume_ml`` likewise (NaN: not measured).
    ``is_target`` at baseline: True/False is a radiologist's choice, None lets the rules
    choose (`analytics.lesions.core.recist.targets_select`). ``state``: confirmed,
    equivocal, not_found or rejected (`analytics.lesions.core.findings`), ``note`` why.
    ``too_small``: a radiologist says it is present but too small to measure.
    ``merged_into``: the lesion that absorbed it at this study (coalescence).
    ``confidence``: the segmenter's, NaN for a lesion measured by hand.
    ``size_assessable`` false: the lesion is seen, but its size cannot be read at this
    study (it reaches the edge of what was imaged, so what was measured is only part of
    it): its sizes are NaN, it is present and not evaluated, so a target in that state
    leaves the time point NE and it is never chosen as a target (RECIST 1.1 section
    3.1.1: a target must be measurable). The state ``not_assessable`` reads as
    ``confirmed`` with ``size_assessable`` false.
    """

    lesion_uid: str
    organ: str
    longest_diameter_mm: float
    volume_ml: float = math.nan
    short_axis_mm: float = math.nan
    is_target: bool | None = None
    state: str = CONFIRMED
    note: str = ""
    too_small: bool = False
    merged_into: str = ""
    confidence: float = math.nan
    label: str = ""
    #: when ``volume_ml`` was measured with the lesion's outer layer (ground glass, a
    #: cystic wall): the volume without it, NaN otherwise (`volumetric` compares a lesion
    #: like with like when only some of its studies were measured with the layer)
    volume_core_ml: float = math.nan
    size_assessable: bool = True

    def __post_init__(self) -> None:
        if self.state == NOT_ASSESSABLE:
            object.__setattr__(self, "state", CONFIRMED)
            object.__setattr__(self, "size_assessable", False)
        if not self.size_assessable:
            for name in ("longest_diameter_mm", "volume_ml", "short_axis_mm"):
                object.__setattr__(self, name, math.nan)

    @property
    def is_node(self) -> bool:
        return self.organ == LYMPH_NODE

    @property
    def name(self) -> str:
        return self.label or self.lesion_uid

    @property
    def size_mm(self) -> float:
        """The diameter RECIST 1.1 sums (section 4.2): the short axis of a lymph node,
        the longest diameter of any other lesion; `TOO_SMALL_MM` for one too small to
        measure (section 4.3.2); NaN when not found or not measured."""
        if self.state == NOT_FOUND:
            return math.nan
        if self.too_small:
            return TOO_SMALL_MM
        if self.is_node:
            if math.isnan(self.short_axis_mm):
                return 0.0 if self.longest_diameter_mm == 0 else math.nan
            return self.short_axis_mm
        return self.longest_diameter_mm

    @property
    def present(self) -> bool:
        """Seen at this study (diameter or volume above zero, or too small to measure);
        never a lesion not found, rejected or merged into another."""
        if self.state in (NOT_FOUND, REJECTED) or self.merged_into:
            return False
        if not self.size_assessable:
            return True
        return self.too_small or self.longest_diameter_mm > 0 or self.volume_ml > 0

    @property
    def evaluated(self) -> bool:
        """Its size is known at this study (a merged lesion's is its absorber's)."""
        if self.state in (NOT_FOUND, REJECTED):
            return False
        return bool(self.merged_into) or not math.isnan(self.size_mm)


@dataclass(frozen=True)
class StudyReading:
    """The lesions read at one study. ``non_target_unequivocal_progression``: a
    radiologist's verdict on non-target disease (None: the rules decide, see
    `analytics.lesions.core.recist.non_target_unequivocal`). ``not_evaluable``: why the
    study as a whole cannot be assessed (its lesion links are provisional, its
    segmentation is missing); its time point is then NE whatever the lesions say.
    ``slice_thickness_mm``: of the analysed series (measurability, section 3.1.1)."""

    study_uid: str
    study_date: dt.date
    lesions: tuple[LesionReading, ...]
    non_target_unequivocal_progression: bool | None = None
    not_evaluable: tuple[str, ...] = ()
    slice_thickness_mm: float | None = None

    def reading(self, lesion_uid: str) -> LesionReading | None:
        for lesion in self.lesions:
            if lesion.lesion_uid == lesion_uid:
                return lesion
        return None


# --------------------------------------------------------------------------- tables
def _flag(value) -> bool | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in {"", "nan", "none"}:
            return None
        return text in {"1", "true", "t", "yes", "y"}
    return bool(value)


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _reading(row: Mapping) -> LesionReading:
    """One export row as a reading: ``resolved`` is gone (0), ``not_found`` unknown,
    ``merged`` carried by the lesion named in ``merged_into_uid``."""
    status = _text(row.get("status")).lower()
    state = _text(row.get("finding_state")).lower() or CONFIRMED
    gone = status in ("resolved", "merged")
    if status == "not_found":
        state = NOT_FOUND
    return LesionReading(
        lesion_uid=str(row["lesion_uid"]),
        organ=str(row["organ"]).strip().lower(),
        longest_diameter_mm=0.0 if gone else _number(row["longest_diameter_mm"]),
        volume_ml=0.0 if gone else _number(row["volume_ml"]),
        short_axis_mm=0.0 if gone else _number(row.get("short_axis_mm", math.nan)),
        is_target=_flag(row.get("is_target")),
        state=state,
        note=_text(row.get("state_reason")),
        too_small=bool(_flag(row.get("too_small_to_measure"))),
        merged_into=_text(row.get("merged_into_uid")) if status == "merged" else "",
        confidence=_number(row.get("confidence", math.nan)),
        label=_text(row.get("lesion_label")),
        volume_core_ml=math.nan if gone else _number(row.get("volume_core_ml", math.nan)),
    )


def timeline_from_measurements(
    measurements: pd.DataFrame,
) -> Mapping[str, tuple[StudyReading, ...]]:
    """Per patient, the timeline from an ``export_measurements`` table
    (`analytics.layouts.MEASUREMENT_COLUMNS`, and the extra columns after them).

    Reads ``patient_id, study_instance_uid, study_date, lesion_uid, organ, volume_ml,
    longest_diameter_mm`` and, when present, ``short_axis_mm``, ``status``,
    ``is_target``, ``review_state``, ``finding_state``, ``state_reason``,
    ``too_small_to_measure``, ``merged_into_uid`` and ``confidence``. Status
    ``resolved`` (confirmed gone) reads as 0 mm and 0 ml whatever the numbers;
    ``not_found`` as not evaluated (state not_found, never 0); ``merged`` as 0 with the
    lesion that absorbed it. A row a radiologist rejected (review_state or finding_state
    ``rejected``) is left out. A study appears only if it has at least one row.
    """
    frame = measurements.copy()
    for column in ("review_state", "finding_state"):
        if column in frame:
            frame = frame[frame[column].astype(str).str.lower() != REJECTED]
    # Dates stay dates: pandas' nanosecond timestamps end in 2262, and a study's date is a
    # calendar date (any year DICOM can write), so each is converted on its own.
    frame["study_date"] = frame["study_date"].map(_calendar_date)
    out: dict[str, tuple[StudyReading, ...]] = {}
    for patient_id, rows in frame.groupby("patient_id", sort=True):
        studies = []
        for (study_date, study_uid), group in rows.groupby(
            ["study_date", "study_instance_uid"], sort=True
        ):
            readings = tuple(_reading(row) for row in group.to_dict("records"))
            studies.append(StudyReading(str(study_uid), study_date, readings))
        out[str(patient_id)] = tuple(studies)
    return out


def _calendar_date(value: Any) -> dt.date | None:
    """A study date as a `datetime.date`, from a date, a datetime or an ISO text; None
    for an undated study (left out here, as before: `responses` places those last)."""
    if value is None or pd.isna(value):
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value)[:10])
