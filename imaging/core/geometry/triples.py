"""Fixed-length (x, y, z) tuples from arrays and generators, checked to have three items.

Spacing, origin and centre triples are typed ``tuple[float, float, float]``; building
them with ``tuple(float(v) for v in ...)`` loses the length, so these helpers rebuild
them with the length checked at run time.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import SupportsFloat, SupportsIndex, SupportsInt, TypeAlias

Vec3: TypeAlias = tuple[float, float, float]
IntVec3: TypeAlias = tuple[int, int, int]


def vec3(values: Iterable[SupportsFloat | SupportsIndex]) -> Vec3:
    """Three Python floats from any iterable of exactly three numbers (list, array...)."""
    items = [float(v) for v in values]
    if len(items) != 3:
        raise ValueError(f"expected three values (x, y, z); got {len(items)}")
    return (items[0], items[1], items[2])


def ivec3(values: Iterable[SupportsInt | SupportsIndex]) -> IntVec3:
    """Three Python ints from any iterable of exactly three integers (sizes, flips...); floats truncate."""
    items = [int(v) for v in values]
    if len(items) != 3:
        raise ValueError(f"expected three values (i, j, k); got {len(items)}")
    return (items[0], items[1], items[2])
