"""Re-check the object store against the index, and repair what an interrupted import
left: every indexed file against the SHA-256 recorded when it arrived; files no index
row names (a crash between the write and the index, or rows of a group commit that
never came); temporary files of interrupted writes; and ingest sessions whose process
died. Repair indexes the orphaned files that are good DICOM objects (in a session of
source "repair"), removes the rest and the temporaries, and marks dead sessions failed;
but an orphan its sender was told is stored (an ingest issue says so) is never removed:
it is kept and reported.
Files younger than ``min_age_s`` are left alone: an import may still be writing them.
It works the same on either store (`imaging.store`: the filesystem or S3), reading every
object back and hashing it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from django.db.models import Q

from imaging.ingest.journal import stored_object_source
from imaging.ingest.outcomes import ACKNOWLEDGED_KEPT_AT
from imaging.ingest.reap import ingest_sessions_reap
from imaging.ingest.service import IngestRun
from imaging.ingest.sessions import DeadSession, dead_sessions
from imaging.models import IngestIssue, IngestSession, Instance
from imaging.store import (
    StoredFile,
    object_delete,
    object_sha256,
    objects_scan,
    temporaries_scan,
    temporary_delete,
)

logger = logging.getLogger(__name__)


@dataclass
class StorageCheck:
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    temporaries: list[str] = field(default_factory=list)
    dead: list[DeadSession] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt or self.orphans or self.temporaries or self.dead)


@dataclass
class StorageRepair:
    """What ``--repair`` did."""

    reindexed: int = 0
    removed: list[str] = field(default_factory=list)
    #: Orphans that could not be indexed and were kept, having been acknowledged.
    kept: list[str] = field(default_factory=list)
    temporaries_removed: int = 0
    sessions_failed: int = 0
    session: int | None = None


def storage_verify(
    *, on_instance: Callable[[], None] | None = None, min_age_s: float = 600.0
) -> StorageCheck:
    """Hash every stored file; find missing and changed files, orphans, temporaries and
    dead sessions."""
    result = StorageCheck()
    rows = Instance.objects.order_by("pk").values_list("sop_instance_uid", "stored_path", "sha256")
    for sop_instance_uid, relative, sha256 in rows.iterator(chunk_size=2000):
        result.checked += 1
        found = object_sha256(relative)
        if found is None:
            result.missing.append(sop_instance_uid)
        elif found != sha256:
            result.corrupt.append(sop_instance_uid)
        if on_instance:
            on_instance()
    cutoff = time.time() - min_age_s
    result.orphans = [f.relative for f in _unindexed(objects_scan()) if f.modified_at < cutoff]
    result.temporaries = [f.relative for f in temporaries_scan() if f.modified_at < cutoff]
    result.dead = dead_sessions()
    return result


def _unindexed(files) -> list[StoredFile]:
    """The stored files no index row names, looked up one first-level folder at a time
    (by the indexed SHA-256 prefix), so memory stays small on a large store."""
    found: list[StoredFile] = []
    prefix, named = None, set()
    for stored in files:
        first = stored.sha256[:2]
        if first != prefix:
            prefix = first
            named = set(
                Instance.objects.filter(sha256__startswith=first).values_list(
                    "stored_path", flat=True
                )
            )
        if stored.relative not in named:
            found.append(stored)
    return found


def storage_repair(*, check: StorageCheck) -> StorageRepair:
    """Index the good orphans, remove the others (but those acknowledged as stored: kept
    and reported) and the stale temporaries, and mark dead sessions failed."""
    repair = StorageRepair()
    for relative in check.temporaries:
        temporary_delete(relative)
        repair.temporaries_removed += 1
    repair.sessions_failed = len(ingest_sessions_reap())
    if not check.orphans:
        return repair
    run = IngestRun(source=IngestSession.Source.REPAIR, origin="verify_storage --repair")
    sources = [stored_object_source(relative) for relative in check.orphans]
    outcomes = {o.name: o for o in run.add(sources)}
    repair.session = run.finish().pk
    for relative in check.orphans:
        outcome = outcomes[relative]
        if outcome.status == "stored":
            repair.reindexed += 1
        elif Instance.objects.filter(stored_path=relative).exists():
            continue
        elif outcome.status != "duplicate" and _acknowledged(relative):
            # Its sender was told it is stored, and no stored copy holds its data set.
            line = f"{relative}: {outcome.status}: {outcome.reason}; kept: acknowledged as stored"
            logger.warning("verify_storage --repair: %s", line)
            repair.kept.append(line)
        else:
            # A copy of an indexed object, a conflicting or damaged file, that no
            # ingest issue says was acknowledged as stored, and that nothing names.
            object_delete(relative)
            repair.removed.append(f"{relative}: {outcome.status}: {outcome.reason}")
    return repair


def _acknowledged(relative: str) -> bool:
    """Whether an ingest issue says the file at ``relative`` had been acknowledged as
    stored: a group commit found it conflicting (`imaging.ingest.outcomes.
    acknowledged_kept`), or the reaper could not index it from the journal of a C-STORE
    session, whose senders are answered before the rows are written."""
    return IngestIssue.objects.filter(
        Q(reason__endswith=f"{ACKNOWLEDGED_KEPT_AT}{relative}")
        | Q(session__source=IngestSession.Source.DIMSE, file_name=relative)
    ).exists()
