"""Zip archives read with every expansion bounded, whatever their headers claim.

An entry is inflated in pieces while its size is counted: it is refused as soon as it
expands past the size its header declares, past the per-file limit, past a compression
ratio no DICOM file reaches, or past what the whole upload may expand to; and when it
ends short of its declared size or fails its CRC. So a small archive of zeros, or one
whose header under-declares its size, never makes the web process hold more than a
bounded amount of memory. Only stored and deflated entries are read (the methods every
common zip tool writes).
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO

#: Local file header (APPNOTE 4.3.7): signature, then fixed fields up to the name length.
_LOCAL_HEADER = struct.Struct("<4s22xHH")
_LOCAL_SIGNATURE = b"PK\x03\x04"
_CHUNK_BYTES = 1 << 20
#: Compressed bytes fed to the inflater at a time: small, so the ratio is known early.
_FEED_BYTES = 16 << 10
#: The compression ratio is judged only past this size: small highly compressible
#: objects (a mostly empty segmentation) are fine, a bomb shows well before here.
RATIO_FLOOR_BYTES = 16 * 2**20


class ArchiveRefused(Exception):
    """An archive or one of its entries is refused; ``str(exc)`` says why."""


@dataclass(frozen=True)
class ZipLimits:
    """The bounds an upload's archives are read under (from RADTRACK_ZIP_* settings)."""

    max_entry_bytes: int
    max_ratio: float
    max_total_bytes: int
    max_entries: int


@dataclass
class ExpansionBudget:
    """Bytes the archives of one upload may still expand to, shared by all of them."""

    limit: int
    used: int = 0


@dataclass(frozen=True)
class ZipMember:
    """One entry: its name in the archive and its declared (untrusted) size."""

    info: zipfile.ZipInfo

    @property
    def name(self) -> str:
        return self.info.filename

    @property
    def declared_bytes(self) -> int:
        return self.info.file_size


def zip_members(handle: BinaryIO, *, limits: ZipLimits) -> list[ZipMember]:
    """The file entries of the archive in ``handle``; `ArchiveRefused` when it is not a
    readable zip or lists more entries than allowed."""
    try:
        infos = zipfile.ZipFile(handle).infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ArchiveRefused(f"not a readable zip archive ({exc})") from None
    if len(infos) > limits.max_entries:
        raise ArchiveRefused(
            f"the archive lists {len(infos)} entries, over the limit of {limits.max_entries} "
            "(RADTRACK_ZIP_MAX_ENTRIES)"
        )
    return [ZipMember(info) for info in infos if not info.is_dir()]


def member_read(
    handle: BinaryIO, member: ZipMember, *, limits: ZipLimits, budget: ExpansionBudget
) -> bytes:
    """The bytes of ``member``, expanded under ``limits`` and ``budget``; `ArchiveRefused`
    with the reason otherwise. The budget is charged with what was expanded, even when
    the entry is refused."""
    info = member.info
    if info.flag_bits & 0x1:
        raise ArchiveRefused("the entry is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise ArchiveRefused(
            f"the entry uses compression method {info.compress_type}; "
            "only stored and deflated entries are read"
        )
    if info.file_size > limits.max_entry_bytes:
        raise ArchiveRefused(
            f"the entry declares {info.file_size / 2**20:.1f} MB, over the "
            f"{limits.max_entry_bytes / 2**20:.0f} MB limit per file (RADTRACK_MAX_UPLOAD_MB)"
        )
    start, available = _data_span(handle, info)
    expander = _Expander(member, limits, budget)
    try:
        data = expander.run(handle, start, min(info.compress_size, available))
    finally:
        budget.used += expander.expanded
    if zlib.crc32(data) != info.CRC:
        raise ArchiveRefused("the entry fails its CRC check: the archive is damaged")
    return data


def _data_span(handle: BinaryIO, info: zipfile.ZipInfo) -> tuple[int, int]:
    """Where the entry's compressed bytes start, and how many the archive has after that."""
    handle.seek(0, 2)
    size = handle.tell()
    handle.seek(info.header_offset)
    header = handle.read(_LOCAL_HEADER.size)
    if len(header) < _LOCAL_HEADER.size:
        raise ArchiveRefused("the entry's local header is cut short: the archive is damaged")
    signature, name_length, extra_length = _LOCAL_HEADER.unpack(header)
    if signature != _LOCAL_SIGNATURE:
        raise ArchiveRefused("the entry's local header is missing: the archive is damaged")
    start = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
    return start, max(size - start, 0)


@dataclass
class _Expander:
    """Inflates one entry piece by piece, checking each limit as the output grows."""

    member: ZipMember
    limits: ZipLimits
    budget: ExpansionBudget
    expanded: int = 0
    consumed: int = 0

    def run(self, handle: BinaryIO, start: int, compressed: int) -> bytes:
        deflated = self.member.info.compress_type == zipfile.ZIP_DEFLATED
        inflater = zlib.decompressobj(-zlib.MAX_WBITS) if deflated else None
        out = bytearray()
        handle.seek(start)
        left = compressed
        tail = b""
        while True:
            if not tail:
                if left == 0:
                    break
                tail = handle.read(min(_FEED_BYTES, left))
                if not tail:
                    break
                left -= len(tail)
                self.consumed += len(tail)
            if inflater is None:
                piece, tail = tail, b""
            else:
                try:
                    piece = inflater.decompress(tail, _CHUNK_BYTES)
                except zlib.error as exc:
                    raise ArchiveRefused(f"the entry cannot be inflated ({exc})") from None
                tail = inflater.unconsumed_tail
            out += piece
            self.expanded = len(out)
            self._check(self.consumed - len(tail))
            if inflater is not None and inflater.eof:
                break
        if (inflater is not None and not inflater.eof) or len(out) != self.member.declared_bytes:
            raise ArchiveRefused(
                f"the entry holds {len(out)} bytes where its header declares "
                f"{self.member.declared_bytes}: the archive is damaged or forged"
            )
        return bytes(out)

    def _check(self, consumed: int) -> None:
        limits, n = self.limits, self.expanded
        if n > self.member.declared_bytes:
            raise ArchiveRefused(
                f"the entry expands past the {self.member.declared_bytes} bytes its header "
                "declares: the archive is forged or damaged"
            )
        if self.budget.used + n > self.budget.limit:
            raise ArchiveRefused(
                f"the upload expands to more than {self.budget.limit / 2**20:.0f} MB in all "
                "(RADTRACK_ZIP_MAX_EXPANDED_MB)"
            )
        if n > RATIO_FLOOR_BYTES and n > limits.max_ratio * max(consumed, 1):
            raise ArchiveRefused(
                f"the entry expands more than {limits.max_ratio:.0f} times its compressed "
                "size, as no DICOM file does (RADTRACK_ZIP_MAX_RATIO): refused as a zip bomb"
            )
