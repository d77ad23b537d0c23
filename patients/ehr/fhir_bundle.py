"""Reading FHIR R4 data into records, before matching: a Bundle, or Bulk Data NDJSON.

A Bundle's entries are read in order; a Bundle inside a Bundle (a ``collection`` of
search results, say) is read entry by entry, up to `MAX_NESTED_BUNDLES` deep; the
resources a resource contains (``contained``) are read as resources of their own, their
subject and time those of their container unless they give one. In a ``transaction``
or ``batch``, a DELETE, GET or PATCH entry is skipped with the reason (an import adds
and amends; it never deletes). NDJSON (FHIR Bulk Data, one resource per line) is read
line by line and a line that cannot be read is rejected by its number.

Each resource is validated with ``fhir.resources.R4B``; one that fails is rejected with
where it is, its type and id and the field at fault, and the rest is still read.
References between resources follow the R4 rules (`patients.ehr.fhir_references`).
What each resource type yields is in `patients.ehr.fhir_resources` (medications:
`patients.ehr.fhir_medications`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from patients.ehr.fhir_json import JSONTooDeep, json_depth, json_load
from patients.ehr.fhir_medications import MEDICATION_RESOURCE_TYPES, medication_records
from patients.ehr.fhir_references import FhirEntry, ReferenceResolver
from patients.ehr.fhir_resources import (
    EVENT_SYSTEM,
    Effective,
    ObservationContext,
    condition_record,
    observation_effective,
    observation_records,
    patient_records,
    patient_subject,
)
from patients.ehr.identifiers import V2_IDENTIFIER_TYPE, Identifier, Subject
from patients.ehr.records import EHRImportError, EHRImportResult, EHRRecord, Problem

__all__ = [
    "EVENT_SYSTEM",
    "MAX_NESTED_BUNDLES",
    "MRN_SYSTEM",
    "V2_IDENTIFIER_TYPE",
    "bundle_records",
    "ndjson_files_records",
    "ndjson_records",
]

#: RadTrack's MRN system when ``RADTRACK_MRN_SYSTEM`` is not set (the synthetic cohort's).
MRN_SYSTEM = "https://radtrack.example/fhir/sid/mrn"
#: How many Bundles deep a Bundle inside a Bundle is still read.
MAX_NESTED_BUNDLES = 4
#: Entry requests that carry nothing to import, and why each is skipped.
_REQUESTS_SKIPPED = {
    "DELETE": "a DELETE request: an import adds and amends results, it never deletes them "
    "(delete a wrong result in RadTrack)",
    "GET": "a GET request carries no resource to import",
    "HEAD": "a HEAD request carries no resource to import",
    "PATCH": "a PATCH request: partial updates are not applied (send the whole resource)",
}


def _field_path(loc: Iterable[Any]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(resource)"


def _validation_reason(exc: ValidationError) -> str:
    parts = [f"field {_field_path(e['loc'])}: {e['msg']}" for e in exc.errors()[:3]]
    more = len(exc.errors()) - 3
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _named(where: str, resource: dict) -> str:
    rtype = str(resource.get("resourceType", "")) or "(no resourceType)"
    rid = resource.get("id")
    return f"{where} {rtype}" + (f"/{rid}" if rid else "")


# --------------------------------------------------------------------------------------
# Collecting the resources: bundle entries, nested bundles, NDJSON lines
# --------------------------------------------------------------------------------------
def bundle_records(*, text: str, result: EHRImportResult) -> list[EHRRecord]:
    """The labs, events, demographics and medications of a FHIR R4 Bundle (module doc).

    Entries that cannot be used are added to ``result`` as skipped or rejected, with the
    reason; `EHRImportError` when ``text`` is not a FHIR Bundle at all.
    """
    bundle = json_load(text, where=result.source_name)
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        kind = bundle.get("resourceType") if isinstance(bundle, dict) else type(bundle).__name__
        raise EHRImportError(f"{result.source_name} is not a FHIR Bundle (resourceType {kind!r})")
    problem = _bundle_problem(bundle)
    if problem:
        raise EHRImportError(f"{result.source_name}: {problem}")
    entries: list[FhirEntry] = []
    _bundle_collect(bundle, "", 0, entries, result)
    return _entries_records(entries, result)


def ndjson_records(*, text: str, name: str, result: EHRImportResult) -> list[EHRRecord]:
    """The records of an NDJSON file (FHIR Bulk Data): one resource per line.

    Blank lines are passed over; a line that is not a JSON object is rejected with its
    number. `EHRImportError` when no line at all is a JSON object.
    """
    return ndjson_files_records(files=[(name, text)], result=result)


def ndjson_files_records(
    *, files: list[tuple[str, str]], result: EHRImportResult
) -> list[EHRRecord]:
    """The records of NDJSON files read as one: a Bulk Data export writes one file per
    resource type, so an Observation's ``Patient/123`` names a line of Patient.ndjson."""
    entries: list[FhirEntry] = []
    for name, text in files:
        if not _ndjson_collect(text, name, entries, result):
            raise EHRImportError(f"{name}: no line is a FHIR resource in JSON (not NDJSON)")
    return _entries_records(entries, result)


