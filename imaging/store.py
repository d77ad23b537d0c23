"""The image store: content-addressed original DICOM files, and each run's volumes,
masks and transforms, on the local filesystem (the default) or on S3-compatible object
storage (``RADTRACK_STORE=s3``, `imaging.store_s3`; docs/deploy.md).

An original lives at ``objects/ab/cd/<sha256>.dcm`` under ``RADTRACK_DATA_DIR`` (or
under that key in the bucket). On the filesystem, writes go to a temporary name in the
same folder (``.incoming-*.part``), are fsynced, then renamed, and the folder is
fsynced, so a crash leaves either the whole file or nothing under its final name; at
worst a temporary file, or a whole file no index row names yet, which `objects_scan`
and `temporaries_scan` find for ``manage.py verify_storage``. On S3 the same staging
happens on the local disk, and publishing uploads the staged file (checked against its
SHA-256) and removes it.

Reading a stored original goes through `object_local` (a local path: the file itself,
or a copy fetched from the bucket and checked against its name); a run's files are
published with `derived_publish` once written under the data folder and read through
`derived_local`, which fetches them when another machine wrote them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

OBJECTS = "objects"
TEMPORARY_PREFIX = ".incoming-"
TEMPORARY_SUFFIX = ".part"
#: Where files are staged before their content (and so their name) is known.
INCOMING = f"{OBJECTS}/.incoming"


def data_dir() -> Path:
    return Path(settings.DATA_DIR)


def store_backend() -> str:
    """``filesystem`` or ``s3`` (setting ``RADTRACK_STORE``)."""
    return getattr(settings, "RADTRACK_STORE", "filesystem")


def store_describe() -> str:
    """Where the image store is, in words (no credentials)."""
    if (s3 := _s3()) is not None:
        return f"S3 bucket {s3.bucket}" + (f", prefix {s3.prefix}/" if s3.prefix else "")
    return f"filesystem {data_dir()}"


def _s3():
    """The S3 store when it is the one configured, else None (the filesystem)."""
    if store_backend() != "s3":
        return None
    from imaging.store_s3 import S3Store

    return S3Store(data_dir())


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
    if object_present(relative, size=len(data)) and object_matches(relative, sha256):
        return relative, False
    return object_publish(object_stage(data, sha256), sha256)


def object_present(relative: str, *, size: int) -> bool:
    """Whether an object of ``size`` bytes is stored under ``relative`` (not its content)."""
    if (s3 := _s3()) is not None:
        return s3.size(relative) == size
    try:
        return object_path(relative).stat().st_size == size
    except OSError:
        return False


def object_matches(relative: str, sha256: str) -> bool:
    """Whether the object stored under ``relative`` hashes to ``sha256``."""
    return object_sha256(relative) == sha256


def object_sha256(relative: str) -> str | None:
    """The SHA-256 of the stored object's content, read now; None when there is none."""
    if (s3 := _s3()) is not None:
        return s3.sha256(relative)
    try:
        return file_sha256(object_path(relative))
    except OSError:
        return None


def object_size(relative: str) -> int | None:
    """The stored object's size in bytes; None when there is none."""
    if (s3 := _s3()) is not None:
        return s3.size(relative)
    try:
        return object_path(relative).stat().st_size
    except OSError:
        return None


def object_read(relative: str) -> bytes:
    """The stored object's bytes (`FileNotFoundError` when there is none)."""
    if (s3 := _s3()) is not None:
        return s3.read(relative)
    return object_path(relative).read_bytes()


def object_local(relative: str) -> Path:
    """A local path to read the stored original ``relative`` from: the file itself on
    the filesystem; on S3 a copy under ``cache/`` in the data folder, fetched once and
    checked against the SHA-256 its name gives (`imaging.store_s3.StoreError` if not)."""
    if (s3 := _s3()) is not None:
        from imaging.store_s3 import CACHE

        return s3.fetch(relative, data_dir() / CACHE / relative, Path(relative).stem)
    return object_path(relative)


def object_stage(data: bytes, sha256: str | None = None) -> str:
    """Write ``data`` to a temporary file beside where it will live (in the staging
    folder while its SHA-256 is not known yet), fsynced; its relative path.
    `object_publish` gives it its final name, `object_discard` removes it. On S3 it is
    staged in the staging folder, its final place being in the bucket."""
    beside = bool(sha256) and store_backend() != "s3"
    folder = object_path(object_relative_path(sha256) if beside else f"{INCOMING}/x").parent
    if not folder.exists():
        folder.mkdir(parents=True, exist_ok=True)
        _fsync_dir(folder.parent)
        if beside:
            _fsync_dir(folder.parent.parent)
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=TEMPORARY_PREFIX, suffix=TEMPORARY_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return str(Path(tmp_name).relative_to(data_dir()))


