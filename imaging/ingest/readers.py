"""Reading and checking incoming files, in this process or in a pool of reader processes.

`source_inspect` reads one source and checks it (`imaging.core.dicom.inspect`). For a
folder import, `sources_inspect` hands the files on disk to reader processes, which copy
each file into the object store's staging folder (by the kernel, fsynced) and check and
hash that copy, so that both cores work, what is indexed is exactly what is stored, and
only a small description of each file comes back; the importing process then decides what is new and gives staged files
their final names, or discards them, and writes the index. Files keep their order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import multiprocessing
import zipfile
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
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

    A reader process leaves ``item.data`` empty and instead either ``staged`` names the
    staged copy holding the bytes (fsynced), or ``in_store`` says an object of that name
    and size was already stored.
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


# -- reader processes ------------------------------------------------------------------
_worker_headers: HeaderCache = {}


def _worker_read(name: str, path: str, limits: ReadLimits) -> Inspected:
    """In a reader process: copy one file into the store's staging folder, then check
    and hash the copy (so what is indexed is exactly what is stored); no bytes travel
    back to the importing process."""
    size = Path(path).stat().st_size
    if size > limits.max_file_bytes:
        return Inspected(name, reason=_size_reason(size, limits.max_file_bytes))
    try:
        # fsynced when published, with the rest of its batch (`object_publish`).
        staged = object_stage_copy(Path(path), durable=False)
    except OSError as exc:
        return Inspected(name, reason=f"cannot be read: {exc}")
    try:
        item = instance_inspect_file(
            object_path(staged),
            headers=_worker_headers,
            max_decoded_bytes=limits.max_decoded_bytes,
        )
    except DicomRejected as exc:
        object_discard(staged)
        return Inspected(name, reason=str(exc))
    except Exception as exc:  # a reader bug must not stop the import
        object_discard(staged)
        logger.error("unexpected %s while reading an incoming file", type(exc).__name__)
        return Inspected(name, reason=f"unreadable ({type(exc).__name__})")
    size = object_path(staged).stat().st_size
    if object_present(object_relative_path(item.sha256), size=size):
        object_discard(staged)
        staged, in_store = None, True
    else:
        in_store = False
    return Inspected(name, item=item, size_bytes=size, staged=staged, in_store=in_store)


def _pool(workers: int) -> ProcessPoolExecutor | None:
    """Reader processes forked from this one (they inherit its settings); None where
    fork is unavailable, and then files are read in this process."""
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return None
    # Objects that exist now are left out of the children's garbage collection, which
    # would otherwise touch (and so copy) most of the parent's memory pages.
    gc.freeze()
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))


def sources_inspect(
    sources: Iterable[IngestSource],
    *,
    limits: ReadLimits,
    headers: HeaderCache,
    workers: int = 1,
    window_bytes: int = 256 * 2**20,
) -> Iterator[Inspected]:
    """Each source read and checked, in order. With ``workers`` > 1 files on disk go to
    reader processes (at most ``window_bytes`` of them in flight); other sources (zip
    entries, uploads) are read here as they come."""
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
                future = pool.submit(_worker_read, src.name, str(src.path), limits)
                ahead.append((src.name, future, None, size))
                in_flight += size
            else:
                ahead.append(
                    (src.name, None, source_inspect(src, limits=limits, headers=headers), 0)
                )
            while ahead and (in_flight > window_bytes or len(ahead) > 4 * workers):
                found, in_flight = _next(ahead, in_flight)
                yield found
        while ahead:
            found, in_flight = _next(ahead, in_flight)
            yield found
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        gc.unfreeze()
        _discard_unused(ahead)


def _next(ahead: deque, in_flight: int) -> tuple[Inspected, int]:
    name, future, done, size = ahead.popleft()
    if future is None:
        return done, in_flight
    try:
        return future.result(), in_flight - size
    except Exception as exc:  # a reader process died (killed, out of memory)
        reason = f"could not be read: the reader process failed ({type(exc).__name__})"
        return Inspected(name, reason=reason), in_flight - size


def _discard_unused(ahead: deque) -> None:
    """Files staged for sources the import stopped before (an error): removed."""
    for _, future, _, _ in ahead:
        if future is None or future.cancelled() or future.exception() is not None:
            continue
        staged = future.result().staged
        if staged:
            object_discard(staged)
