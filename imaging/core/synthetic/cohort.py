"""A synthetic longitudinal oncology cohort: the simulation, its CT rendering, and its files.

The simulation is cheap and separate from rendering, so hundreds of patients simulate
in seconds: `cohort_simulate` draws, per patient, a hidden *aggressiveness* ``a ~ N(0, 1)``
that drives everything observable. Tumour kinetics follow a response-then-regrowth model:
each lesion shrinks (volume ``exp(-d t)``, ``d`` smaller when ``a`` is larger) until the
patient's progression onset, then regrows (doubling time shorter when ``a`` is larger);
a lesion that falls below a floor resolves for good; after progression onset, new
lesions appear at a rate that grows with ``a``. Progression onset and death are drawn
from Weibull hazards with relative hazard ``exp(true_risk)``, ``true_risk = 1.2 a``;
death follows progression. Labs (CEA, LDH, CRP, albumin, haemoglobin) depend on ``a``,
tumour burden and closeness to death. Every study gets its own rigid pose of the body
in patient coordinates and its own scanner settings and patient position.

Determinism: everything derives from ``numpy.random.SeedSequence([seed, patient index,
...])``, so a patient does not change when the cohort grows, and UIDs come from
`synthetic_uid` with fixed entropy.

Files written by `cohort_generate` under ``OUT``:

- ``dicom/<patient_id>/<study>/<series>/IM000001.dcm``...: one CT series per study.
- ``labs.csv``: ``patient_id, loinc_code, display, value, unit, observed_at`` (UCUM units,
  ISO 8601 date-time with offset).
- ``events.csv``: ``patient_id, kind, date`` with kind ``progression``, ``death`` or
  ``censor`` (last follow-up alive); every patient has exactly one death or censor row.
- ``ehr_bundle.json``: a FHIR R4 ``collection`` Bundle: one Patient per patient
  (identifier type MR, system `MRN_SYSTEM`, ``deceasedDateTime`` on death), one
  laboratory Observation per lab (LOINC code, UCUM ``valueQuantity``), progression as an
  mCODE-style Observation (LOINC 97509-4, value SNOMED 271299001 "Patient's condition
  worsened"), and last follow-up of the censored as an Observation coded
  `EVENT_SYSTEM` ``censor``. Progression also carries `EVENT_SYSTEM` ``progression``.
- ``truth.json``: what the images and records were made from (schema below).

truth.json (schema_version 1)::

    {
      "schema_version": 1, "generator": "radtrack.imaging.core.cohort",
      "seed": int, "size": "small" | "full", "n_patients": int, "n_timepoints": int,
      "coordinates": "DICOM patient coordinates (LPS), millimetres",
      "patients": [{
        "patient_id": str, "patient_name": "Family^Given", "birth_date": "YYYY-MM-DD",
        "sex": "F" | "M",
        "aggressiveness": float,        # hidden driver, N(0, 1)
        "true_risk": float,             # log relative hazard of progression and death
                                        # (= 1.2 * aggressiveness); higher = earlier event
        "progression_onset_date": "YYYY-MM-DD",   # biological onset (may be unobserved)
        "events": [{"kind": "progression" | "death" | "censor", "date": "YYYY-MM-DD"}],
        "lesions": [{                   # identities, constant over time
          "lesion_id": "<patient_id>-L01", "tracking_uid": UID,
          "organ": "lung" | "liver", "kind": "solid_nodule" | "hypodense_metastasis",
          "irregular": bool, "hu": float, "onset_date": "YYYY-MM-DD",
          "is_new": bool,               # absent at baseline
          "centre_body_mm": [x, y, z]   # in the body frame (see imaging.core.phantom)
        }],
        "studies": [{
          "index": int, "study_instance_uid": UID, "series_instance_uid": UID,
          "frame_of_reference_uid": UID, "accession_number": str,
          "study_date": "YYYY-MM-DD", "day": int,   # days since baseline
          "dicom_dir": "dicom/<patient_id>/<study>/<series>",   # relative to OUT
          "patient_position": "HFS" | "FFS" | "HFP" | "FFP",
          "image_orientation_patient": [6 floats], "slice_direction": [3 floats],
          "pose_body_to_lps": 4x4 nested list,       # homogeneous, body mm -> LPS mm
          "rotation_deg": float, "shift_mm": float,
          "rows": int, "columns": int, "n_slices": int,
          "pixel_spacing_mm": [row, column], "slice_spacing_mm": float,
          "slice_thickness_mm": float, "noise_hu": float,
          "lesions": [{                  # one per lesion identity, every study
            "lesion_id": str, "organ": str,
            "status": "present" | "resolved" | "not_yet_present",
            "centre_lps_mm": [x, y, z],  # exact centroid in this study's LPS
            "volume_ml": float,          # exact; 0 when resolved or not yet present
            "equivalent_diameter_mm": float   # of the sphere of that volume
          }]
        }]
      }]
    }
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from imaging.core.dicom.write import CTSeriesAttributes, ct_series_write, synthetic_uid
from imaging.core.synthetic.phantom import (
    BodyAnatomy,
    LesionAtStudy,
    LesionShape,
    RenderedStudy,
    ScanGeometry,
    anatomy_balls_within,
    anatomy_label,
    anatomy_sample,
    equivalent_diameter_mm,
    lesion_shape_sample,
    phantom_render,
    volume_for_diameter_ml,
)

Size = Literal["small", "full"]
Organ = Literal["lung", "liver"]

RISK_COEFFICIENT = 1.2
MRN_SYSTEM = "https://radtrack.example/fhir/sid/mrn"
EVENT_SYSTEM = "https://radtrack.example/fhir/CodeSystem/clinical-event"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
LOINC_DISEASE_PROGRESSION = "97509-4"
SNOMED_CONDITION_WORSENED = "271299001"

PATIENT_POSITIONS = ("HFS", "FFS", "HFP", "FFP")
# Row and column direction cosines of Image Orientation (Patient) (0020,0037) (PS3.3
# C.7.6.2.1.1) of an axial acquisition in each patient position, as scanners write
# them: the image keeps the gantry's view, so feet-first flips left-right and prone
# flips anterior-posterior relative to head-first supine.
IMAGE_ORIENTATION = {
    "HFS": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "FFS": ((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "HFP": ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
    "FFP": ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
}


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
class SizePreset:
    """Scanner grid ranges for a cohort size."""

    name: Size
    matrix: int
    pixel_spacing_mm: tuple[float, float]
    slice_thickness_mm: tuple[float, ...]
    slices: tuple[int, int]


SIZES: dict[str, SizePreset] = {
    "small": SizePreset("small", 128, (2.5, 3.2), (4.5, 5.0), (40, 75)),
    "full": SizePreset("full", 512, (0.6, 1.0), (1.25, 1.5, 2.0, 2.5, 3.0, 5.0), (150, 300)),
}


# --------------------------------------------------------------------------------------
# Simulated objects
# --------------------------------------------------------------------------------------
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
class ScannerSettings:
    """One acquisition's grid, reconstruction and patient position."""

    patient_position: str
    craniocaudal: bool
    rows: int
    columns: int
    n_slices: int
    pixel_spacing_mm: float
    slice_spacing_mm: float
    slice_thickness_mm: float
    noise_hu: float
    fov_centre_lps_mm: tuple[float, float, float]
    kernel: str

    @property
    def direction(self) -> np.ndarray:
        """Columns: row cosine, column cosine, slice direction (+-(row x column))."""
        row, column = (np.asarray(v) for v in IMAGE_ORIENTATION[self.patient_position])
        normal = np.cross(row, column)
        # Slices advance towards the feet in a craniocaudal scan.
        slice_dir = normal if (normal[2] < 0) == self.craniocaudal else -normal
        return np.stack([row, column, slice_dir], axis=1)

    def geometry(self) -> ScanGeometry:
        return ScanGeometry.centred(
            centre_lps_mm=np.asarray(self.fov_centre_lps_mm),
            shape_ijk=(self.columns, self.rows, self.n_slices),
            spacing_mm=(self.pixel_spacing_mm, self.pixel_spacing_mm, self.slice_spacing_mm),
            direction=self.direction,
            slice_thickness_mm=self.slice_thickness_mm,
        )


