"""The quick read of a plain image (`imaging.core.dicom.inspect_fast`) never decides
differently from pydicom's path: for every input, `instance_inspect` with the quick
path and with it switched off either accept the same instance (same values, same
warnings, same hashes) or refuse it with the same reason.

Inputs: a CT slice from the project's writer whose identifying, geometry and pixel
module values are replaced by arbitrary bytes of any length (Hypothesis, fixed seed),
elements added, and files with bytes flipped, inserted or cut; plus a table of
well-formed variants the quick path must take, and of files it must leave to pydicom.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from unittest import mock

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imaging.core.dicom import inspect
from imaging.core.dicom.inspect import DicomRejected, instance_inspect, instance_inspect_file
from imaging.core.dicom.inspect_fast import plain_image_read
from imaging.core.dicom.part10 import dataset_offset, preamble_zeroed
from imaging.core.dicom.write import CTSeriesAttributes, ct_series_write, synthetic_uid
from imaging.core.geometry.volume import Volume

FUZZ = settings(
    max_examples=600,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
LIMIT = 64 * 2**20
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT"}

#: The values the quick path reads (tag: VR), fuzzed below.
TAGS: dict[int, bytes] = {
    0x00080005: b"CS",
    0x00080016: b"UI",
    0x00080018: b"UI",
    0x00100020: b"LO",
    0x0020000D: b"UI",
    0x0020000E: b"UI",
    0x00200013: b"IS",
    0x00200032: b"DS",
    0x00200037: b"DS",
    0x00280002: b"US",
    0x00280008: b"IS",
    0x00280010: b"US",
    0x00280011: b"US",
    0x00280030: b"DS",
    0x00280100: b"US",
}


@pytest.fixture(scope="module")
def slices(tmp_path_factory) -> list[bytes]:
    """Two slices of one series: the first warms the header cache, the second is read."""
    array = np.full((2, 16, 16), 40, dtype=np.int16)
    volume = Volume(array, spacing_mm=(0.8, 0.8, 2.0), origin_mm=(-10.0, -10.0, 0.0))
    attrs = CTSeriesAttributes(
        patient_id="QUICK-1",
        study_instance_uid=synthetic_uid(["quick", "study"]),
        series_instance_uid=synthetic_uid(["quick", "series"]),
        frame_of_reference_uid=synthetic_uid(["quick", "for"]),
    )
    paths = ct_series_write(volume, tmp_path_factory.mktemp("quick"), attrs)
    return [p.read_bytes() for p in paths]


@pytest.fixture(scope="module")
def warm(slices) -> dict:
    headers: dict = {}
    instance_inspect(slices[0], headers=headers, max_decoded_bytes=LIMIT)
    return headers


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    group, element = tag >> 16, tag & 0xFFFF
    if vr in _LONG_VRS:
        return struct.pack("<HH2s2xI", group, element, vr, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value) & 0xFFFF) + value


def _top_level(data: bytes) -> list[tuple[int, int, int]]:
    """(tag, start, end) of each top-level element of a well-formed explicit VR file."""
    found, at = [], dataset_offset(data)
    while at + 8 <= len(data):
        group, element, vr, length = struct.unpack_from("<HH2sH", data, at)
        header = 8
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", data, at + 8)
            header = 12
        found.append((group << 16 | element, at, at + header + length))
        at += header + length
    return found


def _with_value(data: bytes, tag: int, value: bytes, vr: bytes | None = None) -> bytes:
    """``data`` with top-level element ``tag`` holding ``value`` (added where absent)."""
    new = _element(tag, vr or TAGS[tag], value)
    for found, start, end in _top_level(data):
        if found == tag:
            return data[:start] + new + data[end:]
        if found > tag:
            return data[:start] + new + data[start:]
    return data + new


def _outcome(data: bytes, warm: dict, *, quick: bool):
    headers = dict(warm)
    try:
        if quick:
            return instance_inspect(data, headers=headers, max_decoded_bytes=LIMIT)
        with mock.patch.object(inspect, "_quick", return_value=(0, None)):
            return instance_inspect(data, headers=headers, max_decoded_bytes=LIMIT)
    except DicomRejected as exc:
        return f"refused: {exc}"


def _quick_taken(data: bytes, warm: dict) -> bool:
    return inspect._quick(preamble_zeroed(data), dict(warm), LIMIT)[1] is not None


def _same_decision(data: bytes, warm: dict) -> None:
    assert _outcome(data, warm, quick=True) == _outcome(data, warm, quick=False)


def test_a_plain_slice_takes_the_quick_path_with_the_same_result(slices, warm):
    assert _quick_taken(slices[1], warm)
    _same_decision(slices[1], warm)
    assert not _quick_taken(slices[1], {})  # a series not read yet: pydicom reads it


def test_a_file_on_disk_takes_the_quick_path_with_the_same_result(slices, warm, tmp_path: Path):
    path = tmp_path / "slice.dcm"
    path.write_bytes(slices[1])
    quick = instance_inspect_file(path, headers=dict(warm), max_decoded_bytes=LIMIT)
    with mock.patch.object(inspect, "_quick", return_value=(0, None)):
        slow = instance_inspect_file(path, headers=dict(warm), max_decoded_bytes=LIMIT)
    assert quick == slow
    assert (quick.sha256, quick.dataset_sha256) == (
        instance_inspect(slices[1]).sha256,
        instance_inspect(slices[1]).dataset_sha256,
    )


@pytest.mark.parametrize(
    ("tag", "value"),
    [
        (0x00100020, b"QUICK-1 "),  # padded as the standard pads text
        (0x00080016, b"1.2.840.10008.5.1.4.1.1.2\x00"),  # a UID padded with NUL
        (0x00200013, b"+7"),
        (0x00200013, b"-12 "),
        (0x00200032, b"1.5e1\\-.5\\+3."),
        (0x00280030, b"0.5\\0.5 "),
        (0x00080005, b"ISO_IR 100"),
        (0x00080005, b"ISO_IR 192"),
        (0x00280008, b"1 "),
        (0x00280002, struct.pack("<H", 1)),
    ],
)
def test_well_formed_variants_take_the_quick_path(slices, warm, tag, value):
    data = _with_value(slices[1], tag, value)
    assert _quick_taken(data, warm)
    _same_decision(data, warm)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda d: d + b"\x00\x00\x00", id="trailing bytes"),
        pytest.param(lambda d: d[:-10], id="cut pixels"),
        pytest.param(lambda d: _with_value(d, 0x00080005, b"ISO 2022 IR 87"), id="charset"),
        pytest.param(lambda d: _with_value(d, 0x00100020, b" QUICK-1"), id="leading space"),
        pytest.param(lambda d: _with_value(d, 0x00100020, b"QUICK\\1"), id="backslash"),
        pytest.param(lambda d: _with_value(d, 0x00200032, b"1\\2"), id="two numbers"),
        pytest.param(lambda d: _with_value(d, 0x00200032, b"1e999\\2\\3"), id="infinite"),
        pytest.param(lambda d: _with_value(d, 0x00200013, b"5.0"), id="decimal IS"),
        pytest.param(lambda d: _with_value(d, 0x00080018, b"1.02.3"), id="bad UID"),
        pytest.param(lambda d: _with_value(d, 0x00200032, b"1\\2\\3", b"UN"), id="UN"),
        pytest.param(lambda d: _with_value(d, 0x00280010, b"\x10\x00\x10\x00"), id="2 rows"),
    ],
)
def test_files_that_are_not_plain_are_left_to_pydicom(slices, warm, change):
    data = change(slices[1])
    assert not _quick_taken(data, warm)
    _same_decision(data, warm)


def test_an_undefined_length_sequence_is_walked(slices, warm):
    item = _element(0x00081150, b"UI", b"1.2.840.10008.5.1.4.1.1.2\x00")
    sequence = (
        b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + item + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    ) + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    data = _with_value(slices[1], 0x00081140, b"", b"SQ")
    raw = _element(0x00081140, b"SQ", b"")
    undefined = raw[:8] + b"\xff\xff\xff\xff"
    data = data.replace(raw, undefined + sequence, 1)
    assert pydicom.dcmread(io.BytesIO(data)).ReferencedImageSequence[0].ReferencedSOPClassUID
    assert _quick_taken(data, warm)
    _same_decision(data, warm)
    assert not _quick_taken(data.replace(b"\xfe\xff\xdd\xe0", b"\xfe\xff\xdd\xe1", 1), warm)


def test_the_walk_is_quick_only_for_its_sop_classes(slices):
    assert plain_image_read(slices[1], {"1.2.840.10008.5.1.4.1.1.2"}) is not None
    assert plain_image_read(slices[1], {"1.2.840.10008.5.1.4.1.1.4"}) is None


_pad = st.sampled_from([b"", b" ", b"\x00", b"  ", b" \x00", b"\x00 "])
_number = st.one_of(
    st.integers(-(2**34), 2**34).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(-1e6, 1e6).map(lambda f: f"{f:.6f}"),
    st.floats(-1e6, 1e6).map(lambda f: f"{f:E}"),
    st.sampled_from(["", "+1", "-.5", "1.", ".", "+", "1e", "01", " 2", "3 ", "1,5"]),
).map(str.encode)


def _near_valid(tag: int, original: bytes) -> st.SearchStrategy[bytes]:
    """Values near the boundary of what the quick path takes, for ``tag``'s VR."""
    vr = TAGS[tag]
    if vr == b"DS":
        numbers = st.lists(_number, min_size=1, max_size=7).map(b"\\".join)
        return st.tuples(numbers, _pad).map(b"".join)
    if vr == b"IS":
        return st.tuples(_number, _pad).map(b"".join)
    if vr == b"US":
        return st.one_of(
            st.integers(0, 0xFFFF).map(struct.Struct("<H").pack), st.binary(max_size=4)
        )
    if vr == b"CS":
        charsets = [b"ISO_IR 100", b"ISO_IR 192", b"ISO_IR 6", b"ISO 2022 IR 87", b"GB18030"]
        return st.tuples(st.sampled_from(charsets + [b"", b"\\ISO_IR 100"]), _pad).map(b"".join)
    stripped = original.rstrip(b" \x00")
    return st.one_of(
        st.tuples(st.sampled_from([b"", b" "]), st.just(stripped), _pad).map(b"".join),
        st.binary(max_size=40),
    )


