"""FHIR R4 routes under /fhir/: read and search, the CapabilityStatement at ``metadata``."""

from django.urls import path, re_path

from analytics.fhir.views import (
    FHIR_ID_PATTERN,
    CapabilityStatementView,
    DiagnosticReportSearchView,
    FHIRBaseView,
    ObservationSearchView,
    PatientEverythingView,
    PatientReadView,
    RiskAssessmentSearchView,
)

urlpatterns = [
    path("", FHIRBaseView.as_view(), name="fhir-base"),
    path("metadata", CapabilityStatementView.as_view(), name="fhir-metadata"),
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
]
