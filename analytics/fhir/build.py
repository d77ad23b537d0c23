"""FHIR R4 resources for the EHR: a patient, their studies, lesions, lesion measurements,
response assessments, best overall responses, risk scores, imported labs and the
segmentation model, each built as JSON and validated (`validation`).

Lesion measurements follow HL7's "DICOM SR to FHIR Resource Mapping" guide (TID 1500
Measurement Report), adapted to R4: each lesion's identity is a `BodyStructure` carrying
its Tracking Identifier (DCM 112039) and Tracking Unique Identifier (DCM 112040); each
lesion at each study is one Imaging Measurement Group `Observation` (DCM 125007) with
those identifiers as components, a ``focus`` on the lesion and ``hasMember`` references
to one Imaging Measurement `Observation` per quantity: volume (SCT 118565006, mL), long
axis (SCT 103339001, mm) and short axis (SCT 103340004, mm), all in UCUM. The guide's
profiles are written for R5, so ``meta.profile`` does not claim them.

Values are those in force (a radiologist's override wins); findings a radiologist
rejected as false positives (the row, or the whole lesion) are left out; a resolved
lesion measures 0, and a lesion not found, merged or measured without a volume says so
with ``dataAbsentReason`` instead of a value (`analytics.fhir.measurements`). A
measurement nobody has reviewed, or whose link to earlier studies is only provisional,
is ``preliminary``, and so is every best-response Observation and RiskAssessment that
rests on one (`results_all_reviewed`); a DiagnosticReport is ``final`` only when its
response is final by the rule HL7 v2 follows too (`analytics.lesions.finality`; reports:
`analytics.fhir.responses`). Resource ids: `ids`.
"""

from __future__ import annotations

import datetime
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from analytics.fhir.codes import (
    DCM,
    DICOM_UID,
    ENDPOINT_OUTCOME,
    GENDER,
    REVIEWED_STATES,
    RISK_LANDMARK_EXTENSION,
    RISK_MODEL_SYSTEM,
    RISK_MODEL_VERSION_EXTENSION,
    RISK_PROBABILITY,
    RISK_SCORE_EXTENSION,
    TIER_TO_RISK_PROBABILITY,
    UCUM,
    V2_IDENTIFIER_TYPE,
)
from analytics.fhir.ids import measurement_fhir_id, patient_fhir_id
from analytics.fhir.labs import fhir_device_build, fhir_lab_build
from analytics.fhir.measurements import fhir_lesion_build, fhir_measurement_build
from analytics.fhir.record import PatientRecord
from analytics.fhir.responses import fhir_best_responses_build, fhir_response_build
from analytics.fhir.validation import FHIRBuildError, fhir_resource_validate
from analytics.lesions.finality import response_is_final
from analytics.models import RiskScore
from imaging.models import LesionMeasurement, Series, Study
from patients.ehr.identifiers import mrn_system
from patients.models import Patient, PatientIdentifier


def results_all_reviewed(measurements: Iterable[LesionMeasurement]) -> bool:
    """True when there are measurements, a radiologist accepted or edited every one of
    them, and none is linked to earlier studies only provisionally (accepting a
    measurement does not confirm its link). None at all is not a sign-off: nothing says
    a radiologist looked."""
    rows = list(measurements)
    return bool(rows) and all(
        m.review_state in REVIEWED_STATES and not m.link_provisional for m in rows
    )


# --------------------------------------------------------------------------------------
# Building and validating resources
# --------------------------------------------------------------------------------------
def _coding(concept: tuple[str, str, str]) -> dict:
    system, code, display = concept
    return {"system": system, "code": code, "display": display}


def _concept(concept: tuple[str, str, str], text: str | None = None) -> dict:
    out: dict = {"coding": [_coding(concept)]}
    if text:
        out["text"] = text
    return out


def _quantity(value: float, ucum: str) -> dict:
    return {"value": _decimal(value), "unit": ucum, "system": UCUM, "code": ucum}


def _decimal(value: float) -> float:
    if value is None or not math.isfinite(value):
        raise FHIRBuildError(f"a measured value must be a finite number, not {value!r}")
    return round(float(value), 4)


def _ref(resource_type: str, resource_id: str) -> dict:
    return {"reference": f"{resource_type}/{resource_id}"}


def _instant(value) -> str:
    return value.isoformat()


