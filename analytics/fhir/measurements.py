"""FHIR R4 resources of the lesions: each identity a `BodyStructure`, each lesion at each
study an Imaging Measurement Group `Observation` with one member per quantity.

The mapping is HL7's "DICOM SR to FHIR Resource Mapping" (TID 1500), adapted to R4 (see
`analytics.fhir.build`). What a member says follows the finding, never a stored 0 that
stands for nothing (`member_values`):

- a lesion seen (``new``, ``tracked``): its values in force (a radiologist's override
  wins); a lesion measured by hand has no volume: ``dataAbsentReason`` not-performed;
- ``resolved`` (a radiologist confirmed it gone): 0 mm and 0 mL, measured values;
- ``not_found`` (expected and not seen): no values, ``dataAbsentReason`` unknown with
  the finding's state reason (RECIST 1.1: not seen is not gone until a radiologist
  says so);
- seen, size not assessable (finding state ``not_assessable``: it reaches the edge of
  what was imaged, so what was measured is only part of it): no values,
  ``dataAbsentReason`` unknown (the lesion has a size, which this study cannot give)
  with the finding's state reason; the cut numbers are never sent;
- ``merged`` into another lesion (coalescence, RECIST 1.1 section 4.3.2): no values of
  its own (``dataAbsentReason`` not-applicable, "measured as part of" it); the group
  names the lesion it merged into (a component with its Tracking UID) and refers to
  that lesion's measurement group at the same study (``derivedFrom``);
- present but too small to measure (a radiologist's word): no diameters or volume
  (``dataAbsentReason`` unknown, saying RECIST 1.1 counts it 5 mm, section 4.3.2).

Every group carries the row's tracking status and its finding state (confirmed,
equivocal, not_found, not_assessable) with the reason. A row linked to its lesion only provisionally
(placed by anatomical landmarks without a registration, `link_provisional`) is a
proposal until a radiologist reviews the link, which accepting its values does not do:
its group and members stay ``preliminary`` and the group says so in a component
(`LINK_PROVISIONAL`). Rows rejected as false positives, by the row or
for the whole lesion, are not built (`analytics.fhir.record`).
"""

from __future__ import annotations

import math
from collections.abc import Collection

from analytics.fhir.codes import (
    DATA_ABSENT_REASON,
    DICOM_UID,
    FINDING_STATE_SYSTEM,
    LESION_ROLE_SYSTEM,
    LESION_STATUS_SYSTEM,
    LINK_PROVISIONAL,
    LONG_AXIS,
    MEASUREMENT_GROUP,
    OBSERVATION_CATEGORY,
    OBSERVATION_STATUS,
    ORGAN_SITES,
    SHORT_AXIS,
    TRACKING_IDENTIFIER,
    TRACKING_UID,
    UCUM,
    VOLUME,
)
from analytics.fhir.ids import (
    device_fhir_id,
    lesion_fhir_id,
    measurement_fhir_id,
    patient_fhir_id,
)
from analytics.fhir.validation import FHIRBuildError, fhir_resource_validate
from analytics.lesions.core.readings import TOO_SMALL_MM
from imaging.models import Lesion, LesionMeasurement

__all__ = [
    "fhir_lesion_build",
    "fhir_measurement_build",
    "measurement_status",
    "member_values",
]

Status = LesionMeasurement.Status
State = LesionMeasurement.FindingState
#: HL7 data-absent-reason displays of the codes used here.
_ABSENT_DISPLAY = {
    "unknown": "Unknown",
    "not-applicable": "Not Applicable",
    "not-performed": "Not Performed",
}
#: Why a lesion seen but cut by the edge of what was imaged has no values, when its row
#: gives no reason of its own.
_NOT_ASSESSABLE_REASON = (
    "seen, but it reaches the edge of what was imaged, so only part of it was imaged: its "
    "size is not assessable at this study"
)
#: (id suffix, concept, UCUM unit) of each member, in order.
MEMBERS = (
    ("-volume", VOLUME, "mL"),
    ("-long-axis", LONG_AXIS, "mm"),
    ("-short-axis", SHORT_AXIS, "mm"),
)
#: A value, or why there is none: (data-absent-reason code, reason for a person).
Value = float | tuple[str, str]


