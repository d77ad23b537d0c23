"""The Orthanc fixture starts again on other ports where another process took one of
them before Orthanc bound it (parallel test workers: CI saw it once)."""

from __future__ import annotations

import socket

from tests.conftest import require_program
from tests.interop import conftest


def test_orthanc_whose_port_is_taken_is_started_again_on_other_ports(tmp_path, monkeypatch):
    binary = require_program("Orthanc", why="the PACS fixture's own start")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        ports = iter([busy, conftest.free_port()])
        real = conftest.free_port
        monkeypatch.setattr(conftest, "free_port", lambda: next(ports, None) or real())
        assert conftest._orthanc_start(binary, tmp_path, 0) is None  # its HTTP port taken
        started = conftest._orthanc_start(binary, tmp_path, 1)
    assert started is not None
    server, process, log = started
    try:
        assert server.http_port != busy and process.poll() is None
    finally:
        conftest._stop(process)
        log.close()
