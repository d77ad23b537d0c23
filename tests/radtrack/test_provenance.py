"""Provenance helpers: versions on every record, and values as JSON (and jsonb) hold them."""

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np

from radtrack.provenance import json_safe, library_versions


def test_nan_and_infinities_become_null_wherever_they_are():
    value = {
        "a": float("nan"),
        "b": [1.0, float("inf"), -math.inf],
        "c": (np.float32("nan"), np.float64(2.5)),
        "d": {"e": np.array([np.nan, 1.0])},
    }
    assert json_safe(value) == {
        "a": None,
        "b": [1.0, None, None],
        "c": [None, 2.5],
        "d": {"e": [None, 1.0]},
    }
    # allow_nan=False is what PostgreSQL's jsonb enforces
    json.dumps(json_safe(value), allow_nan=False)


def test_numpy_dates_paths_and_keys_become_json_types():
    value = {
        1: np.int64(3),
        "flag": np.bool_(True),
        "when": dt.date(2026, 1, 2),
        "at": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        "path": Path("volumes/x.nii.gz"),
        "set": {7},
    }
    out = json_safe(value)
    assert out == {
        "1": 3,
        "flag": True,
        "when": "2026-01-02",
        "at": "2026-01-02T03:04:05+00:00",
        "path": "volumes/x.nii.gz",
        "set": [7],
    }
    assert type(out["1"]) is int and type(out["flag"]) is bool


def test_library_versions_name_each_library_asked_for():
    versions = library_versions("python", "numpy", "no-such-distribution-radtrack")
    assert versions["python"].count(".") == 2
    assert versions["numpy"] == np.__version__
    assert versions["no-such-distribution-radtrack"] == "not installed"
