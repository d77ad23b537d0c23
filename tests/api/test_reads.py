"""GET /api/v1/...: permissions, token and session auth, filters, pagination, audit."""

import pytest

from imaging.models import IngestSession
from patients.models import AuditEvent
from radtrack.api.tokens import api_token_issue
from tests.api.helpers import rows_make
from tests.imaging.factories import IngestSessionFactory, LesionMeasurementFactory, StudyFactory
from tests.patients.factories import UserFactory

pytestmark = pytest.mark.django_db

LISTS = [
    "/api/v1/patients/",
    "/api/v1/labs/",
    "/api/v1/studies/",
    "/api/v1/series/",
    "/api/v1/lesions/",
    "/api/v1/measurements/",
    "/api/v1/responses/",
    "/api/v1/risk-scores/",
    "/api/v1/worklist/",
]


@pytest.fixture
def rows():
    return rows_make()


@pytest.fixture
def clinician():
    return UserFactory(groups=["clinician"])


@pytest.fixture
def api(client, clinician):
    client.force_login(clinician)
    return client


@pytest.mark.parametrize("url", LISTS)
def test_anonymous_and_groupless_accounts_are_refused(client, rows, url):
    assert client.get(url).status_code in (401, 403)
    client.force_login(UserFactory())  # in no group: no view permissions
    response = client.get(url)
    assert response.status_code == 403
    assert "clinician" in response.json()["detail"]
    assert not AuditEvent.objects.filter(action__startswith="api.").exists()


@pytest.mark.parametrize("url", LISTS)
def test_a_token_reads_every_list(client, rows, clinician, url):
    token = api_token_issue(user=clinician)
    response = client.get(url, HTTP_AUTHORIZATION=f"Token {token}")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["count"] >= 1
    assert body["results"]


def test_patients_are_searched_and_paged(api, rows):
    body = api.get("/api/v1/patients/", {"search": "alice"}).json()
    assert [p["patient_id"] for p in body["results"]] == ["MRN-A"]
    assert body["results"][0]["display_name"] == "Smith, Alice"

    page = api.get("/api/v1/patients/", {"page_size": 1}).json()
    assert page["count"] == 2
    assert [p["patient_id"] for p in page["results"]] == ["MRN-A"]
    assert "page=2" in page["next"]
    assert api.get("/api/v1/patients/", {"page": 9}).status_code == 404


def test_measurements_give_values_in_force_and_filter_by_patient_and_study(api, rows):
    body = api.get("/api/v1/measurements/", {"patient": rows.alice.pk}).json()
    assert body["count"] == 3  # the rejected one is listed, with its review state
    got = api.get(
        "/api/v1/measurements/", {"study": rows.followup.pk, "review_state": "edited"}
    ).json()["results"]
    assert len(got) == 1
    edited = got[0]
    assert edited["longest_diameter_mm"] == 19.5
    assert edited["automated_longest_diameter_mm"] == 25.0
    assert edited["lesion_uid"] == rows.lesion.tracking_uid
    assert edited["study_instance_uid"] == rows.followup.study_instance_uid
    assert api.get("/api/v1/measurements/", {"patient": rows.bob.pk}).json()["count"] == 0


def test_a_lesion_not_found_has_no_numbers_automated_or_in_force(api, rows):
    # Its row stores 0 for nothing: an API client must not read "gone".
    later = StudyFactory(patient=rows.alice, study_date=rows.followup.study_date)
    LesionMeasurementFactory(
        lesion=rows.lesion, study=later, status="not_found", volume_ml=0.0,
        longest_diameter_mm=0.0, short_axis_mm=0.0,
    )  # fmt: skip
    (row,) = api.get("/api/v1/measurements/", {"study": later.pk}).json()["results"]
    assert row["status"] == "not_found"
    for name in ("volume_ml", "longest_diameter_mm", "short_axis_mm"):
        assert row[name] is None and row[f"automated_{name}"] is None


@pytest.mark.parametrize(
    "query", [{"patient": "abc"}, {"patient": "1.5"}, {"patient": "99999999999999999999"},
              {"status": "gone"}, {"is_target": "perhaps"}],
)  # fmt: skip
def test_bad_filter_values_are_a_400_naming_the_parameter(api, rows, query):
    response = api.get("/api/v1/measurements/", query)
    assert response.status_code == 400
    assert set(query) <= set(response.json())


def test_ids_too_large_for_the_database_are_not_found(api, rows):
    assert api.get("/api/v1/patients/99999999999999999999/").status_code == 404
    assert api.get("/api/v1/ingest-sessions/99999999999999999999/").status_code == 404
    assert api.get(f"/api/v1/patients/{rows.bob.pk + 1000}/").status_code == 404