@dataclass(frozen=True, eq=False)
class SimulatedStudy:
    """One CT study: when, UIDs, the body's pose and the scanner."""

    index: int
    day: int
    study_date: dt.date
    study_time: dt.time
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    accession_number: str
    pose_body_to_lps: np.ndarray
    rotation_deg: float
    shift_mm: float
    scanner: ScannerSettings

    def to_lps(self, point_body_mm: np.ndarray) -> np.ndarray:
        return (
            self.pose_body_to_lps[:3, :3] @ np.asarray(point_body_mm) + self.pose_body_to_lps[:3, 3]
        )


@dataclass(frozen=True)
class LabRecord:
    patient_id: str
    test: LabTest
    value: float
    observed_at: dt.datetime


@dataclass(frozen=True)
class EventRecord:
    patient_id: str
    kind: Literal["progression", "death", "censor"]
    date: dt.date


@dataclass(frozen=True, eq=False)
class SimulatedPatient:
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
        return [
            LesionAtStudy(lesion.lesion_id, lesion.shape, lesion.volume_ml(study.day))
            for lesion in self.lesions
        ]


@dataclass(frozen=True, eq=False)
class Cohort:
    seed: int
    size: Size
    n_timepoints: int
    patients: tuple[SimulatedPatient, ...]


