"""The audit trail: who, what, when and from where, for every view of patient data."""

import pytest
from django.test import RequestFactory
from django.urls import reverse

from imaging.models import IngestSession
from patients.audit import audit_record, client_address
from patients.models import AuditEvent
from tests.imaging.factories import IngestSessionFactory, SeriesFactory
from tests.patients.factories import PatientFactory, UserFactory

pytestmark = pytest.mark.django_db


def _request(remote="203.0.113.7", forwarded=None, user=None):
    meta = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        meta["HTTP_X_FORWARDED_FOR"] = forwarded
    request = RequestFactory().get("/patients/", **meta)
    if user is not None:
        request.user = user
    return request


def test_record_copies_username_and_address():
    user = UserFactory(username="dr.jones")
    patient = PatientFactory()

    event = audit_record(
        request=_request(user=user), action="patient.view", object="patient X", patient=patient
    )

    event.refresh_from_db()
    assert (event.user, event.username, event.action) == (user, "dr.jones", "patient.view")
    assert event.patient == patient
    assert event.object == "patient X"
    assert event.remote_address == "203.0.113.7"
    assert event.at is not None


def test_row_keeps_username_after_the_account_is_deleted():
    user = UserFactory(username="leaver")
    event = audit_record(user=user, action="patient.export")

    user.delete()

    event.refresh_from_db()
    assert event.user is None
    assert event.username == "leaver"


def test_patient_may_be_given_by_primary_key():
    patient = PatientFactory()
    event = audit_record(user=UserFactory(), action="patient.view", patient=patient.pk)
    assert AuditEvent.objects.get(pk=event.pk).patient == patient


def test_anonymous_user_is_recorded_without_a_user():
    from django.contrib.auth.models import AnonymousUser

    event = audit_record(request=_request(user=AnonymousUser()), action="patient.list")
    assert event.user is None
    assert event.username == ""


def test_forwarded_for_is_ignored_without_trusted_proxies(settings):
    settings.RADTRACK_TRUSTED_PROXIES = []
    assert client_address(_request("203.0.113.7", "198.51.100.1")) == "203.0.113.7"


def test_forwarded_for_is_ignored_when_the_peer_is_not_trusted(settings):
    settings.RADTRACK_TRUSTED_PROXIES = ["10.0.0.1"]
    assert client_address(_request("203.0.113.7", "198.51.100.1")) == "203.0.113.7"


def test_forwarded_for_is_honoured_from_a_trusted_proxy(settings):
    settings.RADTRACK_TRUSTED_PROXIES = ["10.0.0.1"]
    assert client_address(_request("10.0.0.1", "198.51.100.1")) == "198.51.100.1"


def test_spoofed_leftmost_entries_are_not_believed(settings):
    # The client wrote "1.1.1.1" itself; the trusted proxy appended the real peer.
    settings.RADTRACK_TRUSTED_PROXIES = ["10.0.0.0/8"]
    request = _request("10.0.0.1", "1.1.1.1, 198.51.100.1, 10.0.0.2")
    assert client_address(request) == "198.51.100.1"


def test_garbled_forwarded_entry_stops_at_the_last_trusted_hop(settings):
    settings.RADTRACK_TRUSTED_PROXIES = ["10.0.0.1"]
    assert client_address(_request("10.0.0.1", "not-an-address")) == "10.0.0.1"


def test_ipv6_and_ports_are_understood(settings):
    settings.RADTRACK_TRUSTED_PROXIES = "::1"
    assert client_address(_request("::1", "[2001:db8::5]:4711")) == "2001:db8::5"


def test_patient_list_view_is_audited(client):
    user = UserFactory(groups=["clinician"])
    client.force_login(user)

    response = client.get(reverse("patients:list"), {"q": "doe"}, REMOTE_ADDR="192.0.2.10")

    assert response.status_code == 200
    event = AuditEvent.objects.get()
    assert (event.user, event.action, event.remote_address) == (user, "patient.list", "192.0.2.10")
    assert "doe" in event.object


def test_patient_detail_view_is_audited_with_the_patient(client):
    user = UserFactory(groups=["clinician"])
    series = SeriesFactory()
    patient = series.study.patient
    client.force_login(user)

    response = client.get(reverse("patients:detail", args=[patient.pk]))

    assert response.status_code == 200
    event = AuditEvent.objects.get()
    assert (event.action, event.patient, event.username) == ("patient.view", patient, user.username)
    assert patient.patient_id in event.object


def test_refused_view_writes_no_audit_row(client):
    client.force_login(UserFactory())  # no group: no view permission
    assert client.get(reverse("patients:list")).status_code == 403
    assert not AuditEvent.objects.exists()


def test_api_read_of_an_ingest_session_is_audited(client):
    user = UserFactory(groups=["radiologist"])
    session = IngestSessionFactory(user=user, source=IngestSession.Source.API)
    client.force_login(user)

    response = client.get(reverse("api-ingest-session", args=[session.pk]))

    assert response.status_code == 200
    event = AuditEvent.objects.get()
    assert (event.action, event.object) == ("ingest_session.read", f"ingest session {session.pk}")


def test_admin_views_of_patients_are_audited(client):
    admin_user = UserFactory(groups=["admin"], is_staff=True)
    patient = PatientFactory()
    client.force_login(admin_user)

    assert client.get(reverse("admin:patients_patient_changelist")).status_code == 200
    assert (
        client.get(reverse("admin:patients_patient_change", args=[patient.pk])).status_code == 200
    )

    actions = list(AuditEvent.objects.order_by("at", "pk").values_list("action", "patient"))
    # The list names every patient on the page it showed.
    assert actions == [("admin.list", patient.pk), ("admin.view", patient.pk)]


def test_audit_rows_cannot_be_changed_in_the_admin(client):
    admin_user = UserFactory(groups=["admin"], is_staff=True)
    event = audit_record(user=admin_user, action="patient.view")
    client.force_login(admin_user)

    assert client.get(reverse("admin:patients_auditevent_changelist")).status_code == 200
    assert client.get(reverse("admin:patients_auditevent_add")).status_code == 403
    response = client.post(
        reverse("admin:patients_auditevent_delete", args=[event.pk]), {"post": "yes"}
    )
    assert response.status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()