def test_studies_series_lesions_responses_labs_and_scores(api, rows):
    studies = api.get("/api/v1/studies/", {"patient": rows.alice.pk}).json()["results"]
    assert [s["study_date"] for s in studies] == ["2024-01-10", "2024-04-10"]
    assert [s["series_count"] for s in studies] == [0, 1]
    window = {"study_date_after": "2024-02-01", "study_date_before": "2024-12-31"}
    assert api.get("/api/v1/studies/", {"patient": rows.alice.pk, **window}).json()["count"] == 1

    series = api.get("/api/v1/series/", {"study": rows.followup.pk}).json()["results"]
    assert series[0]["instance_count"] == 3
    assert series[0]["orientation"] == "axial"

    lesions = api.get("/api/v1/lesions/", {"patient": rows.alice.pk}).json()["results"]
    assert {x["label"]: x["measurement_count"] for x in lesions} == {"Liver 1": 2, "Liver 2": 1}

    responses = api.get("/api/v1/responses/", {"recist_response": "PR"}).json()["results"]
    assert [(r["study"], r["pct_change_baseline"]) for r in responses] == [
        (rows.followup.pk, -35.0)
    ]
    labs = api.get(
        "/api/v1/labs/", {"loinc_code": "2039-6", "observed_at_after": "2024-03-01T00:00:00Z"}
    ).json()["results"]
    assert [(x["value"], x["unit"]) for x in labs] == [(4.2, "ng/mL")]

    scores = api.get("/api/v1/risk-scores/", {"tier": "high"}).json()["results"]
    assert [s["patient"] for s in scores] == [rows.alice.pk]
    assert scores[0]["model_version"]["name"] == "cox-pfs-test"


def test_worklist_is_risk_ordered_and_validates_its_parameters(api, rows):
    body = api.get("/api/v1/worklist/").json()
    assert [r["patient_id"] for r in body["results"]] == ["MRN-A", "MRN-B"]
    assert body["results"][0]["tier"] == "high"
    assert body["results"][0]["last_recist"] == "PR"
    assert "awaiting_review" not in body["results"][0]["flags"]
    only_low = api.get("/api/v1/worklist/", {"tier": "low"}).json()["results"]
    assert [r["patient_id"] for r in only_low] == ["MRN-B"]
    bad = api.get("/api/v1/worklist/", {"flags": "on_fire"})
    assert bad.status_code == 400
    assert "flags" in bad.json()


def test_every_read_is_audited_once_per_patient_shown(api, rows, clinician):
    api.get("/api/v1/patients/", REMOTE_ADDR="192.0.2.9")
    listed = AuditEvent.objects.filter(action="api.patient.list")
    assert sorted(e.patient_id for e in listed) == sorted([rows.alice.pk, rows.bob.pk])
    assert {(e.user_id, e.remote_address) for e in listed} == {(clinician.pk, "192.0.2.9")}

    api.get(f"/api/v1/measurements/{rows.at_followup.pk}/")
    viewed = AuditEvent.objects.get(action="api.measurement.view")
    assert viewed.patient_id == rows.alice.pk

    api.get("/api/v1/measurements/", {"patient": rows.bob.pk})  # nothing shown
    empty = AuditEvent.objects.get(action="api.measurement.list")
    assert empty.patient_id is None
    assert f"patient={rows.bob.pk}" in empty.object

    api.get("/api/v1/worklist/")
    assert AuditEvent.objects.filter(action="api.worklist.list").count() == 2


def test_ingest_sessions_list_shows_a_clinician_only_their_own(api, clinician):
    mine = IngestSessionFactory(user=clinician)
    IngestSessionFactory(user=UserFactory())
    body = api.get("/api/v1/ingest-sessions/").json()
    assert [s["id"] for s in body["results"]] == [mine.pk]

    radiologist = UserFactory(groups=["radiologist"])
    api.force_login(radiologist)
    assert api.get("/api/v1/ingest-sessions/").json()["count"] == 2
    done = api.get("/api/v1/ingest-sessions/", {"status": "done"}).json()["count"]
    assert done == IngestSession.objects.filter(status="done").count()


def test_lab_time_filters_compare_in_utc(api, rows):
    # +23:48 is valid ISO 8601 but past what PostgreSQL accepts as an offset.
    late = api.get("/api/v1/labs/", {"observed_at_after": "2024-04-02T08:00:00+23:48"})
    assert late.status_code == 200
    assert late.json()["count"] == 1  # 2024-04-01T08:12Z, before the 09:00Z result
    too_early = api.get("/api/v1/labs/", {"observed_at_before": "0001-01-01T00:00:00+05:00"})
    assert too_early.status_code == 400
    assert "observed_at" in too_early.json()


def test_the_browsable_api_renders_with_its_filter_form(api, rows):
    response = api.get("/api/v1/measurements/", HTTP_ACCEPT="text/html")
    assert response.status_code == 200
    assert b"review_state" in response.content