# --------------------------------------------------------------------------------------
# Simulation
# --------------------------------------------------------------------------------------
_GIVEN = {
    "F": ("Ada", "Beth", "Clara", "Dora", "Edith", "Fay", "Greta", "Hilda", "Ines", "June"),
    "M": ("Abel", "Bruno", "Cyril", "Dario", "Emil", "Felix", "Gus", "Hugo", "Ivo", "Jonah"),
}
_FAMILY = (
    "Synth", "Phantom", "Voxel", "Hounsfield", "Fourier", "Radon", "Tomo", "Kernel",
    "Sievert", "Roentgen", "Bragg", "Compton",
)  # fmt: skip


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def _rotation_matrix(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1 - np.cos(angle_rad)) * (k @ k)


def _weibull_time(rng: np.random.Generator, scale: float, shape: float, risk: float) -> float:
    """A time (days) from a Weibull hazard with relative hazard ``exp(risk)``."""
    return float(scale * (rng.exponential() / np.exp(risk)) ** (1.0 / shape))


def pose_sample(rng: np.random.Generator) -> tuple[np.ndarray, float, float]:
    """A rigid body -> LPS pose: rotation <= 10 deg (mostly about the long axis), shift <= 20 mm."""
    axis = rng.normal(size=3) * [0.4, 0.4, 1.0]
    angle_deg = float(rng.uniform(0.0, 10.0))
    direction = rng.normal(size=3)
    shift_mm = float(rng.uniform(0.0, 20.0))
    pose = np.eye(4)
    pose[:3, :3] = _rotation_matrix(axis, np.deg2rad(angle_deg))
    pose[:3, 3] = direction / np.linalg.norm(direction) * shift_mm
    return pose, angle_deg, shift_mm


def scanner_sample(
    rng: np.random.Generator,
    preset: SizePreset,
    anatomy: BodyAnatomy,
    pose: np.ndarray,
) -> ScannerSettings:
    """Scanner settings for one study; the field of view always holds the whole trunk."""
    position = str(rng.choice(PATIENT_POSITIONS, p=[0.7, 0.1, 0.1, 0.1]))
    # The widest semi-axis, the shift (20 mm), table centring and a margin.
    needed_fov = 2.0 * (max(anatomy.body_semi_axes_mm) + 32.0)
    lo, hi = preset.pixel_spacing_mm
    pixel = float(
        rng.uniform(max(lo, needed_fov / preset.matrix), max(hi, needed_fov / preset.matrix))
    )
    thickness = float(rng.choice(preset.slice_thickness_mm))
    z_lo, z_hi = anatomy.scan_range_z_mm
    coverage = (z_hi - z_lo) + float(rng.uniform(-10.0, 10.0))
    n_min, n_max = preset.slices
    n_slices = round(coverage / thickness)
    if n_min <= n_slices <= n_max:
        spacing = thickness
    else:  # thin or thick slices: overlapping reconstructions within the slice range
        n_slices = int(np.clip(n_slices, n_min, n_max))
        spacing = min(coverage / n_slices, thickness)
    centre_body = np.array([0.0, 0.0, 0.5 * (z_lo + z_hi) + float(rng.uniform(-6.0, 6.0))])
    centre_lps = pose[:3, :3] @ centre_body + pose[:3, 3]
    # The field of view is centred on the table, not on the patient.
    centre_lps[:2] = rng.normal(0.0, 4.0, size=2)
    return ScannerSettings(
        patient_position=position,
        craniocaudal=bool(rng.random() < 0.75),
        rows=preset.matrix,
        columns=preset.matrix,
        n_slices=n_slices,
        pixel_spacing_mm=round(pixel, 4),
        slice_spacing_mm=round(spacing, 4),
        slice_thickness_mm=thickness,
        noise_hu=round(float(rng.uniform(8.0, 25.0)), 2),
        fov_centre_lps_mm=tuple(float(v) for v in centre_lps),
        kernel=str(rng.choice(["STANDARD", "B30f", "FC08", "SOFT"])),
    )


def _lesion_place(
    rng: np.random.Generator,
    anatomy: BodyAnatomy,
    organ: Organ,
    shape: LesionShape,
    max_volume_ml: float,
    placed: list[tuple[np.ndarray, float]],
) -> tuple[LesionShape, float] | None:
    """Find a centre where the lesion at its largest stays inside its organ and apart.

    Returns the placed shape and the (possibly reduced) maximum volume, or None.
    """
    z_lo, z_hi = anatomy.scan_range_z_mm
    if organ == "liver":
        targets = [(anatomy.liver, "liver")]
    else:
        targets = [(anatomy.right_lung, "right_lung"), (anatomy.left_lung, "left_lung")]
        if rng.random() < 0.5:
            targets.reverse()
    for _ in range(6):
        reach = shape.bounding_radius_mm(max_volume_ml)
        for target, label in targets:
            semi = np.asarray(target.semi_axes_mm) - reach
            if np.any(semi <= 1.0):
                continue
            # Candidates uniform in the organ's ellipsoid shrunk by the lesion's reach.
            direction = rng.normal(size=(40, 3))
            direction /= np.linalg.norm(direction, axis=1, keepdims=True)
            radius = rng.random(40)[:, None] ** (1 / 3)
            points = np.asarray(target.centre_mm) + semi * direction * radius
            # Stay clear of the scan's ends whatever the pose (rotation lifts the ends).
            keep = (points[:, 2] > z_lo + reach + 35.0) & (points[:, 2] < z_hi - reach - 35.0)
            for centre, r in placed:
                keep &= np.linalg.norm(points - centre, axis=1) >= reach + r + 4.0
            points = points[keep]
            points = points[anatomy_label(anatomy, points) == label] if len(points) else points
            for start in range(0, len(points), 3):  # a few balls per call: less overhead
                batch = points[start : start + 3]
                inside = np.nonzero(anatomy_balls_within(anatomy, batch, reach + 3.0, label))[0]
                if len(inside):
                    centre = tuple(float(v) for v in batch[inside[0]])
                    return replace(shape, centre_body_mm=centre), max_volume_ml
        max_volume_ml *= 0.6
    return None


