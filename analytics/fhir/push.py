"""Pushing a patient's FHIR R4 resources to the EHR's FHIR server as one transaction Bundle.

The target is ``settings.RADTRACK_FHIR_SERVER_URL`` (the server's base, to which the
Bundle is POSTed), with an optional bearer token. Every resource is PUT at its own
stable id, so pushing again updates rather than duplicates. What was pushed is kept per
patient and server (`imaging.models.FhirPushRecord`): on the next push, a resource
RadTrack no longer builds (a lesion merged away, a measurement re-tracked onto another
lesion) is PUT again marked ``entered-in-error`` (a BodyStructure: ``active: false``)
in the same transaction, and a result the EHR holds as final (``final``, ``amended``,
``corrected``) whose content changed goes as ``amended``, so the EHR never shows a
superseded value as current. A result the EHR holds as final is never pushed back as
``preliminary`` (FHIR R4 DiagnosticReportStatus and ObservationStatus: ``amended`` is
"subsequent to being final, the report has been modified"; nothing goes from final back
to preliminary): when what RadTrack says now is not final (a review went stale, a link
became provisional), it goes as ``amended`` with its current content and a word that it
awaits a radiologist's review (`AWAITING_REVIEW`, in the conclusion of a
DiagnosticReport, which has no note in R4, and as a note of an Observation or
RiskAssessment). Whether a report is ``amended`` is decided here, from what was pushed,
never from the assessment's revision history: the first report the EHR gets is
``final`` or ``preliminary``.

Connection failures, timeouts, 408, 429 and 5xx answers are retried
(``RADTRACK_FHIR_PUSH_ATTEMPTS`` attempts in all, waiting ``retry_wait_s`` then
doubling); any other answer, or a transaction-response with an entry that failed, stops
with a `FHIRPushError`. Servers often echo resource content in their diagnostics, so
log lines and the error's message carry only HTTP statuses, OperationOutcome issue
codes, the patient's primary key and counts; the server's own words are kept apart in
`FHIRPushError.detail` for the operator's terminal and are never logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field

import requests
from django.conf import settings

from analytics.fhir.build import patient_resources_build
from analytics.fhir.bundles import fhir_transaction_build
from analytics.fhir.record import patient_record_load
from analytics.fhir.validation import fhir_resource_validate
from imaging.models import FhirPushRecord

logger = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
_RETRY_STATUSES = {408, 429, 500, 502, 503, 504}


class FHIRPushError(RuntimeError):
    """The FHIR server did not take the Bundle.

    ``str(exc)`` names the HTTP status and OperationOutcome issue codes only, so it may be
    logged; ``detail`` is the server's own text (which may quote patient data): show it
    to the operator, never log it.
    """

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


@dataclass(frozen=True)
class FHIRPushResult:
    patient_pk: int
    resources: int
    status_code: int
    attempts: int
    superseded: int = 0
    amended: int = 0


def _outcome_codes(response: requests.Response) -> str:
    """The issue codes of an OperationOutcome answer (``invalid, processing``), or ''.

    Codes come from a closed value set, so they cannot carry patient data; anything else
    in the answer can.
    """
    try:
        body = response.json()
    except ValueError:
        return ""
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return ""
    codes = [
        str(issue.get("code"))
        for issue in body.get("issue") or []
        if isinstance(issue, dict)
        and isinstance(issue.get("code"), str)
        and issue["code"].replace("-", "").isalpha()
    ]
    return ", ".join(codes[:10])


def _status_text(response: requests.Response) -> str:
    """``HTTP 422 (OperationOutcome issue codes: invalid)``: safe to log."""
    codes = _outcome_codes(response)
    return f"HTTP {response.status_code}" + (
        f" (OperationOutcome issue codes: {codes})" if codes else ""
    )


def _outcome_detail(response: requests.Response) -> str:
    """The diagnostics of an OperationOutcome answer, else the start of the body.

    For the operator only: never logged.
    """
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
    last_problem = last_detail = ""
    for attempt in range(1, attempts + 1):
        try:
            response = http.post(server_url, json=bundle, headers=headers, timeout=timeout_s)
        except (requests.ConnectionError, requests.Timeout) as exc:
            last_problem = f"{type(exc).__name__} reaching {server_url}"
            last_detail = ""
        else:
            if response.status_code not in _RETRY_STATUSES:
                return response, attempt
            last_problem = _status_text(response)
            last_detail = _outcome_detail(response)
        logger.warning("FHIR push attempt %d of %d failed: %s", attempt, attempts, last_problem)
        if attempt < attempts:
            time.sleep(wait)
            wait *= 2
    raise FHIRPushError(
        f"the FHIR server at {server_url} did not take the Bundle after {attempts} "
        f"attempts; last: {last_problem}",
        detail=last_detail,
    )


#: Elements left out of a resource's content hash: the status RadTrack sets here, when
#: it was issued (re-tracking rebuilds rows, so their timestamps change with no change
#: of value), and the device (model) reference, which names how a value was made: a
#: new model comes with new values, and adding the reference changed no value.
_UNHASHED = frozenset({"status", "meta", "text", "issued", "device"})
#: Statuses after which a changed result must say it was amended (FHIR R4 ObservationStatus
#: and DiagnosticReportStatus).
_SIGNED_STATUSES = frozenset({"final", "amended", "corrected"})
#: Statuses RadTrack builds that an ``amended`` replaces once the EHR holds a final one.
_AMENDABLE_STATUSES = frozenset({"final", "preliminary", "registered", "partial"})
#: What an amended result that is not final says (its content is RadTrack's current one).
AWAITING_REVIEW = (
    "Not final: RadTrack changed this result after it was signed off, and the change "
    "awaits a radiologist's review; the earlier final result no longer stands."
)


def _content_hash(resource: dict) -> str:
    content = {k: v for k, v in resource.items() if k not in _UNHASHED}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _amended(resource: dict) -> dict:
    """``resource`` as an amendment of the final one the EHR holds; when it is not final
    itself, saying that it awaits review (module docstring)."""
    amended = {**resource, "status": "amended"}
    if resource.get("status") == "final":
        return amended
    if amended["resourceType"] == "DiagnosticReport":
        conclusion = amended.get("conclusion", "")
        amended["conclusion"] = f"{AWAITING_REVIEW} {conclusion}".strip()
    else:
        amended["note"] = [*amended.get("note", []), {"text": AWAITING_REVIEW}]
    return fhir_resource_validate(amended)


def _superseded(resource: dict) -> dict:
    """``resource`` as the EHR should keep it once RadTrack no longer stands by it."""
    marked = dict(resource)
    if marked["resourceType"] == "BodyStructure":
        marked["active"] = False
    else:
        marked["status"] = "entered-in-error"
    return fhir_resource_validate(marked)


@dataclass
class FHIRPushPlan:
    """The resources to PUT, and what to remember of them once the server took them."""

    resources: list[dict] = field(default_factory=list)
    state: dict[str, dict] = field(default_factory=dict)
    superseded: int = 0
    amended: int = 0


def fhir_push_plan(*, resources: list[dict], previous: dict[str, dict]) -> FHIRPushPlan:
    """Compare ``resources`` (built now) with ``previous`` (a `FhirPushRecord`'s state).

    A result pushed as final (or amended, corrected) goes as ``amended`` when its content
    changed since, and stays so while unchanged; one that is not final now goes as
    ``amended`` too, saying it awaits review, never back to ``preliminary`` (module
    docstring). A resource pushed before and not built now is sent again marked
    ``entered-in-error`` (``active: false`` for a BodyStructure) and forgotten.
    """
    plan = FHIRPushPlan()
    for resource in resources:
        ref = f"{resource['resourceType']}/{resource['id']}"
        digest = _content_hash(resource)
        before = previous.get(ref)
        if before and resource.get("status") in _AMENDABLE_STATUSES:
            was = before.get("status")
            changed = before.get("hash") != digest
            if (
                was in _SIGNED_STATUSES and (changed or resource.get("status") != "final")
            ) or was == "amended":
                resource = _amended(resource)
                plan.amended += 1
        plan.resources.append(resource)
        entry: dict = {"hash": digest, "status": resource.get("status", "")}
        if resource["resourceType"] != "Patient":
            # Kept to mark it superseded later; the Patient is never superseded, and its
            # name and birth date need not be stored twice.
            entry["resource"] = resource
        plan.state[ref] = entry
    for ref, before in previous.items():
        if ref in plan.state or "resource" not in before:
            continue
        plan.resources.append(_superseded(before["resource"]))
        plan.superseded += 1
    return plan


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

    Resources pushed to this server before and no longer built go in the same Bundle
    marked entered-in-error (`fhir_push_plan`); what was pushed is recorded once the
    server has taken it. Arguments left out come from settings. `Patient.DoesNotExist`
    if there is no such patient; `FHIRPushError` if the server does not take it.
    """
    server_url = settings.RADTRACK_FHIR_SERVER_URL if server_url is None else server_url
    resources = patient_resources_build(record=patient_record_load(pk=pk)).all()
    record = FhirPushRecord.objects.filter(patient_id=pk, server_url=server_url).first()
    plan = fhir_push_plan(resources=resources, previous=record.resources if record else {})
    bundle = fhir_transaction_build(resources=plan.resources)
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
            f"{_status_text(response)}",
            detail=_outcome_detail(response),
        )
    failed = _failed_entries(response)
    if failed:
        raise FHIRPushError(
            f"the FHIR server at {server_url} failed {len(failed)} of {len(plan.resources)} "
            f"entries of patient {pk}'s Bundle: {', '.join(failed[:10])}"
        )
    FhirPushRecord.objects.update_or_create(
        patient_id=pk, server_url=server_url, defaults={"resources": plan.state}
    )
    logger.info(
        "pushed %d FHIR resources of patient %d (%d amended, %d marked entered-in-error)",
        len(plan.resources),
        pk,
        plan.amended,
        plan.superseded,
    )
    return FHIRPushResult(
        patient_pk=pk,
        resources=len(plan.resources),
        status_code=response.status_code,
        attempts=used,
        superseded=plan.superseded,
        amended=plan.amended,
    )
