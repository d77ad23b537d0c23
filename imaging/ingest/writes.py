"""Writing checked files into the object store for the ingest service: one by one, or
the copies reader threads staged all together (`imaging.store.objects_publish`)."""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from imaging.core.dicom.inspect import InspectedInstance
from imaging.ingest.readers import Inspected, staging_discard
from imaging.store import (
    object_delete,
    object_discard,
    object_matches,
    object_publish,
    object_relative_path,
    object_write,
    objects_publish,
)

logger = logging.getLogger(__name__)

#: (relative path, whether written now), or why the file could not be stored.
Stored = tuple[str, bool] | str


@dataclass
class Share:
    """One file's part of a batch written together: its result in the batch's."""

    whole: Future
    position: int

    def result(self) -> Stored:
        return self.whole.result()[self.position]


def writes_start(kept: list[Inspected], writer: ThreadPoolExecutor) -> list[Future | Share]:
    """Start storing ``kept``, one result each: the copies reader threads staged are
    fsynced and named together, the others one by one; one C-STORE without a thread
    hand-over."""
    if len(kept) == 1:
        future: Future = Future()
        future.set_result(object_store(kept[0]))
        return [future]
    together = [found for found in kept if found.staged and found.staging is None]
    whole = writer.submit(_objects_store, together) if len(together) > 1 else None
    writes: list[Future | Share] = []
    shared = 0
    for found in kept:
        if whole is not None and found.staged and found.staging is None:
            writes.append(Share(whole, shared))
            shared += 1
        else:
            writes.append(writer.submit(object_store, found))
    return writes


def _objects_store(staged: list[Inspected]) -> list[Stored]:
    try:
        done = objects_publish([(found.staged, found.item.sha256) for found in staged])
    except OSError as exc:
        return [f"could not be stored: {exc}"] * len(staged)
    except Exception as exc:
        return [_unexpected(exc)] * len(staged)
    return [f"could not be stored: {r}" if isinstance(r, OSError) else r for r in done]


def object_store(found: Inspected) -> Stored:
    """Write one object to the store (fsynced), or give a staged one its final name."""
    item = found.item
    try:
        if found.staging is not None:  # written meanwhile: the same bytes, now named
            return object_publish(found.staging.result(), item.sha256)
        if found.staged:  # copied by a reader thread, not yet fsynced
            return object_publish(found.staged, item.sha256, sync_staged=True)
        if found.in_store:
            relative = _in_store_path(item)
            if relative:
                return relative, False
            return "the store held a damaged copy of this file, now removed: send it again"
        return object_write(item.data, item.sha256)
    except OSError as exc:  # the store's errors, S3's included (`StoreError`)
        return f"could not be stored: {exc}"
    except Exception as exc:
        return _unexpected(exc)


def _unexpected(exc: Exception) -> str:
    """Why a file an unexpected error kept out is refused: it alone, not its batch (only
    the error's type: its message could quote anything)."""
    logger.error("unexpected %s while storing an incoming file", type(exc).__name__)
    return f"not stored: an unexpected {type(exc).__name__} while writing it"


def _in_store_path(item: InspectedInstance) -> str:
    """The path of an object a reader thread found already stored, when its content is
    right; a damaged one (left by a crash mid-write) is removed."""
    relative = object_relative_path(item.sha256)
    if object_matches(relative, item.sha256):
        return relative
    object_delete(relative)
    return ""


def discard(found: Inspected) -> None:
    """Remove what was staged for a file that is not kept (a repeat, a refusal)."""
    if found.staged:
        object_discard(found.staged)
    if found.staging is not None:
        staging_discard(found.staging)
