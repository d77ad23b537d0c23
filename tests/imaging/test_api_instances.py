"""POST /api/v1/instances/ and GET /api/v1/ingest-sessions/<id>/ with real DICOM files."""

import io
import zipfile

import pytest
from django.core.management import call_command
from django.urls import reverse

from imaging.models import IngestIssue, IngestSession, Instance, Series
from patients.models import AuditEvent
from radtrack.api.tokens import api_token_issue
from tests.imaging.factories import IngestIssueFactory, IngestSessionFactory, ct_files
from tests.patients.factories import UserFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/instances/"


@pytest.fixture
def radiologist():
    return UserFactory(groups=["radiologist"])


@pytest.fixture
def api(client, radiologist):
    client.force_login(radiologist)
    return client


@pytest.fixture
def series_files(tmp_path):
    return ct_files(tmp_path / "series", key="api", slices=3)


def _files(paths):
    return [open(path, "rb") for path in paths]  # noqa: SIM115 - the test client reads them


def _post(client, paths, **extra):
    handles = _files(paths)
    try:
        return client.post(URL, {"file": handles}, **extra)
    finally:
        for handle in handles:
            handle.close()


def _by_name(response):
    return {entry["name"]: entry for entry in response.json()["files"]}


def test_reverse_name():
    assert reverse("api-instances") == URL


def test_anonymous_is_refused(client, series_files):
    assert _post(client, series_files).status_code in (401, 403)
    assert client.get(reverse("api-ingest-session", args=[1])).status_code in (401, 403)
    assert not Instance.objects.exists()


def test_clinician_may_not_upload(client, series_files):
    client.force_login(UserFactory(groups=["clinician"]))
    response = _post(client, series_files)
    assert response.status_code == 403
    assert "radiologist" in response.json()["detail"]
    assert not IngestSession.objects.exists()


def test_several_files_are_stored(api, radiologist, series_files):
    response = _post(api, series_files, REMOTE_ADDR="192.0.2.5")

    assert response.status_code == 201
    body = response.json()
    assert body["counts"] == {
        "files": 3,
        "stored": 3,
        "duplicates": 0,
        "conflicts": 0,
        "rejected": 0,
        "warnings": 0,
    }
    assert [f["status"] for f in body["files"]] == ["stored"] * 3
    assert all(f["sop_instance_uid"] for f in body["files"])
    session = IngestSession.objects.get(pk=body["session"])
    assert (session.source, session.user, session.origin) == ("api", radiologist, "192.0.2.5")
    assert session.status == IngestSession.Status.DONE
    series = Series.objects.get()
    assert series.slice_count == 3
    # Storing a CT series queues it for processing.
    assert series.state == Series.State.QUEUED
    assert AuditEvent.objects.filter(action="images.upload", user=radiologist).count() == 1


def test_zip_archive_is_expanded(api, tmp_path, series_files):
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in series_files:
            zf.write(path, f"CT/{path.name}")
        zf.writestr("CT/readme.txt", b"not an image")

    response = _post(api, [archive])

    assert response.status_code == 201
    outcomes = _by_name(response)
    assert {n: o["status"] for n, o in outcomes.items()} == {
        "study.zip:CT/IM000001.dcm": "stored",
        "study.zip:CT/IM000002.dcm": "stored",
        "study.zip:CT/IM000003.dcm": "stored",
        "study.zip:CT/readme.txt": "rejected",
    }
    assert "DICM" in outcomes["study.zip:CT/readme.txt"]["reason"]


def test_application_dicom_body(api, series_files):
    response = api.post(
        URL,
        data=series_files[0].read_bytes(),
        content_type="application/dicom",
        HTTP_CONTENT_DISPOSITION='attachment; filename="slice1.dcm"',
    )

    assert response.status_code == 201
    assert [(f["name"], f["status"]) for f in response.json()["files"]] == [
        ("slice1.dcm", "stored")
    ]
    assert Instance.objects.count() == 1


def test_empty_application_dicom_body_is_a_bad_request(api):
    response = api.post(URL, data=b"", content_type="application/dicom")
    assert response.status_code == 400


def test_duplicates_answer_200(api, series_files):
    assert _post(api, series_files).status_code == 201

    response = _post(api, series_files)

    assert response.status_code == 200
    assert {f["status"] for f in response.json()["files"]} == {"duplicate"}
    assert Instance.objects.count() == 3


def test_conflicting_files_answer_409_and_keep_the_stored_file(api, tmp_path, series_files):
    assert _post(api, series_files).status_code == 201
    stored = dict(Instance.objects.values_list("sop_instance_uid", "sha256"))
    # Same SOP Instance UIDs, different pixel data.
    changed = ct_files(tmp_path / "changed", key="api", slices=3, seed=99)

    response = _post(api, changed)

    assert response.status_code == 409
    body = response.json()
    assert body["counts"]["conflicts"] == 3
    assert all("already stored" in f["reason"] for f in body["files"])
    assert dict(Instance.objects.values_list("sop_instance_uid", "sha256")) == stored
    kinds = IngestIssue.objects.filter(session_id=body["session"]).values_list("kind", flat=True)
    assert set(kinds) == {IngestIssue.Kind.CONFLICT}