def _concept(concept: tuple[str, str, str], text: str | None = None) -> dict:
    system, code, display = concept
    out: dict = {"coding": [{"system": system, "code": code, "display": display}]}
    if text:
        out["text"] = text
    return out


def _ref(resource_type: str, resource_id: str) -> dict:
    return {"reference": f"{resource_type}/{resource_id}"}


def _decimal(value: float) -> float:
    if value is None or not math.isfinite(value):
        raise FHIRBuildError(f"a measured value must be a finite number, not {value!r}")
    return round(float(value), 4)


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


# --------------------------------------------------------------------------- values
def _not_seen(m: LesionMeasurement) -> tuple[str, str] | None:
    """Why a lesion not seen at the study, or seen but with no size to read there, has no
    values (None: it has them)."""
    if m.status == Status.MERGED:
        into = m.merged_into.label if m.merged_into_id and m.merged_into else "another lesion"
        return (
            "not-applicable",
            f"merged into {into} at this study: measured as part of it (RECIST 1.1 section 4.3.2)",
        )
    if m.status == Status.NOT_FOUND or m.finding_state == State.NOT_FOUND:
        return ("unknown", m.state_reason or "not found at this study, needs review")
    if m.finding_state == State.NOT_ASSESSABLE:
        # Seen, but cut by the edge of the scan: its size exists and is not known here
        # (data-absent-reason "unknown"), and the cut numbers are only a lower bound.
        return ("unknown", m.state_reason or _NOT_ASSESSABLE_REASON)
    return None


def member_values(m: LesionMeasurement) -> tuple[Value, Value, Value]:
    """Volume (mL), long and short axis (mm) of one row, or why each is absent (module
    docstring): never a stored 0 for a lesion that was not measured."""
    absent = _not_seen(m)
    if absent is not None:
        return absent, absent, absent
    if m.status == Status.RESOLVED:
        return 0.0, 0.0, 0.0
    if m.too_small:
        small = (
            "unknown",
            f"present but too small to measure (a radiologist): RECIST 1.1 counts it "
            f"{TOO_SMALL_MM:g} mm (section 4.3.2)",
        )
        return small, small, small
    volume = m.effective_volume_ml
    if volume is None:
        volume = ("not-performed", "no volume: the lesion was measured by hand")
    return volume, m.effective_longest_diameter_mm, m.effective_short_axis_mm


def _value_element(value: Value, unit: str) -> dict:
    if isinstance(value, tuple):
        code, reason = value
        return {
            "dataAbsentReason": {
                "coding": [
                    {"system": DATA_ABSENT_REASON, "code": code, "display": _ABSENT_DISPLAY[code]}
                ],
                "text": reason,
            }
        }
    return {"valueQuantity": {"value": _decimal(value), "unit": unit, "system": UCUM, "code": unit}}


# --------------------------------------------------------------------------- resources
def measurement_status(m: LesionMeasurement) -> str:
    """Observation.status of a row: its review's, but ``preliminary`` while its link to
    earlier studies is provisional (module docstring)."""
    return "preliminary" if m.link_provisional else OBSERVATION_STATUS[m.review_state]


