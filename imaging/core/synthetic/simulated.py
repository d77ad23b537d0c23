"""The objects of a simulated cohort: lesions with volume kinetics, lab and event records, patients.

They hold everything the images and records are made from; `imaging.core.synthetic.cohort`
draws them, and the writers (`ehr`, `truth`, `cohort_generate`) only read them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

import numpy as np

from imaging.core.synthetic.acquisition import SimulatedStudy, Size
from imaging.core.synthetic.anatomy import BodyAnatomy
from imaging.core.synthetic.lesion_shape import LesionShape
from imaging.core.synthetic.phantom import LesionAtStudy

Organ = Literal["lung", "liver"]


@dataclass(frozen=True)
class LabTest:
    """A laboratory test: LOINC code and display, UCUM unit, decimals reported."""

    key: str
    loinc_code: str
    display: str
    unit: str
    decimals: int


LAB_TESTS = (
    LabTest("cea", "2039-6", "Carcinoembryonic Ag [Mass/volume] in Serum or Plasma", "ng/mL", 1),
    LabTest(
        "ldh",
        "2532-0",
        "Lactate dehydrogenase [Enzymatic activity/volume] in Serum or Plasma",
        "U/L",
        0,
    ),
    LabTest("crp", "1988-5", "C reactive protein [Mass/volume] in Serum or Plasma", "mg/L", 1),
    LabTest("albumin", "1751-7", "Albumin [Mass/volume] in Serum or Plasma", "g/dL", 1),
    LabTest("hemoglobin", "718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 1),
)


@dataclass(frozen=True)
class SimulatedLesion:
    """A lesion identity and its volume kinetics (days since baseline, ml)."""

    lesion_id: str
    tracking_uid: str
    organ: Organ
    shape: LesionShape
    onset_day: float
    onset_volume_ml: float
    shrink_rate_per_day: float
    growth_rate_per_day: float
    progression_day: float
    max_volume_ml: float
    floor_volume_ml: float

    @property
    def kind(self) -> str:
        return "solid_nodule" if self.organ == "lung" else "hypodense_metastasis"

    @property
    def is_new(self) -> bool:
        return self.onset_day > 0

    @property
    def resolution_day(self) -> float:
        """When the volume first falls below the floor (inf if never); it stays gone."""
        shrink_until = self.progression_day - self.onset_day
        if self.shrink_rate_per_day <= 0 or shrink_until <= 0:
            return float("inf")
        needed = np.log(self.onset_volume_ml / self.floor_volume_ml) / self.shrink_rate_per_day
        return self.onset_day + needed if needed < shrink_until else float("inf")

    def volume_ml(self, day: float) -> float:
        """Exact volume at ``day``: 0 before onset and after resolution."""
        if day < self.onset_day or day >= self.resolution_day:
            return 0.0
        turn = max(self.progression_day, self.onset_day)
        if day < turn:
            volume = self.onset_volume_ml * np.exp(
                -self.shrink_rate_per_day * (day - self.onset_day)
            )
        else:
            at_turn = self.onset_volume_ml * np.exp(
                -self.shrink_rate_per_day * (turn - self.onset_day)
            )
            volume = at_turn * np.exp(self.growth_rate_per_day * (day - turn))
        return float(min(volume, self.max_volume_ml))

    def status(self, day: float) -> str:
        if day < self.onset_day:
            return "not_yet_present"
        return "resolved" if day >= self.resolution_day else "present"


@dataclass(frozen=True)
class LabRecord:
    """One lab result of a patient, observed at a date-time with offset."""

    patient_id: str
    test: LabTest
    value: float
    observed_at: dt.datetime


@dataclass(frozen=True)
class EventRecord:
    """A clinical event: progression as detected, death, or last follow-up alive (censor)."""

    patient_id: str
    kind: Literal["progression", "death", "censor"]
    date: dt.date


@dataclass(frozen=True, eq=False)
class SimulatedPatient:
    """One patient: demographics, the hidden driver, anatomy, lesions, studies and records."""

    index: int
    patient_id: str
    patient_name: str
    birth_date: dt.date
    sex: str
    aggressiveness: float
    true_risk: float
    baseline_date: dt.date
    progression_onset_day: float
    anatomy: BodyAnatomy
    lesions: tuple[SimulatedLesion, ...]
    studies: tuple[SimulatedStudy, ...]
    labs: tuple[LabRecord, ...]
    events: tuple[EventRecord, ...]

    def study_folder(self, study: SimulatedStudy) -> str:
        """Relative DICOM folder of a study's series."""
        return (
            f"dicom/{self.patient_id}/{study.study_date.isoformat()}_study-{study.index + 1}"
            "/series-1"
        )

    def lesions_at(self, study: SimulatedStudy) -> list[LesionAtStudy]:
        """Every lesion with its exact volume that day (0 when absent)."""
        return [
            LesionAtStudy(lesion.lesion_id, lesion.shape, lesion.volume_ml(study.day))
            for lesion in self.lesions
        ]


@dataclass(frozen=True, eq=False)
class Cohort:
    """A simulated cohort, deterministic for its seed, size and number of timepoints."""

    seed: int
    size: Size
    n_timepoints: int
    patients: tuple[SimulatedPatient, ...]


def date_of_day(baseline: dt.date, day: float) -> dt.date:
    """The calendar date of a (fractional) day since baseline."""
    return baseline + dt.timedelta(days=int(np.floor(day)))
