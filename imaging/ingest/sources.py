"""What an import reads: files and folders (recursively, zip archives expanded) and web
uploads, each as an `IngestSource` that reads its bytes on demand.

One rule for what is skipped, on every path: a file or zip entry whose name, or the
name of a folder it sits in, starts with a dot (``.DS_Store``, ``.hidden.dcm``,
``__MACOSX/._IM1``). Zip entries are expanded under the bounds of
`imaging.ingest.archive`, from the RADTRACK_ZIP_* settings.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from django.conf import settings

from imaging.ingest.archive import (
    ArchiveRefused,
    ExpansionBudget,
    ZipLimits,
    member_read,
    zip_members,
)


class SourceRefused(Exception):
    """A source is refused before it is read as DICOM; ``str(exc)`` is the whole reason."""


@dataclass(frozen=True)
class IngestSource:
    """Something to import: a name for messages, its size if known, and how to read it.

    ``path`` is set for a plain file on disk, which a reader pool may then read itself;
    ``staging``, when the bytes are already being written into the store's staging
    folder meanwhile (the listener), gives that copy's relative path.
    """

    name: str
    read: Callable[[], bytes]
    size: int | None = None
    path: Path | None = None
    staging: Future | None = None


def is_hidden(name: str) -> bool:
    """Whether a path or zip entry name is skipped: any part starts with a dot."""
    return any(part.startswith(".") for part in PurePosixPath(name.replace("\\", "/")).parts)


def zip_limits() -> ZipLimits:
    return ZipLimits(
        max_entry_bytes=settings.RADTRACK_MAX_UPLOAD_BYTES,
        max_ratio=settings.RADTRACK_ZIP_MAX_RATIO,
        max_total_bytes=settings.RADTRACK_ZIP_MAX_EXPANDED_BYTES,
        max_entries=settings.RADTRACK_ZIP_MAX_ENTRIES,
    )


def _refused(name: str, reason: str, size: int | None = 0) -> IngestSource:
    def read() -> bytes:
        raise SourceRefused(reason)

    return IngestSource(name, read, size)


def _zip_sources(handle: BinaryIO, label: str, budget: ExpansionBudget) -> Iterator[IngestSource]:
    """Every entry of the archive in ``handle`` (hidden ones skipped), read when asked."""
    limits = zip_limits()
    try:
        members = zip_members(handle, limits=limits)
    except ArchiveRefused as exc:
        yield _refused(label, str(exc))
        return
    for member in members:
        if is_hidden(member.name):
            continue

        def read(m=member) -> bytes:
            try:
                return member_read(handle, m, limits=limits, budget=budget)
            except ArchiveRefused as exc:
                raise SourceRefused(str(exc)) from None

        # The declared size is only a hint: the reader enforces the limits itself.
        yield IngestSource(f"{label}:{member.name}", read, None)


def _is_archive(path: Path) -> bool:
    return path.suffix.lower() == ".zip" and zipfile.is_zipfile(path)


def sources_from_paths(paths: Iterable[Path]) -> Iterator[IngestSource]:
    """Files, folders (recursively, in name order) and zip archives as sources."""
    budget = ExpansionBudget(settings.RADTRACK_ZIP_MAX_EXPANDED_BYTES)
    for root in paths:
        root = Path(root)
        if root.is_dir():
            candidates = sorted(
                p
                for p in root.rglob("*")
                if p.is_file() and not is_hidden(p.relative_to(root).as_posix())
            )
        elif root.exists():
            candidates = [root]
        else:
            yield _refused(str(root), "cannot be read: no such file or folder", None)
            continue
        for path in candidates:
            if _is_archive(path):
                with open(path, "rb") as handle:
                    yield from _zip_sources(handle, str(path), budget)
            else:
                yield IngestSource(str(path), path.read_bytes, path.stat().st_size, path)


def sources_from_upload(uploaded_files: Iterable) -> Iterator[IngestSource]:
    """Django UploadedFile objects (web page or REST multipart); zips are expanded, all
    the archives of one upload sharing one expansion budget."""
    budget = ExpansionBudget(settings.RADTRACK_ZIP_MAX_EXPANDED_BYTES)
    for upload in uploaded_files:
        name = upload.name
        if is_hidden(name):
            continue
        if name.lower().endswith(".zip"):
            if upload.size > settings.RADTRACK_MAX_UPLOAD_BYTES:
                yield IngestSource(name, lambda: b"", upload.size)
                continue
            upload.seek(0)
            handle = upload.file if hasattr(upload, "file") else io.BytesIO(upload.read())
            yield from _zip_sources(handle, name, budget)
        else:
            yield IngestSource(name, (lambda u=upload: _read_upload(u)), upload.size)


def _read_upload(upload) -> bytes:
    upload.seek(0)
    return upload.read()
