"""FHIR R4 search parameters and paging for the ``/fhir/`` endpoints.

R4 (search.html, "Handling errors"): a server ignores the parameters it does not
support, unless the client asks ``Prefer: handling=strict``, in which case it refuses
them; either way the ``self`` link shows only the parameters applied. The ignored ones
are named in an OperationOutcome entry of the Bundle. ``_count`` sets the page size
(`DEFAULT_COUNT`, at most `MAX_COUNT`) and ``_offset`` the matches skipped; the Bundle
carries ``first``, ``previous``, ``next`` and ``last`` links and the full ``total``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlencode

from rest_framework import status
from rest_framework.exceptions import APIException

__all__ = [
    "DEFAULT_COUNT",
    "FORMAT_PARAMETERS",
    "MAX_COUNT",
    "SearchRequest",
    "UnsupportedParameter",
    "search_page",
    "search_request_parse",
]

DEFAULT_COUNT = 50
MAX_COUNT = 500
#: FHIR's and DRF's format overrides: checked by the views, never refused as unknown.
FORMAT_PARAMETERS = frozenset({"_format", "format"})
_PAGING_PARAMETERS = frozenset({"_count", "_offset"})


class UnsupportedParameter(APIException):
    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "not-supported"


class InvalidParameter(APIException):
    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "invalid"


@dataclass
class SearchRequest:
    """The parameters a search applies (in the order given), those it ignored, the page."""

    applied: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    offset: int = 0
    paged: bool = True

    def value(self, name: str) -> str | None:
        return next((v for k, v in self.applied if k == name), None)


def _number(name: str, text: str, *, low: int, high: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InvalidParameter(f"{name} must be a whole number, not {text[:20]!r}") from None
    if value < low or (high is not None and value > high):
        bound = f"{low}-{high}" if high is not None else f"at least {low}"
        raise InvalidParameter(f"{name} must be {bound}, not {value}")
    return value


def search_request_parse(
    *, params: list[tuple[str, str]], supported: frozenset[str], strict: bool, paged: bool = True
) -> SearchRequest:
    """Split the query into applied and ignored parameters (module docstring).

    ``params`` are the query's (name, value) pairs in order; ``supported`` the names this
    search acts on (``_count`` and ``_offset`` are added when ``paged``). In ``strict``
    handling an unsupported parameter raises `UnsupportedParameter` (400).
    """
    search = SearchRequest(paged=paged)
    allowed = supported | (_PAGING_PARAMETERS if paged else frozenset())
    for name, value in params:
        if name in FORMAT_PARAMETERS:
            search.applied.append((name, value))
        elif name in allowed:
            if name == "_count":
                search.count = _number("_count", value, low=1, high=MAX_COUNT)
            elif name == "_offset":
                search.offset = _number("_offset", value, low=0)
            search.applied.append((name, value))
        elif name not in search.ignored:
            search.ignored.append(name)
    if search.ignored and strict:
        shown = ", ".join(sorted(supported | (_PAGING_PARAMETERS if paged else set()))) or "none"
        raise UnsupportedParameter(
            f"unsupported search parameter(s): {', '.join(p[:40] for p in search.ignored[:5])}"
            f" (supported here: {shown}; Prefer: handling=strict was asked)"
        )
    return search


def _url(path_url: str, params: list[tuple[str, str]]) -> str:
    return f"{path_url}?{urlencode(params)}" if params else path_url


def search_page(
    *, matches: list[dict], search: SearchRequest, path_url: str, total: int | None = None
) -> tuple[list[dict], str, list[dict]]:
    """The page of ``matches`` asked for, its ``self`` URL and the other paging links.

    ``path_url`` is the absolute URL of the endpoint without its query. With ``total``,
    ``matches`` is the page already cut (out of ``total`` matches).
    """
    if not search.paged:
        return matches, _url(path_url, search.applied), []
    if total is None:
        page = matches[search.offset : search.offset + search.count]
        total = len(matches)
    else:
        page = matches
    base = [(k, v) for k, v in search.applied if k not in _PAGING_PARAMETERS]

    def at(offset: int) -> str:
        return _url(path_url, [*base, ("_count", str(search.count)), ("_offset", str(offset))])

    last = max(0, (total - 1) // search.count * search.count)
    links = [{"relation": "first", "url": at(0)}]
    if search.offset > 0:
        links.append({"relation": "previous", "url": at(max(0, search.offset - search.count))})
    if search.offset + search.count < total:
        links.append({"relation": "next", "url": at(search.offset + search.count)})
    links.append({"relation": "last", "url": at(last)})
    return page, _url(path_url, search.applied), links
