"""The plain image read without pydicom: a quick path through `instance_inspect`.

Most files an import sees are plain CT or MR slices: Part 10, Explicit VR Little
Endian, native pixels, every value well formed. `plain_image_read` walks such a file's
elements over the bytes themselves (PS3.5 7.1.2) and reads the few values that decide
whether it can be stored, far faster than building a pydicom data set. It is strict on
purpose: whatever is not exactly that (another transfer syntax, an undefined length
outside a sequence, a value a reader would have to warn about or could refuse, a
character set other than ASCII, Latin-1 or UTF-8, trailing bytes, a value running past
the end) gives None, and the caller then reads the file with pydicom as before. So the
quick path never decides differently from the full one; it only decides sooner.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass

from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

from imaging.core.dicom.part10 import PREAMBLE_LENGTH

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"

_ELEMENT = struct.Struct("<HH2sH")
_LONG_LENGTH = struct.Struct("<I")
_ITEM = struct.Struct("<HHI")
_US = struct.Struct("<H")
_UNDEFINED = 0xFFFFFFFF
_VRS = frozenset(vr.value.encode("ascii") for vr in VR if len(vr.value) == 2)
_LONG_VRS = frozenset(vr.value.encode("ascii") for vr in EXPLICIT_VR_LENGTH_32)
#: Deeper nesting is left to pydicom.
_MAX_DEPTH = 8

#: The values the quick path reads, by tag, with the VR each must have.
_SPECIFIC_CHARACTER_SET = 0x00080005
_WANTED: dict[int, bytes] = {
    0x00080016: b"UI",  # SOP Class UID
    0x00080018: b"UI",  # SOP Instance UID
    0x00100020: b"LO",  # Patient ID
    0x0020000D: b"UI",  # Study Instance UID
    0x0020000E: b"UI",  # Series Instance UID
    0x00200013: b"IS",  # Instance Number
    0x00200032: b"DS",  # Image Position (Patient)
    0x00200037: b"DS",  # Image Orientation (Patient)
    0x00280002: b"US",  # Samples per Pixel
    0x00280008: b"IS",  # Number of Frames
    0x00280010: b"US",  # Rows
    0x00280011: b"US",  # Columns
    0x00280030: b"DS",  # Pixel Spacing
    0x00280100: b"US",  # Bits Allocated
    _SPECIFIC_CHARACTER_SET: b"CS",
}
_PIXEL_DATA = 0x7FE00010
_META_GROUP_LENGTH = 0x00020000
_META_TRANSFER_SYNTAX = 0x00020010
_META_MEDIA_SOP_INSTANCE = 0x00020003

#: Character sets under which printable ASCII decodes to itself without a warning.
_PLAIN_CHARSETS = frozenset({b"", b"ISO_IR 6", b"ISO_IR 100", b"ISO_IR 192"})
#: A UID (PS3.5 9.1), optionally padded with one NUL.
_UID = re.compile(rb"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\x00?")
#: Printable ASCII without a backslash, optionally padded with one space.
_TEXT = re.compile(rb"[\x21-\x5b\x5d-\x7e][\x20-\x5b\x5d-\x7e]*")
_DS = re.compile(rb"[+\-]?([0-9]+|[0-9]+\.[0-9]*|\.[0-9]+)([eE][+\-]?[0-9]+)?")
_IS = re.compile(rb"[+\-]?[0-9]{1,11}")
_INT32 = (-(2**31), 2**31 - 1)


class _NotPlain(Exception):
    """The file is not one the quick path reads: pydicom reads it."""


@dataclass(frozen=True)
class PlainImage:
    """What `imaging.core.dicom.inspect` needs of a plain image, every value valid."""

    transfer_syntax_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    instance_number: int | None
    image_position: tuple[float, float, float]
    image_orientation: tuple[float, ...]
    pixel_spacing: tuple[float, float]
    #: Rows x Columns x Samples per Pixel x Bits Allocated x Frames, in bytes.
    pixel_bytes_needed: int
    #: Where the data set starts (after the File Meta Information).
    dataset_offset: int


def plain_image_read(buffer, sop_classes: frozenset[str] | set[str]) -> PlainImage | None:
    """The values of a plain image of one of ``sop_classes`` in ``buffer`` (the whole
    Part 10 file: bytes, or a read-only mmap), or None when it is anything else."""
    try:
        return _plain_image(buffer, sop_classes)
    except (_NotPlain, struct.error, ValueError, OverflowError):
        return None


def _plain_image(buffer, sop_classes) -> PlainImage:
    size = len(buffer)
    if size < PREAMBLE_LENGTH + 16 or buffer[PREAMBLE_LENGTH : PREAMBLE_LENGTH + 4] != b"DICM":
        raise _NotPlain
    meta, start = _elements(buffer, PREAMBLE_LENGTH + 4, size, group=0x0002)
    if not meta or next(iter(meta)) != _META_GROUP_LENGTH:
        raise _NotPlain
    group_length = meta[_META_GROUP_LENGTH]
    if group_length[1] != 4 or _LONG_LENGTH.unpack_from(buffer, group_length[0])[0] != (
        start - (group_length[0] + 4)
    ):
        raise _NotPlain
    if _uid(buffer, meta.get(_META_TRANSFER_SYNTAX)) != EXPLICIT_VR_LITTLE_ENDIAN:
        raise _NotPlain
    found, _ = _elements(buffer, start, size, group=None)
    if next(iter(found), 0) >> 16 <= 0x0002:
        raise _NotPlain
    for tag, vr in _WANTED.items():
        if tag in found and found[tag][2] != vr:
            raise _NotPlain
    charset = _raw(buffer, found.get(_SPECIFIC_CHARACTER_SET), b"").rstrip(b" ")
    if charset not in _PLAIN_CHARSETS:
        raise _NotPlain
    sop_class = _uid(buffer, found.get(0x00080016))
    sop_instance = _uid(buffer, found.get(0x00080018))
    if sop_class not in sop_classes:
        raise _NotPlain
    media_instance = meta.get(_META_MEDIA_SOP_INSTANCE)
    if media_instance is not None and _uid(buffer, media_instance) != sop_instance:
        raise _NotPlain  # pydicom's path warns about it
    needed = _pixels_needed(buffer, found)
    pixels = found.get(_PIXEL_DATA)
    if pixels is None or pixels[2] not in (b"OB", b"OW") or pixels[1] < needed:
        raise _NotPlain
    number = found.get(0x00200013)
    return PlainImage(
        transfer_syntax_uid=EXPLICIT_VR_LITTLE_ENDIAN,
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        study_instance_uid=_uid(buffer, found.get(0x0020000D)),
        series_instance_uid=_uid(buffer, found.get(0x0020000E)),
        patient_id=_text(buffer, found.get(0x00100020)),
        instance_number=None if number is None else _integer(buffer, number),
        image_position=_triple(_decimals(buffer, found.get(0x00200032), 3)),
        image_orientation=_decimals(buffer, found.get(0x00200037), 6),
        pixel_spacing=_pair(_decimals(buffer, found.get(0x00280030), 2)),
        pixel_bytes_needed=needed,
        dataset_offset=start,
    )


def _pixels_needed(buffer, found: dict) -> int:
    rows = _unsigned(buffer, found.get(0x00280010))
    columns = _unsigned(buffer, found.get(0x00280011))
    bits = _unsigned(buffer, found.get(0x00280100))
    samples = 1 if 0x00280002 not in found else _unsigned(buffer, found[0x00280002])
    frames = 1 if 0x00280008 not in found else _integer(buffer, found[0x00280008])
    if min(rows, columns, bits, samples, frames) < 1:
        raise _NotPlain
    return (rows * columns * samples * frames * bits + 7) // 8


# -- the walk ------------------------------------------------------------------------
def _elements(
    buffer, position: int, end: int, *, group: int | None
) -> tuple[dict[int, tuple[int, int, bytes]], int]:
    """The elements from ``position`` on, by tag: (value offset, length, VR), and where
    the walk stopped. With ``group`` only that group's elements (File Meta), else every
    one to ``end``; tags must rise, and every value lie before ``end``."""
    found: dict[int, tuple[int, int, bytes]] = {}
    last = -1
    unpack, long_unpack = _ELEMENT.unpack_from, _LONG_LENGTH.unpack_from
    while position + 8 <= end:
        tag_group, element, vr, length = unpack(buffer, position)
        if group is not None and tag_group != group:
            break
        tag = tag_group << 16 | element
        if tag <= last or vr not in _VRS or tag_group == 0xFFFE:
            raise _NotPlain
        last = tag
        if vr in _LONG_VRS:
            if buffer[position + 6 : position + 8] != b"\x00\x00":
                raise _NotPlain
            length = long_unpack(buffer, position + 8)[0]
            position += 12
        else:
            position += 8
        if length == _UNDEFINED:
            if vr != b"SQ":
                raise _NotPlain
            found[tag] = (position, length, vr)
            position = _sequence_end(buffer, position, end, 1)
            continue
        if position + length > end:
            raise _NotPlain
        found[tag] = (position, length, vr)
        position += length
    if position != end and group is None:
        raise _NotPlain  # trailing bytes pydicom would pass over
    return found, position


def _sequence_end(buffer, position: int, end: int, depth: int) -> int:
    """Past the Sequence Delimitation Item of an undefined-length sequence whose items
    start at ``position``, every item walked (pydicom parses them as it reads)."""
    if depth > _MAX_DEPTH:
        raise _NotPlain
    while True:
        if position + 8 > end:
            raise _NotPlain
        group, element, length = _ITEM.unpack_from(buffer, position)
        position += 8
        if (group, element) == (0xFFFE, 0xE0DD):
            if length:
                raise _NotPlain
            return position
        if (group, element) != (0xFFFE, 0xE000):
            raise _NotPlain
        if length == _UNDEFINED:
            position = _item_end(buffer, position, end, depth)
        else:
            if position + length > end:
                raise _NotPlain
            if _item_end(buffer, position, position + length, depth) != position + length:
                raise _NotPlain
            position += length


def _item_end(buffer, position: int, end: int, depth: int) -> int:
    """Past the elements of one sequence item: at ``end`` for a defined length, past its
    Item Delimitation Item for an undefined one."""
    unpack, long_unpack = _ELEMENT.unpack_from, _LONG_LENGTH.unpack_from
    last = -1
    while position < end:
        if position + 8 > end:
            raise _NotPlain
        group, element, vr, length = unpack(buffer, position)
        if (group, element) == (0xFFFE, 0xE00D):
            if buffer[position + 4 : position + 8] != b"\x00\x00\x00\x00":
                raise _NotPlain
            return position + 8
        tag = group << 16 | element
        if tag <= last or vr not in _VRS or group == 0xFFFE:
            raise _NotPlain
        last = tag
        if vr in _LONG_VRS:
            if buffer[position + 6 : position + 8] != b"\x00\x00":
                raise _NotPlain
            length = long_unpack(buffer, position + 8)[0]
            position += 12
        else:
            position += 8
        if length == _UNDEFINED:
            if vr != b"SQ":
                raise _NotPlain
            position = _sequence_end(buffer, position, end, depth + 1)
            continue
        if position + length > end:
            raise _NotPlain
        position += length
    return position


# -- values, each strictly valid (else pydicom reads the file) -------------------------
def _raw(buffer, element, default: bytes | None = None) -> bytes:
    if element is None:
        if default is None:
            raise _NotPlain
        return default
    offset, length, _ = element
    return bytes(buffer[offset : offset + length])


def _uid(buffer, element) -> str:
    raw = _raw(buffer, element)
    if not 0 < len(raw) <= 64 or _UID.fullmatch(raw) is None:
        raise _NotPlain
    return raw.rstrip(b"\x00").decode("ascii")


def _text(buffer, element) -> str:
    """A single-valued LO of printable ASCII, at most 64 characters, as pydicom gives it
    (trailing spaces dropped)."""
    raw = _raw(buffer, element)
    if len(raw) > 64 or _TEXT.fullmatch(raw) is None:
        raise _NotPlain
    text = raw.decode("ascii").strip()
    if not text:
        raise _NotPlain
    return text


def _unsigned(buffer, element) -> int:
    if element is None or element[1] != 2:
        raise _NotPlain
    return _US.unpack_from(buffer, element[0])[0]


def _integer(buffer, element) -> int:
    raw = _raw(buffer, element)
    value = raw[:-1] if raw.endswith(b" ") else raw
    if _IS.fullmatch(value) is None:
        raise _NotPlain
    number = int(value)
    if not _INT32[0] <= number <= _INT32[1]:
        raise _NotPlain
    return number


def _triple(values: tuple[float, ...]) -> tuple[float, float, float]:
    return (values[0], values[1], values[2])  # `_decimals` checked the count


def _pair(values: tuple[float, ...]) -> tuple[float, float]:
    return (values[0], values[1])


def _decimals(buffer, element, count: int) -> tuple[float, ...]:
    raw = _raw(buffer, element)
    parts = (raw[:-1] if raw.endswith(b" ") else raw).split(b"\\")
    if len(parts) != count:
        raise _NotPlain
    numbers = []
    for part in parts:
        if len(part) > 16 or _DS.fullmatch(part) is None:
            raise _NotPlain
        number = float(part)
        if not math.isfinite(number):
            raise _NotPlain
        numbers.append(number)
    return tuple(numbers)