def patient_simulate(*, seed: int, index: int, n_timepoints: int, size: Size) -> SimulatedPatient:
    """One patient: demographics, anatomy, lesions, studies, labs and events."""
    preset = SIZES[size]
    rng_person = _rng(seed, index, 1)
    rng_lesion = _rng(seed, index, 2)
    rng_course = _rng(seed, index, 3)
    rng_study = _rng(seed, index, 4)
    rng_labs = _rng(seed, index, 5)

    patient_id = f"SYN-{seed}-{index + 1:04d}"
    sex = "F" if rng_person.random() < 0.5 else "M"
    given = str(rng_person.choice(_GIVEN[sex]))
    family = str(rng_person.choice(_FAMILY))
    baseline_date = dt.date(2019, 1, 1) + dt.timedelta(days=int(rng_person.integers(0, 5 * 365)))
    age_days = int(rng_person.uniform(40, 85) * 365.25)
    birth_date = baseline_date - dt.timedelta(days=age_days)
    anatomy = anatomy_sample(rng_person)

    a = float(rng_course.normal())
    risk = RISK_COEFFICIENT * a
    progression_day = _weibull_time(rng_course, 240.0, 1.5, risk)
    death_day = progression_day + _weibull_time(rng_course, 300.0, 1.5, risk)

    intervals = rng_study.uniform(42, 112, size=max(n_timepoints - 1, 0))
    scheduled = np.concatenate([[0.0], np.cumsum(intervals)]).round().astype(int)
    study_days = [int(d) for d in scheduled if d == 0 or d < death_day - 7]
    last_day = study_days[-1]
    censor_day = last_day + float(rng_course.uniform(60.0, 540.0))

    # Tumour kinetics, per patient then per lesion.
    shrink = 0.010 * np.exp(-0.4 * a + rng_course.normal(0.0, 0.5)) - 0.002
    growth = np.log(2.0) / (60.0 * np.exp(-0.5 * a + rng_course.normal(0.0, 0.3)))

    lesions: list[SimulatedLesion] = []
    placed: list[tuple[np.ndarray, float]] = []

    def add_lesion(organ: Organ, onset_day: float, onset_diameter: float) -> None:
        irregular = rng_lesion.random() < (0.5 if organ == "liver" else 0.3)
        hu = (
            rng_lesion.uniform(20.0, 45.0)
            if organ == "lung"
            else anatomy.liver_hu - rng_lesion.uniform(25.0, 45.0)
        )
        shape = lesion_shape_sample(
            rng_lesion, centre_body_mm=np.zeros(3), hu=hu, irregular=irregular
        )
        max_diameter = 30.0 if organ == "lung" else 50.0
        found = _lesion_place(
            rng_lesion, anatomy, organ, shape, volume_for_diameter_ml(max_diameter), placed
        )
        if found is None:
            return
        shape, max_volume = found
        onset_volume = min(volume_for_diameter_ml(onset_diameter), 0.8 * max_volume)
        number = len(lesions) + 1
        lesion_id = f"{patient_id}-L{number:02d}"
        lesions.append(
            SimulatedLesion(
                lesion_id=lesion_id,
                tracking_uid=str(synthetic_uid(["radtrack-cohort-lesion", str(seed), lesion_id])),
                organ=organ,
                shape=shape,
                onset_day=onset_day,
                onset_volume_ml=onset_volume,
                shrink_rate_per_day=float(shrink * np.exp(rng_lesion.normal(0.0, 0.25))),
                growth_rate_per_day=float(growth * np.exp(rng_lesion.normal(0.0, 0.25))),
                progression_day=progression_day,
                max_volume_ml=max_volume,
                floor_volume_ml=volume_for_diameter_ml(3.0 if organ == "lung" else 5.0),
            )
        )
        placed.append((np.asarray(shape.centre_body_mm), shape.bounding_radius_mm(max_volume)))

    n_baseline = int(min(1 + rng_lesion.poisson(1.2 + 0.5 * max(a, 0.0)), 6))
    for _ in range(n_baseline):
        organ: Organ = "liver" if rng_lesion.random() < 0.55 else "lung"
        low, high = (10.0, 35.0) if organ == "liver" else (5.0, 22.0)
        add_lesion(organ, 0.0, float(np.exp(rng_lesion.uniform(np.log(low), np.log(high)))))
    if not lesions:  # the anatomy had no room: fall back to one small liver lesion
        add_lesion("liver", 0.0, 10.0)
    # New lesions after progression onset, at a rate growing with aggressiveness.
    t = progression_day
    rate = 0.004 * np.exp(0.7 * a)
    for _ in range(4):
        t += float(rng_lesion.exponential(1.0 / rate))
        if t >= last_day:
            break
        organ = "liver" if rng_lesion.random() < 0.55 else "lung"
        add_lesion(organ, t, 5.0 if organ == "liver" else 3.5)

    studies = []
    for number, day in enumerate(study_days):
        pose, angle, shift = pose_sample(rng_study)
        scanner = scanner_sample(rng_study, preset, anatomy, pose)
        keys = ["radtrack-cohort", str(seed), patient_id, str(number)]
        hour = int(rng_study.integers(8, 17))
        studies.append(
            SimulatedStudy(
                index=number,
                day=day,
                study_date=baseline_date + dt.timedelta(days=day),
                study_time=dt.time(hour, int(rng_study.integers(0, 60)), 0),
                study_instance_uid=str(synthetic_uid([*keys, "study"])),
                series_instance_uid=str(synthetic_uid([*keys, "series"])),
                frame_of_reference_uid=str(synthetic_uid([*keys, "frame"])),
                accession_number="A"
                + hashlib.sha256("/".join(keys).encode()).hexdigest()[:12].upper(),
                pose_body_to_lps=pose,
                rotation_deg=round(angle, 4),
                shift_mm=round(shift, 4),
                scanner=scanner,
            )
        )

    events = _events_simulate(
        patient_id, baseline_date, study_days, progression_day, death_day, censor_day, rng_course
    )
    end_day = death_day if death_day <= censor_day else censor_day
    labs = _labs_simulate(
        patient_id, sex, a, baseline_date, study_days, end_day, death_day, lesions, rng_labs
    )
    return SimulatedPatient(
        index=index,
        patient_id=patient_id,
        patient_name=f"{family}^{given}",
        birth_date=birth_date,
        sex=sex,
        aggressiveness=a,
        true_risk=risk,
        baseline_date=baseline_date,
        progression_onset_day=progression_day,
        anatomy=anatomy,
        lesions=tuple(lesions),
        studies=tuple(studies),
        labs=tuple(labs),
        events=tuple(events),
    )


