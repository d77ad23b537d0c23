"""Patient pages, logins, the groups and the demo login command."""

import datetime as dt
import re

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command
from django.urls import reverse

from analytics.dashboard.patient import patient_list, patient_timeline
from imaging.models import ProcessingRun, Series
from patients.permissions import can_upload
from tests.imaging.factories import (
    IngestSessionFactory,
    InstanceFactory,
    ProcessingRunFactory,
    SeriesFactory,
    StudyFactory,
)
from tests.patients.factories import PASSWORD, PatientFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def clinician_client(client):
    client.force_login(UserFactory(groups=["clinician"]))
    return client


@pytest.fixture
def two_timepoints():
    """A patient with a processed baseline and a follow-up whose processing failed."""
    patient = PatientFactory(patient_id="MRN-42", name="Doe^Jane")
    baseline = StudyFactory(patient=patient, study_date=dt.date(2024, 1, 10))
    followup = StudyFactory(patient=patient, study_date=dt.date(2024, 4, 10))
    processed = SeriesFactory(study=baseline, state=Series.State.PROCESSED, description="BASE AX")
    failed = SeriesFactory(
        study=followup,
        state=Series.State.FAILED,
        state_detail="slice spacing is irregular",
        description="FU AX",
    )
    session = IngestSessionFactory()
    for series in (processed, failed):
        InstanceFactory.create_batch(3, series=series, ingest_session=session)
    InstanceFactory(series=failed, ingest_session=session, warnings=["odd pixel spacing"])
    ProcessingRunFactory(series=processed, status=ProcessingRun.Status.SUCCEEDED)
    ProcessingRunFactory(series=failed, status=ProcessingRun.Status.SUCCEEDED)
    ProcessingRunFactory(
        series=failed, status=ProcessingRun.Status.FAILED, error="registration diverged"
    )
    return patient, processed, failed, session


