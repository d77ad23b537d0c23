"""Reading and checking incoming files, one by one or in reader threads.

`source_inspect` reads one source and checks it (`imaging.core.dicom.inspect`). For a
folder import, `sources_inspect` hands the files on disk to reader threads, which copy
each file into the object store's staging folder (by the kernel), check and hash that
copy (so what is indexed is exactly what is stored) and start writing it to the disk;
the importing thread then decides what is new, has the staged copies of a batch fsynced
and named together, or discards them, and writes the index. Files keep their order.

Threads, not processes: copying, hashing and waiting on the disk release the
interpreter lock, and a plain image is read without pydicom (`inspect_fast`), so two
threads keep both cores busy with none of the start-up, copied memory and pickled
results of reader processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import zipfile
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from imaging.core.dicom.inspect import (
    PREAMBLE_LENGTH,
    DicomRejected,
    HeaderCache,
    InspectedInstance,
    instance_inspect,
    instance_inspect_file,
)
from imaging.ingest.sources import IngestSource, SourceRefused
from imaging.store import (
    object_discard,
    object_path,
    object_present,
    object_relative_path,
    object_stage_copy,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReadLimits:
    """How large a file may be, and how large its pixels may decode."""

    max_file_bytes: int
    max_decoded_bytes: int


@dataclass(frozen=True)
class Inspected:
    """One source read and checked: the instance, or the reason it is refused.

    A reader thread leaves ``item.data`` empty and instead either ``staged`` names the
    staged copy holding the bytes (not fsynced yet), or ``in_store`` says an object of
    that name and size was already stored.
    """

    name: str
    item: InspectedInstance | None = None
    reason: str = ""
    size_bytes: int = 0
    staged: str | None = None
    in_store: bool = False
    #: A copy being staged meanwhile (in this process only): see `IngestSource.staging`.
    staging: Future | None = None


def _size_reason(size: int, limit: int) -> str:
    return f"{size / 2**20:.1f} MB is over the {limit / 2**20:.0f} MB limit"


def source_inspect(src: IngestSource, *, limits: ReadLimits, headers: HeaderCache) -> Inspected:
    """Read and check ``src``; never raises for a bad file. A copy ``src`` was staging
    meanwhile stays with an accepted file and is removed with a refused one."""
    found = _source_inspect(src, limits=limits, headers=headers)
    if src.staging is None:
        return found
    if found.item is None or found.item.data[:PREAMBLE_LENGTH].count(0) != PREAMBLE_LENGTH:
        staging_discard(src.staging)
        return found
    return dataclasses.replace(found, staging=src.staging)


def staging_discard(staging: Future) -> None:
    """Remove a copy staged meanwhile, once its write has ended."""
    with contextlib.suppress(OSError):  # never written: nothing to remove
        object_discard(staging.result())


def _source_inspect(src: IngestSource, *, limits: ReadLimits, headers: HeaderCache) -> Inspected:
    if src.size is not None and src.size > limits.max_file_bytes:
        return Inspected(src.name, reason=_size_reason(src.size, limits.max_file_bytes))
    try:
        data = src.read()
    except SourceRefused as exc:
        return Inspected(src.name, reason=str(exc))
    except (OSError, zipfile.BadZipFile, RuntimeError) as exc:
        return Inspected(src.name, reason=f"cannot be read: {exc}")
    return data_inspect(src.name, data, limits=limits, headers=headers)


def data_inspect(
    name: str, data: bytes, *, limits: ReadLimits, headers: HeaderCache | None
) -> Inspected:
    """Check the bytes of one file; never raises for a bad file."""
    if len(data) > limits.max_file_bytes:
        return Inspected(name, reason=_size_reason(len(data), limits.max_file_bytes))
    try:
        item = instance_inspect(data, headers=headers, max_decoded_bytes=limits.max_decoded_bytes)
    except DicomRejected as exc:
        return Inspected(name, reason=str(exc))
    except Exception as exc:  # a reader bug must not stop the batch
        logger.error("unexpected %s while reading an incoming file", type(exc).__name__)
        return Inspected(name, reason=f"unreadable ({type(exc).__name__})")
    return Inspected(name, item=item, size_bytes=len(item.data))


# -- reader threads --------------------------------------------------------------------
def _file_read(name: str, path: str, limits: ReadLimits, headers: HeaderCache) -> Inspected:
    """In a reader thread: copy one file into the store's staging folder, then check
    and hash the copy (so what is indexed is exactly what is stored), and start writing
    it to the disk, which the batch's fsync then waits for."""
    size = Path(path).stat().st_size
    if size > limits.max_file_bytes:
        return Inspected(name, reason=_size_reason(size, limits.max_file_bytes))
    try:
        # fsynced when published, with the rest of its batch (`objects_publish`).
        staged = object_stage_copy(Path(path), durable=False)
    except OSError as exc:
        return Inspected(name, reason=f"cannot be read: {exc}")
    try:
        item = instance_inspect_file(
            object_path(staged),
            headers=headers,
            max_decoded_bytes=limits.max_decoded_bytes,
        )
    except DicomRejected as exc:
        object_discard(staged)
        return Inspected(name, reason=str(exc))
    except Exception as exc:  # a reader bug must not stop the import
        object_discard(staged)
        logger.error("unexpected %s while reading an incoming file", type(exc).__name__)
        return Inspected(name, reason=f"unreadable ({type(exc).__name__})")
    try:
        size = _writeback_start(object_path(staged))
        in_store = object_present(object_relative_path(item.sha256), size=size)
    except OSError as exc:
        object_discard(staged)
        return Inspected(name, reason=f"cannot be read: {exc}")
    if in_store:
        object_discard(staged)
        staged = None
    return Inspected(name, item=item, size_bytes=size, staged=staged, in_store=in_store)