def fhir_patient_build(*, patient: Patient, identifiers: Iterable[PatientIdentifier] = ()) -> dict:
    """Patient: the MRN as identifier type MR in the site's MRN system
    (``RADTRACK_MRN_SYSTEM``), the other identifiers the EHR gave, name, sex, birth."""
    others = []
    for row in identifiers:
        other: dict = {"system": row.system, "value": row.value}
        if row.type_code:
            other["type"] = {"coding": [{"system": V2_IDENTIFIER_TYPE, "code": row.type_code}]}
        others.append(other)
    resource: dict = {
        "resourceType": "Patient",
        "id": patient_fhir_id(patient.pk),
        "identifier": [
            {
                "use": "usual",
                "type": _concept((V2_IDENTIFIER_TYPE, "MR", "Medical record number")),
                "system": mrn_system(),
                "value": patient.patient_id,
            },
            *others,
        ],
        "gender": GENDER.get(patient.sex, "unknown"),
    }
    parts = patient.name.split("^")
    if any(p.strip() for p in parts[:2]):
        name: dict = {"text": patient.display_name}
        if parts[0].strip():
            name["family"] = parts[0].strip()
        given = [p.strip() for p in parts[1:2] if p.strip()]
        if given:
            name["given"] = given
        resource["name"] = [name]
    if patient.birth_date:
        resource["birthDate"] = patient.birth_date.isoformat()
    return fhir_resource_validate(resource)


def fhir_imaging_study_build(*, study: Study, series: Iterable[Series]) -> dict:
    """ImagingStudy: the Study Instance UID, accession number, date and each series."""
    series = list(series)
    identifiers = [{"system": DICOM_UID, "value": f"urn:oid:{study.study_instance_uid}"}]
    if study.accession_number:
        identifiers.append(
            {
                "type": _concept((V2_IDENTIFIER_TYPE, "ACSN", "Accession ID")),
                "value": study.accession_number,
            }
        )
    resource: dict = {
        "resourceType": "ImagingStudy",
        "id": f"study-{study.pk}",
        "identifier": identifiers,
        "status": "available",
        "subject": _ref("Patient", patient_fhir_id(study.patient_id)),
        "numberOfSeries": len(series),
        "numberOfInstances": sum(getattr(s, "instance_count", 0) for s in series),
    }
    if study.study_date:
        # DICOM dates carry no time zone; a date-only FHIR dateTime keeps them dates.
        resource["started"] = study.study_date.isoformat()
    if study.description:
        resource["description"] = study.description
    if series:
        resource["series"] = []
        for s in series:
            entry: dict = {
                "uid": s.series_instance_uid,
                # Modality (0008,0060) is Type 1; "OT" (Other) only if a file lacked it.
                "modality": {"system": DCM, "code": s.modality or "OT"},
                "numberOfInstances": getattr(s, "instance_count", 0),
            }
            if s.series_number is not None:
                entry["number"] = max(s.series_number, 0)
            if s.description:
                entry["description"] = s.description
            resource["series"].append(entry)
    return fhir_resource_validate(resource)


def fhir_risk_build(*, score: RiskScore, all_reviewed: bool = False) -> dict:
    """RiskAssessment: the score, its tier and the model version that gave it.

    ``preliminary`` unless ``all_reviewed``: a radiologist signed off every measurement
    of the patient up to the landmark date (the imaging features the score rests on).

    Cox models score the log relative hazard against the training mean, given as
    ``relativeRisk`` = exp(score); GBM models score P(event by the horizon), given as
    ``probabilityDecimal`` over ``whenRange``. The raw score, the model version and the
    landmark date are also carried as RadTrack extensions.
    """
    version = score.model_version
    endpoint = version.parameters.get("endpoint", "pfs")
    code, display = TIER_TO_RISK_PROBABILITY[RiskScore.Tier(score.tier)]
    prediction: dict = {
        "outcome": {"text": ENDPOINT_OUTCOME.get(endpoint, endpoint)},
        "qualitativeRisk": {
            "coding": [{"system": RISK_PROBABILITY, "code": code, "display": display}],
            "text": f"{score.get_tier_display()} risk tier",
        },
    }
    if version.kind == version.Kind.COX:
        prediction["relativeRisk"] = round(math.exp(_decimal(score.score)), 4)
    elif version.kind == version.Kind.GBM and 0.0 <= score.score <= 1.0:
        prediction["probabilityDecimal"] = _decimal(score.score)
        horizon = version.parameters.get("horizon_days")
        if horizon:
            prediction["whenRange"] = {"high": _quantity(float(horizon), "d")}
    resource = {
        "resourceType": "RiskAssessment",
        "id": f"risk-{score.pk}",
        "status": "final" if all_reviewed else "preliminary",
        "subject": _ref("Patient", patient_fhir_id(score.patient_id)),
        "occurrenceDateTime": _instant(score.computed_at),
        "method": {
            "coding": [
                {
                    "system": RISK_MODEL_SYSTEM,
                    "code": version.kind,
                    "display": version.get_kind_display(),
                }
            ],
            "text": f"{version.name} (model version {version.pk}, fitted "
            f"{version.created_at:%Y-%m-%d})",
        },
        "prediction": [prediction],
        "extension": [
            {"url": RISK_SCORE_EXTENSION, "valueDecimal": _decimal(score.score)},
            {"url": RISK_MODEL_VERSION_EXTENSION, "valueString": f"{version.pk} {version.name}"},
            {"url": RISK_LANDMARK_EXTENSION, "valueDate": score.landmark_date.isoformat()},
        ],
        "note": [
            {
                "text": f"Score {score.score:.4g} ({version.kind}); tier {score.tier}; no data "
                f"after {score.landmark_date.isoformat()} was used."
            },
            # What the score's page says about it (progressed before the landmark, values
            # held inside the training range): the EHR must not lose the caveats.
            *({"text": str(note)} for note in (score.explanation or {}).get("notes", [])),
        ],
    }
    return fhir_resource_validate(resource)


