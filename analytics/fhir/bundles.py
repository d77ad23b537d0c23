"""FHIR R4 Bundles and the server's CapabilityStatement, each validated like every resource.

A ``searchset`` answers the ``/fhir/`` reads; a ``transaction`` carries a push to the
EHR, PUTting each resource at its own id.
"""

from __future__ import annotations

from django.utils import timezone

from analytics.fhir.validation import fhir_resource_validate


def fhir_searchset_build(*, resources: list[dict], base_url: str, self_url: str) -> dict:
    """A ``searchset`` Bundle of ``resources`` (all matches: RadTrack does not page them)."""
    base_url = base_url.rstrip("/")
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "link": [{"relation": "self", "url": self_url}],
        "entry": [
            {
                "fullUrl": f"{base_url}/{r['resourceType']}/{r['id']}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in resources
        ],
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


def fhir_capability_statement_build(*, base_url: str, software_version: str) -> dict:
    """The server's CapabilityStatement (``GET metadata``): what ``/fhir/`` answers.

    Read-only; the interactions and search parameters listed are exactly those the
    views accept (any other parameter is refused with 400).
    """
    patient_search = [
        {"name": "patient", "type": "reference", "documentation": "Patient/{id} or {id}"},
        {"name": "subject", "type": "reference", "documentation": "the same as patient"},
    ]

    def searchable(kind: str) -> dict:
        return {
            "type": kind,
            "interaction": [{"code": "search-type"}],
            "searchParam": patient_search,
        }

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
                "permissions as RadTrack's pages and REST API; every read is audited.",
                "resource": [
                    {
                        "type": "Patient",
                        "interaction": [{"code": "read"}],
                        "operation": [
                            {
                                "name": "everything",
                                "definition": (
                                    "http://hl7.org/fhir/OperationDefinition/Patient-everything"
                                ),
                            }
                        ],
                    },
                    searchable("Observation"),
                    searchable("DiagnosticReport"),
                    searchable("RiskAssessment"),
                ],
            }
        ],
    }
    return fhir_resource_validate(resource)
