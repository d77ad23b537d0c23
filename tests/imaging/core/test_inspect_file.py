"""Inspecting a DICOM file on disk: native Pixel Data is measured in place, never read.

Files are written by the project's own writer (`imaging.core.dicom.write`), with slices
large enough (256 x 256 x 16 bits = 128 KiB) that their pixels are deferred.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from imaging.core.dicom.inspect import (
    _DEFER_BYTES,
    _PIXEL_DATA,
    _native_length,
    instance_inspect_file,
)
from imaging.core.dicom.part10 import DicomRejected
from imaging.core.dicom.write import CTSeriesAttributes, ct_series_write, synthetic_uid
from imaging.core.geometry.volume import Volume

_SLICE_BYTES = 256 * 256 * 2


@pytest.fixture
def slice_file(tmp_path: Path) -> Path:
    array = np.full((1, 256, 256), 40, dtype=np.int16)
    volume = Volume(array, spacing_mm=(0.8, 0.8, 2.0), origin_mm=(-100.0, -100.0, 0.0))
    attrs = CTSeriesAttributes(
        patient_id="INSPECT-1",
        study_instance_uid=synthetic_uid(),
        series_instance_uid=synthetic_uid(),
        frame_of_reference_uid=synthetic_uid(),
    )
    (path,) = ct_series_write(volume, tmp_path / "series", attrs)
    return path


def test_native_length_leaves_deferred_pixels_in_the_file(slice_file: Path) -> None:
    ds = pydicom.dcmread(slice_file, defer_size=_DEFER_BYTES)
    assert _native_length(ds) == _SLICE_BYTES
    # Still deferred: the length came from the header and the file size, not a read.
    assert ds.get_item(_PIXEL_DATA, keep_deferred=True).value is None


def test_native_length_of_a_cut_file_is_what_the_file_still_holds(slice_file: Path) -> None:
    slice_file.write_bytes(slice_file.read_bytes()[:-1000])
    ds = pydicom.dcmread(slice_file, defer_size=_DEFER_BYTES)
    assert _native_length(ds) == _SLICE_BYTES - 1000
    assert ds.get_item(_PIXEL_DATA, keep_deferred=True).value is None


def test_a_cut_file_on_disk_is_refused_with_both_lengths(slice_file: Path) -> None:
    instance_inspect_file(slice_file)  # whole: accepted
    slice_file.write_bytes(slice_file.read_bytes()[:-1000])
    with pytest.raises(
        DicomRejected, match=rf"holds {_SLICE_BYTES - 1000} bytes.*needs {_SLICE_BYTES}"
    ):
        instance_inspect_file(slice_file)
