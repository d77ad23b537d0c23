"""Which resource of a Bundle (or NDJSON file) a FHIR reference names, by the R4 rules.

FHIR R4 Bundle, "Resolving references in Bundles" (bundle.html#references):

- an absolute reference names the entry whose ``fullUrl`` is that URL;
- a relative ``Type/id`` inside an entry whose ``fullUrl`` is a RESTful URL
  (``[base]/Type/id``) is read against that entry's base: ``Patient/23`` inside
  ``http://example.org/fhir-2/Observation/14`` is ``http://example.org/fhir-2/Patient/23``,
  never the ``Patient/23`` of another server in the same Bundle;
- a version-specific reference (``Patient/45/_history/2``) loses its version for the
  ``fullUrl`` match and then picks the entry whose ``meta.versionId`` is that version;
- ``#id`` names a resource contained in the resource that holds the reference.

Where the referring entry has no RESTful ``fullUrl`` (a ``urn:uuid:`` one, none at all, or
an NDJSON line, which carries only the sending server's relative references), a relative
``Type/id`` names the resource of that type and id that is not itself on a RESTful
``fullUrl``. A reference that names nothing here is unresolved (None): it points
outside the file.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FhirEntry", "ReferenceResolver", "restful_base"]

_RESTFUL = re.compile(
    r"^(?P<base>https?://.+/)?(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})"
    r"(?:/_history/(?P<version>[A-Za-z0-9\-.]{1,64}))?$"
)
_HISTORY = re.compile(r"^(?P<url>.+)/_history/(?P<version>[A-Za-z0-9\-.]{1,64})$")
_ABSOLUTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")


def restful_base(full_url: str | None) -> str | None:
    """The ``[base]/`` of a RESTful absolute ``fullUrl`` (``[base]/Type/id``), else None."""
    if not full_url:
        return None
    match = _RESTFUL.match(full_url)
    if match is None or not match.group("base"):
        return None
    return match.group("base")


@dataclass(eq=False)
class FhirEntry:
    """One resource read from a Bundle entry, a contained resource, or an NDJSON line.

    ``where`` names it in the report; ``resource`` is the JSON as received; ``model`` the
    validated R4B model (None until validated); ``container`` the resource that contains
    it; ``contained`` the resources it contains, by their local id.
    """

    where: str
    full_url: str | None
    resource: dict
    model: Any = None
    container: FhirEntry | None = None
    contained: dict[str, FhirEntry] = field(default_factory=dict)

    @property
    def resource_type(self) -> str:
        return str(self.resource.get("resourceType", ""))

    @property
    def resource_id(self) -> str:
        return str(self.resource.get("id") or "")

    @property
    def version_id(self) -> str:
        meta = self.resource.get("meta")
        return str(meta.get("versionId") or "") if isinstance(meta, dict) else ""

    @property
    def last_updated(self) -> str:
        meta = self.resource.get("meta")
        return str(meta.get("lastUpdated") or "") if isinstance(meta, dict) else ""


class ReferenceResolver:
    """Resolves references between the entries of one file (module docstring)."""

    def __init__(self, entries: list[FhirEntry]) -> None:
        self._by_url: dict[str, list[FhirEntry]] = defaultdict(list)
        self._local: dict[tuple[str, str], list[FhirEntry]] = defaultdict(list)
        for entry in entries:
            if entry.container is not None:
                continue
            if entry.full_url:
                url = entry.full_url
                match = _HISTORY.match(url)
                self._by_url[match.group("url") if match else url].append(entry)
            if restful_base(entry.full_url) is None and entry.resource_id:
                self._local[(entry.resource_type, entry.resource_id)].append(entry)

    def resolve(self, reference: str | None, referrer: FhirEntry) -> FhirEntry | None:
        """The entry ``reference`` (written in ``referrer``) names, or None."""
        if not reference:
            return None
        reference = reference.strip()
        if reference.startswith("#"):
            holder = referrer.container or referrer
            return holder.contained.get(reference[1:])
        version = ""
        match = _HISTORY.match(reference)
        if match:
            reference, version = match.group("url"), match.group("version")
        candidates = self._candidates(reference, referrer)
        if version:
            candidates = [c for c in candidates if c.version_id == version]
        if not candidates:
            return None
        # Several versions of one resource and no version asked for: the latest.
        return max(candidates, key=lambda c: (c.last_updated, c.version_id))

    def _candidates(self, reference: str, referrer: FhirEntry) -> list[FhirEntry]:
        if _ABSOLUTE.match(reference):
            return self._by_url.get(reference, [])
        holder = referrer.container or referrer
        base = restful_base(holder.full_url)
        if base is not None:
            return self._by_url.get(base + reference, [])
        match = _RESTFUL.match(reference)
        if match is None:
            return []
        return self._local.get((match.group("type"), match.group("id")), [])
