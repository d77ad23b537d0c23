"""What every layer records about how a result was made: the library versions that made
it, and its values as JSON can hold them.

Pure Python and NumPy, no Django: the Django-free cores use it too (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import datetime as dt
import math
import platform
from collections.abc import Mapping
from importlib import metadata
from pathlib import PurePath
from typing import Any

import numpy as np


def library_versions(*distributions: str) -> dict[str, str]:
    """The installed version of each of ``distributions`` (PyPI names, e.g.
    ``"SimpleITK"``; ``"python"`` for the interpreter), ``"not installed"`` where one is
    missing."""
    versions: dict[str, str] = {}
    for name in distributions:
        if name == "python":
            versions[name] = platform.python_version()
            continue
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def json_safe(value: Any) -> Any:
    """``value`` as JSON, and PostgreSQL's jsonb, can hold it.

    Mappings (keys as text), lists, tuples and sets become objects and arrays; NumPy
    scalars and arrays become numbers and lists; dates and times become ISO 8601 text,
    paths their text; NaN and the infinities become null (jsonb has neither, and a
    number that could not be computed must not read as one). Anything else becomes its
    text.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    return str(value)
