"""Read-only FHIR R4 endpoints under ``/fhir/`` for the EHR (JSON, ``application/fhir+json``).

- ``GET [base]/`` and ``GET metadata``: the CapabilityStatement (no patient data: no
  login needed);
- ``GET {Type}/{id}``: every resource RadTrack writes (Patient, ImagingStudy,
  BodyStructure, Observation, DiagnosticReport, RiskAssessment, Device), so every
  ``fullUrl`` and reference in its Bundles can be followed;
- ``GET Patient?identifier=system|value`` (or ``value``, ``|value``, ``system|``): the
  patients with that MRN or other identifier;
- ``GET Observation?patient=`` (and ``category=laboratory|imaging``),
  ``DiagnosticReport``, ``RiskAssessment``, ``ImagingStudy``, ``BodyStructure``:
  the patient's resources (``patient`` is ``patient-12`` or ``Patient/patient-12``;
  ``subject`` works too); imported labs are Observations of category laboratory;
- ``GET Patient/{id}/$everything``: every resource of the patient in one Bundle.

Searches are paged (``_count``, ``_offset``; `analytics.fhir.search`) and ignore the
parameters they do not support, naming them in an OperationOutcome entry, unless the
request says ``Prefer: handling=strict`` (400). Only JSON is served: ``_format`` or an
Accept asking for XML is a 406. Same authentication and view permissions as the REST
API; every read is audited with the patient. Every error is an OperationOutcome,
including an unknown path or id (404) and a resource RadTrack could not build (500,
code ``exception``).
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
from rest_framework.exceptions import APIException, NotAcceptable, NotFound, ParseError
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from analytics.fhir.audit import audit_event_fhir, audit_event_pk_from_fhir_id
from analytics.fhir.build import PatientResources, fhir_patient_build, patient_resources_build
from analytics.fhir.bundles import (
    READABLE_TYPES,
    fhir_capability_statement_build,
    fhir_searchset_build,
)
from analytics.fhir.finders import device_resource_find, patients_by_identifier
from analytics.fhir.ids import patient_pk_from_fhir_id
from analytics.fhir.locate import fhir_ids_remember, fhir_resource_patient_pk
from analytics.fhir.record import patient_record_load
from analytics.fhir.search import (
    FORMAT_PARAMETERS,
    SearchRequest,
    UnsupportedParameter,
    search_page,
    search_request_parse,
)
from analytics.fhir.validation import FHIRBuildError
from patients.audit import audit_patients_shown, audit_record
from patients.models import AuditEvent, Patient
from radtrack.api.base import HasViewPermissions

logger = logging.getLogger(__name__)

FHIR_READ_PERMISSIONS = (
    "patients.view_patient",
    "imaging.view_study",
    "imaging.view_lesionmeasurement",
    "analytics.view_responseassessment",
    "analytics.view_riskscore",
)
#: ``_format`` values meaning JSON; any other (xml, ttl...) is answered 406.
JSON_FORMATS = frozenset({"json", "application/json", "application/fhir+json", "fhir+json"})


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


class FHIRView(APIView):
    """Base of the FHIR endpoints: FHIR JSON out, OperationOutcome on every error."""

    renderer_classes = [FHIRJSONRenderer, JSONRenderer]
    permission_classes = [IsAuthenticated, HasViewPermissions]
    required_permissions = FHIR_READ_PERMISSIONS
    #: The query parameters this endpoint acts on; others are ignored (or refused
    #: under ``Prefer: handling=strict``).
    supported_parameters: frozenset[str] = frozenset()
    #: Whether ``_count`` and ``_offset`` page the answer.
    paged = False
    search: SearchRequest

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        wanted = [request.query_params.get(p, "") for p in FORMAT_PARAMETERS]
        for value in wanted:
            if value and value.strip().lower() not in JSON_FORMATS:
                raise NotAcceptable(
                    f"_format {value[:40]!r} is not served: RadTrack answers FHIR JSON only "
                    "(_format=json or application/fhir+json)"
                )
        super().initial(request, *args, **kwargs)
        strict = "handling=strict" in request.headers.get("Prefer", "").replace(" ", "").lower()
        self.search = search_request_parse(
            params=[(k, v) for k, values in request.query_params.lists() for v in values],
            supported=self.supported_parameters,
            strict=strict,
            paged=self.paged,
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
        resources = patient_resources_build(record=record)
        fhir_ids_remember(patient_pk=pk, resources=resources.all())
        return resources

    def searchset(
        self, request: Request, matches: list[dict], *, total: int | None = None
    ) -> Response:
        """A searchset of ``matches``, paged here; or, with ``total``, ``matches`` is the
        page already cut from ``total`` matches."""
        path_url = request.build_absolute_uri(request.path)
        page, self_url, links = search_page(
            matches=matches, search=self.search, path_url=path_url, total=total
        )
        outcome = None
        if self.search.ignored:
            outcome = operation_outcome(
                severity="warning",
                code="not-supported",
                diagnostics="search parameter(s) ignored: "
                + ", ".join(p[:40] for p in self.search.ignored[:10]),
            )
        bundle = fhir_searchset_build(
            resources=page,
            base_url=request.build_absolute_uri(reverse("fhir-base")),
            self_url=self_url,
            total=len(matches) if total is None else total,
            links=links,
            outcome=outcome,
        )
        return Response(bundle)


FHIR_ID_PATTERN = r"[A-Za-z0-9\-.]{1,64}"
_PATIENT_PARAMETER = OpenApiParameter(
    "patient",
    str,
    required=True,
    description="the patient: patient-<id> or Patient/patient-<id> (`subject` also works)",
)
_PAGING = [
    OpenApiParameter("_count", int, description="page size (default 50, at most 500)"),
    OpenApiParameter("_offset", int, description="matches to skip (see the paging links)"),
    OpenApiParameter("_format", str, description="json only; xml is answered 406"),
]
_BUNDLE = OpenApiResponse(OpenApiTypes.OBJECT, "a FHIR R4 searchset Bundle")
_OUTCOME = OpenApiResponse(OpenApiTypes.OBJECT, "an OperationOutcome saying why")
_RESOURCE = OpenApiResponse(OpenApiTypes.OBJECT, "the FHIR R4 resource")


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


class ResourceReadView(FHIRView):
    """``GET {Type}/{id}`` for every type RadTrack writes but Patient (its own view)."""

    @extend_schema(
        operation_id="fhir_resource_read",
        summary="Any FHIR resource RadTrack writes, by type and id",
        responses={200: _RESOURCE, 404: _OUTCOME},
        tags=["fhir"],
    )
    def get(self, request: Request, resource_type: str, resource_id: str) -> Response:
        if resource_type not in READABLE_TYPES:
            raise NotFound(
                f"RadTrack serves no {resource_type[:40]} resources (it serves "
                f"{', '.join(READABLE_TYPES)})"
            )
        if resource_type == "Device":
            return self._device(request, resource_id)
        pk = fhir_resource_patient_pk(resource_id)
        found = self.resources_for(pk).find(resource_type, resource_id) if pk else None
        if found is None and pk is not None:
            # What was remembered may be stale (re-tracked rows): search the rows.
            pk = fhir_resource_patient_pk(resource_id, remembered=False)
            found = self.resources_for(pk).find(resource_type, resource_id) if pk else None
        if found is None:
            raise NotFound(f"no {resource_type} has the id {resource_id}")
        audit_record(
            request=request,
            action=f"fhir.{resource_type.lower()}.read",
            object=f"{resource_type}/{resource_id}",
            patient=pk,
        )
        return Response(found)

    def _device(self, request: Request, resource_id: str) -> Response:
        found = device_resource_find(resource_id=resource_id)
        if found is None:
            raise NotFound(f"no Device has the id {resource_id}")
        audit_record(request=request, action="fhir.device.read", object=f"Device/{resource_id}")
        return Response(found)


class AuditEventReadView(FHIRView):
    """``GET AuditEvent/audit-<id>``: one row of the audit trail, the resource each entry
    of the trail's FHIR export names by its URL; for those who may read the trail, and
    reading it is itself audited (``audit.read``)."""

    required_permissions = ("patients.view_auditevent",)

    @extend_schema(
        operation_id="fhir_auditevent_read",
        summary="One AuditEvent of the audit trail (audit permission needed)",
        responses={200: _RESOURCE, 404: _OUTCOME},
        tags=["fhir"],
    )
    def get(self, request: Request, resource_id: str) -> Response:
        pk = audit_event_pk_from_fhir_id(resource_id)
        event = AuditEvent.objects.filter(pk=pk).first() if pk is not None else None
        if event is None:
            raise NotFound(f"no AuditEvent has the id {resource_id}")
        audit_record(
            request=request,
            action="audit.read",
            object=f"AuditEvent/{resource_id}",
            patient=event.patient_id,
        )
        base = request.build_absolute_uri(reverse("fhir-base"))
        return Response(audit_event_fhir(event, base_url=base))


class PatientEverythingView(FHIRView):
    supported_parameters = frozenset()
    paged = True

    @extend_schema(
        operation_id="fhir_patient_everything",
        summary="Every FHIR resource of a patient",
        description="Patient, ImagingStudy, BodyStructure (lesions), Observation "
        "(measurement groups, measurements, best overall responses and imported labs), "
        "DiagnosticReport (responses), RiskAssessment and Device (the segmentation model), in one searchset "
        "Bundle, paged by _count.",
        parameters=_PAGING,
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


class PatientSearchView(FHIRView):
    """``GET Patient?identifier=``: patients by MRN or another identifier."""

    supported_parameters = frozenset({"identifier"})
    paged = True

    @extend_schema(
        operation_id="fhir_patient_search",
        summary="FHIR Patient search by identifier",
        description="identifier=system|value (the MRN in RADTRACK_MRN_SYSTEM, or another "
        "identifier the patient carries), value alone, |value (no system) or system|.",
        parameters=[OpenApiParameter("identifier", str, required=True), *_PAGING],
        responses={200: _BUNDLE, 400: _OUTCOME},
        tags=["fhir"],
    )
    def get(self, request: Request) -> Response:
        token = self.search.value("identifier")
        if not token:
            raise ParseError("Patient search needs identifier=system|value (or value)")
        patients = patients_by_identifier(token=token)
        page = patients[self.search.offset : self.search.offset + self.search.count]
        audit_patients_shown(
            request=request,
            action="fhir.patient.search",
            object=f"Patient?identifier ({len(patients)} found)",
            patient_pks=[p.pk for p in page],
        )
        resources = [fhir_patient_build(patient=p, identifiers=p.identifiers.all()) for p in page]
        return self.searchset(request, resources, total=len(patients))


class _PatientCompartmentSearchView(FHIRView):
    """``GET <Type>?patient=``: the patient's resources of one type."""

    resource_type = ""
    attribute = ""
    supported_parameters = frozenset({"patient", "subject"})
    paged = True

    def matches(self, resources: PatientResources) -> list[dict]:
        return list(getattr(resources, self.attribute))

    def get(self, request: Request) -> Response:
        wanted = self.search.value("patient") or self.search.value("subject")
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
        found = self.matches(self.resources_for(pk))
        audit_record(
            request=request,
            action=f"fhir.{self.resource_type.lower()}.search",
            object=f"{self.resource_type}?patient={wanted[:64]} ({len(found)} resources)",
            patient=pk,
        )
        return self.searchset(request, found)