def _events_simulate(
    patient_id: str,
    baseline_date: dt.date,
    study_days: list[int],
    progression_day: float,
    death_day: float,
    censor_day: float,
    rng: np.random.Generator,
) -> list[EventRecord]:
    """Progression is found at the first study 4+ weeks after onset, or clinically
    4-12 weeks after onset when no study comes; then death, or censoring at last follow-up."""
    end_day = min(death_day, censor_day)
    events = []
    found = [d for d in study_days if d >= progression_day + 28]
    detected = found[0] if found else progression_day + float(rng.uniform(28.0, 84.0))
    if detected < end_day:
        events.append(EventRecord(patient_id, "progression", _date(baseline_date, detected)))
    if death_day <= censor_day:
        events.append(EventRecord(patient_id, "death", _date(baseline_date, death_day)))
    else:
        events.append(EventRecord(patient_id, "censor", _date(baseline_date, censor_day)))
    return events


def _date(baseline: dt.date, day: float) -> dt.date:
    return baseline + dt.timedelta(days=int(np.floor(day)))


def _labs_simulate(
    patient_id: str,
    sex: str,
    a: float,
    baseline_date: dt.date,
    study_days: list[int],
    end_day: float,
    death_day: float,
    lesions: list[SimulatedLesion],
    rng: np.random.Generator,
) -> list[LabRecord]:
    """Labs drawn 0-3 days before each study and once between studies."""
    secretor = rng.normal(0.0, 0.6)
    hb_base = (13.2 if sex == "F" else 14.6) + rng.normal(0.0, 0.6)
    days = []
    for n, day in enumerate(study_days):
        days.append(day - int(rng.integers(0, 4)))
        if n + 1 < len(study_days):
            days.append((day + study_days[n + 1]) // 2)
    out = []
    for day in days:
        if day >= end_day:
            continue
        burden = sum(lesion.volume_ml(day) for lesion in lesions)
        frail = float(np.exp(-(death_day - day) / 60.0))
        lb = np.log1p(burden / 30.0)
        values = {
            "cea": np.exp(np.log(2.0) + 0.35 * a + secretor + 0.9 * np.log1p(burden / 8.0) + rng.normal(0, 0.12)),
            "ldh": 170.0 * np.exp(0.06 * a + 0.18 * lb + rng.normal(0, 0.07)) * (1 + 0.5 * frail),
            "crp": np.exp(np.log(3.0) + 0.45 * a + 0.45 * np.log1p(burden / 15.0) + rng.normal(0, 0.35)) * (1 + 3 * frail),
            "albumin": np.clip(4.3 - 0.12 * a - 0.18 * lb - 0.8 * frail + rng.normal(0, 0.15), 1.8, 5.2),
            "hemoglobin": np.clip(hb_base - 0.35 * a - 0.35 * lb - 1.5 * frail + rng.normal(0, 0.4), 6.5, 17.5),
        }  # fmt: skip
        minutes = int(rng.integers(7 * 60 + 30, 10 * 60 + 30))
        observed_at = dt.datetime.combine(
            baseline_date + dt.timedelta(days=day),
            dt.time(minutes // 60, minutes % 60),
            tzinfo=dt.UTC,
        )
        for test in LAB_TESTS:
            value = round(float(values[test.key]), test.decimals)
            out.append(LabRecord(patient_id, test, value, observed_at))
    return out


def cohort_simulate(
    *, n_patients: int, n_timepoints: int, seed: int, size: Size = "small"
) -> Cohort:
    """Simulate a cohort (no images): deterministic for ``seed``."""
    if n_patients < 1 or n_timepoints < 1:
        raise ValueError("a cohort needs at least one patient and one timepoint")
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}; got {size!r}")
    patients = tuple(
        patient_simulate(seed=seed, index=i, n_timepoints=n_timepoints, size=size)
        for i in range(n_patients)
    )
    return Cohort(seed=seed, size=size, n_timepoints=n_timepoints, patients=patients)


def cohort_survival(
    cohort: Cohort, *, endpoint: Literal["death", "progression"] = "death"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(durations in days, event observed, true risk) per patient for an endpoint."""
    durations, observed, risk = [], [], []
    for patient in cohort.patients:
        by_kind = {e.kind: e.date for e in patient.events}
        end = by_kind.get("death") or by_kind["censor"]
        if endpoint == "progression" and "progression" in by_kind:
            durations.append((by_kind["progression"] - patient.baseline_date).days)
            observed.append(True)
        else:
            durations.append((end - patient.baseline_date).days)
            observed.append(endpoint == "death" and "death" in by_kind)
        risk.append(patient.true_risk)
    return np.asarray(durations, float), np.asarray(observed, bool), np.asarray(risk, float)


# --------------------------------------------------------------------------------------
# Rendering and DICOM
# --------------------------------------------------------------------------------------
def study_render(cohort: Cohort, patient: SimulatedPatient, study: SimulatedStudy) -> RenderedStudy:
    """Render one study's CT volume (HU) with its lesions at their volumes that day."""
    return phantom_render(
        anatomy=patient.anatomy,
        lesions=patient.lesions_at(study),
        geometry=study.scanner.geometry(),
        pose_body_to_lps=study.pose_body_to_lps,
        noise_hu=study.scanner.noise_hu,
        rng=_rng(cohort.seed, patient.index, 100 + study.index),
        frame_of_reference_uid=study.frame_of_reference_uid,
    )


def study_dicom_write(
    patient: SimulatedPatient, study: SimulatedStudy, rendered: RenderedStudy, out_dir: Path
) -> list[Path]:
    """Write the rendered study as a CT series under ``out_dir / patient.study_folder``."""
    scanner = study.scanner
    attrs = CTSeriesAttributes(
        patient_id=patient.patient_id,
        study_instance_uid=study.study_instance_uid,
        series_instance_uid=study.series_instance_uid,
        frame_of_reference_uid=study.frame_of_reference_uid,
        patient_name=patient.patient_name,
        patient_birth_date=patient.birth_date,
        patient_sex=patient.sex,
        study_date=study.study_date,
        study_time=study.study_time,
        accession_number=study.accession_number,
        study_id=str(study.index + 1),
        study_description="CT CHEST ABDOMEN WITH CONTRAST",
        series_description=f"AXIAL {scanner.slice_thickness_mm:g}MM {scanner.kernel}",
        patient_position=scanner.patient_position,
        convolution_kernel=scanner.kernel,
        slice_thickness_mm=scanner.slice_thickness_mm,
    )
    n = rendered.volume.array.shape[0]
    sop_uids = [str(synthetic_uid([study.series_instance_uid, str(k)])) for k in range(n)]
    return ct_series_write(
        rendered.volume, out_dir / patient.study_folder(study), attrs, sop_instance_uids=sop_uids
    )


# --------------------------------------------------------------------------------------
# Records: CSV, FHIR, truth
# --------------------------------------------------------------------------------------
def labs_csv_write(cohort: Cohort, path: Path) -> int:
    """Write labs.csv; return the number of rows."""
    rows = 0
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["patient_id", "loinc_code", "display", "value", "unit", "observed_at"])
        for patient in cohort.patients:
            for lab in patient.labs:
                writer.writerow(
                    [
                        lab.patient_id,
                        lab.test.loinc_code,
                        lab.test.display,
                        f"{lab.value:.{lab.test.decimals}f}",
                        lab.test.unit,
                        lab.observed_at.isoformat(),
                    ]
                )
                rows += 1
    return rows


def events_csv_write(cohort: Cohort, path: Path) -> int:
    """Write events.csv; return the number of rows."""
    rows = 0
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["patient_id", "kind", "date"])
        for patient in cohort.patients:
            for event in patient.events:
                writer.writerow([event.patient_id, event.kind, event.date.isoformat()])
                rows += 1
    return rows


