"""Serving settings: with DJANGO_DEBUG=false, RADTRACK_HTTPS=true and a real secret key
`manage.py check --deploy` reports nothing; without RADTRACK_HTTPS the plain-HTTP
defaults of `make demo` stay; `collectstatic` writes hashed, compressed names.

Each case runs in its own process: settings are read once, from the environment.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_SHOW = """
import django, json
django.setup()
from django.conf import settings as s
print(json.dumps({k: getattr(s, k, None) for k in (
    "DEBUG", "SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE",
    "SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_HSTS_PRELOAD",
    "SECURE_PROXY_SSL_HEADER", "X_FRAME_OPTIONS", "SECURE_REDIRECT_EXEMPT")}))
"""


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "RADTRACK_"))}
    env.pop("DATABASE_URL", None)
    env.pop("CELERY_BROKER_URL", None)
    env.update(RADTRACK_DATA_DIR=str(tmp_path / "data"), DJANGO_SETTINGS_MODULE="radtrack.settings")
    env.update(extra)
    return env


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)


def _production(tmp_path: Path) -> dict[str, str]:
    return _env(
        tmp_path,
        DJANGO_DEBUG="false",
        RADTRACK_HTTPS="true",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS="radtrack.hospital.example",
    )


def test_check_deploy_reports_nothing_with_https_and_a_real_secret_key(tmp_path):
    done = _run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "DEBUG"],
        _production(tmp_path),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues (0 silenced)." in done.stdout


def test_without_https_check_deploy_names_what_is_missing(tmp_path):
    done = _run([sys.executable, "manage.py", "check", "--deploy"], _env(tmp_path))
    for warning in (
        "security.W004",
        "security.W008",
        "security.W012",
        "security.W016",
        "security.W019",
    ):
        assert warning in done.stderr + done.stdout


def test_https_switches_on_secure_cookies_hsts_redirect_proxy_header_and_deny(tmp_path):
    done = _run([sys.executable, "-c", _SHOW], _production(tmp_path))
    assert done.returncode == 0, done.stderr
    values = json.loads(done.stdout)
    assert values == {
        "DEBUG": False,
        "SECURE_SSL_REDIRECT": True,
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SECURE_HSTS_SECONDS": 31536000,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
        "SECURE_HSTS_PRELOAD": True,
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
        "X_FRAME_OPTIONS": "DENY",
        "SECURE_REDIRECT_EXEMPT": ["^healthz/$"],
    }


_FRAMING = """
import django, json
django.setup()
from django.test import Client
answer = Client(HTTP_HOST="radtrack.hospital.example").get("/healthz/", secure=True)
print(json.dumps({"csp": answer.headers.get("Content-Security-Policy", ""),
                  "xfo": answer.headers.get("X-Frame-Options", "")}))
"""


@pytest.mark.parametrize(
    ("https", "ancestors", "xfo"), [(True, "'none'", "DENY"), (False, "'self'", "SAMEORIGIN")]
)
def test_the_csp_frames_the_pages_as_x_frame_options_does(tmp_path, https, ancestors, xfo):
    """Browsers that read CSP's frame-ancestors ignore X-Frame-Options: the two agree."""
    env = _production(tmp_path) if https else _env(tmp_path)
    env["DJANGO_ALLOWED_HOSTS"] = "radtrack.hospital.example"
    done = _run([sys.executable, "-c", _FRAMING], env)
    assert done.returncode == 0, done.stderr
    headers = json.loads(done.stdout.strip().splitlines()[-1])
    directives = [d.strip() for d in headers["csp"].split(";")]
    assert [d for d in directives if d.startswith("frame-ancestors")] == [
        f"frame-ancestors {ancestors}"
    ]
    assert headers["xfo"] == xfo


def test_the_demo_keeps_plain_http(tmp_path):
    done = _run([sys.executable, "-c", _SHOW], _env(tmp_path))
    values = json.loads(done.stdout)
    assert values["SECURE_SSL_REDIRECT"] is False and values["SESSION_COOKIE_SECURE"] is False
    assert values["SECURE_HSTS_SECONDS"] == 0 and values["SECURE_PROXY_SSL_HEADER"] is None


def test_a_gpu_queue_other_than_cpu_or_gpu_is_refused_at_start(tmp_path):
    done = _run([sys.executable, "manage.py", "check"], _env(tmp_path, RADTRACK_GPU_QUEUE="fast"))
    assert done.returncode != 0 and "RADTRACK_GPU_QUEUE must be cpu or gpu" in done.stderr


@pytest.mark.slow
def test_collectstatic_writes_hashed_names_with_gzip_copies(tmp_path):
    env = _env(tmp_path)
    done = _run([sys.executable, "manage.py", "collectstatic", "--no-input", "-v0"], env)
    assert done.returncode == 0, done.stderr
    static = tmp_path / "data" / "static"
    manifest = json.loads((static / "staticfiles.json").read_text())["paths"]
    hashed = manifest["radtrack/pipeline.js"]
    assert hashed != "radtrack/pipeline.js" and hashed.startswith("radtrack/pipeline.")
    assert (static / hashed).read_bytes() == (
        ROOT / "radtrack/static/radtrack/pipeline.js"
    ).read_bytes()
    assert (static / f"{hashed}.gz").exists()
