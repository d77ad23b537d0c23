"""PACS failures on real loopback sockets: refused, silent, busy and refusing servers.

Nothing is mocked: each failing "PACS" is a socket or a small HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from imaging.ingest.pacs import PacsConfig, pacs_instances_send, pacs_pull, pacs_study_retrieve
from imaging.models import PacsTransfer
from tests.interop.conftest import free_port

pytestmark = pytest.mark.django_db

STUDY = "1.2.826.0.1.3680043.8.498.1"


def _config(url: str, **kw) -> PacsConfig:
    values = {"attempts": 3, "retry_wait_s": 0.0, "connect_timeout_s": 1.0, "read_timeout_s": 0.5}
    values.update(kw)
    return PacsConfig(url=url, **values)


class _Answer(BaseHTTPRequestHandler):
    status = 503
    hits: list[str] = []

    def _answer(self):
        type(self).hits.append(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = _answer
    do_POST = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def http_status():
    """An HTTP server answering every request with one status; yields (set_status, hits)."""
    handler = type("Handler", (_Answer,), {"hits": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def use(status: int) -> tuple[str, list[str]]:
        handler.status = status
        return f"http://127.0.0.1:{server.server_address[1]}/dicom-web", handler.hits

    yield use
    server.shutdown()
    server.server_close()


def test_refused_connection_is_retried_then_recorded():
    transfer = pacs_study_retrieve(
        study_instance_uid=STUDY, config=_config(f"http://127.0.0.1:{free_port()}/dicom-web")
    )
    assert transfer.status == PacsTransfer.Status.FAILED
    assert transfer.attempts == 3
    assert "cannot connect to the PACS" in transfer.error
    assert "after 3 attempts" in transfer.error
    assert transfer.finished_at is not None


def test_silent_server_times_out_and_never_hangs():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections (kernel backlog) and never answers
    try:
        port = listener.getsockname()[1]
        started = time.monotonic()
        transfer = pacs_study_retrieve(
            study_instance_uid=STUDY,
            config=_config(f"http://127.0.0.1:{port}/dicom-web", attempts=2),
        )
        elapsed = time.monotonic() - started
    finally:
        listener.close()
    assert transfer.status == PacsTransfer.Status.FAILED
    assert "did not answer within the read timeout" in transfer.error
    assert transfer.attempts == 2
    assert elapsed < 5


def test_busy_server_is_retried(http_status):
    url, hits = http_status(503)
    transfer = pacs_study_retrieve(study_instance_uid=STUDY, config=_config(url))
    assert transfer.status == PacsTransfer.Status.FAILED
    assert "HTTP 503" in transfer.error
    assert len(hits) == 3


def test_refusal_is_reported_at_once(http_status):
    url, hits = http_status(403)
    transfer = pacs_study_retrieve(study_instance_uid=STUDY, config=_config(url))
    assert "the PACS refused the request (HTTP 403" in transfer.error
    assert transfer.attempts == 1 and len(hits) == 1


def test_send_failure_is_recorded(http_status, tmp_path):
    from tests.imaging.factories import ct_files

    files = ct_files(tmp_path / "ct", key="send-fail")
    url, hits = http_status(500)
    transfer = pacs_instances_send(study_instance_uid=STUDY, paths=files, config=_config(url))
    assert transfer.direction == PacsTransfer.Direction.SEND
    assert transfer.status == PacsTransfer.Status.FAILED
    assert "HTTP 500" in transfer.error and len(hits) == 3


def test_failed_search_is_reported_not_raised():
    summary = pacs_pull(config=_config(f"http://127.0.0.1:{free_port()}/dicom-web"))
    assert summary.transfers == []
    assert "searching the PACS for studies (QIDO-RS): cannot connect" in summary.error


def test_command_usage_errors(settings):
    settings.RADTRACK_PACS_DICOMWEB_URL = ""
    with pytest.raises(CommandError, match="no PACS is configured"):
        call_command("pacs_pull", "--study", STUDY)
    settings.RADTRACK_PACS_DICOMWEB_URL = "http://127.0.0.1:1/dicom-web"
    with pytest.raises(CommandError, match="--since must be a date"):
        call_command("pacs_pull", "--since", "last week")


def test_command_exits_non_zero_when_a_study_failed(settings):
    settings.RADTRACK_PACS_DICOMWEB_URL = f"http://127.0.0.1:{free_port()}/dicom-web"
    settings.RADTRACK_PACS_RETRY_WAIT_S = 0.0
    out = StringIO()
    with pytest.raises(CommandError, match="1 failed"):
        call_command("pacs_pull", "--study", STUDY, stdout=out)
    assert "failed" in out.getvalue() and "cannot connect" in out.getvalue()
