"""The DICOM listener cannot be blocked by whoever reaches its port: idle connections
and garbage are held open while dcmtk's storescu still stores a series.

The attacker runs in its own process (as it would), over real sockets on 127.0.0.1 and
127.0.0.2 (two addresses on the loopback), with small limits so that the attack is
many times what they allow.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time

import pytest

from imaging.ingest.listener import StorageListener
from imaging.models import IngestSession, Instance
from tests.conftest import require_program
from tests.imaging.factories import ct_files

pytestmark = pytest.mark.django_db(transaction=True)

#: Opens idle connections and sends malformed PDUs from 127.0.0.1 and 127.0.0.2, holds
#: them open, says "ready", and keeps them until its stdin closes. With "flood", each
#: connection is closed right after sending.
ATTACKER = r"""
import os, socket, struct, sys
port, idle, garbage, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
payloads = [
    os.urandom(512),  # not a PDU at all
    b"\x42\x00" + struct.pack(">L", 64) + os.urandom(64),  # an unknown PDU type
    b"\x01\x00" + struct.pack(">L", 0x7FFFFFFF) + os.urandom(4096),  # a "2 GB" request
    b"\x01\x00" + struct.pack(">L", 2000) + os.urandom(100),  # a request cut short
    b"\x04\x00" + struct.pack(">L", 1 << 20) + os.urandom(8),  # P-DATA before associating
]
held = []
def connect(n):
    source = ("127.0.0.1", "127.0.0.2")[n % 2]
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
for n in range(idle):
    held.append(connect(n))
for n in range(garbage):
    sock = connect(n)
    try:
        sock.sendall(payloads[n % len(payloads)])
    except OSError:
        pass  # the listener may already have closed it
    if mode == "flood":
        sock.close()
    else:
        held.append(sock)
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def guarded(settings):
    settings.RADTRACK_DICOM_ARTIM_S = 5
    settings.RADTRACK_DICOM_IDLE_S = 10
    settings.RADTRACK_DICOM_MAX_ASSOCIATIONS = 12
    settings.RADTRACK_DICOM_MAX_PER_ADDRESS = 4
    scp = StorageListener(ae_title="RADTRACK", allowed_aes=[], process=False)
    host, port = scp.start(host="127.0.0.1", port=0)
    scp.address = (host, port)
    yield scp
    scp.stop(grace_s=2)


def _attack(port: int, *, idle: int, garbage: int, mode: str = "hold") -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", ATTACKER, str(port), str(idle), str(garbage), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _end(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    proc.wait(timeout=30)


def _wait_idle(scp: StorageListener, timeout_s: float = 20.0) -> None:
    """Until every connection has ended (and its session is finished)."""
    deadline = time.monotonic() + timeout_s
    while scp.active_associations and time.monotonic() < deadline:
        time.sleep(0.05)
    assert scp.active_associations == 0


def _storescu(port: int, files) -> subprocess.CompletedProcess:
    storescu = require_program("storescu", why="dcmtk sends a real association")
    return subprocess.run(
        [storescu, "-aet", "REALSCU", "-aec", "RADTRACK", "-to", "20", "127.0.0.1", str(port)]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_idle_sockets_and_garbage_held_open_do_not_block_storescu(guarded, tmp_path):
    files = ct_files(tmp_path / "series", key="guard", slices=4, size=16)
    port = guarded.address[1]
    # Many times the per-address (4) and overall (12) limits, from both addresses.
    attacker = _attack(port, idle=24, garbage=60)
    try:
        started = time.monotonic()
        result = _storescu(port, files)
        took = time.monotonic() - started
    finally:
        _end(attacker)
    _wait_idle(guarded)

    assert result.returncode == 0, result.stderr[-2000:]
    # Within the ARTIM timeout: silent connections were displaced, not waited out.
    assert took < 5
    assert Instance.objects.count() == len(files)
    assert IngestSession.objects.get().stored == len(files)
    assert guarded.guard.displaced > 0


def test_a_silent_connection_is_closed_after_the_artim_timeout(guarded):
    port = guarded.address[1]
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        started = time.monotonic()
        assert sock.recv(1) == b""  # closed by the listener
        assert 4 <= time.monotonic() - started < 14


def test_a_pdu_longer_than_accepted_ends_its_connection_at_once(guarded):
    port = guarded.address[1]
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(b"\x01\x00" + struct.pack(">L", 0x7FFFFFFF) + b"\x00\x01")
        started = time.monotonic()
        while sock.recv(4096):  # an A-ABORT may come first, then the close
            pass
        assert time.monotonic() - started < 2.5


def test_an_echo_answers_after_a_flood_of_garbage_and_while_garbage_is_held(guarded):
    echoscu = require_program("echoscu", why="dcmtk verifies the listener")
    port = guarded.address[1]
    _end(_attack(port, idle=0, garbage=300, mode="flood"))
    attacker = _attack(port, idle=20, garbage=20)
    try:
        result = subprocess.run(
            [echoscu, "-aec", "RADTRACK", "-to", "10", "127.0.0.1", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        _end(attacker)
    assert result.returncode == 0, result.stderr[-2000:]
