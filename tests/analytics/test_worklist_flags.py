"""`WorklistFlags`, the worklist's flags stored per patient: rewritten in the transaction
that changes what they rest on (tracking and review, lab results however written), and
read by every filter, order and page of the worklist and its API in a fixed number of
queries."""

import datetime as dt

import pytest
from django.db import connection, transaction
from django.db.models import F
from django.test.utils import CaptureQueriesContext

from analytics.dashboard.flags import markers_from_json, worklist_flags_refresh
from analytics.dashboard.worklist import FLAG_NAMES, WorklistOrder, worklist_page
from analytics.lesions.review.measurements import measurement_reject
from analytics.models import ResponseAssessment, RiskModelVersion, RiskScore, WorklistFlags
from imaging.models import Lesion, LesionMeasurement, Series, Study
from patients.ehr.importer import ehr_import
from patients.models import LabResult
from tests.imaging.factories import SeriesFactory, StudyFactory
from tests.imaging.test_review import finding_at, patient_with_studies
from tests.patients.factories import PatientFactory, UserFactory

pytestmark = pytest.mark.django_db

CEA = "2039-6"
STORED = (
    "new_progression",
    "new_lesion",
    "rising_marker",
    "awaiting_review",
    "needs_attention",
    "processing_failed",
    "last_study_date",
)


def stored(patient) -> dict:
    row = WorklistFlags.objects.get(patient=patient)
    return {name: getattr(row, name) for name in (*STORED, "last_recist", "rising_markers")}


def recomputed(patient) -> dict:
    """What a refresh from scratch gives, read back without keeping it."""
    with transaction.atomic():
        worklist_flags_refresh(patient_pks=[patient.pk])
        values = stored(patient)
        transaction.set_rollback(True)
    return values


def labs_csv(mrn: str, *values: tuple[str, float]) -> bytes:
    lines = ["patient_id,loinc_code,value,unit,observed_at"]
    lines += [f"{mrn},{CEA},{value},ng/mL,{day}T09:00:00+00:00" for day, value in values]
    return ("\n".join(lines) + "\n").encode()


# -- kept in step ---------------------------------------------------------------------
def test_tracking_and_review_rewrite_the_flags_they_change():
    patient = patient_with_studies("FLAGS-1")  # tracked: responses written, flags with them
    before = stored(patient)
    assert before == recomputed(patient)
    latest = (
        ResponseAssessment.objects.filter(patient=patient).order_by("-study__study_date").first()
    )
    assert latest.recist_response == before["last_recist"] == "PD"
    # the small liver lesion, moved 30 mm, looks new
    assert before["new_progression"] is True and before["new_lesion"] is True
    assert before["awaiting_review"] is True  # automated findings await a radiologist
    assert [r.patient_id for r in worklist_page(flags=["new_progression"]).rows] == ["FLAGS-1"]

    # A radiologist rejects the "new" lesion: no new lesion, no progression any more.
    radiologist = UserFactory(groups=["radiologist"])
    measurement_reject(user=radiologist, measurement=finding_at(1, 5), reason="a vessel")
    after = stored(patient)
    assert after == recomputed(patient)  # every field as a refresh from scratch gives it
    assert (after["new_progression"], after["new_lesion"], after["last_recist"]) == (
        False,
        False,
        "NE",
    )
    assert worklist_page(flags=["new_progression"]).total == 0
    assert worklist_page(flags=["needs_attention"]).total == 1


def test_an_ehr_import_raises_and_clears_the_marker_flag():
    patient = PatientFactory(patient_id="LAB-1")
    ehr_import(path_or_bytes=labs_csv("LAB-1", ("2024-01-10", 4.0)), source_name="a.csv")
    assert stored(patient)["rising_marker"] is False

    ehr_import(path_or_bytes=labs_csv("LAB-1", ("2024-02-10", 8.0)), source_name="b.csv")
    flags = stored(patient)
    assert flags["rising_marker"] is True
    assert [str(m) for m in markers_from_json(flags["rising_markers"])] == ["cea 4 → 8 ng/mL"]
    assert [r.patient_id for r in worklist_page(flags=["rising_marker"]).rows] == ["LAB-1"]

    # An amended result (the same observation, a new value) clears it again.
    result = ehr_import(path_or_bytes=labs_csv("LAB-1", ("2024-02-10", 4.2)), source_name="c.csv")
    assert result.updated == 1
    assert stored(patient)["rising_marker"] is False
    assert worklist_page(flags=["rising_marker"]).total == 0


