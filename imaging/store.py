"""The content-addressed object store for original DICOM files.

A file lives at ``objects/ab/cd/<sha256>.dcm`` under ``RADTRACK_DATA_DIR``. Writes go
to a temporary name in the same folder, are fsynced, then renamed, and the folder is
fsynced, so a crash leaves either the whole file or nothing under its final name.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from django.conf import settings

OBJECTS = "objects"


def data_dir() -> Path:
    return Path(settings.DATA_DIR)


def object_relative_path(sha256: str) -> str:
    return f"{OBJECTS}/{sha256[:2]}/{sha256[2:4]}/{sha256}.dcm"


def object_path(relative: str) -> Path:
    return data_dir() / relative


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def object_write(data: bytes, sha256: str) -> tuple[str, bool]:
    """Store ``data`` under its SHA-256 and return (relative path, whether written now).

    A file already present under that name is kept when its content matches (left by a
    crash after the write and before the index); a mismatch is repaired.
    """
    relative = object_relative_path(sha256)
    final = object_path(relative)
    if final.exists() and final.stat().st_size == len(data) and file_sha256(final) == sha256:
        return relative, False
    folder = final.parent
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=".incoming-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, final)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(folder)
    if created:
        _fsync_dir(folder.parent)
        _fsync_dir(folder.parent.parent)
    return relative, True


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
