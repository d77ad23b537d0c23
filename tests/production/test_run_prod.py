"""`make run-prod`: the Procfile's web (gunicorn), worker, beat and DICOM listener
started together by honcho, and a study sent over DICOM C-STORE processed end to end
by the worker; static files served by WhiteNoise under hashed names, compressed and
cached for a year.
"""

from __future__ import annotations

import re
import urllib.request

import pytest

from tests.conftest import require_program
from tests.production.conftest import free_port, study_folders, wait_for

pytestmark = pytest.mark.slow


def _get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()
    except OSError:
        return 0, {}, b""


def test_make_run_prod_serves_the_site_and_processes_a_study_sent_to_the_listener(
    make_site, redis_url, cohort
):
    storescu = require_program("storescu", why="sends the study to the listener")
    require_program("make")
    site = make_site(broker_url=redis_url)
    port, dicom_port = free_port(), free_port()
    # The venv is in place already (`make test` installed it): do not reinstall.
    site.start("run-prod", ["make", "--no-print-directory", "-o", ".venv/.installed", "run-prod",
                            f"PORT={port}"], DICOM_PORT=str(dicom_port))  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _get(f"{base}/healthz/")[0] == 200, timeout=180, what="gunicorn")
        wait_for(
            lambda: "ready" in site.processes[0].log.read_text(), timeout=120, what="the worker"
        )
    except AssertionError:
        raise AssertionError(site.logs()) from None
    status, _, body = _get(f"{base}/healthz/")
    assert body == b'{"database": "ok", "broker": "ok"}'

    # Static files: hashed name, gzip, a year's cache.
    _, _, page = _get(f"{base}/accounts/login/")
    css = re.search(rb'href="(/static/radtrack/[^"]+\.[0-9a-f]{12}\.css)"', page)
    assert css, page[:2000]
    status, headers, _ = _get(base + css.group(1).decode(), **{"Accept-Encoding": "gzip"})
    assert status == 200 and headers.get("Content-Encoding") == "gzip"
    assert "max-age=315360000" in headers.get("Cache-Control", "")

    # A study over C-STORE: the listener stores it, the worker processes it.
    import subprocess

    sent = subprocess.run(
        [storescu, "-aec", "RADTRACK", "+sd", "+r", "127.0.0.1", str(dicom_port), str(study_folders(cohort)[0])],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    try:
        wait_for(
            lambda: site.series_states() == ["processed"], timeout=300, what="the study processed"
        )
    except AssertionError:
        raise AssertionError(site.logs()) from None
    (run,) = site.runs()
    assert (run["status"], run["attempts"]) == ("succeeded", 1)
    assert site.sql("SELECT COUNT(*) FROM imaging_instance") == [(66,)]
