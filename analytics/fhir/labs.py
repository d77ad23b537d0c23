"""FHIR R4 resources for what RadTrack holds besides lesions: imported laboratory results
(Observation, category laboratory) and the segmentation model (Device).

A lab Observation is the result as RadTrack holds it: canonical unit (UCUM), the
comparator of a censored value (``<`` 0.5 ng/mL), when it was observed, and the
identifiers it came with from the EHR (a component of a panel is not the sender's
resource, so its sender's identifiers stay with RadTrack's row and are not claimed here).
"""

from __future__ import annotations

from analytics.fhir.codes import FHIR_BASE, LOINC, OBSERVATION_CATEGORY, UCUM
from analytics.fhir.ids import device_fhir_id, lab_fhir_id, patient_fhir_id
from analytics.fhir.validation import FHIRBuildError, fhir_resource_validate
from patients.models import LabResult
from patients.units import ANALYTES

__all__ = ["DEVICE_TYPE_TEXT", "fhir_device_build", "fhir_lab_build"]

DEVICE_TYPE_TEXT = "Lesion segmentation model (software)"
#: The SHA-256 (hex) of a registered model version (a digest over all its files), as
#: Segmentation.model_sha256 records it.
MODEL_SHA256_SYSTEM = f"{FHIR_BASE}/sid/model-sha256"


def fhir_lab_build(*, lab: LabResult) -> dict:
    """Observation (category laboratory) of one imported lab result."""
    analyte = ANALYTES.get(lab.loinc_code)
    coding = {"system": LOINC, "code": lab.loinc_code}
    if analyte is not None:
        coding["display"] = analyte.display
    quantity: dict = {"value": lab.value, "unit": lab.unit, "system": UCUM, "code": lab.unit}
    if lab.comparator:
        quantity["comparator"] = lab.comparator
    resource: dict = {
        "resourceType": "Observation",
        "id": lab_fhir_id(lab.pk),
        "status": "final",
        "category": [
            {
                "coding": [
                    {"system": OBSERVATION_CATEGORY, "code": "laboratory", "display": "Laboratory"}
                ]
            }
        ],
        "code": {"coding": [coding], "text": analyte.display if analyte else lab.loinc_code},
        "subject": {"reference": f"Patient/{patient_fhir_id(lab.patient_id)}"},
        "effectiveDateTime": lab.observed_at.isoformat(),
        "valueQuantity": quantity,
    }
    identifiers = [
        {"system": i["system"], "value": i["value"]} if i.get("system") else {"value": i["value"]}
        for i in (lab.identifiers or [])
        if isinstance(i, dict) and i.get("value") and "component" not in i
    ]
    if identifiers:
        resource["identifier"] = identifiers
    if lab.comparator:
        resource["note"] = [{"text": f"Censored result: {lab.value_label}"}]
    try:
        return fhir_resource_validate(resource)
    except FHIRBuildError as exc:
        raise FHIRBuildError(f"lab result {lab.pk}: {exc}") from None


def fhir_device_build(*, model_name: str, model_version: str, model_sha256: str = "") -> dict:
    """Device: the model that drew and measured the lesions (name, version, file hash)."""
    resource: dict = {
        "resourceType": "Device",
        "id": device_fhir_id(model_name, model_version),
        "status": "active",
        "deviceName": [{"name": model_name, "type": "model-name"}],
        "type": {"text": DEVICE_TYPE_TEXT},
        "version": [{"value": model_version}],
    }
    if model_sha256:
        resource["identifier"] = [{"system": MODEL_SHA256_SYSTEM, "value": model_sha256}]
    return fhir_resource_validate(resource)