def _ndjson_collect(text: str, name: str, out: list[FhirEntry], result: EHRImportResult) -> int:
    """Each line of ``text`` as a `FhirEntry`; the number of lines that were JSON objects."""
    read = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        result.records += 1
        where = f"{name} line {number}"
        try:
            resource = json_load(line, where=where)
        except EHRImportError as exc:
            reason = str(exc).removeprefix(where).lstrip(": ").removeprefix("is ")
            result.rejected.append(Problem(where, reason))
            continue
        if not isinstance(resource, dict):
            result.rejected.append(Problem(where, "the line is not a JSON object"))
            continue
        read += 1
        if resource.get("resourceType") == "Bundle":
            _nested_bundle(resource, _named(where, resource), 1, out, result)
        else:
            out.append(FhirEntry(_named(where, resource), None, resource))
    return read


def _bundle_problem(bundle: dict) -> str:
    """Why ``bundle`` (without its entries) is not a valid Bundle, or ""."""
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        return "Bundle.entry is not a list"
    try:
        get_fhir_model_class("Bundle").model_validate({**bundle, "entry": []})
    except ValidationError as exc:
        return f"Bundle {_validation_reason(exc)}"
    return ""


def _bundle_collect(
    bundle: dict, prefix: str, depth: int, out: list[FhirEntry], result: EHRImportResult
) -> None:
    """Every entry of ``bundle`` (and of the bundles it holds) as a `FhirEntry`."""
    entries = bundle.get("entry") or []
    result.records += len(entries)
    for index, entry in enumerate(entries):
        where = f"{prefix}entry[{index}]"
        if not isinstance(entry, dict):
            result.rejected.append(Problem(where, "entry is not an object"))
            continue
        request = entry.get("request") if isinstance(entry.get("request"), dict) else {}
        method = str(request.get("method") or "").upper()
        if method in _REQUESTS_SKIPPED:
            url = str(request.get("url") or "")[:80]
            result.skipped.append(
                Problem(f"{where} {method} {url}".rstrip(), _REQUESTS_SKIPPED[method])
            )
            continue
        resource = entry.get("resource")
        if not isinstance(resource, dict):
            result.rejected.append(Problem(where, "entry has no resource object"))
            continue
        named = _named(where, resource)
        if resource.get("resourceType") == "Bundle":
            _nested_bundle(resource, named, depth + 1, out, result)
            continue
        full_url = entry.get("fullUrl")
        out.append(FhirEntry(named, full_url if isinstance(full_url, str) else None, resource))


