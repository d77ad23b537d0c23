"""A simulated cohort's health records as files: labs.csv, events.csv and a FHIR R4 Bundle.

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
"""

from __future__ import annotations

import csv
import hashlib
import uuid
from pathlib import Path

from fhir.resources.R4B.bundle import Bundle

from imaging.core.synthetic.simulated import Cohort, EventRecord, LabRecord, SimulatedPatient

MRN_SYSTEM = "https://radtrack.example/fhir/sid/mrn"
EVENT_SYSTEM = "https://radtrack.example/fhir/CodeSystem/clinical-event"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
LOINC_DISEASE_PROGRESSION = "97509-4"
SNOMED_CONDITION_WORSENED = "271299001"


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
    """A stable ``urn:uuid`` (version 4 layout) hashed from ``keys``."""
    return "urn:uuid:" + str(
        uuid.UUID(hashlib.sha256("/".join(keys).encode()).hexdigest()[:32], version=4)
    )


def _patient_resource(patient: SimulatedPatient) -> dict:
    """The Patient: MRN identifier, name, gender, birth date and, on death, its date."""
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
    return resource


def _lab_observation(lab: LabRecord, patient_urn: str) -> dict:
    """A laboratory Observation: LOINC code, UCUM quantity, when it was taken."""
    return {
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
    }


def _event_observation(event: EventRecord, patient_urn: str) -> dict:
    """Progression (mCODE-style, LOINC and SNOMED codes) or last follow-up as an Observation."""
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
    return observation


def _patient_entries(patient: SimulatedPatient, seed: str) -> list[dict]:
    """The Patient, then its labs, then its progression and censoring (death is on the Patient)."""
    patient_urn = _urn("patient", seed, patient.patient_id)
    entries = [{"fullUrl": patient_urn, "resource": _patient_resource(patient)}]
    for n, lab in enumerate(patient.labs):
        entries.append(
            {
                "fullUrl": _urn("lab", seed, patient.patient_id, str(n)),
                "resource": _lab_observation(lab, patient_urn),
            }
        )
    for event in patient.events:
        if event.kind == "death":
            continue
        entries.append(
            {
                "fullUrl": _urn("event", seed, patient.patient_id, event.kind),
                "resource": _event_observation(event, patient_urn),
            }
        )
    return entries


def ehr_bundle_build(cohort: Cohort) -> dict:
    """The cohort's labs and events as a FHIR R4 collection Bundle (validated, as JSON dict)."""
    seed = str(cohort.seed)
    entries = [entry for patient in cohort.patients for entry in _patient_entries(patient, seed)]
    bundle = {
        "resourceType": "Bundle",
        "id": str(uuid.UUID(_urn("bundle", seed)[9:])),
        "type": "collection",
        "entry": entries,
    }
    Bundle.model_validate(bundle)  # raises on a structural error
    return bundle
