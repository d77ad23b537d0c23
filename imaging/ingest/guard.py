"""Keeping the DICOM listener open to real senders whatever else reaches its port.

Anyone who can reach the port can open connections that send nothing, or send garbage.
The guard bounds what they can hold: a connection must send its A-ASSOCIATE-RQ within
the ARTIM timeout, at most so many connections may be open at once and from one address,
and when an address (or the listener) is at its limit a new connection displaces the
oldest one that has not yet become an association, so idle or malformed connections
can never keep a sender that speaks DICOM out. A PDU longer than the largest a peer may
send ends its connection before it is buffered.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pynetdicom.association import Association
from pynetdicom.transport import AssociationServer

logger = logging.getLogger(__name__)

#: The largest A-ASSOCIATE-RQ we expect (user identity tokens included); P-DATA PDUs are
#: bounded by the maximum PDU length we announce.
MAX_REQUEST_PDU_BYTES = 1 << 20


@dataclass(frozen=True)
class GuardLimits:
    """How many connections the listener holds, in all and from one address."""

    max_connections: int
    max_per_address: int


@dataclass
class _Connection:
    assoc: Association
    address: str
    opened_at: float
    evicted: bool = False

    @property
    def silent(self) -> bool:
        """Not (yet) an association: waiting for, or reading, an A-ASSOCIATE-RQ."""
        return not (self.assoc.is_established or self.assoc.is_released or self.assoc.is_aborted)


class ConnectionGuard:
    """Which connections the listener holds, and whether it takes a new one."""

    def __init__(self, limits: GuardLimits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._open: dict[int, _Connection] = {}
        self.displaced = 0
        self.refused = 0

    def opened(self, assoc: Association, address: str) -> None:
        with self._lock:
            self._open[id(assoc)] = _Connection(assoc, address, time.monotonic())

    def closed(self, assoc: Association) -> None:
        with self._lock:
            self._open.pop(id(assoc), None)

    def admit(self, address: str) -> bool:
        """Whether a new connection from ``address`` may start; room is made by closing
        the oldest silent connection from that address (or any, at the overall limit)."""
        with self._lock:
            live = [c for c in self._open.values() if not c.evicted]
            same = [c for c in live if c.address == address]
            if len(same) >= self.limits.max_per_address:
                victim = _oldest_silent(same)
            elif len(live) >= self.limits.max_connections:
                victim = _oldest_silent(live)
                if victim is None:
                    return True  # pynetdicom answers A-ASSOCIATE-RJ: local limit exceeded
            else:
                return True
            if victim is None:
                self.refused += 1
                return False
            victim.evicted = True
            self.displaced += 1
        _close(victim.assoc)
        return True


def connection_lost(assoc: Association) -> None:
    """A connection closed before it became an association: end its thread now rather
    than when the ARTIM timer expires (lingering threads would tie up the CPU)."""
    if not (assoc.is_established or assoc.is_released or assoc.is_aborted):
        assoc.dul.to_user_queue.put(None)


def _oldest_silent(connections: list[_Connection]) -> _Connection | None:
    silent = [c for c in connections if c.silent]
    return min(silent, key=lambda c: c.opened_at) if silent else None


def _close(assoc: Association) -> None:
    """End a silent connection now: its socket closed, and its thread told, as when its
    ARTIM timer expires, that no A-ASSOCIATE-RQ came."""
    raw = getattr(assoc.dul.socket, "socket", None)
    if raw is not None:
        with contextlib.suppress(OSError):  # already closed by the peer
            raw.shutdown(socket.SHUT_RDWR)
    assoc.dul.to_user_queue.put(None)


def pdu_length_bound(assoc: Association, limit: int) -> None:
    """Make ``assoc`` drop its connection on a PDU longer than ``limit`` bytes instead of
    buffering it (pynetdicom reads a PDU whole, however long its header says it is)."""
    sock = assoc.dul.socket
    read = sock.recv

    def recv(nr_bytes: int) -> bytearray:
        if nr_bytes > limit:
            raw = getattr(sock, "socket", None)
            if raw is not None:  # the peer sees the connection end now
                with contextlib.suppress(OSError):
                    raw.shutdown(socket.SHUT_RDWR)
            raise OSError(f"a PDU of {nr_bytes} bytes is over the {limit} bytes accepted")
        return read(nr_bytes)

    sock.recv = recv  # type: ignore[method-assign]


class GuardedServer(AssociationServer):
    """pynetdicom's association server that asks ``admit`` before taking a connection.

    Each connection's association thread is started from the accepting thread itself
    (no thread per request in between), so the guard's count is exact when the next
    connection is judged.
    """

    admit: Callable[[str], bool] = staticmethod(lambda address: True)
    #: Connections the kernel queues until accepted: a flood must not fill the queue
    #: (socketserver's 5 drops the next sender's SYN, which it retries a second later).
    request_queue_size = 256

    def verify_request(self, request, client_address) -> bool:
        host = client_address[0] if isinstance(client_address, tuple) else str(client_address)
        return self.admit(str(host))

    def shutdown(self) -> None:
        """Stop accepting and close the listening socket."""
        socketserver.BaseServer.shutdown(self)
        self.server_close()
