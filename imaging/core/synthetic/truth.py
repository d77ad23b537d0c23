"""truth.json: the ground truth a simulated cohort's images and records were made from.

The ``generator`` value is data that other tools read: it keeps its first spelling,
whichever module writes the file.

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
          "centre_body_mm": [x, y, z]   # in the body frame (see imaging.core.synthetic.anatomy)
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

from collections.abc import Iterable

from imaging.core.synthetic.acquisition import SimulatedStudy
from imaging.core.synthetic.lesion_shape import equivalent_diameter_mm
from imaging.core.synthetic.simulated import (
    Cohort,
    SimulatedLesion,
    SimulatedPatient,
    date_of_day,
)

TRUTH_SCHEMA_VERSION = 1
# Data, not this module's path: readers of truth.json see it (see the module docstring).
TRUTH_GENERATOR = "radtrack.imaging.core.cohort"


def _vec(values: Iterable[float]) -> list[float]:
    return [round(float(v), 6) + 0.0 for v in values]  # + 0.0 turns -0.0 into 0.0


def _lesion_at_study(lesion: SimulatedLesion, study: SimulatedStudy) -> dict:
    """A lesion's status, exact centre (LPS) and volume in one study."""
    volume = lesion.volume_ml(study.day)
    return {
        "lesion_id": lesion.lesion_id,
        "organ": lesion.organ,
        "status": lesion.status(study.day),
        "centre_lps_mm": _vec(study.to_lps(lesion.shape.centre_body_mm)),
        "volume_ml": round(volume, 6),
        "equivalent_diameter_mm": round(equivalent_diameter_mm(volume), 4),
    }


def _study_truth(patient: SimulatedPatient, study: SimulatedStudy) -> dict:
    """A study's UIDs, date, folder, geometry and pose, scanner settings and lesions."""
    scanner = study.scanner
    direction = scanner.direction
    return {
        "index": study.index,
        "study_instance_uid": study.study_instance_uid,
        "series_instance_uid": study.series_instance_uid,
        "frame_of_reference_uid": study.frame_of_reference_uid,
        "accession_number": study.accession_number,
        "study_date": study.study_date.isoformat(),
        "day": study.day,
        "dicom_dir": patient.study_folder(study),
        "patient_position": scanner.patient_position,
        "image_orientation_patient": _vec([*direction[:, 0], *direction[:, 1]]),
        "slice_direction": _vec(direction[:, 2]),
        "pose_body_to_lps": [_vec(row) for row in study.pose_body_to_lps],
        "rotation_deg": study.rotation_deg,
        "shift_mm": study.shift_mm,
        "rows": scanner.rows,
        "columns": scanner.columns,
        "n_slices": scanner.n_slices,
        "pixel_spacing_mm": [scanner.pixel_spacing_mm, scanner.pixel_spacing_mm],
        "slice_spacing_mm": scanner.slice_spacing_mm,
        "slice_thickness_mm": scanner.slice_thickness_mm,
        "noise_hu": scanner.noise_hu,
        "lesions": [_lesion_at_study(lesion, study) for lesion in patient.lesions],
    }


def _lesion_identity(patient: SimulatedPatient, lesion: SimulatedLesion) -> dict:
    """A lesion's identity, constant over time: kind, shape, CT number, onset, body centre."""
    return {
        "lesion_id": lesion.lesion_id,
        "tracking_uid": lesion.tracking_uid,
        "organ": lesion.organ,
        "kind": lesion.kind,
        "irregular": lesion.shape.is_irregular,
        "hu": round(lesion.shape.hu, 2),
        "onset_date": date_of_day(patient.baseline_date, lesion.onset_day).isoformat(),
        "is_new": lesion.is_new,
        "centre_body_mm": _vec(lesion.shape.centre_body_mm),
    }


def _patient_truth(patient: SimulatedPatient) -> dict:
    """A patient's demographics, hidden driver, events, lesions and studies."""
    return {
        "patient_id": patient.patient_id,
        "patient_name": patient.patient_name,
        "birth_date": patient.birth_date.isoformat(),
        "sex": patient.sex,
        "aggressiveness": round(patient.aggressiveness, 6),
        "true_risk": round(patient.true_risk, 6),
        "progression_onset_date": date_of_day(
            patient.baseline_date, patient.progression_onset_day
        ).isoformat(),
        "events": [{"kind": e.kind, "date": e.date.isoformat()} for e in patient.events],
        "lesions": [_lesion_identity(patient, lesion) for lesion in patient.lesions],
        "studies": [_study_truth(patient, study) for study in patient.studies],
    }


def truth_build(cohort: Cohort) -> dict:
    """The ground truth as a JSON-ready dict (schema in the module docstring)."""
    return {
        "schema_version": TRUTH_SCHEMA_VERSION,
        "generator": TRUTH_GENERATOR,
        "seed": cohort.seed,
        "size": cohort.size,
        "n_patients": len(cohort.patients),
        "n_timepoints": cohort.n_timepoints,
        "coordinates": "DICOM patient coordinates (LPS), millimetres",
        "patients": [_patient_truth(patient) for patient in cohort.patients],
    }
