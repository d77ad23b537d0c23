"""The Part 10 file layout (PS3.10 7.1) at the byte level: the preamble, the File Meta
group and where the data set starts, bounded inflation of a deflated data set, and the
two hashes RadTrack keeps of a stored file (whole file, and data set only).
"""

from __future__ import annotations

import hashlib
import zlib

PREAMBLE_LENGTH = 128


class DicomRejected(Exception):
    """The file cannot be stored; ``str(exc)`` says why, for the person who sent it."""


def preamble_zeroed(data: bytes) -> bytes:
    """``data`` with its 128-byte preamble set to zeros when it has one."""
    if len(data) >= PREAMBLE_LENGTH + 4 and data[PREAMBLE_LENGTH : PREAMBLE_LENGTH + 4] == b"DICM":
        if data[:PREAMBLE_LENGTH].count(0) == PREAMBLE_LENGTH:
            return data
        return bytes(PREAMBLE_LENGTH) + data[PREAMBLE_LENGTH:]
    return data


_LONG_LENGTH_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}


def meta_walk(data: bytes) -> tuple[int, str]:
    """Where the data set starts, and the Transfer Syntax UID (0002,0010) as written.

    File Meta elements are always Explicit VR Little Endian (PS3.10 7.1). A file
    without the Part 10 header starts with its data set.
    """
    if data[PREAMBLE_LENGTH : PREAMBLE_LENGTH + 4] != b"DICM":
        return 0, ""
    offset = PREAMBLE_LENGTH + 4
    syntax = b""
    while offset + 8 <= len(data):
        group = int.from_bytes(data[offset : offset + 2], "little")
        if group != 0x0002:
            break
        element = int.from_bytes(data[offset + 2 : offset + 4], "little")
        vr = data[offset + 4 : offset + 6]
        if vr in _LONG_LENGTH_VRS:
            length = int.from_bytes(data[offset + 8 : offset + 12], "little")
            start = offset + 12
        else:
            length = int.from_bytes(data[offset + 6 : offset + 8], "little")
            start = offset + 8
        if element == 0x0010:
            syntax = data[start : start + min(length, 80)]
        offset = start + length
    return min(offset, len(data)), syntax.rstrip(b"\x00 ").decode("ascii", "replace")


def dataset_offset(data: bytes) -> int:
    """Where the data set starts: after the preamble, 'DICM' and group 0002 (PS3.10 7.1)."""
    return meta_walk(data)[0]


def inflated_size_check(data: bytes, offset: int, max_bytes: int | None) -> None:
    """Refuse a deflated data set (PS3.5 A.5) that inflates past ``max_bytes``, counting
    as it inflates (pydicom would inflate it whole, however large)."""
    if max_bytes is None:
        return
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    pending: bytes | memoryview = memoryview(data)[offset:]
    try:
        while pending:
            total += len(inflater.decompress(pending, 1 << 20))
            pending = inflater.unconsumed_tail
            if total > max_bytes:
                raise DicomRejected(
                    f"its deflated data set inflates to more than {max_bytes / 2**20:.0f} MB, "
                    "the limit per instance (RADTRACK_MAX_DECODED_MB)"
                )
    except zlib.error as exc:
        raise DicomRejected(f"its deflated data set cannot be inflated ({exc})") from None


def buffer_hashes(buffer, offset: int) -> tuple[str, str]:
    """SHA-256 of the whole file in ``buffer`` and of its data set (from ``offset``),
    straight from ``buffer`` (bytes, or a mapped file: nothing is copied)."""
    with memoryview(buffer) as view:
        return hashlib.sha256(view).hexdigest(), hashlib.sha256(view[offset:]).hexdigest()
