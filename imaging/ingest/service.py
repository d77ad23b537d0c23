"""One ingest service behind every door: folder, upload, REST, C-STORE and DICOMweb.

Each file is checked (`imaging.core.dicom.inspect`), written to the object store and
fsynced, and only then indexed; a batch of files is indexed in one transaction, so a
crash at any moment leaves no row without its file (at worst a file without its row,
which the session's journal lists, `imaging.ingest.journal`, so that the reaper of a
dead session indexes it; ``manage.py verify_storage --repair`` finds any other). The same SOP instance sent again
with the same bytes is a duplicate and changes nothing; different bytes under a stored
SOP Instance UID are a conflict and are refused. A file whose values the database
refuses is refused alone: the others of its batch are stored. A file its sender was told
is stored (a group commit) is never deleted, even when it turns out to conflict: its
issue names where it is kept (`imaging.ingest.outcomes.acknowledged_kept`). A file an
error stops is counted as refused, like any refusal. When an import ends,
every image series that received new instances is queued for processing once the
transaction commits. The session records the process working on it and a heartbeat, so
that one whose process died is found and marked failed (`imaging.ingest.reap`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db import DataError, IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from imaging.core.dicom.inspect import HeaderCache, text_clean
from imaging.ingest.index import (
    Rows,
    instance_row,
    misfiled_reason,
    owners_of,
    parents_for,
    stored_dataset_hashes,
)
from imaging.ingest.journal import (
    journal_append,
    journal_clear,
)
from imaging.ingest.outcomes import (
    FileOutcome,
    acknowledged_kept,
    refused_outcome,
    repeat_outcome,
    stored_outcome,
)
from imaging.ingest.readers import Inspected, ReadLimits, sources_inspect
from imaging.ingest.sessions import owner_here
from imaging.ingest.sources import IngestSource, sources_from_paths
from imaging.ingest.writes import Share, discard, writes_start
from imaging.models import ANALYSED_MODALITIES, IngestIssue, IngestSession, Instance, Series
from imaging.pipeline.queue import study_queue
from imaging.store import object_delete
from patients.audit import audit_record, client_address

logger = logging.getLogger(__name__)

#: Files written at once: fsync waits on the disk, not the interpreter.
WRITE_THREADS = 8
#: With group commits, rows wait at most this long for the next commit.
GROUP_COMMIT_WAIT_S = 0.5


@dataclass
class _Written:
    """A new file on disk, waiting for its index row."""

    index: int
    found: Inspected
    relative: str
    written_now: bool


@dataclass
class _Staged:
    """A batch whose repeats are sorted out and whose new files are being written."""

    outcomes: dict[int, FileOutcome]
    fresh: list[tuple[int, Inspected]]
    writes: list[Future | Share]


class _Unindexed:
    """SOP instances this process has stored but not yet indexed (group commits), so a
    repeat from another association is judged against them before it is answered; only
    once written, so that a failed write never makes its resend a "duplicate"."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hashes: dict[str, str] = {}

    def get(self, uid: str) -> str | None:
        with self._lock:
            return self._hashes.get(uid)

    def add(self, uid: str, dataset_sha256: str) -> None:
        with self._lock:
            self._hashes[uid] = dataset_sha256

    def remove(self, uids: Iterable[str]) -> None:
        with self._lock:
            for uid in uids:
                self._hashes.pop(uid, None)


_UNINDEXED = _Unindexed()