def _nested_bundle(
    bundle: dict, where: str, depth: int, out: list[FhirEntry], result: EHRImportResult
) -> None:
    """Read a Bundle found inside a Bundle (or on an NDJSON line), or say why not."""
    if depth > MAX_NESTED_BUNDLES:
        result.rejected.append(
            Problem(where, f"a Bundle nested more than {MAX_NESTED_BUNDLES} deep is not read")
        )
        return
    problem = _bundle_problem(bundle)
    if problem:
        result.rejected.append(Problem(where, problem))
        return
    result.outcome(where, f"read as a Bundle of {len(bundle.get('entry') or [])} entries")
    _bundle_collect(bundle, f"{where} ", depth, out, result)


# --------------------------------------------------------------------------------------
# Validating, resolving and reading
# --------------------------------------------------------------------------------------
def _entries_validate(entries: list[FhirEntry], result: EHRImportResult) -> list[FhirEntry]:
    """Each resource validated against its R4B model (and its contained ones listed)."""
    valid: list[FhirEntry] = []
    for entry in entries:
        rtype = entry.resource_type
        try:
            model = get_fhir_model_class(rtype)
        except (ValueError, KeyError):
            result.rejected.append(Problem(entry.where, f"unknown FHIR R4 resourceType {rtype!r}"))
            continue
        try:
            json_depth(entry.resource)
            entry.model = model.model_validate(entry.resource)
        except ValidationError as exc:
            result.rejected.append(Problem(entry.where, _validation_reason(exc)))
            continue
        except (JSONTooDeep, RecursionError):
            result.rejected.append(Problem(entry.where, "the resource is nested too deeply"))
            continue
        valid.append(entry)
        for index, (raw, obj) in enumerate(
            zip(
                entry.resource.get("contained") or [],
                getattr(entry.model, "contained", None) or [],
                strict=False,
            )
        ):
            child = FhirEntry(
                _named(f"{entry.where} contained[{index}]", raw), None, raw, obj, container=entry
            )
            if child.resource_id:
                entry.contained[child.resource_id] = child
            valid.append(child)
    return valid


def _entries_records(entries: list[FhirEntry], result: EHRImportResult) -> list[EHRRecord]:
    """The records of validated entries: Patients first, so references resolve whatever
    the order; then Observations, Conditions and medications; every other type skipped."""
    entries = _entries_validate(entries, result)
    resolver = ReferenceResolver(entries)
    subjects: dict[int, Subject] = {}
    records: list[EHRRecord] = []
    for entry in entries:
        if entry.resource_type != "Patient":
            continue
        subject = patient_subject(entry.model)
        if not subject.identifiers:
            result.rejected.append(Problem(entry.where, "field identifier: the Patient has none"))
            continue
        subjects[id(entry)] = subject
        records += patient_records(entry.model, entry.where, subject, entry.resource, result)
    effective, parents = _inherited_context(entries, resolver)
    for entry in entries:
        rtype = entry.resource_type
        if rtype == "Patient":
            continue
        if rtype not in {"Observation", "Condition", *MEDICATION_RESOURCE_TYPES}:
            _skip_other(entry, result)
            continue
        subject = _subject_of(entry, resolver, subjects, parents, result)
        if subject is None:
            continue
        if rtype in MEDICATION_RESOURCE_TYPES:
            records += medication_records(entry, subject, resolver, result)
        elif rtype == "Observation":
            records += observation_records(
                entry.model,
                ObservationContext(
                    where=entry.where,
                    subject=subject,
                    effective=effective.get(id(entry)),
                    payload=entry.resource,
                    full_url=entry.full_url,
                    result=result,
                    last_updated=_last_updated(entry),
                ),
            )
        else:
            record = condition_record(entry.model, entry.where, subject, entry.resource, result)
            if record is not None:
                records.append(record)
    return records


def _last_updated(entry: FhirEntry) -> dt.datetime | None:
    """When the source last updated ``entry`` (its validated ``meta.lastUpdated``, an
    instant, in UTC); a contained resource without one takes its container's."""
    holder: FhirEntry | None = entry
    while holder is not None:
        instant = getattr(getattr(holder.model, "meta", None), "lastUpdated", None)
        if isinstance(instant, dt.datetime) and instant.tzinfo is not None:
            return instant.astimezone(dt.UTC)
        holder = holder.container
    return None


