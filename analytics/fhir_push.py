"""Pushing a patient's FHIR R4 resources to the EHR's FHIR server as one transaction Bundle.

The target is ``settings.RADTRACK_FHIR_SERVER_URL`` (the server's base, to which the
Bundle is POSTed), with an optional bearer token. Every resource is PUT at its own id,
so pushing again updates rather than duplicates. Connection failures, timeouts, 408,
429 and 5xx answers are retried (``RADTRACK_FHIR_PUSH_ATTEMPTS`` attempts in all, waiting
``retry_wait_s`` then doubling); any other answer, or a transaction-response with an
entry that failed, stops with a `FHIRPushError` naming the status and the server's reason.
Log lines name the patient's primary key and counts, never patient data.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import requests
from django.conf import settings

from analytics.fhir import fhir_transaction_build, patient_record_load, patient_resources_build

logger = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
_RETRY_STATUSES = {408, 429, 500, 502, 503, 504}


class FHIRPushError(RuntimeError):
    """The FHIR server did not take the Bundle (the message says what it answered)."""


@dataclass(frozen=True)
class FHIRPushResult:
    patient_pk: int
    resources: int
    status_code: int
    attempts: int


def _outcome_text(response: requests.Response) -> str:
    """The diagnostics of an OperationOutcome answer, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300].strip() or "(empty body)"
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        issues = body.get("issue") or []
        texts = [
            str(i.get("diagnostics") or (i.get("details") or {}).get("text") or i.get("code"))
            for i in issues
            if isinstance(i, dict)
        ]
        return "; ".join(texts)[:500] or "OperationOutcome without diagnostics"
    return str(body)[:300]


def _failed_entries(response: requests.Response) -> list[str]:
    """Entries of a transaction-response whose own status is not 2xx."""
    try:
        body = response.json()
    except ValueError:
        return []
    failed = []
    for index, entry in enumerate(body.get("entry") or []) if isinstance(body, dict) else []:
        entry_status = str((entry.get("response") or {}).get("status", ""))
        if entry_status and not entry_status.lstrip().startswith("2"):
            failed.append(f"entry[{index}] {entry_status}")
    return failed


def fhir_bundle_post(
    *,
    bundle: dict,
    server_url: str,
    token: str = "",
    attempts: int = 3,
    timeout_s: float = 30.0,
    retry_wait_s: float = 1.0,
    session: requests.Session | None = None,
) -> tuple[requests.Response, int]:
    """POST ``bundle`` to ``server_url`` with retries; the answer and the attempts used."""
    if not server_url:
        raise FHIRPushError(
            "no FHIR server is configured: set RADTRACK_FHIR_SERVER_URL to its base URL"
        )
    if attempts < 1:
        raise FHIRPushError(f"RADTRACK_FHIR_PUSH_ATTEMPTS must be at least 1, not {attempts}")
    headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    http = session or requests.Session()
    wait = retry_wait_s
    last_problem = ""
    for attempt in range(1, attempts + 1):
        try:
            response = http.post(server_url, json=bundle, headers=headers, timeout=timeout_s)
        except (requests.ConnectionError, requests.Timeout) as exc:
            last_problem = f"{type(exc).__name__} reaching {server_url}"
        else:
            if response.status_code not in _RETRY_STATUSES:
                return response, attempt
            last_problem = f"HTTP {response.status_code}: {_outcome_text(response)}"
        logger.warning("FHIR push attempt %d of %d failed: %s", attempt, attempts, last_problem)
        if attempt < attempts:
            time.sleep(wait)
            wait *= 2
    raise FHIRPushError(
        f"the FHIR server at {server_url} did not take the Bundle after {attempts} "
        f"attempts; last: {last_problem}"
    )


def fhir_patient_push(
    *,
    pk: int,
    server_url: str | None = None,
    token: str | None = None,
    attempts: int | None = None,
    timeout_s: float | None = None,
    retry_wait_s: float = 1.0,
    session: requests.Session | None = None,
) -> FHIRPushResult:
    """Push every FHIR resource of the patient with primary key ``pk`` as a transaction.

    Arguments left out come from settings. `Patient.DoesNotExist` if there is no such
    patient; `FHIRPushError` if the server does not take it.
    """
    server_url = settings.RADTRACK_FHIR_SERVER_URL if server_url is None else server_url
    resources = patient_resources_build(record=patient_record_load(pk=pk)).all()
    bundle = fhir_transaction_build(resources=resources)
    response, used = fhir_bundle_post(
        bundle=bundle,
        server_url=server_url,
        token=settings.RADTRACK_FHIR_SERVER_TOKEN if token is None else token,
        attempts=settings.RADTRACK_FHIR_PUSH_ATTEMPTS if attempts is None else attempts,
        timeout_s=settings.RADTRACK_FHIR_PUSH_TIMEOUT_S if timeout_s is None else timeout_s,
        retry_wait_s=retry_wait_s,
        session=session,
    )
    if not 200 <= response.status_code < 300:
        raise FHIRPushError(
            f"the FHIR server at {server_url} refused the Bundle of patient {pk}: "
            f"HTTP {response.status_code}: {_outcome_text(response)}"
        )
    failed = _failed_entries(response)
    if failed:
        raise FHIRPushError(
            f"the FHIR server at {server_url} failed {len(failed)} of {len(resources)} "
            f"entries of patient {pk}'s Bundle: {', '.join(failed[:10])}"
        )
    logger.info("pushed %d FHIR resources of patient %d", len(resources), pk)
    return FHIRPushResult(
        patient_pk=pk, resources=len(resources), status_code=response.status_code, attempts=used
    )