@dataclass
class IngestRun:
    """An ingest session in progress; add sources, then `finish`.

    ``group_commit`` > 1 keeps the index rows of up to that many stored files (or
    `GROUP_COMMIT_WAIT_S` worth) for one commit: the files themselves are durable when
    `add` returns (the listener's C-STORE responses), the rows follow in the next commit
    and at `flush`/`finish`. ``readers`` > 1 reads files on disk in that many threads.
    """

    source: str
    origin: str = ""
    user: object = None
    process: bool = True
    batch_size: int = 64
    #: Carry on an open session begun by an earlier request (chunked uploads).
    resume: IngestSession | None = None
    #: Record this process as the session's owner while it works on it, with heartbeats
    #: (False: a closer acting on another's session, which neither owns nor beats).
    claim: bool = True
    group_commit: int = 1
    readers: int = 1
    session: IngestSession = field(init=False)
    # Rows this run has committed, by UID, and the owners it has claimed: later batches
    # of the same series need no queries for them.
    _known: Rows = field(default_factory=Rows, init=False)
    _headers: HeaderCache = field(default_factory=dict, init=False)
    _deferred: list[_Written] = field(default_factory=list, init=False)
    _deferred_outcomes: list[FileOutcome] = field(default_factory=list, init=False)
    _deferred_since: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        owner = owner_here() if self.claim else ""
        if self.resume is not None:
            if self.resume.status != IngestSession.Status.RUNNING:
                raise ValueError(f"ingest session {self.resume.pk} is already closed")
            self.session = self.resume
            if owner:
                IngestSession.objects.filter(pk=self.session.pk).update(
                    owner=owner, heartbeat_at=timezone.now()
                )
            return
        self.session = IngestSession.objects.create(
            source=self.source,
            origin=text_clean(self.origin)[:255],
            user=self.user if getattr(self.user, "is_authenticated", False) else None,
            owner=owner,
            heartbeat_at=timezone.now(),
        )

    # -- public -------------------------------------------------------------------
    def add(
        self,
        sources: Iterable[IngestSource],
        *,
        on_file: Callable[[FileOutcome], None] | None = None,
    ) -> list[FileOutcome]:
        """Import ``sources``; one bad file never stops the rest.

        Batches overlap: while one batch's files are written and fsynced (waiting on the
        disk), the next batch is read and checked (working the CPU); a batch is indexed
        once its files are safely on disk.
        """
        outcomes: list[FileOutcome] = []

        def emit(done: Iterable[FileOutcome]) -> None:
            for outcome in done:
                outcomes.append(outcome)
                if on_file:
                    on_file(outcome)

        unanswered: list[list[Inspected]] = []  # read, not answered: an error stops them
        with ThreadPoolExecutor(max_workers=WRITE_THREADS) as writer:
            in_flight: _Staged | None = None
            try:
                for batch, refused in self._batches(sources):
                    if refused:
                        self._record(refused)
                        emit(refused)
                    if not batch:
                        continue
                    unanswered.append(batch)
                    staged = self._stage(batch, writer)
                    if in_flight is not None:
                        done = self._commit(in_flight)
                        unanswered.pop(0)
                        emit(done)
                    in_flight = staged
                if in_flight is not None:
                    done = self._commit(in_flight)
                    unanswered.pop(0)
                    emit(done)
            except Exception as exc:
                self._stopped_count(exc, [found for batch in unanswered for found in batch])
                raise
        if self._deferred and (
            len(self._deferred) >= self.group_commit
            or time.monotonic() - self._deferred_since >= GROUP_COMMIT_WAIT_S
        ):
            self.flush()
        return outcomes

    def flush(self) -> None:
        """Commit the index rows kept for a group commit."""
        if not self._deferred and not self._deferred_outcomes:
            return
        written, kept_back = self._deferred, self._deferred_outcomes
        # Counted in the same transaction as the rows: the stored files, and the
        # duplicates and refusals answered since the last commit.
        outcomes: dict[int, FileOutcome] = {}
        for n, entry in enumerate(written):
            entry.index = n
            outcomes[n] = stored_outcome(entry.found)
        for n, outcome in enumerate(kept_back, start=len(written)):
            outcomes[n] = outcome
        # When the database is unreachable this raises and the rows wait for the next
        # try (at the latest `finish`); their files are already durable. Their senders
        # were told they are stored: none is deleted, whatever the index says.
        self._index_all(written, outcomes)
        self._deferred, self._deferred_outcomes = [], []
        _UNINDEXED.remove(w.found.item.sop_instance_uid for w in written)

    def _stopped_count(self, exc: Exception, stopped: list[Inspected]) -> None:
        """Count the files an error stopped as refused, like any refusal: at the next
        group commit (the database may be what failed), else now if the database answers."""
        refused = [refused_outcome(f, f"not stored: {type(exc).__name__}") for f in stopped]
        if self.group_commit > 1:
            self._deferred_outcomes.extend(refused)
            return
        try:
            self._record(refused)
        except Exception as error:  # only the type: a database message can quote values
            logger.warning("could not count files an error stopped: %s", type(error).__name__)

    def release(self) -> None:
        """This process stops working on the session (it stays open for later requests)."""
        self.flush()
        IngestSession.objects.filter(pk=self.session.pk).update(owner="")

    def finish(self, *, failed: str = "", silent_since=None) -> IngestSession:
        """Close the session and queue processing of every series that got new images.

        A session already closed (marked failed when its process was thought dead) stays
        as it is; the rows this finish wrote after that have their series queued (a
        reaper elsewhere could not read this machine's journal). ``silent_since``: the
        reaper's heartbeat reading; a session that heartbeated since lives, left running.
        """
        wrote = bool(self._deferred)
        self.flush()
        with transaction.atomic():
            session = IngestSession.objects.select_for_update().get(pk=self.session.pk)
            beat = session.heartbeat_at
            if silent_since is not None and beat is not None and beat > silent_since:
                self.session = session
                return session
            journal_clear(self.session.pk)  # every file it lists is indexed now
            if session.status != IngestSession.Status.RUNNING:
                if wrote:
                    self._queue_touched(session)
                self.session = session
                return session
            session.status = IngestSession.Status.FAILED if failed else IngestSession.Status.DONE
            session.finished_at = timezone.now()
            session.owner = ""
            session.save(update_fields=["status", "finished_at", "owner"])
            if failed:
                IngestIssue.objects.create(
                    session=session,
                    kind=IngestIssue.Kind.REJECTED,
                    file_name="(session)",
                    reason=text_clean(failed),
                )
            self._queue_touched(session)
        self.session = session
        return session

    # -- steps --------------------------------------------------------------------
    def _batches(
        self, sources: Iterable[IngestSource]
    ) -> Iterator[tuple[list[Inspected], list[FileOutcome]]]:
        """Checked files in batches of ``batch_size``, with the files refused meanwhile."""
        limits = ReadLimits(settings.RADTRACK_MAX_UPLOAD_BYTES, settings.RADTRACK_MAX_DECODED_BYTES)
        batch: list[Inspected] = []
        refused: list[FileOutcome] = []
        for found in sources_inspect(
            sources, limits=limits, headers=self._headers, workers=self.readers
        ):
            if found.item is None:
                refused.append(FileOutcome(found.name, "rejected", found.reason))
            else:
                batch.append(found)
            if len(batch) >= self.batch_size or len(refused) >= self.batch_size:
                yield batch, refused
                batch, refused = [], []
        if batch or refused:
            yield batch, refused

    def _stage(self, batch: list[Inspected], writer: ThreadPoolExecutor) -> _Staged:
        """Sort out repeats and misfiled objects, and start writing the rest."""
        outcomes: dict[int, FileOutcome] = {}
        known = stored_dataset_hashes([f.item.sop_instance_uid for f in batch])
        seen_in_batch: dict[str, str] = {}
        fresh: list[tuple[int, Inspected]] = []
        for index, found in enumerate(batch):
            uid = found.item.sop_instance_uid
            previous = known[uid] if uid in known else seen_in_batch.get(uid)
            if previous is None and self.group_commit > 1:
                previous = _UNINDEXED.get(uid)
            if previous is not None:
                outcomes[index] = repeat_outcome(found, previous)
                discard(found)
                continue
            seen_in_batch[uid] = found.item.dataset_sha256
            fresh.append((index, found))

        study_owner, series_owner = owners_of([f.item for _, f in fresh], self._known)
        keep = []
        for index, found in fresh:
            reason = misfiled_reason(found.item, study_owner, series_owner)
            if reason:
                outcomes[index] = refused_outcome(found, reason)
                discard(found)
            else:
                keep.append((index, found))
                self._known.study_patient[found.item.study.study_instance_uid] = (
                    found.item.patient.patient_id
                )
                self._known.series_study[found.item.series.series_instance_uid] = (
                    found.item.study.study_instance_uid
                )
        return _Staged(
            outcomes=outcomes, fresh=keep, writes=writes_start([f for _, f in keep], writer)
        )

    def _commit(self, staged: _Staged) -> list[FileOutcome]:
        """Index a staged batch once its files are on disk (or keep it for a group commit)."""
        outcomes = staged.outcomes
        written: list[_Written] = []
        for (index, found), future in zip(staged.fresh, staged.writes, strict=True):
            result = future.result()
            if isinstance(result, str):  # why it could not be stored
                outcomes[index] = refused_outcome(found, result)
                continue
            written.append(_Written(index, found, *result))
        outcomes.update({w.index: stored_outcome(w.found) for w in written})
        journal_append(session_pk=self.session.pk, relatives=(w.relative for w in written))
        if self.group_commit > 1:
            if not self._deferred:
                self._deferred_since = time.monotonic()
            self._deferred.extend(written)
            for entry in written:  # written: a repeat is judged against it from now on
                _UNINDEXED.add(entry.found.item.sop_instance_uid, entry.found.item.dataset_sha256)
            ordered = [outcomes[i] for i in sorted(outcomes)]
            self._deferred_outcomes.extend(o for o in ordered if o.status != "stored")
            return ordered
        late = self._index_all(written, outcomes)
        return [late.get(i, outcomes[i]) for i in sorted(outcomes)]

    def _index_all(
        self, written: list[_Written], outcomes: dict[int, FileOutcome]
    ) -> dict[int, FileOutcome]:
        """Index ``written`` in one transaction with the counters of ``outcomes``; when
        the database refuses, file by file. Returns the outcomes that changed."""
        try:
            with transaction.atomic():
                rows = self._index(written)
                self._record_rows([outcomes[i] for i in sorted(outcomes)])
            self._known.update(rows)
            return {}
        except (IntegrityError, DataError):
            # Stored meanwhile by another import, the same file twice, or a value the
            # database refuses: index one by one, so only that file is refused.
            pass
        changed: dict[int, FileOutcome] = {}
        for entry in written:
            outcome = self._index_one(entry)
            if outcome.status != "stored":
                changed[entry.index] = outcome
        final = {**outcomes, **changed}
        self._record([final[i] for i in sorted(final)])
        return changed

    def _index_one(self, entry: _Written) -> FileOutcome:
        # With a group commit, each sender was told its file is stored (`add` returned)
        # before its row is written here (`flush`): that file is never deleted.
        acknowledged = self.group_commit > 1
        item = entry.found.item
        try:
            with transaction.atomic():
                rows = self._index([entry])
            self._known.update(rows)
            return stored_outcome(entry.found)
        except IntegrityError:
            previous = stored_dataset_hashes([item.sop_instance_uid]).get(item.sop_instance_uid)
            outcome = repeat_outcome(entry.found, previous or "")
        except DataError as exc:
            logger.warning("the database refused an incoming file's values: %s", type(exc).__name__)
            refused = "the database refused a value read from it"
            outcome = refused_outcome(
                entry.found, refused if acknowledged else f"{refused}; nothing was stored"
            )
        if outcome.status == "duplicate":
            return outcome
        if acknowledged:
            return acknowledged_kept(outcome, entry.relative)
        if entry.written_now:
            object_delete(entry.relative)  # no row names it: a conflicting or refused file
        return outcome

    def _index(self, written: list[_Written]) -> Rows:
        new = Rows()
        if not written:
            return new
        rows = []
        added: dict[int, int] = {}
        for entry in written:
            series = parents_for(entry.found.item, new, self._known)
            added[series.pk] = added.get(series.pk, 0) + 1
            rows.append(
                instance_row(
                    entry.found.item,
                    series=series,
                    relative=entry.relative,
                    size_bytes=entry.found.size_bytes,
                    session=self.session,
                )
            )
        Instance.objects.bulk_create(rows)
        now = timezone.now()
        for series_pk, n in added.items():
            Series.objects.filter(pk=series_pk).update(
                slice_count=F("slice_count") + n, updated_at=now
            )
        return new

    def _record(self, outcomes: list[FileOutcome]) -> None:
        """Add outcomes to the session's counters and keep its per-file issues."""
        if outcomes:
            with transaction.atomic():
                self._record_rows(outcomes)

    def _record_rows(self, outcomes: list[FileOutcome]) -> None:
        if not outcomes:
            return
        counter = {
            "stored": "stored",
            "duplicate": "duplicates",
            "conflict": "conflicts",
            "rejected": "rejected",
        }
        increments: dict[str, int] = {"files_seen": 0}
        issues = []
        for outcome in outcomes:
            increments["files_seen"] += 1
            increments[counter[outcome.status]] = increments.get(counter[outcome.status], 0) + 1
            if outcome.status in ("rejected", "conflict"):
                issues.append(self._issue(outcome, outcome.status, outcome.reason))
            for warning in outcome.warnings:
                increments["warnings"] = increments.get("warnings", 0) + 1
                issues.append(self._issue(outcome, IngestIssue.Kind.WARNING, warning))
        # Only the session's own process beats: a closer (the reaper) must not look alive.
        beat = {"heartbeat_at": timezone.now()} if self.claim else {}
        IngestSession.objects.filter(pk=self.session.pk).update(
            **beat, **{name: F(name) + n for name, n in increments.items()}
        )
        IngestIssue.objects.bulk_create(issues)

    def _issue(self, outcome: FileOutcome, kind: str, reason: str) -> IngestIssue:
        return IngestIssue(
            session=self.session,
            kind=kind,
            file_name=outcome.name[-1024:],
            reason=reason,
            sop_instance_uid=outcome.sop_instance_uid,
        )

    def _queue_touched(self, session: IngestSession) -> None:
        # Every series that got instances in this session, across all its requests.
        # The study is queued as a whole: its worker chooses the series to analyse.
        touched = Series.objects.filter(instances__ingest_session=session).distinct()
        studies: dict[int, list[Series]] = {}
        for series in touched:
            if series.modality not in ANALYSED_MODALITIES:
                series.state = Series.State.NOT_ANALYSED
                series.save(update_fields=["state", "updated_at"])
            elif self.process:
                studies.setdefault(series.study_id, []).append(series)
            else:
                series.state = Series.State.STORED
                series.save(update_fields=["state", "updated_at"])
        for changed in studies.values():
            study_queue(study=changed[0].study, series=changed)


