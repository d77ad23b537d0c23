"""The code systems, coded concepts and value maps RadTrack's FHIR R4 resources use.

Concepts are (system, code, display) triples from DICOM PS3.16 (DCM), SNOMED CT, LOINC
and HL7 terminology; RadTrack's own code systems and extensions live under `FHIR_BASE`.
Quantities are in UCUM.
"""

from __future__ import annotations

from analytics.models import RiskScore
from imaging.models import Lesion, LesionMeasurement

FHIR_BASE = "https://radtrack.example/fhir"
RECIST_SYSTEM = f"{FHIR_BASE}/CodeSystem/recist-response"
VOLUMETRIC_SYSTEM = f"{FHIR_BASE}/CodeSystem/volumetric-response"
LESION_STATUS_SYSTEM = f"{FHIR_BASE}/CodeSystem/lesion-status"
LESION_ROLE_SYSTEM = f"{FHIR_BASE}/CodeSystem/lesion-role"
RISK_MODEL_SYSTEM = f"{FHIR_BASE}/CodeSystem/risk-model-kind"
RISK_SCORE_EXTENSION = f"{FHIR_BASE}/StructureDefinition/risk-score"
RISK_MODEL_VERSION_EXTENSION = f"{FHIR_BASE}/StructureDefinition/risk-model-version"
RISK_LANDMARK_EXTENSION = f"{FHIR_BASE}/StructureDefinition/risk-landmark-date"

DCM = "http://dicom.nema.org/resources/ontology/DCM"
SCT = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
DICOM_UID = "urn:dicom:uid"
V2_IDENTIFIER_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0203"
V2_DIAGNOSTIC_SERVICE = "http://terminology.hl7.org/CodeSystem/v2-0074"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
RISK_PROBABILITY = "http://terminology.hl7.org/CodeSystem/risk-probability"

#: The (system, code, display) of each coded concept, from PS3.16 and SNOMED CT.
MEASUREMENT_GROUP = (DCM, "125007", "Measurement Group")
TRACKING_IDENTIFIER = (DCM, "112039", "Tracking Identifier")
TRACKING_UID = (DCM, "112040", "Tracking Unique Identifier")
VOLUME = (SCT, "118565006", "Volume")
LONG_AXIS = (SCT, "103339001", "Long axis")
SHORT_AXIS = (SCT, "103340004", "Short axis")
ORGAN_SITES = {
    Lesion.Organ.LIVER: (SCT, "10200004", "Liver structure"),
    Lesion.Organ.LUNG: (SCT, "39607008", "Lung structure"),
}
IMAGING_REPORT = (LOINC, "18748-4", "Diagnostic imaging study")

RECIST_DISPLAY = {
    "CR": "Complete response",
    "PR": "Partial response",
    "SD": "Stable disease",
    "PD": "Progressive disease",
    "NE": "Not evaluable",
}
#: RadTrack's tiers on HL7's risk-probability codes.
TIER_TO_RISK_PROBABILITY = {
    RiskScore.Tier.LOW: ("low", "Low likelihood"),
    RiskScore.Tier.INTERMEDIATE: ("moderate", "Moderate likelihood"),
    RiskScore.Tier.HIGH: ("high", "High likelihood"),
}
GENDER = {"F": "female", "M": "male", "O": "other", "": "unknown"}
#: Observation.status for each review state (rejected measurements are not exported).
OBSERVATION_STATUS = {
    LesionMeasurement.Review.PENDING: "preliminary",
    LesionMeasurement.Review.ACCEPTED: "final",
    LesionMeasurement.Review.EDITED: "final",
}
#: Review states a radiologist has signed off (rejected rows are not exported at all).
REVIEWED_STATES = frozenset({LesionMeasurement.Review.ACCEPTED, LesionMeasurement.Review.EDITED})
ENDPOINT_OUTCOME = {"pfs": "disease progression or death", "os": "death"}

#: The resource types RadTrack serves and pushes, in Bundle order.
RESOURCE_TYPES = (
    "Patient",
    "ImagingStudy",
    "BodyStructure",
    "Observation",
    "DiagnosticReport",
    "RiskAssessment",
)
