"""A patient's timeline of lesion readings, the input of the RECIST 1.1 and volumetric
assessments: one lesion at one study (`LesionReading`), one study (`StudyReading`), and
the timelines read from an export table (`timeline_from_measurements`).

Absence and missing data are kept apart: a lesion that has disappeared has diameter 0
(and volume 0); a lesion that could not be assessed at a study has NaN, or no reading
there at all.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

__all__ = ["LesionReading", "StudyReading", "timeline_from_measurements"]


@dataclass(frozen=True)
class LesionReading:
    """One lesion identity at one study.

    ``longest_diameter_mm`` is the longest axial diameter; 0 when the lesion has
    disappeared, NaN when it was not evaluated. ``volume_ml`` likewise (NaN: not
    measured). ``is_target`` at baseline: True/False is a radiologist's choice, None lets
    the rules choose (`analytics.lesions.core.recist.targets_select`).
    """

    lesion_uid: str
    organ: str
    longest_diameter_mm: float
    volume_ml: float = math.nan
    short_axis_mm: float = math.nan
    is_target: bool | None = None

    @property
    def present(self) -> bool:
        """Seen at this study (diameter or volume above zero)."""
        return self.longest_diameter_mm > 0 or self.volume_ml > 0

    @property
    def evaluated(self) -> bool:
        return not math.isnan(self.longest_diameter_mm)


@dataclass(frozen=True)
class StudyReading:
    """The lesions read at one study. ``non_target_unequivocal_progression``: a
    radiologist's verdict on non-target disease (None: decide from the volumes)."""

    study_uid: str
    study_date: dt.date
    lesions: tuple[LesionReading, ...]
    non_target_unequivocal_progression: bool | None = None

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


def timeline_from_measurements(
    measurements: pd.DataFrame,
) -> Mapping[str, tuple[StudyReading, ...]]:
    """Per patient, the timeline from an ``export_measurements`` table
    (`analytics.layouts.MEASUREMENT_COLUMNS`).

    Reads ``patient_id, study_instance_uid, study_date, lesion_uid, organ, volume_ml,
    longest_diameter_mm`` and, when present, ``short_axis_mm``, ``status``,
    ``is_target`` and ``review_state``. A row with status ``resolved`` reads as
    disappeared (0 mm, 0 ml) whatever its numbers; a row whose review_state is
    ``rejected`` (a radiologist said it is not a lesion) is left out. A study appears
    only if it has at least one row (a resolved lesion still has one).
    """
    frame = measurements.copy()
    if "review_state" in frame:
        frame = frame[frame["review_state"].astype(str).str.lower() != "rejected"]
    frame["study_date"] = pd.to_datetime(frame["study_date"]).dt.date
    out: dict[str, tuple[StudyReading, ...]] = {}
    for patient_id, rows in frame.groupby("patient_id", sort=True):
        studies = []
        for (study_date, study_uid), group in rows.groupby(
            ["study_date", "study_instance_uid"], sort=True
        ):
            readings = []
            for row in group.to_dict("records"):
                resolved = str(row.get("status", "")).lower() == "resolved"
                readings.append(
                    LesionReading(
                        lesion_uid=str(row["lesion_uid"]),
                        organ=str(row["organ"]).strip().lower(),
                        longest_diameter_mm=0.0 if resolved else float(row["longest_diameter_mm"]),
                        volume_ml=0.0 if resolved else float(row["volume_ml"]),
                        short_axis_mm=float(row.get("short_axis_mm", math.nan)),
                        is_target=_flag(row.get("is_target")),
                    )
                )
            studies.append(StudyReading(str(study_uid), study_date, tuple(readings)))
        out[str(patient_id)] = tuple(studies)
    return out
