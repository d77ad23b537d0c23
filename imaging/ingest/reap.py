"""Ingest sessions whose process died or went silent, closed with the reason (the
listener at start, Celery beat, `verify_storage --repair`).

A dead session's journal (`imaging.ingest.journal`) lists the files it stored and had
not indexed, whose senders were told they are stored: they are indexed into it before it
is closed, and its series queued. A session judged silent that heartbeats before it is
closed is left running (`IngestRun.finish` with ``silent_since``).
"""

from __future__ import annotations

from imaging.ingest.journal import (
    journal_clear,
    journal_sessions,
    journal_unindexed,
    stored_object_source,
)
from imaging.ingest.service import IngestRun
from imaging.ingest.sessions import dead_sessions
from imaging.models import IngestSession

__all__ = ["ingest_sessions_reap", "journals_of_closed_sessions_index"]


def ingest_sessions_reap() -> list[tuple[IngestSession, str]]:
    """Mark failed, with the reason, every running session whose process died or that
    stopped making progress, having indexed into it the files it stored and had not
    indexed yet (its journal, `imaging.ingest.journal`; the C-STORE senders were told
    they are stored), and queue what it stored; the sessions and reasons."""
    reaped = []
    for found in dead_sessions():
        run = IngestRun(source=found.session.source, resume=found.session, claim=False)
        reason = found.reason
        orphans = journal_unindexed(found.session.pk)
        if orphans:
            outcomes = run.add([stored_object_source(r) for r in orphans])
            indexed = sum(o.status == "stored" for o in outcomes)
            reason += (
                f"; {indexed} of {len(orphans)} files it had stored but not indexed were indexed"
            )
        # Judged silent on the heartbeat read above: one written since means it lives.
        silent = found.session.heartbeat_at or found.session.started_at
        reaped.append((run.finish(failed=reason, silent_since=silent), reason))
    journals_of_closed_sessions_index()
    return reaped


def journals_of_closed_sessions_index() -> int:
    """Journals on this machine of sessions already closed (reaped by a machine that
    could not read them): the files they list that no row names are indexed in a repair
    session, and the journals go. How many files were indexed."""
    closed = IngestSession.objects.filter(pk__in=journal_sessions()).exclude(
        status=IngestSession.Status.RUNNING
    )
    pks = list(closed.values_list("pk", flat=True))
    orphans = [r for pk in pks for r in journal_unindexed(pk)]
    indexed = 0
    if orphans:
        run = IngestRun(source=IngestSession.Source.REPAIR, origin="journal of a closed session")
        indexed = sum(o.status == "stored" for o in run.add(map(stored_object_source, orphans)))
        run.finish()
    for pk in pks:
        journal_clear(pk)
    return indexed