class ObservationSearchView(_PatientCompartmentSearchView):
    """Lesion measurement groups and their measurements and the best overall responses
    (category imaging), and imported laboratory results (category laboratory)."""

    resource_type = "Observation"
    supported_parameters = frozenset({"patient", "subject", "category"})

    def matches(self, resources: PatientResources) -> list[dict]:
        found = [*resources.observations, *resources.best_responses, *resources.labs]
        category = self.search.value("category")
        if category:
            code = category.split("|")[-1]
            found = [
                r
                for r in found
                if any(
                    c.get("code") == code
                    for cat in r.get("category", [])
                    for c in cat.get("coding", [])
                )
            ]
        return found

    @extend_schema(
        operation_id="fhir_observation_search",
        summary="FHIR Observation search by patient",
        description="Lesion measurements and best overall responses (category imaging) and "
        "imported labs (category laboratory), with the identifiers they came with.",
        parameters=[
            _PATIENT_PARAMETER,
            OpenApiParameter("category", str, description="laboratory or imaging"),
            *_PAGING,
        ],
        responses={200: _BUNDLE, 400: _OUTCOME},
        tags=["fhir"],
    )
    def get(self, request: Request) -> Response:
        return super().get(request)


def _search_view(resource_type: str, attribute: str, what: str) -> type:
    def get(self, request: Request) -> Response:
        return _PatientCompartmentSearchView.get(self, request)

    decorated = extend_schema(
        operation_id=f"fhir_{resource_type.lower()}_search",
        summary=f"FHIR {resource_type} search by patient",
        description=what,
        parameters=[_PATIENT_PARAMETER, *_PAGING],
        responses={200: _BUNDLE, 400: _OUTCOME},
        tags=["fhir"],
    )(get)
    return type(
        f"{resource_type}SearchView",
        (_PatientCompartmentSearchView,),
        {"resource_type": resource_type, "attribute": attribute, "__doc__": what, "get": decorated},
    )


