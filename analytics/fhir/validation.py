"""Checking a built FHIR resource against the fhir.resources models, and the error if it fails.

The installed fhir.resources (8.x) ships R5 models by default, R4B under
``fhir.resources.R4B`` and STU3, but no R4 package. Resources are therefore checked
against the **R4B** models (`FHIR_VALIDATION_PACKAGE`). R4B changed none of the elements
RadTrack writes (Patient, ImagingStudy, BodyStructure, Observation, DiagnosticReport,
RiskAssessment, Bundle), so what passes is meant to be R4 as well, but it is not
validated against R4 itself; a receiver's own R4 validation is the final word.
"""

from __future__ import annotations

import json

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

#: The fhir.resources models resources are validated against (no R4 package exists).
FHIR_VALIDATION_PACKAGE = "fhir.resources.R4B"


class FHIRBuildError(ValueError):
    """A resource RadTrack built does not validate (names the resource and the field)."""


def fhir_resource_validate(resource: dict) -> dict:
    """Validate ``resource`` against its R4B model and return it as FHIR JSON.

    R4B, because fhir.resources has no R4 package (see the module docstring).

    Raises `FHIRBuildError` naming the resource and each failing field.
    """
    resource_type = resource.get("resourceType", "")
    try:
        model_class = get_fhir_model_class(resource_type)
    except (KeyError, ValueError) as exc:
        raise FHIRBuildError(f"unknown FHIR resource type {resource_type!r}") from exc
    try:
        model = model_class.model_validate(resource)
    except ValidationError as exc:
        # Field paths and reasons only: the input values may be patient data.
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(resource)'}: {error['msg']}"
            for error in exc.errors()
        )
        raise FHIRBuildError(
            f"{resource_type}/{resource.get('id', '?')} is not valid FHIR "
            f"(checked against the R4B models): {problems}"
        ) from None
    return json.loads(model.model_dump_json())