def _urn(*keys: str) -> str:
    return "urn:uuid:" + str(
        uuid.UUID(hashlib.sha256("/".join(keys).encode()).hexdigest()[:32], version=4)
    )


def ehr_bundle_build(cohort: Cohort) -> dict:
    """The cohort's labs and events as a FHIR R4 collection Bundle (validated, as JSON dict)."""
    from fhir.resources.R4B.bundle import Bundle

    entries = []
    seed = str(cohort.seed)
    for patient in cohort.patients:
        patient_urn = _urn("patient", seed, patient.patient_id)
        family, given = patient.patient_name.split("^")
        resource = {
            "resourceType": "Patient",
            "identifier": [
                {
                    "use": "usual",
                    "type": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                "code": "MR",
                                "display": "Medical record number",
                            }
                        ]
                    },
                    "system": MRN_SYSTEM,
                    "value": patient.patient_id,
                }
            ],
            "name": [{"family": family, "given": [given]}],
            "gender": {"F": "female", "M": "male"}[patient.sex],
            "birthDate": patient.birth_date.isoformat(),
        }
        for event in patient.events:
            if event.kind == "death":
                resource["deceasedDateTime"] = event.date.isoformat()
        entries.append({"fullUrl": patient_urn, "resource": resource})
        for n, lab in enumerate(patient.labs):
            entries.append(
                {
                    "fullUrl": _urn("lab", seed, patient.patient_id, str(n)),
                    "resource": {
                        "resourceType": "Observation",
                        "status": "final",
                        "category": [
                            {
                                "coding": [
                                    {
                                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                        "code": "laboratory",
                                    }
                                ]
                            }
                        ],
                        "code": {
                            "coding": [
                                {
                                    "system": LOINC,
                                    "code": lab.test.loinc_code,
                                    "display": lab.test.display,
                                }
                            ]
                        },
                        "subject": {"reference": patient_urn},
                        "effectiveDateTime": lab.observed_at.isoformat(),
                        "valueQuantity": {
                            "value": lab.value,
                            "unit": lab.test.unit,
                            "system": UCUM,
                            "code": lab.test.unit,
                        },
                    },
                }
            )
        for event in patient.events:
            if event.kind == "death":
                continue
            coding = [{"system": EVENT_SYSTEM, "code": event.kind}]
            observation = {
                "resourceType": "Observation",
                "status": "final",
                "subject": {"reference": patient_urn},
                "effectiveDateTime": event.date.isoformat(),
            }
            if event.kind == "progression":
                coding.insert(
                    0,
                    {
                        "system": LOINC,
                        "code": LOINC_DISEASE_PROGRESSION,
                        "display": "Cancer disease progression",
                    },
                )
                observation["valueCodeableConcept"] = {
                    "coding": [
                        {
                            "system": SNOMED,
                            "code": SNOMED_CONDITION_WORSENED,
                            "display": "Patient's condition worsened (finding)",
                        }
                    ]
                }
            else:
                coding[0]["display"] = "Last follow-up, alive (censored)"
            observation["code"] = {"coding": coding}
            entries.append(
                {
                    "fullUrl": _urn("event", seed, patient.patient_id, event.kind),
                    "resource": observation,
                }
            )
    bundle = {
        "resourceType": "Bundle",
        "id": str(uuid.UUID(_urn("bundle", seed)[9:])),
        "type": "collection",
        "entry": entries,
    }
    Bundle.model_validate(bundle)  # raises on a structural error
    return bundle


