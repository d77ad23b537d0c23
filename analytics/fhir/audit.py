"""The audit trail as FHIR R4 AuditEvent resources in a ``collection`` Bundle, for a
hospital's audit repository (the FHIR counterpart of an ATNA audit message).

Each `patients.models.AuditEvent` row becomes one AuditEvent: ``type`` is the DICOM
audit event ID (PS3.15 Annex A.5 vocabulary, e.g. 110110 Patient Record, 110106 Export,
110112 Query), ``subtype`` RadTrack's own action (``patient.view``), the agent the
account and address, and the entity the patient (``Patient/patient-<id>``) and what was
seen. Every resource is validated (`analytics.fhir.validation`).
"""

from __future__ import annotations

from collections.abc import Iterable

from analytics.fhir.ids import patient_fhir_id
from analytics.fhir.validation import fhir_resource_validate
from patients.models import AuditEvent

DCM = "http://dicom.nema.org/resources/ontology/DCM"
ACTION_SYSTEM_PATH = "CodeSystem/radtrack-audit-action"

# (action prefix or suffix test, DICOM event ID, display, FHIR action code)
_EXPORT = ("110106", "Export", "E")
_QUERY = ("110112", "Query", "E")
_RECORD = ("110110", "Patient Record", "R")
_SECURITY = ("110113", "Security Alert", "E")
_AUDIT_USED = ("110101", "Audit Log Used", "R")
_ACTIVITY = ("110100", "Application Activity", "E")
_IMPORT = ("110107", "Import", "C")


def audit_event_type(action: str) -> tuple[str, str, str]:
    """The DICOM audit event ID, its display and the FHIR action code for ``action``."""
    verb = action.rsplit(".", 1)[-1]
    if action.startswith("audit."):
        return _AUDIT_USED
    if action.startswith(("admin.user", "admin.group", "admin.token", "admin.lockout")):
        return _SECURITY
    if verb in {"export", "send"} or action.startswith("research."):
        return _EXPORT
    if verb in {"upload", "import"}:
        return _IMPORT
    if verb in {"list", "search"}:
        return _QUERY
    if verb in {"view", "read", "everything"}:
        return _RECORD
    return _ACTIVITY


def audit_event_fhir(event: AuditEvent, *, base_url: str) -> dict:
    """One audit row as a validated FHIR R4 AuditEvent."""
    code, display, fhir_action = audit_event_type(event.action)
    agent: dict = {
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type",
                    "code": "humanuser",
                    "display": "human user",
                }
            ]
        },
        "who": {"display": event.username or "unknown"},
        "requestor": True,
    }
    if event.username:
        agent["altId"] = event.username
    if event.remote_address:
        agent["network"] = {"address": event.remote_address, "type": "2"}
    entities = []
    if event.patient_id is not None:
        entities.append(
            {
                "what": {"reference": f"Patient/{patient_fhir_id(event.patient_id)}"},
                "type": {
                    "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                    "code": "1",
                    "display": "Person",
                },
                "role": {
                    "system": "http://terminology.hl7.org/CodeSystem/object-role",
                    "code": "1",
                    "display": "Patient",
                },
            }
        )
    if event.object:
        entities.append({"description": event.object})
    resource = {
        "resourceType": "AuditEvent",
        "id": f"audit-{event.pk}",
        "type": {"system": DCM, "code": code, "display": display},
        "subtype": [{"system": base_url + ACTION_SYSTEM_PATH, "code": event.action}],
        "action": fhir_action,
        "recorded": event.at.isoformat(),
        "outcome": "0",
        "agent": [agent],
        "source": {
            "observer": {"display": "RadTrack"},
            "type": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "code": "4",
                    "display": "Application Server",
                }
            ],
        },
    }
    if entities:
        resource["entity"] = entities
    return fhir_resource_validate(resource)


def audit_event_pk_from_fhir_id(resource_id: str) -> int | None:
    """The audit row's key in an AuditEvent id ``audit-<pk>`` (as `audit_event_fhir`
    writes it); None for any other id."""
    prefix, _, number = resource_id.partition("-")
    if prefix != "audit" or not (number.isascii() and number.isdigit()):
        return None
    return int(number) if str(int(number)) == number else None


def audit_bundle_fhir(events: Iterable[AuditEvent], *, base_url: str) -> dict:
    """A ``collection`` Bundle of the rows' AuditEvents, each with its full URL."""
    entries = []
    for event in events:
        resource = audit_event_fhir(event, base_url=base_url)
        entries.append({"fullUrl": f"{base_url}AuditEvent/{resource['id']}", "resource": resource})
    # Each entry was validated; the envelope holds nothing more to check.
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}
