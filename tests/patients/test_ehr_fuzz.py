"""Fuzzing the EHR readers: whatever the bytes, an import stores records or refuses them with
a reason (`EHRImportError` for the file, skipped/rejected for a record), never a traceback."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patients.ehr.importer import ehr_import
from patients.ehr.records import EHRImportError
from tests.logs import no_traceback_logged

pytestmark = pytest.mark.django_db

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.sampled_from(["Patient/p1", "urn:uuid:p1", "#c1", "2039-6", "final", "<", "ng/mL"]),
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(
                ["resourceType", "id", "entry", "resource", "fullUrl", "request", "method",
                 "subject", "reference", "code", "coding", "system", "valueQuantity", "value",
                 "comparator", "unit", "status", "effectiveDateTime", "effectiveInstant",
                 "identifier", "contained", "component", "result", "hasMember", "type"]
            ),
            inner,
            max_size=6,
        ),
    ),
    max_leaves=30,
)  # fmt: skip
_RESOURCE_TYPES = st.sampled_from(["Bundle", "Patient", "Observation", "DiagnosticReport", "X"])


def _import(data: bytes, **kwargs) -> None:
    try:
        with no_traceback_logged():
            result = ehr_import(path_or_bytes=data, **kwargs)
    except EHRImportError as exc:
        assert str(exc)
        return
    for problem in result.skipped + result.rejected:
        assert problem.where and problem.reason


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(entries=st.lists(st.tuples(_RESOURCE_TYPES, _JSON), max_size=5))
def test_bundles_of_arbitrary_entries(entries):
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": (body if isinstance(body, dict) else {"x": body}) | {"resourceType": kind}}
            for kind, body in entries
        ],
    }
    _import(json.dumps(bundle).encode())


@settings(max_examples=150, deadline=None)
@given(lines=st.lists(_JSON, min_size=1, max_size=5))
def test_ndjson_of_arbitrary_lines(lines):
    _import("\n".join(json.dumps(line) for line in lines).encode(), ndjson=True)


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes(data):
    _import(data)


@settings(max_examples=100, deadline=None)
@given(cells=st.lists(st.lists(st.text(max_size=12), min_size=5, max_size=6), max_size=5))
def test_lab_csv_with_arbitrary_cells(cells):
    lines = ["patient_id,loinc_code,value,unit,observed_at"]
    lines += [",".join(c.replace(",", " ").replace("\n", " ") for c in row) for row in cells]
    _import("\n".join(lines).encode())