def _measurement_common(m: LesionMeasurement) -> dict:
    out: dict = {
        "resourceType": "Observation",
        "status": measurement_status(m),
        "subject": _ref("Patient", patient_fhir_id(m.lesion.patient_id)),
        "focus": [_ref("BodyStructure", lesion_fhir_id(m.lesion.tracking_uid))],
        "issued": (m.reviewed_at or m.created_at).isoformat(),
        "derivedFrom": [_ref("ImagingStudy", f"study-{m.study_id}")],
    }
    if m.study.study_date:
        out["effectiveDateTime"] = m.study.study_date.isoformat()
    site = ORGAN_SITES.get(m.lesion.organ)
    if site:
        out["bodySite"] = _concept(site)
    segmentation = m.segmentation if m.segmentation_id else None
    if segmentation is not None:
        out["device"] = _ref(
            "Device", device_fhir_id(segmentation.model_name, segmentation.model_version)
        )
    return out


def _coded_component(system: str, name: str, code: str, display: str, text: str = "") -> dict:
    value: dict = {"coding": [{"system": system, "code": code, "display": display}]}
    if text:
        value["text"] = text
    return {"code": {"coding": [{"system": system, "code": name}]}, "valueCodeableConcept": value}


def _group_components(m: LesionMeasurement) -> list[dict]:
    components = [
        {"code": _concept(TRACKING_IDENTIFIER), "valueString": m.lesion.label},
        {"code": _concept(TRACKING_UID), "valueString": m.lesion.tracking_uid},
        _coded_component(LESION_STATUS_SYSTEM, "status", m.status, m.get_status_display()),
        _coded_component(
            FINDING_STATE_SYSTEM,
            "finding-state",
            m.finding_state,
            m.get_finding_state_display(),
            m.state_reason,
        ),
        {
            "code": {"coding": [{"system": LESION_ROLE_SYSTEM, "code": "recist-target"}]},
            "valueBoolean": bool(m.is_target),
        },
    ]
    if m.status == Status.MERGED and m.merged_into_id and m.merged_into is not None:
        components.append(
            {
                "code": {"coding": [{"system": LESION_STATUS_SYSTEM, "code": "merged-into"}]},
                "valueString": m.merged_into.tracking_uid,
            }
        )
    if m.link_provisional:
        system, code, display = LINK_PROVISIONAL
        components.append(
            _coded_component(
                system,
                "link",
                code,
                display,
                "linked to this lesion at earlier studies by anatomical landmarks, without a "
                "registration: a proposal until a radiologist reviews the link",
            )
        )
    return components


def fhir_measurement_build(
    *, measurement: LesionMeasurement, group_ids: Collection[str] = ()
) -> list[dict]:
    """The Imaging Measurement Group of one lesion at one study, then its three members.

    ``group_ids``: the measurement groups built beside this one; a merged lesion's
    group refers to the group of the lesion it merged into when that is among them.
    """
    m = measurement
    if m.review_state not in OBSERVATION_STATUS or m.finding_state == State.REJECTED:
        raise FHIRBuildError(f"measurement {m.pk}: a rejected finding is not exported")
    group_id = measurement_fhir_id(m.lesion.tracking_uid, m.study.study_instance_uid)
    imaging = {"coding": [{"system": OBSERVATION_CATEGORY, "code": "imaging"}]}
    group = {
        **_measurement_common(m),
        "id": group_id,
        "category": [imaging, _concept(MEASUREMENT_GROUP)],
        "code": _concept(MEASUREMENT_GROUP, "Lesion measurement group"),
        "hasMember": [_ref("Observation", f"{group_id}{suffix}") for suffix, *_ in MEMBERS],
        "component": _group_components(m),
    }
    if m.status == Status.MERGED and m.merged_into_id and m.merged_into is not None:
        into = measurement_fhir_id(m.merged_into.tracking_uid, m.study.study_instance_uid)
        if into in group_ids:
            group["derivedFrom"] = [*group["derivedFrom"], _ref("Observation", into)]
    out = [fhir_resource_validate(group)]
    for (suffix, concept, unit), value in zip(MEMBERS, member_values(m), strict=True):
        member = {
            **_measurement_common(m),
            "id": f"{group_id}{suffix}",
            "category": [imaging],
            "code": _concept(concept),
            **_value_element(value, unit),
        }
        out.append(fhir_resource_validate(member))
    return out
