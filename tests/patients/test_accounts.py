"""Accounts in the admin site and at the login: administrators cannot raise their rights
or become someone else, tokens are shown once, logins are throttled, and every act on an
account is audited."""

import io

import pytest
from axes.models import AccessAttempt
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command
from django.urls import reverse
from rest_framework.authtoken.models import Token

from patients.models import AuditEvent
from radtrack.api.tokens import token_digest
from tests.patients.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db
User = get_user_model()


@pytest.fixture
def admin_client(client):
    admin = UserFactory(groups=["admin"], is_staff=True, username="site-admin")
    client.force_login(admin)
    client.admin = admin
    return client


def _change_form(user, **changes) -> dict:
    data = {
        "username": user.username,
        "first_name": "",
        "last_name": "",
        "email": user.email,
        "is_active": "on",
        "is_staff": "on" if user.is_staff else "",
        "date_joined_0": "2024-01-01",
        "date_joined_1": "00:00:00",
        "initial-date_joined_0": "2024-01-01",
        "initial-date_joined_1": "00:00:00",
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v != ""}


# -- item 3: no self-promotion ---------------------------------------------------------
def test_an_administrator_cannot_make_themselves_superuser_or_add_groups(admin_client):
    admin = admin_client.admin
    url = reverse("admin:auth_user_change", args=[admin.pk])
    page = admin_client.get(url)
    assert page.status_code == 200
    assert b'name="is_superuser"' not in page.content and b'name="groups"' not in page.content
    superuser_group = Group.objects.create(name="everything")
    response = admin_client.post(
        url,
        _change_form(
            admin,
            is_superuser="on",
            groups=[str(superuser_group.pk)],
            user_permissions=["1"],
            first_name="Site",
        ),
    )
    assert response.status_code == 302
    admin.refresh_from_db()
    assert admin.first_name == "Site"  # the change itself went through
    assert not admin.is_superuser
    assert list(admin.groups.values_list("name", flat=True)) == ["admin"]
    assert not admin.user_permissions.exists()
    event = AuditEvent.objects.get(action="admin.user.change")
    assert event.username == "site-admin" and f"user {admin.pk}" in event.object


def test_an_administrator_cannot_edit_a_superuser_or_another_staff_account(admin_client):
    boss = UserFactory(is_superuser=True, is_staff=True)
    colleague = UserFactory(groups=["admin"], is_staff=True)
    clinician = UserFactory(groups=["clinician"])
    for other in (boss, colleague):
        form = _change_form(other, first_name="x")
        assert (
            admin_client.post(reverse("admin:auth_user_change", args=[other.pk]), form).status_code
            == 403
        )
        password_url = reverse("admin:auth_user_password_change", args=[other.pk])
        answer = admin_client.post(
            password_url, {"password1": "Taken-over-42!", "password2": "Taken-over-42!"}
        )
        assert answer.status_code == 403
        other.refresh_from_db()
        assert other.check_password(PASSWORD)
    # An account without staff rights may be looked after (and that is audited).
    password_url = reverse("admin:auth_user_password_change", args=[clinician.pk])
    answer = admin_client.post(
        password_url,
        {
            "password1": "A-new-long-pass-9",
            "password2": "A-new-long-pass-9",
            "usable_password": "true",
        },
    )
    assert answer.status_code == 302
    assert AuditEvent.objects.filter(
        action="admin.user.change", object__contains=f"user {clinician.pk}"
    ).exists()


def test_only_a_superuser_edits_groups(admin_client, client):
    group = Group.objects.get(name="clinician")
    assert admin_client.get(reverse("admin:auth_group_add")).status_code == 403
    response = admin_client.post(
        reverse("admin:auth_group_change", args=[group.pk]),
        {"name": "clinician", "permissions": ["1"]},
    )
    assert response.status_code == 403
    superuser = UserFactory(is_superuser=True, is_staff=True)
    client.force_login(superuser)
    assert client.get(reverse("admin:auth_group_change", args=[group.pk])).status_code == 200


def test_a_superuser_grants_groups_and_it_is_audited(client):
    superuser = UserFactory(is_superuser=True, is_staff=True, username="root")
    target = UserFactory()
    client.force_login(superuser)
    response = client.post(
        reverse("admin:auth_user_change", args=[target.pk]),
        _change_form(target, groups=[str(Group.objects.get(name="radiologist").pk)]),
    )
    assert response.status_code == 302
    assert target.groups.filter(name="radiologist").exists()
    event = AuditEvent.objects.get(action="admin.user.change")
    assert event.username == "root" and "groups" in event.object.lower()


# -- item 3: tokens shown once, never listed -------------------------------------------
def test_tokens_are_shown_once_and_never_listed(admin_client):
    admin = admin_client.admin
    response = admin_client.post(reverse("admin:authtoken_tokenproxy_add"), {"user": admin.pk})
    assert response.status_code == 200
    shown = response.context["token"]
    assert shown and shown.encode() in response.content
    stored = Token.objects.get(user=admin).key
    assert stored == token_digest(shown)
    listing = admin_client.get(reverse("admin:authtoken_tokenproxy_changelist"))
    assert listing.status_code == 200
    assert shown.encode() not in listing.content and stored.encode() not in listing.content
    assert AuditEvent.objects.filter(action="admin.token.add").count() == 1
    assert shown not in AuditEvent.objects.get(action="admin.token.add").object


def test_an_administrator_cannot_issue_a_token_for_someone_else(admin_client):
    victim = UserFactory(groups=["radiologist"])
    response = admin_client.post(reverse("admin:authtoken_tokenproxy_add"), {"user": victim.pk})
    assert response.status_code == 200  # the form again, with its error
    assert not Token.objects.filter(user=victim).exists()
    assert b"Select a valid choice" in response.content


