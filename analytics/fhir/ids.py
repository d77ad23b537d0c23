"""Stable FHIR resource ids for RadTrack's rows, and the patient key back from an id.

Resource ids are never purely numeric (servers such as HAPI refuse client-assigned
numeric ids) and are derived from keys that survive re-tracking (which deletes and
rebuilds every LesionMeasurement and ResponseAssessment row): ``patient-<pk>``,
``study-<pk>``, ``lesion-<h(Tracking UID)>``, ``measurement-<h(Tracking UID, Study
Instance UID)>`` (``-volume``, ``-long-axis``, ``-short-axis``), ``response-<h(Study
Instance UID)>``, ``risk-<pk>``, ``lab-<pk>`` (an imported lab result, updated in place
when amended), ``device-<h(model name, model version)>`` (the segmentation model),
``bor-<patient pk>`` and ``bor-<patient pk>-irecist`` (the patient's best overall
response by RECIST 1.1 and by iRECIST, one each), where ``h`` is the first 32 hex digits
of a SHA-256.
"""

from __future__ import annotations

import hashlib
import re

_ID_PATTERN = re.compile(r"^patient-([0-9]{1,18})$")


def patient_fhir_id(pk: int) -> str:
    """The Patient resource id of the patient with primary key ``pk``."""
    return f"patient-{pk}"


def _stable_hash(*keys: str) -> str:
    return hashlib.sha256("\x1f".join(keys).encode()).hexdigest()[:32]


def lesion_fhir_id(tracking_uid: str) -> str:
    """The BodyStructure id of a lesion, from its DICOM Tracking UID."""
    return f"lesion-{_stable_hash(tracking_uid)}"


def measurement_fhir_id(tracking_uid: str, study_instance_uid: str) -> str:
    """The measurement group id of a lesion at a study (its members add a suffix)."""
    return f"measurement-{_stable_hash(tracking_uid, study_instance_uid)}"


def response_fhir_id(study_instance_uid: str) -> str:
    """The DiagnosticReport id of the response assessment of a study."""
    return f"response-{_stable_hash(study_instance_uid)}"


def lab_fhir_id(pk: int) -> str:
    """The Observation id of an imported lab result."""
    return f"lab-{pk}"


def device_fhir_id(model_name: str, model_version: str) -> str:
    """The Device id of a segmentation model (name and version)."""
    return f"device-{_stable_hash(model_name, model_version)}"


def best_response_fhir_id(patient_pk: int, *, irecist: bool = False) -> str:
    """The Observation id of a patient's best overall response (RECIST 1.1 or iRECIST)."""
    return f"bor-{patient_pk}" + ("-irecist" if irecist else "")


def patient_pk_from_fhir_id(value: str) -> int | None:
    """The patient's primary key from ``patient-12`` or ``Patient/patient-12``; else None."""
    value = value.strip()
    if value.startswith("Patient/"):
        value = value[len("Patient/") :]
    match = _ID_PATTERN.match(value)
    return int(match.group(1)) if match else None