def test_every_write_of_lab_results_keeps_the_marker_flag_in_step():
    patient = PatientFactory(patient_id="LAB-2")
    day = dt.datetime(2024, 3, 1, 9, tzinfo=dt.UTC)
    first = LabResult.objects.create(
        patient=patient, loinc_code=CEA, value=4.0, unit="ng/mL", observed_at=day
    )
    LabResult.objects.bulk_create(
        [
            LabResult(
                patient=patient,
                loinc_code=CEA,
                value=9.0,
                unit="ng/mL",
                observed_at=day + dt.timedelta(days=30),
            )
        ]
    )
    assert stored(patient)["rising_marker"] is True
    LabResult.objects.filter(patient=patient, value=9.0).update(value=4.5)
    assert stored(patient)["rising_marker"] is False
    first.value = 2.0  # now 2 -> 4.5: +125 %, +2.5 ng/mL
    first.save()
    assert stored(patient)["rising_marker"] is True
    LabResult.objects.filter(pk=first.pk).delete()
    assert stored(patient)["rising_marker"] is False


def test_the_flags_are_written_in_the_transaction_of_the_labs():
    patient = PatientFactory(patient_id="LAB-3")
    day = dt.datetime(2024, 3, 1, 9, tzinfo=dt.UTC)
    LabResult.objects.create(
        patient=patient, loinc_code=CEA, value=4.0, unit="ng/mL", observed_at=day
    )
    with pytest.raises(RuntimeError), transaction.atomic():
        LabResult.objects.create(
            patient=patient,
            loinc_code=CEA,
            value=9.0,
            unit="ng/mL",
            observed_at=day + dt.timedelta(days=7),
        )
        assert stored(patient)["rising_marker"] is True
        raise RuntimeError("the import failed after the labs were written")
    assert stored(patient)["rising_marker"] is False  # rolled back with the labs


def test_studies_and_series_states_keep_the_latest_study_and_failure_in_step():
    patient = PatientFactory(patient_id="IMG-1")
    study = StudyFactory(patient=patient, study_date=dt.date(2024, 1, 5))
    assert stored(patient)["last_study_date"] == dt.date(2024, 1, 5)
    later = StudyFactory(patient=patient, study_date=dt.date(2024, 5, 1))
    assert stored(patient)["last_study_date"] == dt.date(2024, 5, 1)
    Study.objects.filter(pk=later.pk).update(study_date=dt.date(2023, 1, 1))
    assert stored(patient)["last_study_date"] == dt.date(2024, 1, 5)

    series = SeriesFactory(study=study, state=Series.State.QUEUED)
    assert stored(patient)["processing_failed"] is False
    Series.objects.filter(pk=series.pk).update(state=Series.State.FAILED, state_detail="boom")
    assert stored(patient)["processing_failed"] is True
    assert [r.patient_id for r in worklist_page(flags=["processing_failed"]).rows] == ["IMG-1"]
    series.refresh_from_db()
    series.state = Series.State.PROCESSED  # reprocessed
    series.save(update_fields=["state", "updated_at"])
    assert stored(patient)["processing_failed"] is False
    assert stored(patient) == recomputed(patient)

    # Writes that change nothing the worklist shows (the ingest's counters) announce
    # nothing: no flag is read or written for them.
    with CaptureQueriesContext(connection) as queries:
        Series.objects.filter(pk=series.pk).update(slice_count=F("slice_count") + 5)
        series.refresh_from_db()
        series.description = "CT chest"
        series.save()
    assert not [q for q in queries.captured_queries if "worklistflags" in q["sql"]]


