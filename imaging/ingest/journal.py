"""Which stored files an import has not indexed yet, journalled per ingest session, so
that when its process dies, or lives on without closing it, the reaper indexes them.

An import writes a file (fsynced) before its index row commits; the C-STORE listener
keeps the rows of several instances for one commit (a group commit), having already told
each sender its instance is stored. A process killed in between leaves files no row
names. Each import appends the relative path of every file it stores to its session's
journal (``objects/.incoming/session-<pk>.stored`` under the data folder, beside the
files being staged) before the rows are written, and removes the journal as the
session is closed, once its rows are all written (a close that fails before, the
database away, leaves it).
`imaging.ingest.reap.ingest_sessions_reap` reads the journal of a dead session (its
process gone, or silent for ``RADTRACK_INGEST_STALE_MINUTES``) and indexes, into that
session, the files it lists that no row names.

The journal is not fsynced: a killed process's writes are kept by the kernel, and only a
crash of the whole machine can lose its last lines, whose files ``manage.py
verify_storage --repair`` then finds by scanning the store. With the store on S3 the
journal is on the local disk of the machine that ran the import: its reaper (the
listener's restart, or a worker there) reads it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from imaging.ingest.sources import IngestSource, SourceRefused
from imaging.models import Instance
from imaging.store import INCOMING, object_path, object_read, object_size

_NAME = re.compile(r"^session-(\d+)\.stored$")


def journal_path(session_pk: int) -> Path:
    return object_path(f"{INCOMING}/session-{session_pk}.stored")


def journal_append(*, session_pk: int, relatives: Iterable[str]) -> None:
    """Note files just stored for ``session_pk`` (before their rows are written)."""
    lines = "".join(f"{relative}\n" for relative in relatives)
    if not lines:
        return
    path = journal_path(session_pk)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(lines)


def journal_clear(session_pk: int) -> None:
    """The session is closed and its rows written: its journal goes."""
    journal_path(session_pk).unlink(missing_ok=True)


def journal_sessions() -> list[int]:
    """The sessions that have a journal on this machine."""
    folder = object_path(INCOMING)
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _NAME.match(p.name)))


def journal_unindexed(session_pk: int) -> list[str]:
    """The files the journal of ``session_pk`` lists that are stored and that no index
    row names, in the order they were stored."""
    try:
        listed = journal_path(session_pk).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    # A line cut short by the kill is not a relative path of the store: left out.
    relatives = list(
        dict.fromkeys(r for r in listed if r.startswith("objects/") and r.endswith(".dcm"))
    )
    indexed = set(
        Instance.objects.filter(stored_path__in=relatives).values_list("stored_path", flat=True)
    )
    return [r for r in relatives if r not in indexed and object_size(r) is not None]


def stored_object_source(relative: str) -> IngestSource:
    """A stored object to index as an import's source; read back, it must hash to the
    SHA-256 its name gives (else it is refused as damaged)."""
    name = PurePosixPath(relative).stem

    def read() -> bytes:
        data = object_read(relative)
        if hashlib.sha256(data).hexdigest() != name:
            raise SourceRefused("its content does not match its name: the file is damaged")
        return data

    return IngestSource(relative, read, object_size(relative))