def _writeback_start(path: Path) -> int:
    """Start writing a staged copy to the disk now (its pages are not read again), so
    that the fsync of its batch finds little left to do; its size."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if hasattr(os, "posix_fadvise"):
            # Linux starts the writeback of dirty pages here, then drops clean ones.
            with contextlib.suppress(OSError):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def _pool(workers: int) -> ThreadPoolExecutor | None:
    """Reader threads, or None: files are then read one by one as they come."""
    if workers < 2:
        return None
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reader")


def sources_inspect(
    sources: Iterable[IngestSource],
    *,
    limits: ReadLimits,
    headers: HeaderCache,
    workers: int = 1,
    window_bytes: int = 256 * 2**20,
    max_ahead: int = 256,
) -> Iterator[Inspected]:
    """Each source read and checked, in order. With ``workers`` > 1 files on disk go to
    reader threads, at most ``window_bytes`` and ``max_ahead`` files ahead of the caller
    (which meanwhile publishes and indexes a batch); other sources (zip entries,
    uploads) are read here as they come."""
    pool = _pool(workers)
    if pool is None:
        for src in sources:
            yield source_inspect(src, limits=limits, headers=headers)
        return
    ahead: deque[tuple[str, Future | None, Inspected | None, int]] = deque()
    in_flight = 0
    try:
        for src in sources:
            if src.path is not None and (src.size or 0) <= limits.max_file_bytes:
                size = src.size or 0
                future = pool.submit(_file_read, src.name, str(src.path), limits, headers)
                ahead.append((src.name, future, None, size))
                in_flight += size
            else:
                ahead.append(
                    (src.name, None, source_inspect(src, limits=limits, headers=headers), 0)
                )
            while ahead and (in_flight > window_bytes or len(ahead) > max_ahead):
                found, in_flight = _next(ahead, in_flight)
                yield found
        while ahead:
            found, in_flight = _next(ahead, in_flight)
            yield found
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _discard_unused(ahead)


def _next(ahead: deque, in_flight: int) -> tuple[Inspected, int]:
    name, future, done, size = ahead.popleft()
    if future is None:
        return done, in_flight
    try:
        return future.result(), in_flight - size
    except Exception as exc:  # a reader bug must not stop the import
        reason = f"could not be read: the reader failed ({type(exc).__name__})"
        return Inspected(name, reason=reason), in_flight - size


def _discard_unused(ahead: deque) -> None:
    """Files staged for sources the import stopped before (an error): removed."""
    for _, future, _, _ in ahead:
        if future is None or future.cancelled() or future.exception() is not None:
            continue
        staged = future.result().staged
        if staged:
            object_discard(staged)
