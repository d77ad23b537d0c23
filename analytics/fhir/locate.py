"""Which patient a FHIR resource id of RadTrack's belongs to, so ``GET [base]/Type/id`` can
build that patient's resources and answer the one asked for.

Ids built from a primary key (``patient-``, ``study-``, ``risk-``, ``lab-``, and
``bor-`` from the patient's) are looked up directly. Ids that hash a DICOM UID (``lesion-``, ``measurement-``, ``response-``;
`analytics.fhir.ids`) cannot be inverted: each resource built is remembered here
(`fhir_ids_remember`, bounded), and an id not remembered is searched for by hashing the
candidate rows' UIDs. A ``device-`` (the segmentation model) is no patient's.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from threading import Lock

from analytics.fhir.ids import lesion_fhir_id, measurement_fhir_id, response_fhir_id
from analytics.models import ResponseAssessment, RiskScore
from imaging.models import Lesion, LesionMeasurement, Study
from patients.models import LabResult

__all__ = ["fhir_ids_remember", "fhir_resource_patient_pk"]

_MEMORY_SIZE = 100_000
_memory: OrderedDict[str, int] = OrderedDict()
_lock = Lock()
_BY_PK = {
    "patient": None,
    "study": Study,
    "risk": RiskScore,
    "lab": LabResult,
}
_ID = re.compile(r"^(?P<kind>[a-z]+)-(?P<key>[0-9a-f]{32}|[0-9]{1,18})(?P<member>-[a-z-]+)?$")
_MEASUREMENT_MEMBERS = {"", "-volume", "-long-axis", "-short-axis"}


def fhir_ids_remember(*, patient_pk: int, resources: list[dict]) -> None:
    """Remember that these resources (just built) are ``patient_pk``'s."""
    with _lock:
        for resource in resources:
            if resource["resourceType"] == "Device":
                continue
            _memory[resource["id"]] = patient_pk
            _memory.move_to_end(resource["id"])
        while len(_memory) > _MEMORY_SIZE:
            _memory.popitem(last=False)


def fhir_resource_patient_pk(resource_id: str, *, remembered: bool = True) -> int | None:
    """The primary key of the patient whose resource has id ``resource_id``, else None.

    A remembered answer may be stale (rows re-tracked since): the caller builds the
    patient's resources, looks for the id among them and, when it is not there, asks
    again with ``remembered=False`` (which forgets it and searches the rows).
    """
    match = _ID.match(resource_id)
    if match is None:
        return None
    kind, key, member = match.group("kind"), match.group("key"), match.group("member") or ""
    if kind == "bor" and key.isdigit() and member in {"", "-irecist"}:
        return int(key)  # the patient's own key
    if kind in _BY_PK and key.isdigit() and not member:
        model = _BY_PK[kind]
        if model is None:
            return int(key)
        return model.objects.filter(pk=int(key)).values_list("patient_id", flat=True).first()
    with _lock:
        known = _memory.get(resource_id) if remembered else _memory.pop(resource_id, None)
    if remembered and known is not None:
        return known
    if kind == "lesion" and not member:
        return _scan(
            Lesion.objects.values_list("tracking_uid", "patient_id"),
            lambda uid: lesion_fhir_id(uid),
            resource_id,
        )
    if kind == "response" and not member:
        rows = ResponseAssessment.objects.values_list("study__study_instance_uid", "patient_id")
        return _scan(rows, lambda uid: response_fhir_id(uid), resource_id)
    if kind == "measurement" and member in _MEASUREMENT_MEMBERS:
        group_id = resource_id.removesuffix(member)
        rows = LesionMeasurement.objects.values_list(
            "lesion__tracking_uid", "study__study_instance_uid", "lesion__patient_id"
        )
        for tracking_uid, study_uid, patient_pk in rows.iterator(chunk_size=2000):
            if measurement_fhir_id(tracking_uid, study_uid) == group_id:
                return patient_pk
    return None


def _scan(rows, make_id, resource_id: str) -> int | None:
    for uid, patient_pk in rows.iterator(chunk_size=2000):
        if make_id(uid) == resource_id:
            return patient_pk
    return None