# -- a fixed number of queries --------------------------------------------------------
def _patients(n: int, start: int, version: RiskModelVersion) -> None:
    day = dt.date(2024, 1, 1)
    for i in range(start, start + n):
        patient = PatientFactory(patient_id=f"Q-{i:04d}")
        s1 = StudyFactory(patient=patient, study_date=day)
        s2 = StudyFactory(patient=patient, study_date=day + dt.timedelta(days=60 + i))
        SeriesFactory(study=s2, state=Series.State.FAILED if i % 2 else Series.State.PROCESSED)
        lesion = Lesion.objects.create(
            patient=patient, tracking_uid=f"2.25.77{i}", label="Liver 1", organ="liver"
        )
        LesionMeasurement.objects.create(
            lesion=lesion,
            study=s2,
            status="tracked",
            volume_ml=1.0,
            longest_diameter_mm=10.0,
            short_axis_mm=5.0,
            review_state="pending" if i % 3 else "accepted",
        )
        ResponseAssessment.objects.create(patient=patient, study=s1, is_baseline=True)
        ResponseAssessment.objects.create(
            patient=patient,
            study=s2,
            recist_response="PD" if i % 2 else "SD",
            new_lesions=bool(i % 5),
            needs_attention=bool(i % 4),
        )
        for k, value in enumerate((3.0, 3.0 + i % 7)):
            LabResult.objects.create(
                patient=patient,
                loinc_code=CEA,
                value=value,
                unit="ng/mL",
                observed_at=dt.datetime(2024, 1 + k, 1, 9, tzinfo=dt.UTC),
            )
        RiskScore.objects.create(
            patient=patient,
            model_version=version,
            score=float(i),
            tier=("low", "intermediate", "high")[i % 3],
            landmark_date=day,
        )
    # Responses and measurements written straight into the tables: refresh as a tracking
    # rebuild would.
    worklist_flags_refresh()


CASES = [
    *({"order": order} for order in WorklistOrder),
    *({"flags": [name]} for name in FLAG_NAMES),
    {"tier": "high", "flags": ["rising_marker", "new_progression"], "order": "last_study"},
    {"search": "Q-00", "page": 2, "per_page": 3},
]


def _page_queries(kwargs: dict) -> tuple[int, int]:
    with CaptureQueriesContext(connection) as queries:
        page = worklist_page(**kwargs)
        for row in page.rows:  # everything a page reads, nothing lazy
            _ = (row.flags, row.tier_label, row.rising_markers, row.last_study_date)
    return len(queries), page.total


def test_every_filter_and_order_takes_the_same_queries_at_any_size():
    version = RiskModelVersion.objects.create(
        name="t", kind="cox", artifact_path="x.joblib", training_fingerprint="0" * 64
    )
    _patients(6, 0, version)
    few = {i: _page_queries(kwargs) for i, kwargs in enumerate(CASES)}
    _patients(54, 6, version)
    many = {i: _page_queries(kwargs) for i, kwargs in enumerate(CASES)}
    for i, kwargs in enumerate(CASES):
        assert few[i][0] == many[i][0] == 3, kwargs  # version, count, the page's rows
    # The filters do filter: each flag matches more patients at 60 than at 6, not all.
    for i, kwargs in enumerate(CASES):
        if "flags" in kwargs and len(kwargs) == 1:
            assert 0 < few[i][1] < many[i][1] < 60, kwargs


def test_the_api_pages_in_the_database_with_the_same_queries_at_any_size(client):
    version = RiskModelVersion.objects.create(
        name="t", kind="cox", artifact_path="x.joblib", training_fingerprint="0" * 64
    )
    client.force_login(UserFactory(groups=["clinician"]))

    def queries(params: dict) -> tuple[int, dict]:
        with CaptureQueriesContext(connection) as captured:
            response = client.get("/api/v1/worklist/", params)
        assert response.status_code == 200, response.content
        return len(captured), response.json()

    _patients(6, 0, version)
    queries({})  # the first request of a session also loads the user's permissions
    few = [queries({"flags": "rising_marker"}), queries({"page_size": 2, "page": 2})]
    _patients(54, 6, version)
    many = [queries({"flags": "rising_marker"}), queries({"page_size": 2, "page": 2})]
    assert [n for n, _ in few] == [n for n, _ in many]
    body = many[1][1]
    assert body["count"] == 60 and len(body["results"]) == 2
    assert "page=3" in body["next"] and "page_size=2" in body["next"]
    assert "page=" not in body["previous"]  # page 1 is the URL without a page
    assert set(body["results"][0]) >= {"patient", "patient_id", "tier", "flags", "rising_markers"}
    last = client.get("/api/v1/worklist/", {"page": "last", "page_size": 7}).json()
    assert last["next"] is None and len(last["results"]) == 60 - 8 * 7
    for bad in ("0", "abc", "10"):
        assert client.get("/api/v1/worklist/", {"page": bad}).status_code == 404


def test_the_schema_documents_the_api_pages():
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    operation = schema["paths"]["/api/v1/worklist/"]["get"]
    parameters = {p["name"]: p for p in operation["parameters"]}
    assert {"page", "page_size", "tier", "flags", "order", "search"} <= set(parameters)
    assert "at most 500" in parameters["page_size"]["description"]
    listed = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    page = schema["components"]["schemas"][listed.rsplit("/", 1)[1]]
    assert set(page["properties"]) == {"count", "next", "previous", "results"}