def ingest_paths(
    *,
    paths: Iterable[Path],
    process: bool = True,
    on_file: Callable[[FileOutcome], None] | None = None,
    readers: int = 1,
) -> tuple[IngestSession, list[FileOutcome]]:
    """Import files, folders and zips from disk (``manage.py ingest``), with ``readers``
    reader threads; an import that stops (an error, Ctrl-C) is marked failed."""
    paths = list(paths)
    run = IngestRun(
        source=IngestSession.Source.FOLDER,
        origin=", ".join(map(str, paths))[:255],
        process=process,
        # Small enough that one batch is published and indexed while the next is read.
        batch_size=64,
        readers=readers,
    )
    try:
        outcomes = run.add(sources_from_paths(paths), on_file=on_file)
    except BaseException as exc:
        run.finish(failed=f"the import stopped: {type(exc).__name__}")
        raise
    return run.finish(), outcomes


def ingest_run(
    *,
    request,
    source: str,
    sources: Iterable[IngestSource],
    process: bool = True,
    resume: IngestSession | None = None,
    close: bool = True,
) -> tuple[IngestSession, list[FileOutcome]]:
    """Import ``sources`` in a session owned by the request's user, and audit it.

    With ``close=False`` the session stays open so that later requests (``resume``)
    add to it, and its series are queued for processing once, when it is closed.
    """
    run = IngestRun(
        source=source,
        origin=client_address(request) or "",
        user=request.user,
        process=process,
        resume=resume,
    )
    try:
        outcomes = run.add(sources)
    except Exception as exc:
        run.finish(failed=f"the import stopped: {type(exc).__name__}")
        raise
    if close:
        session = run.finish()
    else:
        run.release()
        session = IngestSession.objects.get(pk=run.session.pk)
    audit_record(request=request, action="images.upload", object=f"ingest session {session.pk}")
    return session, outcomes
