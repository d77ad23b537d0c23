"""What an import reads: files and folders (recursively, zip archives expanded, hidden
files skipped) and web uploads, each as an `IngestSource` that reads its bytes on demand."""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings


@dataclass(frozen=True)
class IngestSource:
    """Something to import: a name for messages, its size if known, and how to read it."""

    name: str
    read: Callable[[], bytes]
    size: int | None = None


def _zip_sources(path: Path, label: str) -> Iterator[IngestSource]:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        yield IngestSource(label, _raiser(OSError(f"not a readable zip archive ({exc})")), 0)
        return
    for info in archive.infolist():
        if info.is_dir() or Path(info.filename).name.startswith("."):
            continue
        yield IngestSource(
            f"{label}:{info.filename}",
            (lambda i=info: archive.read(i)),
            info.file_size,
        )


def _raiser(exc: Exception) -> Callable[[], bytes]:
    def read() -> bytes:
        raise exc

    return read


def sources_from_paths(paths: Iterable[Path]) -> Iterator[IngestSource]:
    """Files, folders (recursively, in name order) and zip archives as sources."""
    for root in paths:
        root = Path(root)
        if root.is_dir():
            candidates = sorted(
                p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
            )
        elif root.exists():
            candidates = [root]
        else:
            yield IngestSource(str(root), _raiser(OSError("no such file or folder")), None)
            continue
        for path in candidates:
            if zipfile.is_zipfile(path) and path.suffix.lower() == ".zip":
                yield from _zip_sources(path, str(path))
            else:
                yield IngestSource(str(path), path.read_bytes, path.stat().st_size)


def sources_from_upload(uploaded_files: Iterable) -> Iterator[IngestSource]:
    """Django UploadedFile objects (web page or REST multipart); zips are expanded."""
    for upload in uploaded_files:
        name = upload.name
        if name.lower().endswith(".zip"):
            if upload.size > settings.RADTRACK_MAX_UPLOAD_BYTES:
                yield IngestSource(name, lambda: b"", upload.size)
                continue
            path = getattr(upload, "temporary_file_path", None)
            if path is not None:
                yield from _zip_sources(Path(upload.temporary_file_path()), name)
            else:
                import io

                data = upload.read()
                archive_file = io.BytesIO(data)
                try:
                    archive = zipfile.ZipFile(archive_file)
                except zipfile.BadZipFile as exc:
                    yield IngestSource(
                        name, _raiser(OSError(f"not a readable zip archive ({exc})")), 0
                    )
                    continue
                for info in archive.infolist():
                    if info.is_dir():
                        continue
                    yield IngestSource(
                        f"{name}:{info.filename}",
                        (lambda a=archive, i=info: a.read(i)),
                        info.file_size,
                    )
        else:
            yield IngestSource(name, (lambda u=upload: _read_upload(u)), upload.size)


def _read_upload(upload) -> bytes:
    upload.seek(0)
    return upload.read()
