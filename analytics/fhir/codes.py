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
IRECIST_SYSTEM = f"{FHIR_BASE}/CodeSystem/irecist-response"
#: What a patient-level response Observation states (the best overall responses).
RESPONSE_OBSERVATION_SYSTEM = f"{FHIR_BASE}/CodeSystem/response-observation"
LESION_STATUS_SYSTEM = f"{FHIR_BASE}/CodeSystem/lesion-status"
#: A finding's state (confirmed, equivocal, not_found, rejected, not_assessable): what the
#: rules count.
FINDING_STATE_SYSTEM = f"{FHIR_BASE}/CodeSystem/finding-state"
LESION_ROLE_SYSTEM = f"{FHIR_BASE}/CodeSystem/lesion-role"
#: How a lesion at a study is linked to itself at earlier studies: ``provisional`` when
#: placed by anatomical landmarks without a registration, awaiting a radiologist.
LESION_LINK_SYSTEM = f"{FHIR_BASE}/CodeSystem/lesion-link"
LINK_PROVISIONAL = (
    LESION_LINK_SYSTEM,
    "provisional",
    "Provisional link to earlier studies (no registration), awaiting review",
)
RISK_MODEL_SYSTEM = f"{FHIR_BASE}/CodeSystem/risk-model-kind"
RISK_SCORE_EXTENSION = f"{FHIR_BASE}/StructureDefinition/risk-score"
RISK_MODEL_VERSION_EXTENSION = f"{FHIR_BASE}/StructureDefinition/risk-model-version"
RISK_LANDMARK_EXTENSION = f"{FHIR_BASE}/StructureDefinition/risk-landmark-date"
#: A category a later recomputation changed: field, from, to, at, reason (sub-extensions).
RESPONSE_REVISION_EXTENSION = f"{FHIR_BASE}/StructureDefinition/response-revision"
#: PD resting on a new lesion is dated from its first sighting (RECIST 1.1 section 4.3.5).
PROGRESSION_DATED_FROM_EXTENSION = f"{FHIR_BASE}/StructureDefinition/progression-dated-from"
#: The settings a best overall response was found with (confirmation, minimum SD).
BEST_RESPONSE_SETTINGS_EXTENSION = f"{FHIR_BASE}/StructureDefinition/best-response-settings"

DCM = "http://dicom.nema.org/resources/ontology/DCM"
SCT = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
DICOM_UID = "urn:dicom:uid"
V2_IDENTIFIER_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0203"
V2_DIAGNOSTIC_SERVICE = "http://terminology.hl7.org/CodeSystem/v2-0074"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
RISK_PROBABILITY = "http://terminology.hl7.org/CodeSystem/risk-probability"
DATA_ABSENT_REASON = "http://terminology.hl7.org/CodeSystem/data-absent-reason"

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
    Lesion.Organ.LYMPH_NODE: (SCT, "59441001", "Structure of lymph node"),
}
IMAGING_REPORT = (LOINC, "18748-4", "Diagnostic imaging study")

RECIST_DISPLAY = {
    "CR": "Complete response",
    "PR": "Partial response",
    "SD": "Stable disease",
    "PD": "Progressive disease",
    "NE": "Not evaluable",
    # RECIST 1.1 Table 2: non-target disease only, neither gone nor progressing.
    "non-CR/non-PD": "Non-CR/non-PD",
}
#: iRECIST (Seymour et al., Lancet Oncol 2017) time point and best overall responses.
IRECIST_DISPLAY = {
    "iCR": "Immune complete response",
    "iPR": "Immune partial response",
    "iSD": "Immune stable disease",
    "iUPD": "Immune unconfirmed progressive disease",
    "iCPD": "Immune confirmed progressive disease",
    "NE": "Not evaluable",
    "non-iCR/non-iUPD": "Non-iCR/non-iUPD",
}
#: The patient-level Observations: best overall response by RECIST 1.1 and by iRECIST.
BEST_RESPONSE = (
    RESPONSE_OBSERVATION_SYSTEM,
    "best-overall-response",
    "Best overall response (RECIST 1.1)",
)
IRECIST_BEST_RESPONSE = (
    RESPONSE_OBSERVATION_SYSTEM,
    "irecist-best-overall-response",
    "Best overall response (iRECIST)",
)
#: RadTrack's tiers on HL7's risk-probability codes.
TIER_TO_RISK_PROBABILITY = {
    RiskScore.Tier.LOW: ("low", "Low likelihood"),
    RiskScore.Tier.INTERMEDIATE: ("moderate", "Moderate likelihood"),
    RiskScore.Tier.HIGH: ("high", "High likelihood"),
}
GENDER = {"F": "female", "M": "male", "O": "other", "": "unknown"}
#: Observation.status for each review state (rejected measurements are not exported); a
#: row whose link to earlier studies is provisional stays preliminary whatever its review.
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
