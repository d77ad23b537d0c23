"""Reading untrusted FHIR JSON: one document or NDJSON line, bounded in nesting depth.

Python's JSON parser recurses once per nesting level, so a body of a hundred thousand
``[`` ends in a RecursionError rather than an answer; and no FHIR resource nests
anywhere near `MAX_JSON_DEPTH` levels. Both are refused with the place and the reason.
"""

from __future__ import annotations

import json
from typing import Any

from patients.ehr.records import EHRImportError

__all__ = ["MAX_JSON_DEPTH", "JSONTooDeep", "json_depth", "json_load"]

#: Deepest nesting of objects and arrays accepted. A Bundle nested in a Bundle four
#: times over, holding a resource with nested extensions, stays under 50.
MAX_JSON_DEPTH = 100


class JSONTooDeep(ValueError):
    """The JSON nests objects or arrays deeper than `MAX_JSON_DEPTH`."""


def json_depth(value: Any, *, limit: int = MAX_JSON_DEPTH) -> int:
    """The nesting depth of ``value`` (a scalar is 0), without recursion.

    Stops and raises `JSONTooDeep` as soon as ``limit`` is passed.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        if depth > limit:
            raise JSONTooDeep(f"nested more than {limit} levels deep")
        deepest = max(deepest, depth)
        stack.extend((child, depth) for child in children if isinstance(child, dict | list))
    return deepest


def json_load(text: str, *, where: str) -> Any:
    """``text`` parsed as JSON; `EHRImportError` naming ``where`` when it is not JSON or
    nests deeper than `MAX_JSON_DEPTH`."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EHRImportError(
            f"{where} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from exc
    except RecursionError:
        raise EHRImportError(
            f"{where}: JSON nested more than {MAX_JSON_DEPTH} levels deep is refused"
        ) from None
    try:
        json_depth(value)
    except JSONTooDeep as exc:
        raise EHRImportError(f"{where}: JSON {exc} is refused") from None
    return value