@dataclass
class PatientResources:
    """One patient's resources by type, each already validated FHIR JSON."""

    patient_pk: int
    patient: dict
    imaging_studies: list[dict] = field(default_factory=list)
    lesions: list[dict] = field(default_factory=list)
    observations: list[dict] = field(default_factory=list)
    reports: list[dict] = field(default_factory=list)
    best_responses: list[dict] = field(default_factory=list)
    risk_assessments: list[dict] = field(default_factory=list)
    labs: list[dict] = field(default_factory=list)
    devices: list[dict] = field(default_factory=list)

    def all(self) -> list[dict]:
        return [
            self.patient,
            *self.imaging_studies,
            *self.lesions,
            *self.observations,
            *self.labs,
            *self.reports,
            *self.best_responses,
            *self.risk_assessments,
            *self.devices,
        ]

    def find(self, resource_type: str, resource_id: str) -> dict | None:
        """The resource of that type and id, or None."""
        return next(
            (
                r
                for r in self.all()
                if r["resourceType"] == resource_type and r["id"] == resource_id
            ),
            None,
        )


def _measurements_up_to(
    record: PatientRecord, day: datetime.date | None, *, study_id: int | None = None
) -> list[LesionMeasurement]:
    """The patient's exported measurements at studies on or before ``day``.

    A response compares with the baseline and the nadir, a risk score uses every study up
    to its landmark, so all earlier studies count. Undated studies count (the safe side).
    """
    return [
        m
        for m in record.measurements
        if m.study_id == study_id
        or day is None
        or m.study.study_date is None
        or m.study.study_date <= day
    ]


def patient_resources_build(*, record: PatientRecord) -> PatientResources:
    """Every resource of one patient, from `patient_record_load`."""
    out = PatientResources(
        patient_pk=record.patient.pk,
        patient=fhir_patient_build(patient=record.patient, identifiers=record.identifiers),
    )
    out.imaging_studies = [
        fhir_imaging_study_build(study=s, series=record.series_by_study.get(s.pk, ()))
        for s in record.studies
    ]
    out.lesions = [fhir_lesion_build(lesion=lesion) for lesion in record.lesions]
    by_study: dict[int, list[str]] = defaultdict(list)
    group_ids = {
        measurement_fhir_id(m.lesion.tracking_uid, m.study.study_instance_uid)
        for m in record.measurements
    }
    for m in record.measurements:
        group = fhir_measurement_build(measurement=m, group_ids=group_ids)
        out.observations.extend(group)
        by_study[m.study_id].append(group[0]["id"])
    out.reports = [
        fhir_response_build(
            assessment=a,
            measurement_ids=by_study.get(a.study_id, ()),
            final=response_is_final(
                assessment=a,
                measurements=_measurements_up_to(record, a.study.study_date, study_id=a.study_id),
            ),
        )
        for a in record.assessments
    ]
    out.best_responses = fhir_best_responses_build(
        best=record.best,
        assessments=record.assessments,
        all_reviewed=results_all_reviewed(record.measurements),
    )
    out.risk_assessments = [
        fhir_risk_build(
            score=s,
            all_reviewed=results_all_reviewed(_measurements_up_to(record, s.landmark_date)),
        )
        for s in record.scores
    ]
    out.labs = [fhir_lab_build(lab=lab) for lab in record.labs]
    models = {
        (m.segmentation.model_name, m.segmentation.model_version): m.segmentation.model_sha256
        for m in record.measurements
        if m.segmentation_id and m.segmentation is not None
    }
    out.devices = [
        fhir_device_build(model_name=name, model_version=version, model_sha256=sha)
        for (name, version), sha in sorted(models.items())
    ]
    return out
