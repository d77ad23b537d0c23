"""OpenAPI schema post-processing: the error answers every operation can give, and FHIR's
own ``_format`` parameter in place of DRF's ``format``.

drf-spectacular documents what each view declares; the answers that come from the
shared machinery (authentication, permissions, unknown ids, unsupported bodies, formats
other than FHIR JSON, throttling) are added here for every operation, with the body
they really have: ``{"detail": "..."}`` under ``/api/``, an OperationOutcome under
``/fhir/``.
"""

from __future__ import annotations

from typing import Any

DETAIL = {
    "type": "object",
    "properties": {"detail": {"type": "string"}},
    "required": ["detail"],
}
OPERATION_OUTCOME = {
    "type": "object",
    "description": "a FHIR R4 OperationOutcome",
    "properties": {
        "resourceType": {"type": "string", "enum": ["OperationOutcome"]},
        "issue": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "severity": {"type": "string"},
                    "code": {"type": "string"},
                    "diagnostics": {"type": "string"},
                },
                "required": ["severity", "code"],
            },
        },
    },
    "required": ["resourceType", "issue"],
}
FHIR_FORMAT = {
    "name": "_format",
    "in": "query",
    "required": False,
    "description": "FHIR's format override: json, application/json or application/fhir+json",
    "schema": {"type": "string"},
}

_DESCRIPTIONS = {
    "400": "a parameter or the body cannot be used (the reason names it)",
    "401": "no valid credentials (the answer carries WWW-Authenticate: Token)",
    "403": "the account may not do this",
    "404": "no such record",
    "406": "a format other than FHIR JSON was asked for (_format or Accept)",
    "415": "the body's media type is not one this operation reads",
    "429": "too many failed authentications from this address (see Retry-After)",
}


def _error(status: str, fhir: bool) -> dict[str, Any]:
    media = "application/fhir+json" if fhir else "application/json"
    name = "OperationOutcome" if fhir else "ErrorDetail"
    return {
        "description": _DESCRIPTIONS[status],
        "content": {media: {"schema": {"$ref": f"#/components/schemas/{name}"}}},
    }


def _authenticated(operation: dict) -> bool:
    security = operation.get("security")
    return bool(security) and {} not in security


def _operation_errors(path: str, method: str, operation: dict) -> None:
    fhir = path.startswith("/fhir/")
    responses = operation.setdefault("responses", {})
    wanted = ["400"]  # every query parameter is checked (radtrack.middleware)
    if _authenticated(operation):
        wanted += ["401", "403", "429"]
    if "{" in path:
        wanted.append("404")
    if "requestBody" in operation:
        wanted.append("415")
    if fhir:
        wanted.append("406")  # FHIRView.initial: only JSON is served
    for status in wanted:
        responses.setdefault(status, _error(status, fhir))
    if fhir:
        parameters = [p for p in operation.get("parameters", []) if p.get("name") != "format"]
        if not any(p.get("name") == "_format" for p in parameters):
            parameters.append(FHIR_FORMAT)
        operation["parameters"] = parameters


def error_responses_document(result: dict, generator, request, public) -> dict:
    """drf-spectacular postprocessing hook (``SPECTACULAR_SETTINGS``)."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault("ErrorDetail", DETAIL)
    schemas.setdefault("OperationOutcome", OPERATION_OUTCOME)
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            if isinstance(operation, dict) and "responses" in operation:
                _operation_errors(path, method, operation)
    return result