def object_stage_copy(source: Path, *, preamble_bytes: int = 128, durable: bool = True) -> str:
    """Copy the file at ``source`` into the store's staging folder, its preamble
    zeroed; its relative path. The copy is made by the kernel where it can
    (``copy_file_range``): the bytes are checked and hashed from the copy, so what is
    indexed is exactly what is stored. With ``durable=False`` it is not fsynced here:
    `object_publish` must then be told (``sync_staged``), so that many are fsynced
    together."""
    folder = object_path(INCOMING)
    if not folder.exists():
        folder.mkdir(parents=True, exist_ok=True)
        _fsync_dir(folder.parent)
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=TEMPORARY_PREFIX, suffix=TEMPORARY_SUFFIX)
    try:
        with open(source, "rb") as src, os.fdopen(fd, "wb") as out:
            _copy(src, out, os.fstat(src.fileno()).st_size)
            out.flush()
            head = os.pread(out.fileno(), preamble_bytes + 4, 0)
            if (
                head[preamble_bytes:] == b"DICM"
                and head[:preamble_bytes].count(0) != preamble_bytes
            ):
                os.pwrite(out.fileno(), bytes(preamble_bytes), 0)
            if durable:
                os.fsync(out.fileno())
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return str(Path(tmp_name).relative_to(data_dir()))


def _copy(src, out, size: int) -> None:
    try:
        copied = 0
        while copied < size:
            n = os.copy_file_range(src.fileno(), out.fileno(), size - copied)
            if n == 0:
                break  # the source shrank meanwhile: what is copied is what is checked
            copied += n
    except (AttributeError, OSError):  # no copy_file_range here, or across file systems
        src.seek(0)
        out.seek(0)
        out.truncate()
        shutil.copyfileobj(src, out, 1 << 20)