DiagnosticReportSearchView = _search_view(
    "DiagnosticReport", "reports", "Response assessments (RECIST 1.1 and volumetric) per study."
)
RiskAssessmentSearchView = _search_view(
    "RiskAssessment", "risk_assessments", "Risk scores with tier and model version."
)
ImagingStudySearchView = _search_view(
    "ImagingStudy", "imaging_studies", "The patient's CT studies (UIDs, accession, series)."
)
BodyStructureSearchView = _search_view(
    "BodyStructure", "lesions", "The patient's lesions, with their DICOM tracking identifiers."
)


class CapabilityStatementView(FHIRView):
    """``GET metadata`` and ``GET [base]/``: the CapabilityStatement; no patient data, so
    no login needed."""

    permission_classes: list = []
    authentication_classes: list = []

    @extend_schema(
        summary="The FHIR server's CapabilityStatement",
        parameters=[OpenApiParameter("_format", str, description="json only")],
        responses={200: OpenApiResponse(OpenApiTypes.OBJECT), 406: _OUTCOME},
        tags=["fhir"],
    )
    def get(self, request: Request) -> Response:
        try:
            version = md.version("radtrack")
        except md.PackageNotFoundError:
            version = "unknown"
        base = request.build_absolute_uri(reverse("fhir-base"))
        return Response(fhir_capability_statement_build(base_url=base, software_version=version))


class FHIRBaseView(CapabilityStatementView):
    """The base URL answers what ``metadata`` answers."""

    @extend_schema(exclude=True)
    def get(self, request: Request) -> Response:
        return super().get(request)


class NotServedView(FHIRView):
    """Any other path under ``/fhir/``: a 404 OperationOutcome, never Django's HTML page."""

    permission_classes: list = []
    authentication_classes: list = []

    @extend_schema(exclude=True)
    def get(self, request: Request, rest: str = "") -> Response:
        raise NotFound(
            f"RadTrack's FHIR server has nothing at {rest[:80]!r}: see {reverse('fhir-metadata')} "
            "for what it serves"
        )
