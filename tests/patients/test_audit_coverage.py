"""Audit coverage: every page, admin view and API answer names the patients it showed;
reading the trail is audited; the audit page filters and exports (CSV, FHIR AuditEvent)."""

import csv
import datetime as dt
import io

import pytest
from django.urls import reverse

from analytics.fhir.validation import fhir_resource_validate
from patients.audit import audit_record
from patients.models import AuditEvent
from tests.api.helpers import rows_make
from tests.imaging.factories import (
    IngestSessionFactory,
    InstanceFactory,
    ProcessingRunFactory,
    SeriesFactory,
)
from tests.patients.factories import PatientFactory, UserFactory

pytestmark = pytest.mark.django_db


def _patients(action: str) -> set[int | None]:
    return set(AuditEvent.objects.filter(action=action).values_list("patient_id", flat=True))


@pytest.fixture
def rows():
    return rows_make()


@pytest.fixture
def radiologist_client(client):
    client.force_login(UserFactory(groups=["radiologist"]))
    return client


@pytest.fixture
def admin_client(client):
    client.force_login(UserFactory(groups=["admin"], is_staff=True, username="auditor"))
    return client


# -- item 7: one row per patient shown ---------------------------------------------------
def test_worklist_and_patient_list_write_a_row_per_patient_shown(radiologist_client, rows):
    assert radiologist_client.get("/").status_code == 200
    assert _patients("worklist.view") == {rows.alice.pk, rows.bob.pk}
    assert radiologist_client.get("/patients/", {"q": "Jones"}).status_code == 200
    assert _patients("patient.list") == {rows.bob.pk}


def test_pipeline_writes_a_row_per_patient_shown(radiologist_client, rows):
    assert radiologist_client.get(reverse("analytics:pipeline")).status_code == 200
    from analytics.dashboard.pipeline import pipeline_overview

    expected = {study.patient_pk for study in pipeline_overview().studies}
    assert rows.alice.pk in expected
    assert _patients("pipeline.view") == expected


def test_an_empty_list_writes_one_row_without_a_patient(radiologist_client):
    assert radiologist_client.get("/patients/").status_code == 200
    assert _patients("patient.list") == {None}


def test_admin_lists_and_views_of_imaging_records_are_audited(admin_client):
    instance = InstanceFactory()
    run = ProcessingRunFactory(series=SeriesFactory())
    session = IngestSessionFactory()
    InstanceFactory(ingest_session=session, series=instance.series)
    patient_of_instance = instance.series.study.patient_id
    patient_of_run = run.series.study.patient_id
    for name, pk, patient in (
        ("instance", instance.pk, patient_of_instance),
        ("processingrun", run.pk, patient_of_run),
        ("ingestsession", session.pk, patient_of_instance),
    ):
        AuditEvent.objects.all().delete()
        listing = admin_client.get(reverse(f"admin:imaging_{name}_changelist"))
        assert listing.status_code == 200, name
        assert patient in _patients("admin.list"), name
        view = admin_client.get(reverse(f"admin:imaging_{name}_change", args=[pk]))
        assert view.status_code == 200, name
        assert _patients("admin.view") == {patient}, name


def test_identifiers_and_hl7_messages_are_shown_read_only_and_audited(admin_client, rows):
    from patients.models import PatientIdentifier, ResultMessage

    identifier = PatientIdentifier.objects.create(
        patient=rows.alice, system="https://other.example/mrn", value="X-1", type_code="MR"
    )
    message = ResultMessage.objects.create(
        patient=rows.bob, study_instance_uid="2.25.7", control_id="c1", content_sha256="0" * 64,
        result_status="F", destination="ehr:2575", status="accepted", ack_code="AA", attempts=1,
    )  # fmt: skip
    for name, pk, patient in (
        ("patientidentifier", identifier.pk, rows.alice.pk),
        ("resultmessage", message.pk, rows.bob.pk),
    ):
        AuditEvent.objects.all().delete()
        listing = admin_client.get(reverse(f"admin:patients_{name}_changelist"))
        assert listing.status_code == 200, name
        assert _patients("admin.list") == {patient}, name
        view = admin_client.get(reverse(f"admin:patients_{name}_change", args=[pk]))
        assert view.status_code == 200 and b'name="_save"' not in view.content, name
        assert _patients("admin.view") == {patient}, name
        assert admin_client.get(reverse(f"admin:patients_{name}_add")).status_code == 403
        assert (
            admin_client.post(
                reverse(f"admin:patients_{name}_delete", args=[pk]), {"post": "yes"}
            ).status_code
            == 403
        )
    assert PatientIdentifier.objects.filter(pk=identifier.pk).exists()
    assert ResultMessage.objects.filter(pk=message.pk).exists()


def test_api_ingest_session_detail_names_its_patients(client):
    user = UserFactory(groups=["radiologist"])
    session = IngestSessionFactory(user=user)
    first = InstanceFactory(ingest_session=session)
    second = InstanceFactory(ingest_session=session)
    client.force_login(user)
    body = client.get(reverse("api-ingest-session", args=[session.pk])).json()
    patients = {first.series.study.patient_id, second.series.study.patient_id}
    assert set(body["patients"]) == patients
    assert _patients("ingest_session.read") == patients
    client.get(reverse("api-ingest-session-list"))
    assert _patients("ingest_session.list") == patients


