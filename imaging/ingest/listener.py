"""The DICOM C-STORE receiver (Storage SCP, PS3.4 Annex B) and C-ECHO (Verification).

Each association is one ingest session: every received instance goes through the one
ingest service (`imaging.ingest.service.IngestRun`) byte for byte as sent, and the
C-STORE response reports what happened to it, only once the instance is durable (its
file written and fsynced). Index rows are committed in groups across the instances of
an association (`GROUP_COMMIT_INSTANCES`, and when it ends); a crash between the two
leaves files the session's journal lists, which the reaper of the dead session (this
command when it starts again, or the scheduled task) indexes into it
(`imaging.ingest.journal`). A file refused for what
it holds gets a refusal status (0xC000, or 0xC001 for a conflict), never "out of
resources", so no sender resends it forever. When the association ends, whether by
release or abort, the session is finished, which queues processing of every series
that received new images; when the database is away then, the finish is tried again in
the background until it succeeds (the rows held back are written, the series queued),
and should the listener end first, the session's journal lets the reaper index them.
`imaging.ingest.guard` keeps idle or malformed connections from blocking real senders.
"""

from __future__ import annotations

import io
import logging
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from django.conf import settings
from django.db import (
    DatabaseError,
    InterfaceError,
    OperationalError,
    close_old_connections,
    connections,
)
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification

from imaging.core.dicom.inspect import ACCEPTED_SOP_CLASSES
from imaging.ingest.guard import (
    MAX_REQUEST_PDU_BYTES,
    ConnectionGuard,
    GuardedServer,
    GuardLimits,
    connection_lost,
    pdu_length_bound,
)
from imaging.ingest.readers import staging_discard
from imaging.ingest.service import FileOutcome, IngestRun
from imaging.ingest.sources import IngestSource
from imaging.models import IngestSession
from imaging.store import object_stage

logger = logging.getLogger(__name__)

#: Transfer syntaxes accepted for every storage class (PS3.5 Section 10 and Annex A).
#: Native first, so that a sender offering both sends what it has without transcoding.
TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,  # Process 14
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
)

#: C-STORE response statuses (PS3.4 Table B.2-1, PS3.7 Annex C).
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700  # Refused: the sender may try again later
STATUS_CANNOT_UNDERSTAND = 0xC000  # Error: the object itself is refused
#: Error, in the storage-specific Cxxx range: a different object is already stored
#: under this SOP Instance UID.
STATUS_CONFLICT = 0xC001

#: Maximum PDU length we accept (PS3.8 9.3.3.3). Larger PDUs mean fewer round trips
#: through pynetdicom's Python receive loop for a 512x512 slice.
MAXIMUM_PDU_BYTES = 1 << 20

DEFAULT_PORT = 11112
DEFAULT_AE_TITLE = "RADTRACK"
#: Index rows of an association committed together (the files are durable one by one).
GROUP_COMMIT_INSTANCES = 32
#: The wait before trying again to finish a session whose finish failed (the database
#: was away when its association ended), doubled after each failure up to the maximum.
FINISH_RETRY_WAIT_S = 1.0
FINISH_RETRY_MAX_WAIT_S = 60.0


