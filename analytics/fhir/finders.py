"""Finding what a FHIR read names without a patient key: patients by identifier token
(``Patient?identifier=``), and the segmentation model behind a ``Device`` id."""

from __future__ import annotations

from django.db.models import Q

from analytics.fhir.ids import device_fhir_id
from analytics.fhir.labs import fhir_device_build
from imaging.models import Segmentation
from patients.ehr.identifiers import mrn_system
from patients.models import Patient

__all__ = ["device_resource_find", "patients_by_identifier"]


def patients_by_identifier(*, token: str) -> list[Patient]:
    """The patients an R4 token search ``identifier=`` names, in MRN order.

    ``system|value``: the MRN when the system is ``RADTRACK_MRN_SYSTEM``, else an
    identifier kept from the EHR; ``value``: either, in any system; ``|value``: an
    identifier without a system (RadTrack keeps none, so nothing); ``system|``: every
    patient with an identifier in that system.
    """
    if "|" in token:
        system, value = token.split("|", 1)
    else:
        system, value = None, token
    system = system.strip() if system is not None else None
    value = value.strip()
    patients = Patient.objects.order_by("patient_id", "pk").prefetch_related("identifiers")
    if system == "":
        return []
    if system is None:
        if not value:
            return []
        condition = Q(patient_id=value) | Q(identifiers__value=value)
    elif system == mrn_system():
        condition = Q(patient_id=value) if value else Q()
    elif value:
        condition = Q(identifiers__system=system, identifiers__value=value)
    else:
        condition = Q(identifiers__system=system)
    return list(patients.filter(condition).distinct())


def device_resource_find(*, resource_id: str) -> dict | None:
    """The Device of the segmentation model whose id is ``resource_id``, or None."""
    models = (
        Segmentation.objects.order_by()
        .values_list("model_name", "model_version", "model_sha256")
        .distinct()
    )
    for name, version, sha in models:
        if device_fhir_id(name, version) == resource_id:
            return fhir_device_build(model_name=name, model_version=version, model_sha256=sha)
    return None