def test_a_session_without_an_account_has_a_null_user(client):
    session = IngestSessionFactory(user=None)
    client.force_login(UserFactory(groups=["radiologist"]))
    assert client.get(reverse("api-ingest-session", args=[session.pk])).json()["user"] is None


# -- reading the trail ---------------------------------------------------------------------
def test_reading_the_trail_in_the_admin_is_audited(admin_client):
    event = audit_record(action="patient.view", username="someone")
    admin_client.get(reverse("admin:patients_auditevent_changelist"))
    admin_client.get(reverse("admin:patients_auditevent_change", args=[event.pk]))
    reads = AuditEvent.objects.filter(action="audit.read", username="auditor")
    assert reads.count() == 2


@pytest.fixture
def trail():
    alice = PatientFactory(patient_id="MRN-AUD-1")
    bob = PatientFactory(patient_id="MRN-AUD-2")
    rows = [
        audit_record(action="patient.view", username="dr.a", patient=alice, object="patient 1"),
        audit_record(action="patient.list", username="dr.b", patient=bob),
        audit_record(action="dicom.export", username="cli:root", patient=alice),
        audit_record(action="admin.user.change", username="dr.b", object="user 3 (x)"),
    ]
    old = rows[0]
    AuditEvent.objects.filter(pk=old.pk).update(at=dt.datetime(2024, 1, 5, 12, tzinfo=dt.UTC))
    return alice, bob, rows


def test_audit_page_filters_by_user_patient_action_and_date(admin_client, trail):
    alice, bob, rows = trail

    def shown(**query):
        response = admin_client.get(reverse("audit:log"), query)
        assert response.status_code == 200
        return {e.pk for e in response.context["page"].object_list}

    assert shown(user="dr.b") == {rows[1].pk, rows[3].pk}
    assert shown(patient="MRN-AUD-1") == {rows[0].pk, rows[2].pk}
    assert shown(patient=f"#{bob.pk}") == {rows[1].pk}
    assert shown(action="patient.") == {rows[0].pk, rows[1].pk}
    assert shown(date_to="2024-01-31") == {rows[0].pk}
    assert rows[0].pk not in shown(date_from="2024-02-01")
    reads = AuditEvent.objects.filter(action="audit.read", username="auditor")
    assert reads.count() == 6 and "user dr.b" in reads.order_by("pk").first().object


def test_audit_page_exports_csv_and_fhir_audit_events(admin_client, trail):
    alice, _, rows = trail
    response = admin_client.get(reverse("audit:log"), {"patient": "MRN-AUD-1", "format": "csv"})
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert {r["id"] for r in table} == {str(rows[0].pk), str(rows[2].pk)}
    assert {r["patient_mrn"] for r in table} == {"MRN-AUD-1"}

    bundle = admin_client.get(
        reverse("audit:log"), {"patient": "MRN-AUD-1", "format": "fhir"}
    ).json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    events = [entry["resource"] for entry in bundle["entry"]]
    for event in events:
        fhir_resource_validate(event)
        assert event["entity"][0]["what"]["reference"] == f"Patient/patient-{alice.pk}"
    types = {e["subtype"][0]["code"]: e["type"]["code"] for e in events}
    assert types == {"patient.view": "110110", "dicom.export": "110106"}
    exports = AuditEvent.objects.filter(action="audit.export", username="auditor")
    assert [e.object.split(":")[0] for e in exports.order_by("pk")] == ["csv", "fhir"]


def test_audit_page_needs_the_audit_permission(client, trail):
    client.force_login(UserFactory(groups=["radiologist"]))
    assert client.get(reverse("audit:log")).status_code == 403
    assert client.get(reverse("audit:log"), {"format": "csv"}).status_code == 403
    assert not AuditEvent.objects.filter(action__startswith="audit.").exists()


def test_a_bad_date_filter_is_a_400_with_the_field(admin_client):
    response = admin_client.get(reverse("audit:log"), {"date_from": "yesterday"})
    assert response.status_code == 400
    assert b"Enter a valid date" in response.content


def test_every_audit_event_of_the_fhir_export_can_be_read_at_its_full_url(admin_client, trail):
    """Issue 20: every fullUrl RadTrack writes can be read; the trail's rows too, by those
    who may read the trail, and the read is itself audited."""
    _, _, rows = trail
    bundle = admin_client.get(reverse("audit:log"), {"format": "fhir"}).json()
    assert len(bundle["entry"]) >= len(rows)
    for entry in bundle["entry"]:
        path = entry["fullUrl"][entry["fullUrl"].index("/fhir/") :]
        answer = admin_client.get(path)
        assert answer.status_code == 200, path
        assert answer["Content-Type"].startswith("application/fhir+json")
        assert answer.json() == entry["resource"], path
    assert AuditEvent.objects.filter(action="audit.read", object=f"AuditEvent/audit-{rows[0].pk}")
    for unknown in ("audit-987654321", "audit-01", "patient-1"):
        answer = admin_client.get(f"/fhir/AuditEvent/{unknown}")
        assert answer.status_code == 404 and answer.json()["resourceType"] == "OperationOutcome"


def test_audit_events_need_the_audit_permission_over_fhir(client, trail):
    _, _, rows = trail
    client.force_login(UserFactory(groups=["clinician"]))
    answer = client.get(f"/fhir/AuditEvent/audit-{rows[0].pk}")
    assert answer.status_code == 403 and answer.json()["resourceType"] == "OperationOutcome"
    assert not AuditEvent.objects.filter(action="audit.read").exists()