def test_bad_files_are_named_and_never_stop_the_batch(api, tmp_path, series_files):
    junk = tmp_path / "notes.txt"
    junk.write_bytes(b"hello, not DICOM")
    truncated = tmp_path / "cut.dcm"
    other = ct_files(tmp_path / "other", key="other", slices=1)[0].read_bytes()
    truncated.write_bytes(other[:-100])  # the end of the Pixel Data is missing

    response = _post(api, [series_files[0], junk, series_files[1], truncated, series_files[2]])

    assert response.status_code == 201
    outcomes = _by_name(response)
    assert outcomes["notes.txt"]["status"] == "rejected"
    assert "not a DICOM file" in outcomes["notes.txt"]["reason"]
    assert outcomes["cut.dcm"]["status"] == "rejected"
    assert "truncated" in outcomes["cut.dcm"]["reason"]
    assert [outcomes[p.name]["status"] for p in series_files] == ["stored"] * 3
    assert Instance.objects.count() == 3
    issues = IngestIssue.objects.filter(session_id=response.json()["session"])
    assert {(i.file_name, i.kind) for i in issues} == {
        ("notes.txt", "rejected"),
        ("cut.dcm", "rejected"),
    }


def test_all_rejected_answers_400(api, tmp_path):
    junk = tmp_path / "a.txt"
    junk.write_bytes(b"nothing here")
    response = _post(api, [junk])
    assert response.status_code == 400
    assert response.json()["files"][0]["status"] == "rejected"


def test_no_files_answers_400_naming_the_field(api):
    response = api.post(URL, {"other": io.BytesIO(b"x")})
    assert response.status_code == 400
    assert "'file'" in response.json()["detail"]


def test_unsupported_media_type(api):
    assert api.post(URL, data=b"{}", content_type="application/json").status_code == 415


def test_over_the_size_limit_answers_413(api, settings, series_files):
    settings.RADTRACK_MAX_UPLOAD_BYTES = 1000

    response = _post(api, series_files)

    assert response.status_code == 413
    assert "limit" in response.json()["detail"] and "1000 bytes" in response.json()["detail"]
    assert not IngestSession.objects.exists()
    raw = api.post(URL, data=series_files[0].read_bytes(), content_type="application/dicom")
    assert raw.status_code == 413


def test_token_authentication(client, radiologist, series_files):
    token = api_token_issue(user=radiologist)

    response = _post(client, series_files, HTTP_AUTHORIZATION=f"Token {token}")

    assert response.status_code == 201
    assert IngestSession.objects.get().user == radiologist
    bad = _post(client, series_files, HTTP_AUTHORIZATION="Token not-a-token")
    assert bad.status_code in (401, 403)
    assert IngestSession.objects.count() == 1


def test_ingest_session_detail(api, radiologist):
    session = IngestSessionFactory(user=radiologist, rejected=1, files_seen=1)
    IngestIssueFactory(session=session, file_name="bad.dcm", reason="empty file")

    response = api.get(reverse("api-ingest-session", args=[session.pk]))

    assert response.status_code == 200
    body = response.json()
    assert (body["id"], body["user"], body["rejected"]) == (session.pk, radiologist.username, 1)
    assert body["issues"] == [
        {"kind": "rejected", "file_name": "bad.dcm", "reason": "empty file", "sop_instance_uid": ""}
    ]


def test_ingest_session_of_someone_else_is_refused_to_a_clinician(client):
    session = IngestSessionFactory(user=UserFactory(groups=["radiologist"]))
    client.force_login(UserFactory(groups=["clinician"]))
    assert client.get(reverse("api-ingest-session", args=[session.pk])).status_code == 403
    assert client.get(reverse("api-ingest-session", args=[987654])).status_code == 404


def test_openapi_schema_generates_without_warnings(tmp_path):
    out = tmp_path / "schema.yaml"
    # --fail-on-warn raises on any warning or error in any endpoint's schema.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    schema = out.read_text()
    assert "/api/v1/instances/:" in schema and "application/dicom" in schema
    assert "/api/v1/ingest-sessions/{id}/:" in schema


def test_a_series_sent_over_several_requests_is_queued_once_when_closed(
    api, series_files, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as queued:
        first = _post(api, series_files[:1], QUERY_STRING="close=false")
        session = first.json()["session"]
        assert first.status_code == 201
        assert first.json()["status"] == "running"
        second = _post(api, series_files[1:2], QUERY_STRING=f"session={session}&close=false")
        assert second.json()["session"] == session
        assert not queued
        third = _post(api, series_files[2:], QUERY_STRING=f"session={session}")

    assert third.json()["status"] == "done"
    assert len(queued) == 1
    assert Series.objects.get().slice_count == 3
    assert IngestSession.objects.get(pk=session).stored == 3
    # A closed session cannot be continued.
    again = _post(api, series_files[:1], QUERY_STRING=f"session={session}")
    assert again.status_code == 400
    assert "session" in again.json()


def test_an_open_session_is_closed_by_its_own_endpoint(api, series_files):
    session = _post(api, series_files, QUERY_STRING="close=false").json()["session"]

    response = api.post(reverse("api-ingest-session-close", args=[session]))

    assert response.status_code == 200
    assert response.json()["status"] == "done"
    assert Series.objects.get().state == Series.State.QUEUED
    assert api.post(reverse("api-ingest-session-close", args=[session])).status_code == 404


def test_api_docs_need_a_login_and_load_nothing_from_outside(client, radiologist):
    assert client.get("/api/schema/").status_code in (401, 403)
    client.force_login(radiologist)
    page = client.get("/api/docs/").content.decode()
    assert "swagger-ui" in page
    assert "cdn." not in page and "https://" not in page.replace("https://swagger.io", "")