def _skip_other(entry: FhirEntry, result: EHRImportResult) -> None:
    rtype = entry.resource_type
    if rtype == "DiagnosticReport":
        count = len(entry.model.result or [])
        reason = f"a report: its {count} results are read as Observations (entries or contained)"
    elif rtype == "Medication":
        reason = (
            "a Medication: read through the MedicationStatement, MedicationAdministration "
            "or MedicationRequest that names it"
        )
    else:
        reason = f"{rtype} resources are not imported"
    result.skipped.append(Problem(entry.where, reason))


def _inherited_context(
    entries: list[FhirEntry], resolver: ReferenceResolver
) -> tuple[dict[int, Effective], dict[int, FhirEntry]]:
    """Each Observation's time, its own or else that of the DiagnosticReport (``result``)
    or panel (``hasMember``) that lists it, followed down nested panels; and the report
    or panel that lists each Observation (whose subject one without its own takes)."""
    times: dict[int, Effective] = {}
    parents: dict[int, FhirEntry] = {}
    queue: list[tuple[FhirEntry, Effective | None]] = []
    for entry in entries:
        if entry.resource_type not in {"Observation", "DiagnosticReport"}:
            continue
        own = observation_effective(entry.model)
        if own is not None:
            times[id(entry)] = Effective(own)
        queue.append((entry, Effective(own, entry.where) if own is not None else None))
    while queue:
        parent, inherited = queue.pop(0)
        children = (
            parent.model.result
            if parent.resource_type == "DiagnosticReport"
            else parent.model.hasMember
        )
        for reference in children or []:
            child = resolver.resolve(reference.reference, parent)
            if child is None or child.resource_type != "Observation":
                continue
            parents.setdefault(id(child), parent)
            if inherited is not None and id(child) not in times:
                times[id(child)] = inherited
                queue.append((child, inherited))
    return times, parents


def _subject_of(
    entry: FhirEntry,
    resolver: ReferenceResolver,
    subjects: dict[int, Subject],
    parents: dict[int, FhirEntry],
    result: EHRImportResult,
) -> Subject | None:
    """The subject of an Observation or Condition: the Patient its reference resolves to,
    else the identifier the reference carries. Without a subject of its own, a contained
    resource takes its container's, and an Observation that of the report or panel that
    lists it. Rejected (None) when nothing names a patient."""
    subject_ref = entry.model.subject
    holder = entry
    seen = {id(entry)}
    while subject_ref is None:
        holder = holder.container or parents.get(id(holder))
        if holder is None or id(holder) in seen:
            break
        seen.add(id(holder))
        subject_ref = getattr(holder.model, "subject", None)
    if subject_ref is None or holder is None:
        result.rejected.append(
            Problem(entry.where, "field subject: no subject (nor one in a report that lists it)")
        )
        return None
    target = resolver.resolve(subject_ref.reference, holder)
    if target is not None and target.resource_type != "Patient":
        result.rejected.append(
            Problem(entry.where, f"field subject: names a {target.resource_type}, not a Patient")
        )
        return None
    if target is not None:
        subject = subjects.get(id(target))
        if subject is None:
            result.rejected.append(
                Problem(entry.where, f"field subject: its Patient ({target.where}) was not read")
            )
        return subject
    identifier = subject_ref.identifier
    if identifier is not None and identifier.value and identifier.value.strip():
        codes = [c.code for c in (identifier.type.coding or [])] if identifier.type else []
        return Subject(
            (
                Identifier(
                    (identifier.system or "").strip(),
                    identifier.value.strip(),
                    next((c for c in codes if c), ""),
                ),
            )
        )
    result.rejected.append(
        Problem(
            entry.where,
            f"field subject: {subject_ref.reference!r} is not a Patient in this file "
            "(include the Patient, or give subject.identifier with the MRN's system and value)",
        )
    )
    return None
