"""FHIR R4 routes under /fhir/: the CapabilityStatement at the base and ``metadata``, read of
every type RadTrack writes (the audit trail's AuditEvents too), searches, ``$everything``;
anything else a 404 OperationOutcome."""

from django.urls import path, re_path

from analytics.fhir.views import (
    FHIR_ID_PATTERN,
    AuditEventReadView,
    BodyStructureSearchView,
    CapabilityStatementView,
    DiagnosticReportSearchView,
    FHIRBaseView,
    ImagingStudySearchView,
    NotServedView,
    ObservationSearchView,
    PatientEverythingView,
    PatientReadView,
    PatientSearchView,
    ResourceReadView,
    RiskAssessmentSearchView,
)

urlpatterns = [
    path("", FHIRBaseView.as_view(), name="fhir-base"),
    path("metadata", CapabilityStatementView.as_view(), name="fhir-metadata"),
    path("Patient", PatientSearchView.as_view(), name="fhir-patient-search"),
    re_path(
        rf"^Patient/(?P<resource_id>{FHIR_ID_PATTERN})$",
        PatientReadView.as_view(),
        name="fhir-patient",
    ),
    re_path(
        rf"^Patient/(?P<resource_id>{FHIR_ID_PATTERN})/\$everything$",
        PatientEverythingView.as_view(),
        name="fhir-patient-everything",
    ),
    path("Observation", ObservationSearchView.as_view(), name="fhir-observation-search"),
    path(
        "DiagnosticReport",
        DiagnosticReportSearchView.as_view(),
        name="fhir-diagnosticreport-search",
    ),
    path("RiskAssessment", RiskAssessmentSearchView.as_view(), name="fhir-riskassessment-search"),
    path("ImagingStudy", ImagingStudySearchView.as_view(), name="fhir-imagingstudy-search"),
    path("BodyStructure", BodyStructureSearchView.as_view(), name="fhir-bodystructure-search"),
    re_path(
        rf"^AuditEvent/(?P<resource_id>{FHIR_ID_PATTERN})$",
        AuditEventReadView.as_view(),
        name="fhir-auditevent",
    ),
    re_path(
        rf"^(?P<resource_type>[A-Z][A-Za-z]{{1,40}})/(?P<resource_id>{FHIR_ID_PATTERN})$",
        ResourceReadView.as_view(),
        name="fhir-resource",
    ),
    re_path(r"^(?P<rest>.*)$", NotServedView.as_view(), name="fhir-not-served"),
]