def _explicit_le(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element (PS3.5 7.1.2)."""
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
        return struct.pack("<HH2s2xI", group, element, vr, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _padded(value: str, pad: bytes) -> bytes:
    raw = value.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def file_meta_encode(
    *, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str
) -> bytes:
    """File Meta Information (PS3.10 7.1) for a received instance, group length first.

    It holds nothing about the sender (no Source Application Entity Title, 0002,0016):
    the same data set sent again by any node must give the same bytes, or the ingest
    service would call it a conflict rather than a duplicate. The sender is recorded on
    the ingest session instead. The bytes equal pynetdicom's ``encode_file_meta``.
    """
    body = b"".join(
        (
            _explicit_le(0x0002, 0x0001, b"OB", b"\x00\x01"),
            _explicit_le(0x0002, 0x0002, b"UI", _padded(sop_class_uid, b"\x00")),
            _explicit_le(0x0002, 0x0003, b"UI", _padded(sop_instance_uid, b"\x00")),
            _explicit_le(0x0002, 0x0010, b"UI", _padded(transfer_syntax_uid, b"\x00")),
            _explicit_le(0x0002, 0x0012, b"UI", _padded(PYNETDICOM_IMPLEMENTATION_UID, b"\x00")),
            _explicit_le(0x0002, 0x0013, b"SH", _padded(PYNETDICOM_IMPLEMENTATION_VERSION, b" ")),
        )
    )
    return _explicit_le(0x0002, 0x0000, b"UL", struct.pack("<I", len(body))) + body


@dataclass
class _AssociationState:
    """What the listener keeps about one association while it lasts."""

    calling_ae: str
    address: str
    process: bool
    run: IngestRun | None = None
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        return f"{self.calling_ae}@{self.address}"


def store_status(outcome: FileOutcome) -> Dataset:
    """The C-STORE response status for an ingest outcome, with Error Comment (0000,0902).

    Only a failure to write (the disk) is "out of resources", which asks the sender to
    try again later; anything about the file itself is a refusal, so that it is not
    sent again and again.
    """
    status = Dataset()
    if outcome.status in ("stored", "duplicate"):
        status.Status = STATUS_SUCCESS
        return status
    if outcome.status == "conflict":
        status.Status = STATUS_CONFLICT
    elif outcome.reason.startswith("could not be stored"):
        status.Status = STATUS_OUT_OF_RESOURCES
    else:
        status.Status = STATUS_CANNOT_UNDERSTAND
    # Error Comment is LO: at most 64 characters (PS3.7 C.4).
    status.ErrorComment = f"{outcome.status}: {outcome.reason}"[:64]
    return status


class StorageListener:
    """A Storage and Verification SCP that files every instance through the ingest service.

    ``allowed_aes`` limits which calling AE titles may associate (empty: any);
    ``process`` queues processing of complete series when an association ends.
    """

    def __init__(
        self,
        *,
        ae_title: str = DEFAULT_AE_TITLE,
        allowed_aes: Iterable[str] | None = None,
        process: bool = True,
    ) -> None:
        self.ae_title = ae_title
        self.process = process
        if allowed_aes is None:
            allowed_aes = getattr(settings, "RADTRACK_DICOM_ALLOWED_AES", [])
        self.allowed_aes = [a.strip() for a in allowed_aes if a.strip()]
        self.guard = ConnectionGuard(
            GuardLimits(
                max_connections=settings.RADTRACK_DICOM_MAX_ASSOCIATIONS,
                max_per_address=settings.RADTRACK_DICOM_MAX_PER_ADDRESS,
            )
        )
        self.ae = self._application_entity()
        self.server: GuardedServer | None = None
        self._stager = ThreadPoolExecutor(
            max_workers=settings.RADTRACK_DICOM_MAX_ASSOCIATIONS, thread_name_prefix="stage"
        )
        self._lock = threading.Lock()
        self._states: dict[int, _AssociationState] = {}
        self._threads: set[Association] = set()
        self._abort = threading.Event()
        self._stopping = threading.Event()
        self._finishing: set[threading.Thread] = set()

    # -- public -------------------------------------------------------------------
    def start(self, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> tuple[str, int]:
        """Listen on ``host:port`` in background threads; return the bound address.

        Port 0 takes a free port.
        """
        handlers = [
            (evt.EVT_CONN_OPEN, self._on_connection_open),
            (evt.EVT_CONN_CLOSE, lambda event: connection_lost(event.assoc)),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
        server = self.ae.make_server(
            (host, port), ae_title=self.ae_title, evt_handlers=handlers, server_class=GuardedServer
        )
        server.admit = self.guard.admit
        threading.Thread(
            target=server.serve_forever, name=f"DicomListener@{port}", daemon=True
        ).start()
        self.server = server
        bound_host, bound_port = server.server_address[:2]
        return str(bound_host), int(bound_port)

    def stop(self, *, grace_s: float = 10.0) -> None:
        """Stop accepting, let open associations end for ``grace_s``, then abort the rest.

        Every association's session is finished (and its series queued) before this
        returns; a finish still failing (the database is away) is tried once more, then
        left to the reaper, which indexes the session's journal.
        """
        server, self.server = self.server, None
        if server is not None:
            server.shutdown()
        deadline = time.monotonic() + grace_s
        while self._active() and time.monotonic() < deadline and not self._abort.is_set():
            time.sleep(0.05)
        for assoc in self._active():
            assoc.abort()
        for assoc in list(self._threads):
            if assoc.ident is not None:
                assoc.join(timeout=30)
        self.ae.shutdown()
        self._stager.shutdown(wait=True)
        self._stopping.set()
        with self._lock:
            finishing = list(self._finishing)
        for thread in finishing:
            thread.join(timeout=30)

    def abort_all(self) -> None:
        """Make a `stop` in progress abort open associations now (safe in a signal handler)."""
        self._abort.set()

    @property
    def active_associations(self) -> int:
        return len(self._active())

    # -- setup --------------------------------------------------------------------
    def _application_entity(self) -> AE:
        ae = AE(ae_title=self.ae_title)
        ae.maximum_pdu_size = MAXIMUM_PDU_BYTES
        # The guard enforces the limit; connections it displaced may linger a moment.
        ae.maximum_associations = 2 * settings.RADTRACK_DICOM_MAX_ASSOCIATIONS
        # ARTIM: the time a connection has to send its A-ASSOCIATE-RQ (and to close
        # after an A-ABORT); then an association may idle this long between messages.
        ae.acse_timeout = settings.RADTRACK_DICOM_ARTIM_S
        ae.network_timeout = settings.RADTRACK_DICOM_IDLE_S
        ae.dimse_timeout = settings.RADTRACK_DICOM_IDLE_S
        for sop_class in ACCEPTED_SOP_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        ae.add_supported_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        if self.allowed_aes:
            # pynetdicom answers A-ASSOCIATE-RJ "calling AE title not recognised".
            ae.require_calling_aet = self.allowed_aes
        return ae

    def _active(self) -> list[Association]:
        with self._lock:
            return [a for a in self._threads if not _ended(a)]

    # -- event handlers -----------------------------------------------------------
    def _on_connection_open(self, event: Event) -> None:
        """Wrap the association thread so that its session ends however it ends.

        EVT_CONN_OPEN fires in the server thread just before the association thread
        starts, so the wrapper runs in that thread, where its database connection lives.
        Release, abort, a dropped connection or a timeout all leave through ``finally``.
        """
        assoc = event.assoc
        body = assoc.run
        address = event.address[0] if isinstance(event.address, tuple) else str(event.address)
        self.guard.opened(assoc, str(address))
        pdu_length_bound(assoc, max(MAXIMUM_PDU_BYTES, MAX_REQUEST_PDU_BYTES))

        def run() -> None:
            try:
                body()
            finally:
                self.guard.closed(assoc)
                self._association_end(assoc)

        assoc.run = run  # type: ignore[method-assign]
        with self._lock:
            self._threads = {a for a in self._threads if not _ended(a)}
            self._threads.add(assoc)

    def _on_echo(self, event: Event) -> int:
        return STATUS_SUCCESS

    def _on_store(self, event: Event) -> Dataset:
        state = self._state_for(event.assoc)
        name = f"C-STORE {event.request.MessageID} from {state.calling_ae}"
        try:
            if state.run is None:
                # Created on the first C-STORE rather than on accept, so that monitoring
                # systems' C-ECHO associations leave no empty sessions behind.
                close_old_connections()
                state.run = IngestRun(
                    source=IngestSession.Source.DIMSE,
                    origin=state.origin,
                    process=state.process,
                    batch_size=1,
                    group_commit=GROUP_COMMIT_INSTANCES,
                )
            data = self._received_file(event)
            # The bytes go to disk while they are checked (the other core): the C-STORE
            # response waits for both, and the copy is named once its hash is known.
            staging = self._stager.submit(object_stage, data)
            source = IngestSource(name, lambda: data, len(data), staging=staging)
            try:
                (outcome,) = state.run.add([source])
            except Exception:
                staging_discard(staging)
                raise
        except (OperationalError, InterfaceError, OSError) as exc:
            # The database or the disk is unavailable: refuse for now, so that the
            # sender keeps the instance and tries again. Only the type is logged, as
            # a database message can quote the values it refused.
            return self._refusal(state, name, exc, STATUS_OUT_OF_RESOURCES, "send again later")
        except Exception as exc:  # anything else is about this instance: refuse it
            return self._refusal(state, name, exc, STATUS_CANNOT_UNDERSTAND, "cannot be stored")
        state.counts[outcome.status] = state.counts.get(outcome.status, 0) + 1
        if outcome.status in ("rejected", "conflict"):
            # The reason names the problem, never a patient attribute's value.
            logger.warning("%s: %s: %s", name, outcome.status, outcome.reason)
        return store_status(outcome)

    # -- helpers ------------------------------------------------------------------
    @staticmethod
    def _refusal(
        state: _AssociationState, name: str, exc: Exception, code: int, advice: str
    ) -> Dataset:
        logger.error("%s: not stored: %s", name, type(exc).__name__)
        state.counts["refused"] = state.counts.get("refused", 0) + 1
        status = Dataset()
        status.Status = code
        status.ErrorComment = f"not stored ({type(exc).__name__}); {advice}"[:64]
        return status

    def _state_for(self, assoc: Association) -> _AssociationState:
        with self._lock:
            state = self._states.get(id(assoc))
            if state is None:
                address = assoc.requestor.address_info
                state = _AssociationState(
                    calling_ae=assoc.requestor.ae_title,
                    address=f"{address.address}:{address.port}",
                    process=self.process,
                )
                self._states[id(assoc)] = state
            return state

    @staticmethod
    def _received_file(event: Event) -> bytes:
        """The instance in Part 10 form: the data set exactly as sent, behind File Meta.

        The same bytes as ``event.encoded_dataset()``, without building a pydicom
        dataset for File Meta on every instance (a good part of the receive cost), and
        with the data set copied once, straight from pynetdicom's buffer.
        """
        request = event.request
        head = b"".join(
            (
                bytes(128),
                b"DICM",
                file_meta_encode(
                    sop_class_uid=str(request.AffectedSOPClassUID),
                    sop_instance_uid=str(request.AffectedSOPInstanceUID),
                    transfer_syntax_uid=str(event.context.transfer_syntax),
                ),
            )
        )
        received = getattr(request, "DataSet", None)
        if not isinstance(received, io.BytesIO):
            return head + event.encoded_dataset(include_meta=False)
        with received.getbuffer() as dataset:
            return b"".join((head, dataset))

    def _association_end(self, assoc: Association) -> None:
        with self._lock:
            state = self._states.pop(id(assoc), None)
        if state is None or state.run is None:
            connections.close_all()
            return
        failed = ""
        if not assoc.is_released:
            failed = (
                "the association was aborted or dropped before release; "
                "instances already stored were kept"
            )
        try:
            self._finish(state, failed=failed, released=assoc.is_released)
        except Exception as exc:
            # Only the type: a database message can quote the values it refused.
            logger.error(
                "could not finish the ingest session of an association from %s: %s",
                state.calling_ae,
                type(exc).__name__,
            )
            if isinstance(exc, DatabaseError | OSError):
                self._finish_later(state, failed=failed, released=assoc.is_released)
        finally:
            connections.close_all()

    @staticmethod
    def _finish(state: _AssociationState, *, failed: str, released: bool) -> None:
        assert state.run is not None
        session = state.run.finish(failed=failed)
        logger.info(
            "association from %s ended (%s): session %s, %s",
            state.calling_ae,
            "released" if released else "aborted",
            session.pk,
            ", ".join(f"{n} {s}" for s, n in sorted(state.counts.items())),
        )

    def _finish_later(self, state: _AssociationState, *, failed: str, released: bool) -> None:
        """Try the finish again in the background, with a growing wait, until the
        database is back: the rows held back for the group commit are written and the
        series queued. Once the listener stops, one last try, then the reaper's turn."""

        def retry() -> None:
            wait = FINISH_RETRY_WAIT_S
            while True:
                last = self._stopping.wait(wait)
                try:
                    self._finish(state, failed=failed, released=released)
                    return
                except Exception as exc:
                    retriable = isinstance(exc, DatabaseError | OSError)
                    logger.error(
                        "still could not finish the ingest session of an association from %s: %s%s",
                        state.calling_ae,
                        type(exc).__name__,
                        "" if retriable and not last else "; left to the reaper",
                    )
                    if last or not retriable:
                        return
                finally:
                    connections.close_all()
                wait = min(2 * wait, FINISH_RETRY_MAX_WAIT_S)

        thread = threading.Thread(target=retry, name="finish-retry", daemon=True)
        with self._lock:
            self._finishing = {t for t in self._finishing if t.is_alive()}
            self._finishing.add(thread)
        thread.start()


def _ended(assoc: Association) -> bool:
    """Whether the association's thread has run and finished (not merely not started)."""
    return assoc.ident is not None and not assoc.is_alive()


def listener_start(
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    ae_title: str = DEFAULT_AE_TITLE,
    allowed_aes: Sequence[str] | None = None,
    process: bool = True,
) -> tuple[StorageListener, tuple[str, int]]:
    """Start a `StorageListener` in background threads; return it and its address."""
    listener = StorageListener(ae_title=ae_title, allowed_aes=allowed_aes, process=process)
    return listener, listener.start(host=host, port=port)
