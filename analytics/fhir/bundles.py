"""FHIR R4 Bundles and the server's CapabilityStatement, each validated like every resource.

A ``searchset`` answers the ``/fhir/`` searches (a page of matches, with paging links);
a ``transaction`` carries a push to the EHR, PUTting each resource at its own id.
"""

from __future__ import annotations

from django.utils import timezone

from analytics.fhir.validation import fhir_resource_validate


def fhir_searchset_build(
    *,
    resources: list[dict],
    base_url: str,
    self_url: str,
    total: int | None = None,
    links: list[dict] | None = None,
    outcome: dict | None = None,
) -> dict:
    """A ``searchset`` Bundle of ``resources`` (one page of ``total`` matches).

    ``links`` are the paging links after ``self`` (first, previous, next, last);
    ``outcome`` an OperationOutcome about the search itself (parameters ignored), carried
    as an entry with search mode ``outcome`` as R4 says.
    """
    base_url = base_url.rstrip("/")
    entries = [
        {
            "fullUrl": f"{base_url}/{r['resourceType']}/{r['id']}",
            "resource": r,
            "search": {"mode": "match"},
        }
        for r in resources
    ]
    if outcome is not None:
        entries.append({"resource": outcome, "search": {"mode": "outcome"}})
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources) if total is None else total,
        "link": [{"relation": "self", "url": self_url}, *(links or [])],
        "entry": entries,
    }
    return fhir_resource_validate(bundle)


def fhir_transaction_build(*, resources: list[dict]) -> dict:
    """A ``transaction`` Bundle that PUTs every resource at its own id (idempotent)."""
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": r,
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
            }
            for r in resources
        ],
    }
    return fhir_resource_validate(bundle)


#: What each resource type answers: read, and search by these parameters.
_PATIENT_REFERENCE = [
    {"name": "patient", "type": "reference", "documentation": "Patient/{id} or {id}"},
    {"name": "subject", "type": "reference", "documentation": "the same as patient"},
]
_RESULT_PARAMETERS = [
    {"name": "_count", "type": "number", "documentation": "page size (default 50, at most 500)"},
    {"name": "_offset", "type": "number", "documentation": "matches to skip (the paging links)"},
]
_SEARCH_PARAMETERS = {
    "Patient": [
        {
            "name": "identifier",
            "type": "token",
            "documentation": "system|value, value, |value or system| (the MRN, or another "
            "identifier the patient carries)",
        }
    ],
    "Observation": [
        *_PATIENT_REFERENCE,
        {"name": "category", "type": "token", "documentation": "laboratory or imaging"},
    ],
    "DiagnosticReport": _PATIENT_REFERENCE,
    "RiskAssessment": _PATIENT_REFERENCE,
    "ImagingStudy": _PATIENT_REFERENCE,
    "BodyStructure": _PATIENT_REFERENCE,
}
#: Every type RadTrack writes: each is readable at [base]/Type/id.
READABLE_TYPES = (
    "Patient",
    "ImagingStudy",
    "BodyStructure",
    "Observation",
    "DiagnosticReport",
    "RiskAssessment",
    "Device",
)


def _resource_capability(kind: str) -> dict:
    entry: dict = {"type": kind, "interaction": [{"code": "read"}]}
    if kind in _SEARCH_PARAMETERS:
        entry["interaction"].append({"code": "search-type"})
        entry["searchParam"] = [*_SEARCH_PARAMETERS[kind], *_RESULT_PARAMETERS]
    if kind == "Patient":
        entry["operation"] = [
            {
                "name": "everything",
                "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
            }
        ]
    return entry


def fhir_capability_statement_build(*, base_url: str, software_version: str) -> dict:
    """The server's CapabilityStatement (``GET metadata`` and ``GET /fhir/``).

    Read-only: every type RadTrack writes can be read by id; searches take the
    parameters listed. Others are ignored, as R4 says, unless the client sends
    ``Prefer: handling=strict`` (then 400); JSON only (``_format=xml`` is 406).
    """
    resource = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": timezone.now().date().isoformat(),
        "kind": "instance",
        "software": {"name": "RadTrack", "version": software_version},
        "implementation": {"description": "RadTrack lesion tracking (read-only)", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "documentation": "Session or token authentication, the same accounts and "
                "permissions as RadTrack's pages and REST API; every read is audited. "
                "Search parameters not listed are ignored (and named in an OperationOutcome "
                "entry) unless the request says Prefer: handling=strict.",
                "resource": [
                    *(_resource_capability(kind) for kind in READABLE_TYPES),
                    # The audit trail's export names each row by its URL here.
                    {"type": "AuditEvent", "interaction": [{"code": "read"}]},
                ],
            }
        ],
    }
    return fhir_resource_validate(resource)
