"""How each synthetic study is acquired: size preset, patient position, body pose and scanner.

Every study gets its own rigid pose of the body in patient coordinates, its own scanner
settings and patient position, and UIDs from `synthetic_uid` with fixed entropy.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from imaging.core.dicom.write import synthetic_uid
from imaging.core.geometry.triples import vec3
from imaging.core.synthetic.anatomy import BodyAnatomy
from imaging.core.synthetic.phantom import ScanGeometry

Size = Literal["small", "full"]

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

    def to_lps(self, point_body_mm: npt.ArrayLike) -> np.ndarray:
        return (
            self.pose_body_to_lps[:3, :3] @ np.asarray(point_body_mm) + self.pose_body_to_lps[:3, 3]
        )


def _rotation_matrix(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1 - np.cos(angle_rad)) * (k @ k)


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
        fov_centre_lps_mm=vec3(centre_lps),
        kernel=str(rng.choice(["STANDARD", "B30f", "FC08", "SOFT"])),
    )


def study_days_schedule(
    rng: np.random.Generator, *, n_timepoints: int, death_day: float
) -> list[int]:
    """Study days since baseline: every 6-16 weeks, none in the last week before death."""
    intervals = rng.uniform(42, 112, size=max(n_timepoints - 1, 0))
    scheduled = np.concatenate([[0.0], np.cumsum(intervals)]).round().astype(int)
    return [int(d) for d in scheduled if d == 0 or d < death_day - 7]


def studies_sample(
    rng: np.random.Generator,
    *,
    seed: int,
    patient_id: str,
    preset: SizePreset,
    anatomy: BodyAnatomy,
    baseline_date: dt.date,
    study_days: list[int],
) -> tuple[SimulatedStudy, ...]:
    """One study per day: a pose, scanner settings, a time of day, UIDs and an accession number."""
    studies = []
    for number, day in enumerate(study_days):
        pose, angle, shift = pose_sample(rng)
        scanner = scanner_sample(rng, preset, anatomy, pose)
        keys = ["radtrack-cohort", str(seed), patient_id, str(number)]
        hour = int(rng.integers(8, 17))
        studies.append(
            SimulatedStudy(
                index=number,
                day=day,
                study_date=baseline_date + dt.timedelta(days=day),
                study_time=dt.time(hour, int(rng.integers(0, 60)), 0),
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
    return tuple(studies)
