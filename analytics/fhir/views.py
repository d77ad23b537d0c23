"""Read-only FHIR R4 endpoints under ``/fhir/`` for the EHR (JSON, ``application/fhir+json``).

- ``GET Patient/{id}``: one Patient (ids look like ``patient-12``);
- ``GET Observation?patient=``, ``DiagnosticReport?patient=``, ``RiskAssessment?patient=``:
  ``searchset`` Bundles (``patient`` is ``patient-12`` or ``Patient/patient-12``;
  ``subject`` is accepted as well);
- ``GET Patient/{id}/$everything``: every resource of the patient in one Bundle;
- ``GET metadata``: the CapabilityStatement (no patient data: no login needed).

Same authentication and view permissions as the REST API; every read is audited with
the patient. Errors come back as an OperationOutcome, including a resource RadTrack
could not build (500, code ``exception``). A search parameter RadTrack does not
support is refused (400, code ``not-supported``) rather than ignored: ignoring it would
answer more than was asked for while the self link claimed the filter was applied.
"""

from __future__ import annotations

import importlib.metadata as md
import logging
from typing import Any

from django.conf import settings
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import APIException, NotFound, ParseError
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from analytics.fhir.build import PatientResources, patient_resources_build
from analytics.fhir.bundles import fhir_capability_statement_build, fhir_searchset_build
from analytics.fhir.ids import patient_pk_from_fhir_id
from analytics.fhir.record import patient_record_load
from analytics.fhir.validation import FHIRBuildError
from patients.audit import audit_record
from patients.models import Patient
from radtrack.api.base import HasViewPermissions

logger = logging.getLogger(__name__)

FHIR_READ_PERMISSIONS = (
    "patients.view_patient",
    "imaging.view_study",
    "imaging.view_lesionmeasurement",
    "analytics.view_responseassessment",
    "analytics.view_riskscore",
)


class FHIRJSONRenderer(JSONRenderer):
    media_type = "application/fhir+json"
    format = "fhir"


def operation_outcome(*, code: str, diagnostics: str, severity: str = "error") -> dict:
    """An OperationOutcome with one issue (``code`` from the FHIR issue-type value set)."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


_ISSUE_CODE = {
    status.HTTP_400_BAD_REQUEST: "invalid",
    status.HTTP_401_UNAUTHORIZED: "login",
    status.HTTP_403_FORBIDDEN: "forbidden",
    status.HTTP_404_NOT_FOUND: "not-found",
    status.HTTP_405_METHOD_NOT_ALLOWED: "not-supported",
    status.HTTP_406_NOT_ACCEPTABLE: "not-supported",
}


class UnsupportedParameter(APIException):
    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "not-supported"


#: Query parameters every FHIR endpoint takes: FHIR's and DRF's format overrides.
_FORMAT_PARAMETERS = frozenset({"_format", "format"})


class FHIRView(APIView):
    """Base of the FHIR endpoints: FHIR JSON out, OperationOutcome on every error."""

    renderer_classes = [FHIRJSONRenderer, JSONRenderer]
    permission_classes = [IsAuthenticated, HasViewPermissions]
    required_permissions = FHIR_READ_PERMISSIONS
    #: The query parameters this endpoint acts on; any other is refused.
    supported_parameters: frozenset[str] = frozenset()

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        allowed = self.supported_parameters | _FORMAT_PARAMETERS
        unsupported = sorted(set(request.query_params) - allowed)
        if unsupported:
            supported = ", ".join(sorted(self.supported_parameters)) or "none"
            raise UnsupportedParameter(
                f"unsupported search parameter(s): {', '.join(p[:40] for p in unsupported[:5])}"
                f" (supported here: {supported})"
            )

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, FHIRBuildError):
            # The message names the resource and the failing fields, never their values.
            logger.error("FHIR %s: a resource did not build: %s", type(self).__name__, exc)
            return Response(
                operation_outcome(code="exception", diagnostics=str(exc)),
                status=status.HTTP_500_INTERNAL_SERVER_ERROR,
            )
        try:
            response = super().handle_exception(exc)
        except Exception:
            if settings.DEBUG_PROPAGATE_EXCEPTIONS:
                raise
            # Only the type: an exception's text may quote patient data.
            logger.error("FHIR %s failed: %s", type(self).__name__, type(exc).__name__)
            return Response(
                operation_outcome(
                    code="exception", diagnostics="internal error while answering the request"
                ),
                status=status.HTTP_500_INTERNAL_SERVER_ERROR,
            )
        detail = exc.detail if isinstance(exc, APIException) else str(exc)
        code = (
            UnsupportedParameter.default_code
            if isinstance(exc, UnsupportedParameter)
            else _ISSUE_CODE.get(response.status_code, "exception")
        )
        response.data = operation_outcome(code=code, diagnostics=str(detail))
        return response

    def resources_for(self, pk: int | None) -> PatientResources:
        if pk is None:
            raise NotFound("no patient has this id (ids look like patient-12)")
        try:
            record = patient_record_load(pk=pk)
        except Patient.DoesNotExist:
            raise NotFound("no patient has this id") from None
        return patient_resources_build(record=record)

    def searchset(self, request: Request, resources: list[dict]) -> Response:
        bundle = fhir_searchset_build(
            resources=resources,
            base_url=request.build_absolute_uri(reverse("fhir-base")),
            self_url=request.build_absolute_uri(),
        )
        return Response(bundle)


FHIR_ID_PATTERN = r"[A-Za-z0-9\-.]{1,64}"
_PATIENT_PARAMETER = OpenApiParameter(
    "patient",
    str,
    required=True,
    description="the patient: patient-<id> or Patient/patient-<id> (`subject` also works)",
)
_BUNDLE = OpenApiResponse(OpenApiTypes.OBJECT, "a FHIR R4 searchset Bundle")
_OUTCOME = OpenApiResponse(OpenApiTypes.OBJECT, "an OperationOutcome saying why")


class PatientReadView(FHIRView):
    @extend_schema(
        operation_id="fhir_patient_read",
        summary="FHIR Patient",
        responses={200: OpenApiResponse(OpenApiTypes.OBJECT, "a FHIR R4 Patient"), 404: _OUTCOME},
        tags=["fhir"],
    )
    def get(self, request: Request, resource_id: str) -> Response:
        resources = self.resources_for(patient_pk_from_fhir_id(resource_id))
        audit_record(
            request=request,
            action="fhir.patient.read",
            object=f"Patient/{resource_id}",
            patient=resources.patient_pk,
        )
        return Response(resources.patient)


class PatientEverythingView(FHIRView):
    @extend_schema(
        operation_id="fhir_patient_everything",
        summary="Every FHIR resource of a patient",
        description="Patient, ImagingStudy, BodyStructure (lesions), Observation "
        "(measurement groups and measurements), DiagnosticReport (responses) and "
        "RiskAssessment, in one searchset Bundle.",
        responses={200: _BUNDLE, 404: _OUTCOME},
        tags=["fhir"],
    )
    def get(self, request: Request, resource_id: str) -> Response:
        resources = self.resources_for(patient_pk_from_fhir_id(resource_id))
        audit_record(
            request=request,
            action="fhir.patient.everything",
            object=f"Patient/{resource_id}/$everything",
            patient=resources.patient_pk,
        )
        return self.searchset(request, resources.all())


class _PatientSearchView(FHIRView):
    """``GET <Type>?patient=``: the patient's resources of one type."""

    resource_type = ""
    attribute = ""
    supported_parameters = frozenset({"patient", "subject"})

    def get(self, request: Request) -> Response:
        wanted = request.query_params.get("patient") or request.query_params.get("subject")
        if not wanted:
            raise ParseError(
                f"{self.resource_type} search needs patient=patient-<id> (or subject=)"
            )
        pk = patient_pk_from_fhir_id(wanted)
        if pk is None or not Patient.objects.filter(pk=pk).exists():
            # A reference to no patient matches nothing (FHIR search semantics).
            audit_record(
                request=request,
                action=f"fhir.{self.resource_type.lower()}.search",
                object=f"{self.resource_type}?patient={wanted[:64]} (no such patient)",
            )
            return self.searchset(request, [])
        resources = self.resources_for(pk)
        found = getattr(resources, self.attribute)
        audit_record(
            request=request,
            action=f"fhir.{self.resource_type.lower()}.search",
            object=f"{self.resource_type}?patient={wanted[:64]} ({len(found)} resources)",
            patient=pk,
        )
        return self.searchset(request, found)


