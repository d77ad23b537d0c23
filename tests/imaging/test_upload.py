"""The upload page: plain form post, the chunked upload its script drives, the report page."""

import re
import zipfile

import pytest
from django.urls import reverse

from imaging.models import IngestSession, Instance, ProcessingRun, Series
from patients.models import AuditEvent
from tests.conftest import require_program
from tests.imaging.factories import IngestIssueFactory, IngestSessionFactory, ct_files
from tests.patients.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db

UPLOAD = reverse("imaging:upload")
CHUNK = reverse("imaging:upload-chunk")


def _finish_url(pk):
    return reverse("imaging:upload-finish", args=[pk])


@pytest.fixture
def radiologist():
    return UserFactory(groups=["radiologist"])


@pytest.fixture
def web(client, radiologist):
    client.force_login(radiologist)
    return client


def _post_files(client, url, paths, **data):
    handles = [open(p, "rb") for p in paths]  # noqa: SIM115 - closed below
    try:
        return client.post(url, {"file": handles, **data})
    finally:
        for handle in handles:
            handle.close()


# -- who may upload -------------------------------------------------------------------
def test_upload_page_needs_a_login(client):
    response = client.get(UPLOAD)
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_clinician_may_not_upload(client, tmp_path):
    client.force_login(UserFactory(groups=["clinician"]))
    assert client.get(UPLOAD).status_code == 403
    paths = ct_files(tmp_path, slices=1)
    assert _post_files(client, UPLOAD, paths).status_code == 403
    assert _post_files(client, CHUNK, paths).status_code == 403
    assert not Instance.objects.exists()


def test_chunk_endpoints_answer_json_401_when_logged_out(client, tmp_path):
    response = _post_files(client, CHUNK, ct_files(tmp_path, slices=1))
    assert response.status_code == 401
    assert "log in" in response.json()["detail"]
    assert client.post(_finish_url(1)).status_code == 401


def test_upload_page_renders_the_form(web, settings):
    settings.RADTRACK_MAX_UPLOAD_BYTES = 5 * 2**20
    content = web.get(UPLOAD).content.decode()
    assert 'enctype="multipart/form-data"' in content
    assert f'data-chunk-url="{CHUNK}"' in content
    assert 'data-max-bytes="5242880"' in content
    assert "radtrack/upload.js" in content
    assert "up to 5 MB" in content


# -- plain form post (no JavaScript) ----------------------------------------------------
def test_form_post_stores_files_and_reports_rejections(web, radiologist, tmp_path):
    paths = ct_files(tmp_path / "ct", slices=3)
    junk = tmp_path / "scan.jpg"
    junk.write_bytes(b"\xff\xd8\xff\xe0 not dicom")

    response = _post_files(web, UPLOAD, [*paths, junk])

    session = IngestSession.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("imaging:ingest-session", args=[session.pk])
    assert (session.source, session.user, session.status) == ("upload", radiologist, "done")
    assert (session.files_seen, session.stored, session.rejected) == (4, 3, 1)
    assert Series.objects.get().state == Series.State.QUEUED

    page = web.get(response["Location"])
    content = page.content.decode()
    assert "scan.jpg" in content and "not a DICOM file" in content
    assert "RT-0001" in content and "Doe, Jane" in content  # the study it brought in
    assert AuditEvent.objects.filter(action="images.upload").count() == 1
    assert AuditEvent.objects.filter(action="ingest_session.view").count() == 1


def test_form_post_without_files_shows_an_error(web):
    response = web.post(UPLOAD, {})
    assert response.status_code == 400
    assert "Choose at least one file" in response.content.decode()
    assert not IngestSession.objects.exists()


def test_form_post_of_a_zip(web, tmp_path):
    paths = ct_files(tmp_path / "ct", slices=2)
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in paths:
            zf.write(path, f"DICOM/{path.name}")

    _post_files(web, UPLOAD, [archive])

    assert IngestSession.objects.get().stored == 2
    assert Instance.objects.count() == 2


# -- chunked upload ---------------------------------------------------------------------
def test_chunks_share_one_session_and_processing_waits_for_finish(
    web, radiologist, tmp_path, django_capture_on_commit_callbacks
):
    paths = ct_files(tmp_path / "ct", slices=5)
    archive = tmp_path / "rest.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in paths[3:]:
            zf.write(path, path.name)
    junk = tmp_path / "report.pdf"
    junk.write_bytes(b"%PDF-1.4 not an image")

    first = _post_files(web, CHUNK, paths[:3])
    assert first.status_code == 200
    session_id = first.json()["session"]
    assert first.json()["counts"]["stored"] == 3
    series = Series.objects.get()
    assert series.state == Series.State.RECEIVING  # not queued while slices still arrive

    second = _post_files(web, CHUNK, [archive, junk, paths[0]], session=session_id)
    body = second.json()
    assert body["session"] == session_id
    statuses = {f["name"]: f["status"] for f in body["files"]}
    assert statuses == {
        "rest.zip:IM000004.dcm": "stored",
        "rest.zip:IM000005.dcm": "stored",
        "report.pdf": "rejected",
        "IM000001.dcm": "duplicate",
    }
    assert not ProcessingRun.objects.exists()

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        finished = web.post(_finish_url(session_id))

    assert finished.status_code == 200
    assert finished.json()["url"] == reverse("imaging:ingest-session", args=[session_id])
    assert finished.json()["counts"] == {
        "files": 7,
        "stored": 5,
        "duplicates": 1,
        "conflicts": 0,
        "rejected": 1,
        "warnings": 0,
    }
    session = IngestSession.objects.get()
    assert session.status == IngestSession.Status.DONE
    series.refresh_from_db()
    assert (series.state, series.slice_count) == (Series.State.QUEUED, 5)
    assert len(callbacks) == 1  # one processing task for the study, sent after the commit
    # A closed session takes no more chunks.
    again = _post_files(web, CHUNK, paths[:1], session=session_id)
    assert again.status_code == 409


