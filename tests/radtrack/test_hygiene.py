"""Deployment hygiene: private data files, strong demo passwords, sessions that end."""

import datetime as dt
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone

from tests.patients.factories import UserFactory

ROOT = Path(__file__).resolve().parents[2]


def test_default_sqlite_database_is_private(tmp_path):
    """A fresh installation's database file is 0600 in a 0700 folder (as its key file)."""
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(RADTRACK_DATA_DIR=str(data), DJANGO_SETTINGS_MODULE="radtrack.settings")
    subprocess.run(
        [sys.executable, "manage.py", "check", "--database", "default"],
        cwd=ROOT, env=env, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    database = data / "radtrack.sqlite3"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    assert stat.S_IMODE((data / "secret_key").stat().st_mode) == 0o600


@pytest.mark.django_db
@pytest.mark.parametrize("password", ["a", "password123", "12345678901234", "demo-demo"])
def test_create_demo_user_refuses_weak_passwords(password):
    with pytest.raises(CommandError, match="password refused"):
        call_command("create_demo_user", "--password", password)
    from django.contrib.auth import get_user_model

    assert not get_user_model().objects.filter(username="demo").exists()


def test_sessions_end_when_idle_and_with_the_browser():
    assert settings.SESSION_COOKIE_AGE == 30 * 60
    assert settings.SESSION_EXPIRE_AT_BROWSER_CLOSE
    assert "radtrack.middleware.SessionActivityMiddleware" in settings.MIDDLEWARE


def test_idle_timeout_is_configurable(tmp_path):
    env = dict(os.environ, RADTRACK_SESSION_IDLE_MINUTES="5", RADTRACK_DATA_DIR=str(tmp_path))
    code = "from django.conf import settings; print(settings.SESSION_COOKIE_AGE)"
    out = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        cwd=ROOT, env=dict(env, DJANGO_SETTINGS_MODULE="radtrack.settings"),
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.stdout.strip() == "300"


def _login(client):
    from tests.patients.factories import PASSWORD

    UserFactory(username="nurse", groups=["clinician"])
    response = client.post(reverse("login"), {"username": "nurse", "password": PASSWORD})
    assert response.status_code == 302
    return response


@pytest.mark.django_db
def test_login_cookie_has_no_expiry_and_a_request_restarts_the_idle_time(client):
    from django.contrib.sessions.models import Session

    from radtrack.middleware import SEEN_KEY

    cookie = _login(client).cookies[settings.SESSION_COOKIE_NAME]
    assert not cookie["expires"] and not cookie["max-age"]  # gone with the browser
    key = client.cookies[settings.SESSION_COOKIE_NAME].value
    # Pretend the last activity was 20 minutes ago: the session would end in 10.
    session = client.session
    session[SEEN_KEY] = int(time.time()) - 20 * 60
    session.save()
    Session.objects.filter(session_key=key).update(
        expire_date=timezone.now() + dt.timedelta(minutes=10)
    )
    assert client.get("/patients/").status_code == 200
    expires = Session.objects.get(session_key=key).expire_date
    remaining = (expires - timezone.now()).total_seconds()
    assert 29 * 60 < remaining <= 30 * 60  # the request restarted the 30 minutes


@pytest.mark.django_db
def test_an_idle_session_is_logged_out(client):
    from django.contrib.sessions.models import Session

    _login(client)
    key = client.cookies[settings.SESSION_COOKIE_NAME].value
    Session.objects.filter(session_key=key).update(
        expire_date=timezone.now() - dt.timedelta(seconds=1)
    )
    response = client.get("/patients/")
    assert response.status_code == 302 and reverse("login") in response["Location"]