# -- login and permissions ------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        reverse("patients:list"),
        reverse("patients:detail", args=[1]),
        reverse("imaging:upload"),
        reverse("imaging:ingest-session", args=[1]),
        reverse("analytics:worklist"),
        reverse("analytics:cohort"),
        reverse("analytics:pipeline"),
    ],
)
def test_every_page_sends_anonymous_users_to_the_login(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login") + "?next=")


def test_root_is_the_worklist(clinician_client):
    response = clinician_client.get("/")
    assert response.status_code == 200
    assert response.resolver_match.view_name == "analytics:worklist"


def test_user_without_a_group_is_refused(client):
    client.force_login(UserFactory())
    assert client.get(reverse("patients:list")).status_code == 403


def test_login_page_logs_in_and_goes_to_the_worklist(client):
    user = UserFactory(groups=["clinician"])
    page = client.get(reverse("login"))
    assert page.status_code == 200
    assert b'autocomplete="current-password"' in page.content

    response = client.post(reverse("login"), {"username": user.username, "password": PASSWORD})

    assert response.status_code == 302
    assert response["Location"] == reverse("analytics:worklist")


def test_wrong_password_shows_an_error(client):
    user = UserFactory()
    response = client.post(reverse("login"), {"username": user.username, "password": "nope"})
    assert response.status_code == 200
    assert b'role="alert"' in response.content


def test_logout_is_a_post_form_in_the_layout(clinician_client):
    content = clinician_client.get(reverse("patients:list")).content.decode()
    assert re.search(r'<form method="post" action="/accounts/logout/"', content)
    assert 'href="#main"' in content  # skip link
    assert clinician_client.post(reverse("logout")).status_code == 302
    assert clinician_client.get(reverse("patients:list")).status_code == 302


def test_upload_link_only_for_those_who_may_upload(client):
    client.force_login(UserFactory(groups=["clinician"]))
    assert reverse("imaging:upload") not in client.get(reverse("patients:list")).content.decode()
    client.force_login(UserFactory(groups=["radiologist"]))
    assert reverse("imaging:upload") in client.get(reverse("patients:list")).content.decode()


def test_groups_carry_the_permission_model():
    clinician = UserFactory(groups=["clinician"])
    radiologist = UserFactory(groups=["radiologist"])
    admin = UserFactory(groups=["admin"])
    superuser = UserFactory(is_superuser=True)

    assert [can_upload(u) for u in (clinician, radiologist, admin, superuser)] == [
        False,
        True,
        True,
        True,
    ]
    for user in (clinician, radiologist, admin):
        assert user.has_perm("patients.view_patient")
        assert user.has_perm("imaging.view_series")
    assert admin.has_perm("auth.change_user") and admin.has_perm("patients.view_auditevent")
    assert not radiologist.has_perm("auth.change_user")
    assert not clinician.has_perm("patients.view_auditevent")


# -- patient list -----------------------------------------------------------------------
def test_patient_list_shows_patients_with_counts(clinician_client, two_timepoints):
    patient, *_ = two_timepoints
    PatientFactory(patient_id="MRN-7", name="Roe^Richard")

    response = clinician_client.get(reverse("patients:list"))

    content = response.content.decode()
    assert response.status_code == 200
    assert "MRN-42" in content and "Doe, Jane" in content and "MRN-7" in content
    assert reverse("patients:detail", args=[patient.pk]) in content
    assert "1 series failed" in content
    rows = {row.patient_id: row for row in response.context["page"].object_list}
    assert (rows["MRN-42"].study_count, rows["MRN-42"].series_count) == (2, 2)
    assert rows["MRN-42"].first_study_date == dt.date(2024, 1, 10)
    assert rows["MRN-42"].last_study_date == dt.date(2024, 4, 10)
    assert (rows["MRN-7"].study_count, rows["MRN-7"].last_study_date) == (0, None)


@pytest.mark.parametrize(
    ("search", "expected"),
    [("jane", ["MRN-42"]), ("Doe, Jane", ["MRN-42"]), ("mrn-7", ["MRN-7"]), ("nobody", [])],
)
def test_patient_list_search(search, expected):
    PatientFactory(patient_id="MRN-42", name="Doe^Jane")
    PatientFactory(patient_id="MRN-7", name="Roe^Richard")
    assert [row.patient_id for row in patient_list(search=search)] == expected


def test_patient_list_is_paginated(clinician_client):
    PatientFactory.create_batch(55)
    first = clinician_client.get(reverse("patients:list"))
    second = clinician_client.get(reverse("patients:list"), {"page": 2})
    assert len(first.context["page"].object_list) == 50
    assert len(second.context["page"].object_list) == 5
    assert "Page 2 of 2" in second.content.decode()


def test_empty_patient_list_says_how_to_add_data(clinician_client):
    assert "manage.py ingest" in clinician_client.get(reverse("patients:list")).content.decode()


# -- patient page -----------------------------------------------------------------------
def test_patient_page_lists_studies_series_state_and_runs(clinician_client, two_timepoints):
    patient, processed, failed, session = two_timepoints

    response = clinician_client.get(reverse("patients:detail", args=[patient.pk]))

    content = response.content.decode()
    assert response.status_code == 200
    assert "Doe, Jane" in content and "MRN-42" in content
    assert content.index("2024-01-10") < content.index("2024-04-10")  # oldest first
    assert "BASE AX" in content and "FU AX" in content
    assert "Processed" in content and "Failed" in content
    assert "slice spacing is irregular" in content
    assert "registration diverged" in content  # the latest run's error
    assert "1 with warnings" in content
    assert reverse("imaging:ingest-session", args=[session.pk]) in content


def test_unknown_patient_is_404(clinician_client):
    assert clinician_client.get(reverse("patients:detail", args=[999999])).status_code == 404


def test_timeline_graph(two_timepoints):
    patient, processed, failed, session = two_timepoints

    timeline = patient_timeline(patient_id="MRN-42")

    assert timeline == patient_timeline(pk=patient.pk)
    assert (timeline.study_count, timeline.series_count, timeline.instance_count) == (2, 2, 7)
    base, follow = timeline.studies
    assert base.series[0].latest_run.status == ProcessingRun.Status.SUCCEEDED
    failed_summary = follow.series[0]
    assert failed_summary.is_failed and failed_summary.is_settled
    assert failed_summary.latest_run.status == ProcessingRun.Status.FAILED
    assert failed_summary.latest_run.error == "registration diverged"
    assert failed_summary.instance_count == 4
    assert failed_summary.instances_with_warnings == 1
    assert [(i.session_id, i.instances) for i in failed_summary.ingests] == [(session.pk, 4)]
    assert timeline.state_counts == {"Processed": 1, "Failed": 1}


def test_timeline_query_count_does_not_grow_with_the_data(django_assert_num_queries):
    patient = PatientFactory()
    for _ in range(4):
        series = SeriesFactory(study=StudyFactory(patient=patient))
        InstanceFactory.create_batch(3, series=series)
        ProcessingRunFactory.create_batch(2, series=series)

    with django_assert_num_queries(9):  # five for studies and series, four for the rest
        timeline = patient_timeline(pk=patient.pk)

    assert timeline.series_count == 4


def test_timeline_needs_exactly_one_key():
    with pytest.raises(TypeError):
        patient_timeline()


# -- demo login -------------------------------------------------------------------------
def test_create_demo_user_prints_a_working_password(client, capsys):
    call_command("create_demo_user")
    output = capsys.readouterr().out
    password = re.search(r"password (\S+)", output).group(1)

    user = get_user_model().objects.get(username="demo")
    assert set(user.groups.values_list("name", flat=True)) == {"radiologist", "admin"}
    assert user.is_staff and can_upload(user)
    assert client.login(username="demo", password=password)


def test_create_demo_user_is_idempotent_and_takes_a_password(client):
    call_command("create_demo_user", "--password", "first-password-1")
    call_command("create_demo_user", "--password", "second-password-2", "--username", "demo")

    assert get_user_model().objects.filter(username="demo").count() == 1
    assert client.login(username="demo", password="second-password-2")
    assert not client.login(username="demo", password="first-password-1")


def test_create_demo_user_explains_missing_groups():
    Group.objects.filter(name="admin").delete()
    with pytest.raises(CommandError, match="migrate"):
        call_command("create_demo_user")


@pytest.mark.django_db(transaction=True)
def test_groups_keep_their_permissions_after_the_database_is_flushed():
    from django.core.management import call_command

    call_command("flush", "--no-input", verbosity=0)

    radiologist = UserFactory(groups=["radiologist"])
    assert radiologist.has_perm("imaging.add_instance")
    assert radiologist.has_perm("imaging.change_lesionmeasurement")
    clinician = UserFactory(groups=["clinician"])
    assert clinician.has_perm("analytics.view_riskscore")
    assert not clinician.has_perm("imaging.add_instance")


def test_a_clinician_may_switch_irecist_on_and_migrate_gives_existing_databases_that():
    """Switching iRECIST on is the treating clinician's call: the clinician group has the
    permission on response settings, and an existing database whose group lacks it gets
    it on its next ``migrate`` (the groups are synced after every migrate)."""
    from django.contrib.auth.models import Group, Permission
    from django.core.management import call_command

    from analytics.lesions.review.irecist import can_set_irecist

    clinician = UserFactory(groups=["clinician"])
    assert clinician.has_perm("analytics.change_responsesettings") and can_set_irecist(clinician)
    assert not clinician.has_perm("imaging.change_lesionmeasurement")  # not a reviewer
    group = Group.objects.get(name="clinician")
    group.permissions.remove(Permission.objects.get(codename="change_responsesettings"))
    assert not can_set_irecist(type(clinician).objects.get(pk=clinician.pk))

    call_command("migrate", verbosity=0)  # nothing to apply: the groups are synced anyway

    assert can_set_irecist(type(clinician).objects.get(pk=clinician.pk))
    assert UserFactory(groups=["admin"]).has_perm("analytics.change_responsesettings")
