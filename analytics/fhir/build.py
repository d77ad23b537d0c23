"""FHIR R4 resources for the EHR: a patient, their studies, lesions, lesion measurements,
response assessments and risk scores, each built as JSON and validated (`validation`).

Lesion measurements follow HL7's "DICOM SR to FHIR Resource Mapping" guide (TID 1500
Measurement Report), adapted to R4: each lesion's identity is a `BodyStructure` carrying
its Tracking Identifier (DCM 112039) and Tracking Unique Identifier (DCM 112040); each
lesion at each study is one Imaging Measurement Group `Observation` (DCM 125007) with
those identifiers as components, a ``focus`` on the lesion and ``hasMember`` references
to one Imaging Measurement `Observation` per quantity: volume (SCT 118565006, mL), long
axis (SCT 103339001, mm) and short axis (SCT 103340004, mm), all in UCUM. The guide's
profiles are written for R5, so ``meta.profile`` does not claim them.

Values are those in force (a radiologist's override wins); measurements a radiologist
rejected as false positives are left out; a resolved lesion measures 0. A measurement
nobody has reviewed is ``preliminary``, and so is every DiagnosticReport and
RiskAssessment that rests on one (`results_all_reviewed`). Resource ids: `ids`.
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
    IMAGING_REPORT,
    LESION_ROLE_SYSTEM,
    LESION_STATUS_SYSTEM,
    LONG_AXIS,
    MEASUREMENT_GROUP,
    OBSERVATION_CATEGORY,
    OBSERVATION_STATUS,
    ORGAN_SITES,
    RECIST_DISPLAY,
    RECIST_SYSTEM,
    REVIEWED_STATES,
    RISK_LANDMARK_EXTENSION,
    RISK_MODEL_SYSTEM,
    RISK_MODEL_VERSION_EXTENSION,
    RISK_PROBABILITY,
    RISK_SCORE_EXTENSION,
    SHORT_AXIS,
    TIER_TO_RISK_PROBABILITY,
    TRACKING_IDENTIFIER,
    TRACKING_UID,
    UCUM,
    V2_DIAGNOSTIC_SERVICE,
    V2_IDENTIFIER_TYPE,
    VOLUME,
    VOLUMETRIC_SYSTEM,
)
from analytics.fhir.ids import (
    lesion_fhir_id,
    measurement_fhir_id,
    patient_fhir_id,
    response_fhir_id,
)
from analytics.fhir.record import PatientRecord
from analytics.fhir.validation import FHIRBuildError, fhir_resource_validate
from analytics.models import ResponseAssessment, RiskScore
from imaging.models import Lesion, LesionMeasurement, Series, Study
from patients.ehr.fhir_bundle import MRN_SYSTEM
from patients.models import Patient


def results_all_reviewed(measurements: Iterable[LesionMeasurement]) -> bool:
    """True when a radiologist accepted or edited every one of ``measurements``."""
    return all(m.review_state in REVIEWED_STATES for m in measurements)


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


def fhir_patient_build(*, patient: Patient) -> dict:
    """Patient: the MRN as identifier type MR in RadTrack's MRN system, name, sex, birth."""
    resource: dict = {
        "resourceType": "Patient",
        "id": patient_fhir_id(patient.pk),
        "identifier": [
            {
                "use": "usual",
                "type": _concept((V2_IDENTIFIER_TYPE, "MR", "Medical record number")),
                "system": MRN_SYSTEM,
                "value": patient.patient_id,
            }
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


def fhir_lesion_build(*, lesion: Lesion) -> dict:
    """BodyStructure: the lesion's identity, with its Tracking Identifier and UID."""
    resource: dict = {
        "resourceType": "BodyStructure",
        "id": lesion_fhir_id(lesion.tracking_uid),
        "identifier": [
            {"type": _concept(TRACKING_IDENTIFIER), "value": lesion.label},
            {
                "type": _concept(TRACKING_UID),
                "system": DICOM_UID,
                "value": f"urn:oid:{lesion.tracking_uid}",
            },
        ],
        "active": lesion.merged_into_id is None,
        "morphology": {"text": "Lesion"},
        "description": lesion.label,
        "patient": _ref("Patient", patient_fhir_id(lesion.patient_id)),
    }
    site = ORGAN_SITES.get(lesion.organ)
    resource["location"] = _concept(site) if site else {"text": lesion.get_organ_display()}
    return fhir_resource_validate(resource)


def _measurement_values(m: LesionMeasurement) -> tuple[float, float, float]:
    """Volume (ml) and long and short axes (mm) in force; a resolved lesion measures 0."""
    if m.status == LesionMeasurement.Status.RESOLVED:
        return 0.0, 0.0, 0.0
    return m.effective_volume_ml, m.effective_longest_diameter_mm, m.effective_short_axis_mm


def _measurement_common(m: LesionMeasurement) -> dict:
    out: dict = {
        "resourceType": "Observation",
        "status": OBSERVATION_STATUS[m.review_state],
        "subject": _ref("Patient", patient_fhir_id(m.lesion.patient_id)),
        "focus": [_ref("BodyStructure", lesion_fhir_id(m.lesion.tracking_uid))],
        "issued": _instant(m.reviewed_at or m.created_at),
        "derivedFrom": [_ref("ImagingStudy", f"study-{m.study_id}")],
    }
    if m.study.study_date:
        out["effectiveDateTime"] = m.study.study_date.isoformat()
    site = ORGAN_SITES.get(m.lesion.organ)
    if site:
        out["bodySite"] = _concept(site)
    return out


def fhir_measurement_build(*, measurement: LesionMeasurement) -> list[dict]:
    """The Imaging Measurement Group of one lesion at one study, then its three measurements."""
    m = measurement
    if m.review_state not in OBSERVATION_STATUS:
        raise FHIRBuildError(f"measurement {m.pk}: review state {m.review_state!r} is not exported")
    volume_ml, long_mm, short_mm = _measurement_values(m)
    group_id = measurement_fhir_id(m.lesion.tracking_uid, m.study.study_instance_uid)
    members = [
        (f"{group_id}-volume", VOLUME, volume_ml, "mL"),
        (f"{group_id}-long-axis", LONG_AXIS, long_mm, "mm"),
        (f"{group_id}-short-axis", SHORT_AXIS, short_mm, "mm"),
    ]
    imaging = {"coding": [{"system": OBSERVATION_CATEGORY, "code": "imaging"}]}
    group = {
        **_measurement_common(m),
        "id": group_id,
        "category": [imaging, _concept(MEASUREMENT_GROUP)],
        "code": _concept(MEASUREMENT_GROUP, "Lesion measurement group"),
        "hasMember": [_ref("Observation", member_id) for member_id, *_ in members],
        "component": [
            {"code": _concept(TRACKING_IDENTIFIER), "valueString": m.lesion.label},
            {"code": _concept(TRACKING_UID), "valueString": m.lesion.tracking_uid},
            {
                "code": {"coding": [{"system": LESION_STATUS_SYSTEM, "code": "status"}]},
                "valueCodeableConcept": {
                    "coding": [
                        {
                            "system": LESION_STATUS_SYSTEM,
                            "code": m.status,
                            "display": m.get_status_display(),
                        }
                    ]
                },
            },
            {
                "code": {"coding": [{"system": LESION_ROLE_SYSTEM, "code": "recist-target"}]},
                "valueBoolean": bool(m.is_target),
            },
        ],
    }
    out = [fhir_resource_validate(group)]
    for member_id, concept, value, unit in members:
        member = {
            **_measurement_common(m),
            "id": member_id,
            "category": [imaging],
            "code": _concept(concept),
            "valueQuantity": _quantity(value, unit),
        }
        out.append(fhir_resource_validate(member))
    return out


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f}%"


def fhir_response_build(
    *,
    assessment: ResponseAssessment,
    measurement_ids: Iterable[str] = (),
    all_reviewed: bool = False,
) -> dict:
    """DiagnosticReport: the response assessment of one study (RECIST 1.1 and volumetric).

    ``measurement_ids`` are the ids of the study's measurement groups; ``all_reviewed``
    whether a radiologist signed off every measurement the assessment rests on (else it
    is ``preliminary``, like those measurements).
    """
    a = assessment
    if a.is_baseline:
        conclusion = (
            f"Baseline: sum of diameters {a.sum_diameters_mm or 0:.1f} mm, "
            f"total volume {a.total_volume_ml or 0:.2f} mL."
        )
    else:
        conclusion = (
            f"RECIST 1.1: {a.recist_response or 'not assessed'} "
            f"({_pct(a.pct_change_baseline)} from baseline, {_pct(a.pct_change_nadir)} from "
            f"nadir sum of diameters); volumetric: {a.volumetric_response or 'not assessed'}; "
            f"new lesions: {'yes' if a.new_lesions else 'no'}."
        )
    codes = []
    for system, value, what in (
        (RECIST_SYSTEM, a.recist_response, "RECIST 1.1"),
        (VOLUMETRIC_SYSTEM, a.volumetric_response, "Volumetric"),
    ):
        if value:
            if value not in RECIST_DISPLAY:
                raise FHIRBuildError(
                    f"response assessment {a.pk}: {what} category {value!r} is not one of "
                    f"{', '.join(RECIST_DISPLAY)}"
                )
            codes.append(
                {
                    "coding": [{"system": system, "code": value, "display": RECIST_DISPLAY[value]}],
                    "text": f"{what}: {RECIST_DISPLAY[value]}",
                }
            )
    resource: dict = {
        "resourceType": "DiagnosticReport",
        "id": response_fhir_id(a.study.study_instance_uid),
        "status": "final" if all_reviewed else "preliminary",
        "category": [_concept((V2_DIAGNOSTIC_SERVICE, "RAD", "Radiology"))],
        "code": _concept(IMAGING_REPORT, "Tumour response assessment (RECIST 1.1, volumetric)"),
        "subject": _ref("Patient", patient_fhir_id(a.patient_id)),
        "issued": _instant(a.computed_at),
        "imagingStudy": [_ref("ImagingStudy", f"study-{a.study_id}")],
        "result": [_ref("Observation", group_id) for group_id in measurement_ids],
        "conclusion": conclusion,
    }
    if a.study.study_date:
        resource["effectiveDateTime"] = a.study.study_date.isoformat()
    if codes:
        resource["conclusionCode"] = codes
    if not resource["result"]:
        del resource["result"]
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
            }
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
    risk_assessments: list[dict] = field(default_factory=list)

    def all(self) -> list[dict]:
        return [
            self.patient,
            *self.imaging_studies,
            *self.lesions,
            *self.observations,
            *self.reports,
            *self.risk_assessments,
        ]


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
        patient_pk=record.patient.pk, patient=fhir_patient_build(patient=record.patient)
    )
    out.imaging_studies = [
        fhir_imaging_study_build(study=s, series=record.series_by_study.get(s.pk, ()))
        for s in record.studies
    ]
    out.lesions = [fhir_lesion_build(lesion=lesion) for lesion in record.lesions]
    by_study: dict[int, list[str]] = defaultdict(list)
    for m in record.measurements:
        group = fhir_measurement_build(measurement=m)
        out.observations.extend(group)
        by_study[m.study_id].append(group[0]["id"])
    out.reports = [
        fhir_response_build(
            assessment=a,
            measurement_ids=by_study.get(a.study_id, ()),
            all_reviewed=results_all_reviewed(
                _measurements_up_to(record, a.study.study_date, study_id=a.study_id)
            ),
        )
        for a in record.assessments
    ]
    out.risk_assessments = [
        fhir_risk_build(
            score=s,
            all_reviewed=results_all_reviewed(_measurements_up_to(record, s.landmark_date)),
        )
        for s in record.scores
    ]
    return out