def _changes(data: bytes) -> st.SearchStrategy[dict[int, bytes]]:
    values = dict((tag, data[start:end]) for tag, start, end in _top_level(data))
    pairs = st.sampled_from(sorted(TAGS)).flatmap(
        lambda tag: st.tuples(st.just(tag), _near_valid(tag, _value_of(values.get(tag, b""))))
    )
    return st.lists(pairs, min_size=1, max_size=3).map(dict)


def _value_of(element: bytes) -> bytes:
    return element[12:] if element[4:6] in _LONG_VRS else element[8:]


@FUZZ
@given(data=st.data())
def test_fuzzed_values_are_decided_alike(slices, warm, data):
    changed = slices[1]
    for tag, value in data.draw(_changes(slices[1])).items():
        changed = _with_value(changed, tag, value)
    _same_decision(changed, warm)


_edits = st.lists(
    st.tuples(st.sampled_from(["flip", "insert", "cut"]), st.floats(0, 1), st.binary(max_size=6)),
    min_size=1,
    max_size=3,
)


@FUZZ
@given(edits=_edits, in_header=st.booleans())
def test_mutated_files_are_decided_alike(slices, warm, edits, in_header):
    data = bytearray(slices[1])
    span = 1200 if in_header else len(data)
    for kind, where, payload in edits:
        at = 132 + int(where * (min(span, len(data)) - 133))
        if kind == "flip":
            data[at] ^= payload[0] if payload else 0xFF
        elif kind == "insert":
            data[at:at] = payload
        else:
            del data[at : at + (len(payload) or 1) * 3]
    _same_decision(bytes(data), warm)