def truth_build(cohort: Cohort) -> dict:
    """The ground truth as a JSON-ready dict (schema in the module docstring)."""

    def vec(values) -> list[float]:
        return [round(float(v), 6) + 0.0 for v in values]  # + 0.0 turns -0.0 into 0.0

    patients = []
    for patient in cohort.patients:
        studies = []
        for study in patient.studies:
            scanner = study.scanner
            direction = scanner.direction
            lesions = []
            for lesion in patient.lesions:
                volume = lesion.volume_ml(study.day)
                lesions.append(
                    {
                        "lesion_id": lesion.lesion_id,
                        "organ": lesion.organ,
                        "status": lesion.status(study.day),
                        "centre_lps_mm": vec(study.to_lps(lesion.shape.centre_body_mm)),
                        "volume_ml": round(volume, 6),
                        "equivalent_diameter_mm": round(equivalent_diameter_mm(volume), 4),
                    }
                )
            studies.append(
                {
                    "index": study.index,
                    "study_instance_uid": study.study_instance_uid,
                    "series_instance_uid": study.series_instance_uid,
                    "frame_of_reference_uid": study.frame_of_reference_uid,
                    "accession_number": study.accession_number,
                    "study_date": study.study_date.isoformat(),
                    "day": study.day,
                    "dicom_dir": patient.study_folder(study),
                    "patient_position": scanner.patient_position,
                    "image_orientation_patient": vec([*direction[:, 0], *direction[:, 1]]),
                    "slice_direction": vec(direction[:, 2]),
                    "pose_body_to_lps": [vec(row) for row in study.pose_body_to_lps],
                    "rotation_deg": study.rotation_deg,
                    "shift_mm": study.shift_mm,
                    "rows": scanner.rows,
                    "columns": scanner.columns,
                    "n_slices": scanner.n_slices,
                    "pixel_spacing_mm": [scanner.pixel_spacing_mm, scanner.pixel_spacing_mm],
                    "slice_spacing_mm": scanner.slice_spacing_mm,
                    "slice_thickness_mm": scanner.slice_thickness_mm,
                    "noise_hu": scanner.noise_hu,
                    "lesions": lesions,
                }
            )
        patients.append(
            {
                "patient_id": patient.patient_id,
                "patient_name": patient.patient_name,
                "birth_date": patient.birth_date.isoformat(),
                "sex": patient.sex,
                "aggressiveness": round(patient.aggressiveness, 6),
                "true_risk": round(patient.true_risk, 6),
                "progression_onset_date": _date(
                    patient.baseline_date, patient.progression_onset_day
                ).isoformat(),
                "events": [{"kind": e.kind, "date": e.date.isoformat()} for e in patient.events],
                "lesions": [
                    {
                        "lesion_id": lesion.lesion_id,
                        "tracking_uid": lesion.tracking_uid,
                        "organ": lesion.organ,
                        "kind": lesion.kind,
                        "irregular": lesion.shape.is_irregular,
                        "hu": round(lesion.shape.hu, 2),
                        "onset_date": _date(patient.baseline_date, lesion.onset_day).isoformat(),
                        "is_new": lesion.is_new,
                        "centre_body_mm": vec(lesion.shape.centre_body_mm),
                    }
                    for lesion in patient.lesions
                ],
                "studies": studies,
            }
        )
    return {
        "schema_version": 1,
        "generator": "radtrack.imaging.core.cohort",
        "seed": cohort.seed,
        "size": cohort.size,
        "n_patients": len(cohort.patients),
        "n_timepoints": cohort.n_timepoints,
        "coordinates": "DICOM patient coordinates (LPS), millimetres",
        "patients": patients,
    }