def test_api_token_command_prints_the_token_once_and_audits():
    user = UserFactory(username="scanner")
    out = io.StringIO()
    call_command("api_token", "scanner", stdout=out)
    raw = out.getvalue().strip()
    assert Token.objects.get(user=user).key == token_digest(raw)
    assert AuditEvent.objects.filter(action="admin.token.add", object__contains="scanner").exists()
    with pytest.raises(CommandError, match="no account"):
        call_command("api_token", "nobody")


# -- item 5: login throttling ----------------------------------------------------------
def _login(client, username, password, address="203.0.113.5"):
    return client.post(
        reverse("login"), {"username": username, "password": password}, REMOTE_ADDR=address
    )


def test_wrong_passwords_lock_the_account_even_for_the_right_one(client, settings):
    settings.AXES_FAILURE_LIMIT = 5
    UserFactory(username="dr.who", groups=["clinician"])
    for _ in range(5):
        assert _login(client, "dr.who", "wrong").status_code in (200, 429)
    response = _login(client, "dr.who", PASSWORD)
    assert response.status_code == 429
    assert b"Too many failed logins" in response.content
    # From another address too: the account itself is locked.
    assert _login(client, "dr.who", PASSWORD, address="198.51.100.20").status_code == 429


def test_one_address_trying_many_accounts_is_locked(client, settings):
    settings.AXES_FAILURE_LIMIT = 5
    UserFactory(username="innocent", groups=["clinician"])
    for n in range(5):
        _login(client, f"guess{n}", "wrong", address="192.0.2.66")
    assert _login(client, "innocent", PASSWORD, address="192.0.2.66").status_code == 429
    assert _login(client, "innocent", PASSWORD, address="192.0.2.67").status_code == 302


def test_an_administrator_lifts_a_lockout_and_it_is_audited(client, admin_client, settings):
    settings.AXES_FAILURE_LIMIT = 3
    UserFactory(username="locked", groups=["clinician"])
    for _ in range(3):
        _login(client, "locked", "wrong")
    assert _login(client, "locked", PASSWORD).status_code == 429
    attempts = AccessAttempt.objects.filter(username="locked")
    assert attempts.exists()
    listing = admin_client.get(reverse("admin:axes_accessattempt_changelist"))
    assert listing.status_code == 200
    for attempt in attempts:
        url = reverse("admin:axes_accessattempt_delete", args=[attempt.pk])
        assert admin_client.post(url, {"post": "yes"}).status_code == 302
    assert _login(client, "locked", PASSWORD).status_code == 302
    event = AuditEvent.objects.get(action="admin.lockout.lift")
    assert "'locked'" in event.object and event.username == "site-admin"


def test_login_unlock_command_lifts_and_audits(client, settings):
    settings.AXES_FAILURE_LIMIT = 2
    UserFactory(username="cli-locked", groups=["clinician"])
    for _ in range(2):
        _login(client, "cli-locked", "wrong")
    out = io.StringIO()
    call_command("login_unlock", "--username", "cli-locked", stdout=out)
    assert "lifted" in out.getvalue()
    assert _login(client, "cli-locked", PASSWORD).status_code == 302
    assert AuditEvent.objects.filter(action="admin.lockout.lift").exists()
    with pytest.raises(CommandError):
        call_command("login_unlock")


# -- an address that cannot be known (PostgreSQL keeps addresses in inet columns) ---------
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("address", ["", "unix:/run/radtrack.sock", "testserver"])
def test_an_unknown_client_address_is_stored_as_null(client, address):
    """axes' AccessAttempt and AccessLog and the audit trail keep the address in a
    GenericIPAddressField (inet on PostgreSQL, which refuses any text but an address):
    one that cannot be known (a Unix socket, the test client's force_login) is NULL,
    at a failed login, a login, a force_login and a page read, outside any transaction."""
    from axes.models import AccessLog

    UserFactory(username="nurse2", groups=["clinician"])
    assert _login(client, "nurse2", "wrong", address=address).status_code == 200
    assert list(AccessAttempt.objects.values_list("username", "ip_address")) == [("nurse2", None)]
    assert _login(client, "nurse2", PASSWORD, address=address).status_code == 302
    client.force_login(UserFactory(username="nurse3", groups=["clinician"]))
    assert client.get(reverse("patients:list"), REMOTE_ADDR=address).status_code == 200
    logins = set(AccessLog.objects.values_list("username", "ip_address"))
    assert logins == {("nurse2", None), ("nurse3", None)}
    reads = AuditEvent.objects.filter(action="patient.list", username="nurse3")
    assert list(reads.values_list("remote_address", flat=True)) == [None]


def test_failures_from_unknown_addresses_lock_accounts_not_every_such_client(client, settings):
    """With no address to count, a lockout is per account: wrong passwords for other
    accounts from an unknown address do not lock out everyone else without one."""
    settings.AXES_FAILURE_LIMIT = 3
    UserFactory(username="innocent", groups=["clinician"])
    UserFactory(username="target", groups=["clinician"])
    for n in range(3):
        _login(client, f"guess{n}", "wrong", address="")
    assert _login(client, "innocent", PASSWORD, address="").status_code == 302
    for _ in range(3):
        _login(client, "target", "wrong", address="")
    assert _login(client, "target", PASSWORD, address="").status_code == 429
    assert _login(client, "target", PASSWORD, address="198.51.100.30").status_code == 429
