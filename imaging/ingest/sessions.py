"""Which process works on an ingest session, and finding sessions whose process died.

A session records its owner (host, process id and the process's start time, so a
reused process id is not mistaken for it) while a process is working on it, and a
heartbeat each time a batch is indexed. A session still "running" is dead when its
owner ran on this host and is gone, or when it has shown no heartbeat for
``RADTRACK_INGEST_STALE_MINUTES``, whoever owns it: another host's process, an upload
the browser abandoned between chunks, or a process that still runs but could not close
it (the database was away when the import ended). A process working on a session
heartbeats with every batch it indexes, so a live one is never that quiet. `imaging.ingest.reap.ingest_sessions_reap` indexes the
files such a session stored and had not indexed yet (its journal,
`imaging.ingest.journal`), marks it failed and queues what it stored, like any ended
import.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from imaging.models import IngestSession


@cache
def _start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), "" when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # Field 22; the command name (field 2) may hold spaces, so count after its ')'.
    return stat.rsplit(")", 1)[-1].split()[19]


def owner_here() -> str:
    """This process as a session owner: ``host:pid:start``."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid)}"[:128]


def _owner_alive(owner: str) -> bool | None:
    """Whether the owning process still runs; None when it ran on another host."""
    host, _, rest = owner.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return _signal_alive(pid)
    return not start or stat.rsplit(")", 1)[-1].split()[19] == start


def _signal_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class DeadSession:
    """A running session found dead, and why."""

    session: IngestSession
    reason: str


def dead_sessions(*, now: dt.datetime | None = None) -> list[DeadSession]:
    """Sessions still "running" whose process is gone or that stopped making progress."""
    now = now or timezone.now()
    stale_after = dt.timedelta(minutes=settings.RADTRACK_INGEST_STALE_MINUTES)
    dead = []
    for session in IngestSession.objects.filter(status=IngestSession.Status.RUNNING).order_by("pk"):
        alive = _owner_alive(session.owner) if session.owner else None
        last = session.heartbeat_at or session.started_at
        if alive is False:
            reason = (
                "the process that ran this import ended without closing it "
                "(killed or crashed); files already stored were kept"
            )
        elif now - last > stale_after:
            # Whether or not its owner still runs: a live import heartbeats with every
            # batch, so one this quiet is one its process failed to close.
            minutes = (now - last).total_seconds() / 60
            why = (
                "its process could not close it"
                if alive
                else "the import was abandoned or its process died"
            )
            reason = (
                f"no progress for {minutes:.0f} minutes (RADTRACK_INGEST_STALE_MINUTES): "
                f"{why}; files already stored were kept"
            )
        else:
            continue
        dead.append(DeadSession(session, reason))
    return dead