def test_a_chunk_cannot_join_someone_elses_session(client, tmp_path):
    other = IngestSessionFactory(
        user=UserFactory(groups=["radiologist"]), status=IngestSession.Status.RUNNING
    )
    client.force_login(UserFactory(groups=["radiologist"]))

    response = _post_files(client, CHUNK, ct_files(tmp_path, slices=1), session=other.pk)

    assert response.status_code == 409
    assert not Instance.objects.exists()
    assert client.post(_finish_url(other.pk)).status_code == 409


def test_chunk_without_files_is_refused(web):
    response = web.post(CHUNK, {})
    assert response.status_code == 400
    assert not IngestSession.objects.exists()


def test_oversize_chunk_answers_413_with_the_limit(web, settings, tmp_path):
    settings.RADTRACK_MAX_UPLOAD_BYTES = 2000

    response = _post_files(web, CHUNK, ct_files(tmp_path, slices=2))

    assert response.status_code == 413
    assert "limit" in response.json()["detail"] and "2000 bytes" in response.json()["detail"]
    assert not Instance.objects.exists()


def test_oversize_zip_member_is_rejected_by_name(web, settings, tmp_path):
    path = ct_files(tmp_path / "ct", slices=1)[0]
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.write(path, "small.dcm")
        zf.writestr("huge.dcm", b"\0" * 200_000)  # compresses to a few hundred bytes
    settings.RADTRACK_MAX_UPLOAD_BYTES = archive.stat().st_size + 4096

    response = _post_files(web, CHUNK, [archive])

    assert response.status_code == 200
    outcomes = {f["name"]: f for f in response.json()["files"]}
    assert outcomes["big.zip:small.dcm"]["status"] == "stored"
    assert outcomes["big.zip:huge.dcm"]["status"] == "rejected"
    assert "limit" in outcomes["big.zip:huge.dcm"]["reason"]


# -- the report page ----------------------------------------------------------------------
def test_report_page_lists_issues_for_the_owner_and_uploaders_only(client):
    owner = UserFactory(groups=["radiologist"])
    session = IngestSessionFactory(user=owner, rejected=1, files_seen=1)
    IngestIssueFactory(session=session, file_name="broken.dcm", reason="truncated: oops")
    url = reverse("imaging:ingest-session", args=[session.pk])

    client.force_login(owner)
    content = client.get(url).content.decode()
    assert "broken.dcm" in content and "truncated: oops" in content

    client.force_login(UserFactory(groups=["admin"]))
    assert client.get(url).status_code == 200
    client.force_login(UserFactory(groups=["clinician"]))
    assert client.get(url).status_code == 403
    assert client.get(reverse("imaging:ingest-session", args=[999999])).status_code == 404


# -- the page's script in a real browser ------------------------------------------------
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_browser_upload_sends_chunks_and_lists_rejections(live_server, tmp_path):
    chromium = require_program("chromium", why="the upload page's script runs in a browser")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    user = UserFactory(groups=["radiologist"])
    paths = ct_files(tmp_path / "ct", slices=12)  # more than one chunk of 8
    junk = tmp_path / "notes.txt"
    junk.write_text("not an image")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--headless", "--disable-gpu", "--no-first-run"],
        )
        try:
            page = browser.new_page()
            page.goto(live_server.url + reverse("login"))
            page.fill("input[name=username]", user.username)
            page.fill("input[name=password]", PASSWORD)
            with page.expect_navigation():  # logged in before going on
                page.click("button[type=submit]")
            page.goto(live_server.url + UPLOAD)
            page.set_input_files("#upload-files", [str(p) for p in [*paths, junk]])
            page.click("#upload-button")
            page.wait_for_selector("#upload-report-link a", timeout=60_000)
            # A locator, not a script: the Content-Security-Policy allows no eval.
            page.locator("#upload-status", has_text=re.compile(r"^Done")).wait_for()
            status = page.text_content("#upload-status")
            problems = page.text_content("#upload-problem-rows")
            bar = page.get_attribute("#upload-bar", "value")
        finally:
            browser.close()

    assert status == "Done: 12 of 13 files stored."
    assert "notes.txt" in problems and "not a DICOM file" in problems
    assert bar == "100"
    session = IngestSession.objects.get()  # every chunk went into one session
    assert (session.status, session.stored, session.rejected) == ("done", 12, 1)
    assert Series.objects.get().slice_count == 12