def object_publish(staged: str, sha256: str, *, sync_staged: bool = False) -> tuple[str, bool]:
    """Give a staged file its final name: (relative path, True). Its folder, and the
    folders above that gained an entry, are fsynced together (the file system commits
    them at once) before this returns; with ``sync_staged`` the file itself first. On
    S3 the staged file is uploaded (S3 answers once it is durable), checked, removed."""
    relative = object_relative_path(sha256)
    if (s3 := _s3()) is not None:
        try:
            s3.upload(object_path(staged), relative, sha256)
        finally:
            object_path(staged).unlink(missing_ok=True)
        return relative, True
    final = object_path(relative)
    if sync_staged:
        fd = os.open(object_path(staged), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    changed = [final.parent]
    if not final.parent.exists():
        if not final.parent.parent.exists():
            changed.append(final.parent.parent.parent)
        final.parent.mkdir(parents=True, exist_ok=True)
        changed.append(final.parent.parent)
    try:
        os.replace(object_path(staged), final)
    except BaseException:
        object_path(staged).unlink(missing_ok=True)
        raise
    _fsync_dirs(changed)
    return relative, True


_syncers: dict[int, ThreadPoolExecutor] = {}


def _fsync_dirs(folders: list[Path]) -> None:
    """fsync each folder, concurrently, and wait for all."""
    if len(folders) == 1:
        _fsync_dir(folders[0])
        return
    # One pool per process: a forked reader process must not inherit the parent's.
    pool = _syncers.get(os.getpid())
    if pool is None:
        pool = _syncers[os.getpid()] = ThreadPoolExecutor(4, thread_name_prefix="fsync")
    for done in [pool.submit(_fsync_dir, folder) for folder in folders]:
        done.result()


def objects_publish(staged: list[tuple[str, str]]) -> list[tuple[str, bool] | OSError]:
    """`object_publish` for many staged files at once, given as (staged, SHA-256) pairs,
    which must not be fsynced yet: each gets its result, or the error that kept it out.

    On the filesystem every file is fsynced, then renamed, then every folder that
    changed is fsynced, each step spread over threads: the batch waits on the disk about
    as long as one file would, and each folder is fsynced once for the whole batch.
    """
    if _s3() is not None:
        return [_published_or_error(name, sha256) for name, sha256 in staged]
    results: list[tuple[str, bool] | OSError] = []
    folders: dict[Path, list[int]] = {}
    synced = _fsync_each([object_path(name) for name, _ in staged])
    for n, ((name, sha256), error) in enumerate(zip(staged, synced, strict=True)):
        relative = object_relative_path(sha256)
        final = object_path(relative)
        changed = [final.parent]
        try:
            if error is not None:
                raise error
            if not final.parent.is_dir():
                if not final.parent.parent.is_dir():
                    changed.append(final.parent.parent.parent)
                final.parent.mkdir(parents=True, exist_ok=True)
                changed.append(final.parent.parent)
            os.replace(object_path(name), final)
        except OSError as exc:
            object_path(name).unlink(missing_ok=True)
            results.append(exc)
            continue
        results.append((relative, True))
        for folder in changed:
            folders.setdefault(folder, []).append(n)
    for folder, error in zip(folders, _fsync_each(list(folders)), strict=True):
        if error is not None:  # renamed, but not durably: no index row may name it
            for n in folders[folder]:
                results[n] = error
    return results


def _published_or_error(staged: str, sha256: str) -> tuple[str, bool] | OSError:
    try:
        return object_publish(staged, sha256, sync_staged=True)
    except OSError as exc:
        return exc


_batch_syncers: dict[int, ThreadPoolExecutor] = {}


def _fsync_each(paths: list[Path]) -> list[OSError | None]:
    """fsync every path, in runs over 8 threads (the disk takes many at once); for each,
    None or the error."""

    def run(part: list[Path]) -> list[OSError | None]:
        errors: list[OSError | None] = []
        for path in part:
            try:
                _fsync_dir(path)  # opens read-only: a file or a folder alike
                errors.append(None)
            except OSError as exc:
                errors.append(exc)
        return errors

    if len(paths) < 2:
        return run(paths)
    pool = _batch_syncers.get(os.getpid())
    if pool is None:
        pool = _batch_syncers[os.getpid()] = ThreadPoolExecutor(8, thread_name_prefix="sync")
    size = -(-len(paths) // 8)
    parts = [paths[i : i + size] for i in range(0, len(paths), size)]
    return [error for part in pool.map(run, parts) for error in part]


def object_discard(staged: str) -> None:
    """Remove a staged file that is not to be kept (a repeat, or a refused object)."""
    object_path(staged).unlink(missing_ok=True)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def object_delete(relative: str) -> None:
    """Remove one stored object (one no index row names); gone already is fine."""
    if (s3 := _s3()) is not None:
        s3.delete(relative)
        return
    path = object_path(relative)
    path.unlink(missing_ok=True)
    _fsync_dir(path.parent)


@dataclass(frozen=True)
class StoredFile:
    """A file found in the object store: its path relative to the data folder, and age."""

    relative: str
    modified_at: float

    @property
    def sha256(self) -> str:
        return Path(self.relative).stem


def _walk(want_temporary: bool) -> Iterator[StoredFile]:
    root = data_dir() / OBJECTS
    if not root.is_dir():
        return
    if want_temporary and (root / ".incoming").is_dir():
        for entry in sorted(os.scandir(root / ".incoming"), key=lambda e: e.name):
            if entry.is_file() and entry.name.startswith(TEMPORARY_PREFIX):
                yield StoredFile(f"{INCOMING}/{entry.name}", entry.stat().st_mtime)
    for first in sorted(p for p in root.iterdir() if p.is_dir() and p.name != ".incoming"):
        for second in sorted(p for p in first.iterdir() if p.is_dir()):
            for entry in sorted(os.scandir(second), key=lambda e: e.name):
                temporary = entry.name.startswith(TEMPORARY_PREFIX)
                if not entry.is_file() or temporary != want_temporary:
                    continue
                relative = f"{OBJECTS}/{first.name}/{second.name}/{entry.name}"
                yield StoredFile(relative, entry.stat().st_mtime)


def objects_scan() -> Iterator[StoredFile]:
    """Every stored object, in the order of its relative path (as text)."""
    if (s3 := _s3()) is not None:
        return (
            StoredFile(relative, modified)
            for relative, modified in s3.scan(OBJECTS)
            if not relative.startswith(f"{INCOMING}/")
        )
    return _walk(want_temporary=False)


def temporaries_scan() -> Iterator[StoredFile]:
    """Every temporary file a write left behind (``.incoming-*.part``): on the local
    disk, where writes are staged whichever the store."""
    return _walk(want_temporary=True)


def temporary_delete(relative: str) -> None:
    """Remove a temporary file left by an interrupted write."""
    name = Path(relative).name
    if not (name.startswith(TEMPORARY_PREFIX) and name.endswith(TEMPORARY_SUFFIX)):
        raise ValueError(f"{relative} is not a temporary file of the object store")
    object_path(relative).unlink(missing_ok=True)


# -- a run's files: volumes, masks, transforms ------------------------------------------
def derived_publish(relative: str) -> None:
    """Make a run's file, written under the data folder at ``relative``, readable by
    every machine: on the filesystem it is already where it belongs (a shared data
    folder); on S3 it is uploaded with its SHA-256 (the local file stays, as a cache)."""
    if (s3 := _s3()) is not None:
        local = data_dir() / relative
        s3.upload(local, relative, file_sha256(local))


def derived_local(relative: str) -> Path:
    """A local path to read a run's file from (`derived_publish`): under the data folder,
    fetched from the bucket on S3 when this machine did not write it (checked against
    the SHA-256 stored with it)."""
    if (s3 := _s3()) is not None:
        return s3.fetch(relative, data_dir() / relative, None)
    return data_dir() / relative