# --------------------------------------------------------------------------------------
# The whole thing
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GenerationSummary:
    n_patients: int
    n_studies: int
    n_images: int
    n_lesions: int
    n_labs: int
    n_events: int
    seconds: float


def cohort_generate(
    out_dir: Path,
    *,
    n_patients: int,
    n_timepoints: int,
    seed: int,
    size: Size = "small",
    on_study: Callable[[SimulatedPatient, SimulatedStudy, int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> GenerationSummary:
    """Simulate, render and write a cohort under ``out_dir``.

    ``on_start(total studies)`` is called once and ``on_study(patient, study, images)``
    after each study is written (for progress reporting).
    """
    import time

    started = time.perf_counter()
    cohort = cohort_simulate(n_patients=n_patients, n_timepoints=n_timepoints, seed=seed, size=size)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_studies = sum(len(p.studies) for p in cohort.patients)
    if on_start:
        on_start(n_studies)
    n_images = 0
    for patient in cohort.patients:
        for study in patient.studies:
            rendered = study_render(cohort, patient, study)
            paths = study_dicom_write(patient, study, rendered, out_dir)
            n_images += len(paths)
            if on_study:
                on_study(patient, study, len(paths))
    n_labs = labs_csv_write(cohort, out_dir / "labs.csv")
    n_events = events_csv_write(cohort, out_dir / "events.csv")
    (out_dir / "ehr_bundle.json").write_text(json.dumps(ehr_bundle_build(cohort), indent=1))
    (out_dir / "truth.json").write_text(json.dumps(truth_build(cohort), indent=1))
    return GenerationSummary(
        n_patients=len(cohort.patients),
        n_studies=n_studies,
        n_images=n_images,
        n_lesions=sum(len(p.lesions) for p in cohort.patients),
        n_labs=n_labs,
        n_events=n_events,
        seconds=time.perf_counter() - started,
    )