def _search_view(resource_type: str, attribute: str, what: str) -> type[_PatientSearchView]:
    def get(self, request: Request) -> Response:
        return _PatientSearchView.get(self, request)

    decorated = extend_schema(
        operation_id=f"fhir_{resource_type.lower()}_search",
        summary=f"FHIR {resource_type} search by patient",
        description=what,
        parameters=[_PATIENT_PARAMETER],
        responses={200: _BUNDLE, 400: _OUTCOME},
        tags=["fhir"],
    )(get)
    view = type(
        f"{resource_type}SearchView",
        (_PatientSearchView,),
        {"resource_type": resource_type, "attribute": attribute, "__doc__": what, "get": decorated},
    )
    return view


ObservationSearchView = _search_view(
    "Observation",
    "observations",
    "Lesion measurement groups (DICOM SR to FHIR mapping) and their measurements.",
)
DiagnosticReportSearchView = _search_view(
    "DiagnosticReport", "reports", "Response assessments (RECIST 1.1 and volumetric) per study."
)
RiskAssessmentSearchView = _search_view(
    "RiskAssessment", "risk_assessments", "Risk scores with tier and model version."
)


class FHIRBaseView(FHIRView):
    """The base URL: no resource of its own (404 with an OperationOutcome)."""

    @extend_schema(exclude=True)
    def get(self, request: Request) -> Response:
        raise NotFound(
            "name a resource: Patient/{id}, Patient/{id}/$everything, "
            "Observation?patient=, DiagnosticReport?patient=, RiskAssessment?patient="
        )


class CapabilityStatementView(FHIRView):
    """``GET metadata``: the CapabilityStatement; no patient data, so no login needed."""

    permission_classes: list = []
    authentication_classes: list = []

    @extend_schema(
        summary="The FHIR server's CapabilityStatement",
        responses={200: OpenApiResponse(OpenApiTypes.OBJECT)},
        tags=["fhir"],
    )
    def get(self, request: Request) -> Response:
        try:
            version = md.version("radtrack")
        except md.PackageNotFoundError:
            version = "unknown"
        base = request.build_absolute_uri(reverse("fhir-base"))
        return Response(fhir_capability_statement_build(base_url=base, software_version=version))
