"""A study as a CT file stores it: whole HU in int16 within the 12-bit range, same grid."""

from __future__ import annotations

import numpy as np

from imaging.core.geometry.volume import Volume, volume_as_stored


def test_a_volume_as_stored_is_rounded_clipped_and_keeps_its_grid_without_padding():
    hu = np.array([[[-2000.0, -1000.4, 12.5, 13.5, 4000.0, 39.6]]], dtype=np.float32)
    volume = Volume(array=hu, spacing_mm=(0.7, 0.8, 2.5), origin_mm=(1.0, 2.0, 3.0),
                    direction=np.eye(3), padding=np.zeros(hu.shape, dtype=bool))  # fmt: skip
    stored, as_stored = volume_as_stored(volume)
    assert stored.dtype == np.int16
    assert stored.ravel().tolist() == [-1024, -1000, 12, 14, 3071, 40]  # halves to even
    assert as_stored.array.dtype == np.float32
    assert np.array_equal(as_stored.array, stored.astype(np.float32))
    assert (as_stored.spacing_mm, as_stored.origin_mm) == (volume.spacing_mm, volume.origin_mm)
    assert np.array_equal(as_stored.direction, volume.direction)
    assert as_stored.padding is None
