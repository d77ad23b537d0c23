"""EHR import: FHIR R4 Bundles and the cohort CSVs, matched by MRN, idempotent."""

import datetime as dt
import io
import json

import pytest
from django.core.management import CommandError, call_command

from imaging.core.synthetic import ehr as cohort_module
from imaging.core.synthetic.cohort import cohort_simulate
from imaging.core.synthetic.ehr import ehr_bundle_build, events_csv_write, labs_csv_write
from patients.ehr import fhir_bundle as service
from patients.ehr import fhir_resources as codes
from patients.ehr.importer import ehr_import
from patients.ehr.records import EHRImportError
from patients.models import ClinicalEvent, LabResult, Patient, UnmatchedEHRRecord
from tests.patients.factories import PatientFactory

pytestmark = pytest.mark.django_db

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


@pytest.fixture(scope="module")
def cohort():
    return cohort_simulate(n_patients=3, n_timepoints=3, seed=7)


@pytest.fixture
def files(cohort, tmp_path):
    bundle = tmp_path / "ehr_bundle.json"
    bundle.write_text(json.dumps(ehr_bundle_build(cohort)))
    labs_csv_write(cohort, tmp_path / "labs.csv")
    events_csv_write(cohort, tmp_path / "events.csv")
    return tmp_path


@pytest.fixture
def known(cohort):
    """The first two cohort patients exist (as DICOM ingest would make them); the third does not."""
    return [
        PatientFactory(patient_id=p.patient_id, birth_date=None, sex="")
        for p in cohort.patients[:2]
    ]


def snapshot():
    return (
        sorted(LabResult.objects.values_list("id", "patient_id", "loinc_code", "value", "unit", "observed_at", "source")),
        sorted(ClinicalEvent.objects.values_list("id", "patient_id", "kind", "date", "source")),
        sorted(Patient.objects.values_list("id", "patient_id", "birth_date", "sex")),
        sorted(UnmatchedEHRRecord.objects.values_list("id", "fingerprint")),
    )  # fmt: skip


def observation(code, value, unit, *, when="2024-03-01T08:30:00+01:00", status="final", id=None):
    resource = {
        "resourceType": "Observation",
        "status": status,
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": "urn:uuid:p1"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }
    if id:
        resource["id"] = id
    return resource


def bundle(*resources, mrn="RT-9001", patient=None):
    patient = patient or {
        "resourceType": "Patient",
        "identifier": [
            {
                "type": {"coding": [{"system": service.V2_IDENTIFIER_TYPE, "code": "MR"}]},
                "system": service.MRN_SYSTEM,
                "value": mrn,
            }
        ],
    }
    entries = [{"fullUrl": "urn:uuid:p1", "resource": patient}]
    entries += [{"fullUrl": f"urn:uuid:r{i}", "resource": r} for i, r in enumerate(resources)]
    return json.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries}).encode()


def test_codes_agree_with_the_cohort_generator():
    assert service.MRN_SYSTEM == cohort_module.MRN_SYSTEM
    assert service.EVENT_SYSTEM == cohort_module.EVENT_SYSTEM
    assert codes.LOINC_DISEASE_PROGRESSION == cohort_module.LOINC_DISEASE_PROGRESSION
    assert codes.SNOMED_CONDITION_WORSENED == cohort_module.SNOMED_CONDITION_WORSENED


def test_fhir_bundle_imports_labs_events_and_demographics_and_keeps_unmatched_apart(
    cohort, files, known
):
    result = ehr_import(path_or_bytes=files / "ehr_bundle.json")

    assert result.rejected == [] and result.skipped == []
    for simulated, patient in zip(cohort.patients[:2], known, strict=True):
        stored = {
            (lab.loinc_code, lab.observed_at): (lab.value, lab.unit)
            for lab in LabResult.objects.filter(patient=patient)
        }
        expected = {
            (lab.test.loinc_code, lab.observed_at): (lab.value, lab.test.unit)
            for lab in simulated.labs
        }
        assert stored == expected
        assert sorted(
            ClinicalEvent.objects.filter(patient=patient).values_list("kind", "date")
        ) == sorted((e.kind, e.date) for e in simulated.events)
        patient.refresh_from_db()
        assert (patient.birth_date, patient.sex) == (simulated.birth_date, simulated.sex)
    assert set(LabResult.objects.values_list("source", flat=True)) == {"ehr_bundle.json"}

    stranger = cohort.patients[2]
    kept = UnmatchedEHRRecord.objects.filter(patient_identifier=stranger.patient_id)
    # The Patient, each lab, and each event except death (carried on the Patient) as a resource.
    n_resources = 1 + len(stranger.labs) + sum(e.kind != "death" for e in stranger.events)
    has_death = any(e.kind == "death" for e in stranger.events)
    assert kept.count() == n_resources + has_death
    assert result.unmatched == n_resources + has_death
    assert result.unmatched_identifiers == {stranger.patient_id}
    assert not Patient.objects.filter(patient_id=stranger.patient_id).exists()
    assert {r.record_type for r in kept} >= {"Patient", "Observation"}


def test_reimporting_the_same_bundle_changes_nothing(files, known):
    first = ehr_import(path_or_bytes=files / "ehr_bundle.json")
    before = snapshot()
    second = ehr_import(path_or_bytes=files / "ehr_bundle.json")

    assert snapshot() == before
    assert first.created > 0
    assert (second.created, second.updated) == (0, 0)
    assert second.unchanged == first.created + first.updated + first.unchanged
    assert second.unmatched == first.unmatched


def test_csv_files_import_the_same_data_as_the_bundle(cohort, files, known):
    labs = ehr_import(path_or_bytes=files / "labs.csv")
    events = ehr_import(path_or_bytes=files / "events.csv")
    assert (labs.format, events.format) == ("labs CSV", "events CSV")
    assert labs.rejected == events.rejected == []
    n_labs = sum(len(p.labs) for p in cohort.patients[:2])
    assert labs.created == LabResult.objects.count() == n_labs
    assert events.created == ClinicalEvent.objects.count()
    assert labs.unmatched == len(cohort.patients[2].labs)

    before = snapshot()
    again = [ehr_import(path_or_bytes=files / name) for name in ("labs.csv", "events.csv")]
    assert snapshot() == before
    assert [r.created for r in again] == [0, 0]

    # The bundle holds the same observations: nothing new, only demographics filled in.
    from_bundle = ehr_import(path_or_bytes=files / "ehr_bundle.json")
    assert from_bundle.created == 0
    assert LabResult.objects.count() == n_labs


def test_units_are_converted_to_the_canonical_unit():
    patient = PatientFactory(patient_id="RT-9001")
    data = bundle(
        observation("718-7", 8.1, "mmol/L", when="2024-03-01T08:00:00Z"),
        observation("1751-7", 38, "g/L"),
        observation("1988-5", 1.2, "mg/dL"),
        observation("2039-6", 4.5, "ug/L"),
        observation("2532-0", 3.5, "ukat/L"),
        observation("59260-0", 9.0, "mmol/L", when="2024-04-01"),
    )
    result = ehr_import(path_or_bytes=data, source_name="lab-feed")
    assert result.rejected == []
    stored = {
        (lab.loinc_code, lab.observed_at): (lab.value, lab.unit)
        for lab in patient.lab_results.all()
    }
    at = dt.datetime(2024, 3, 1, 7, 30, tzinfo=dt.UTC)  # 08:30 at +01:00
    assert stored[("1751-7", at)] == (3.8, "g/dL")
    assert stored[("1988-5", at)] == (12.0, "mg/L")
    assert stored[("2039-6", at)] == (4.5, "ng/mL")
    assert stored[("2532-0", at)] == (210.0, "U/L")
    hb = stored[("718-7", dt.datetime(2024, 3, 1, 8, 0, tzinfo=dt.UTC))]
    assert hb[1] == "g/dL" and hb[0] == pytest.approx(8.1 * 1.61145)
    # The moles-per-volume haemoglobin code is stored under 718-7; a bare date is 00:00 UTC.
    assert stored[("718-7", dt.datetime(2024, 4, 1, tzinfo=dt.UTC))][0] == pytest.approx(
        14.503, abs=1e-3
    )


def test_unknown_unit_is_refused_with_the_code_and_unit_named():
    patient = PatientFactory(patient_id="RT-9001")
    result = ehr_import(
        path_or_bytes=bundle(
            observation("2532-0", 3.5, "mg/dL", id="ldh-1"),
            observation("2039-6", 4.5, "ng/mL", id="cea-1"),
        )
    )
    assert [p.where for p in result.rejected] == ["entry[1] Observation/ldh-1"]
    reason = result.rejected[0].reason
    assert "'mg/dL'" in reason and "2532-0" in reason and "U/L" in reason
    assert list(patient.lab_results.values_list("loinc_code", flat=True)) == ["2039-6"]


def test_malformed_resources_are_rejected_with_resource_and_field_named():
    patient = PatientFactory(patient_id="RT-9001")
    broken_value = observation("2039-6", "abc", "ng/mL", id="bad-value")
    bogus_status = observation("2039-6", 3.0, "ng/mL", status="bogus", id="bad-status")
    no_code = observation("2039-6", 3.0, "ng/mL", id="no-code")
    del no_code["code"]
    good = observation("2039-6", 3.0, "ng/mL", when="2024-05-01T08:00:00Z")
    result = ehr_import(
        path_or_bytes=bundle(
            broken_value, bogus_status, no_code, {"resourceType": "Nonsense"}, good
        )
    )
    problems = {p.where: p.reason for p in result.rejected}
    assert "valueQuantity.value" in problems["entry[1] Observation/bad-value"]
    assert "field status" in problems["entry[2] Observation/bad-status"]
    assert "'bogus'" in problems["entry[2] Observation/bad-status"]
    assert "field code" in problems["entry[3] Observation/no-code"]
    assert "Nonsense" in problems["entry[4] Nonsense"]
    assert patient.lab_results.count() == 1  # the well-formed one still goes in


def test_statuses_conditions_logical_references_and_death():
    patient = PatientFactory(patient_id="RT-9001", birth_date=None, sex="")
    cancelled = observation("2039-6", 3.0, "ng/mL", status="cancelled", id="c1")
    by_identifier = observation("2039-6", 5.0, "ng/mL", when="2024-06-01T09:00:00Z")
    by_identifier["subject"] = {"identifier": {"system": service.MRN_SYSTEM, "value": "RT-9001"}}
    progression = {
        "resourceType": "Condition",
        "code": {"coding": [{"system": codes.SNOMED, "code": codes.SNOMED_CONDITION_WORSENED}]},
        "subject": {"reference": "urn:uuid:p1"},
        "onsetDateTime": "2024-07-02",
    }
    stable = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": codes.LOINC_DISEASE_PROGRESSION}]},
        "subject": {"reference": "urn:uuid:p1"},
        "effectiveDateTime": "2024-05-02",
        "valueCodeableConcept": {"coding": [{"system": codes.SNOMED, "code": "359746009"}]},
    }
    heart_rate = observation("8867-4", 70, "/min")
    person = {
        "resourceType": "Patient",
        "id": "p1",
        "identifier": [{"system": service.MRN_SYSTEM, "value": "RT-9001"}],
        "gender": "male",
        "birthDate": "1951-02-03",
        "deceasedDateTime": "2024-09-30T10:00:00+02:00",
    }
    result = ehr_import(
        path_or_bytes=bundle(
            cancelled, by_identifier, progression, stable, heart_rate, patient=person
        )
    )
    assert result.rejected == []
    assert len(result.skipped) == 3  # cancelled, stable disease, an unused LOINC code
    assert list(patient.lab_results.values_list("value", flat=True)) == [5.0]
    assert sorted(patient.events.values_list("kind", "date")) == [
        ("death", dt.date(2024, 9, 30)),
        ("progression", dt.date(2024, 7, 2)),
    ]
    patient.refresh_from_db()
    assert (patient.birth_date, patient.sex) == (dt.date(1951, 2, 3), "M")


def test_demographics_that_disagree_are_reported_not_overwritten():
    patient = PatientFactory(patient_id="RT-9001", birth_date=dt.date(1960, 1, 1), sex="F")
    person = {
        "resourceType": "Patient",
        "identifier": [{"system": service.MRN_SYSTEM, "value": "RT-9001"}],
        "gender": "male",
        "birthDate": "1960-01-01",
    }
    result = ehr_import(path_or_bytes=bundle(patient=person))
    patient.refresh_from_db()
    assert patient.sex == "F"
    assert any("sex differs" in n for n in result.notes)


def test_an_amended_value_updates_the_stored_lab():
    patient = PatientFactory(patient_id="RT-9001")
    ehr_import(path_or_bytes=bundle(observation("2039-6", 3.0, "ng/mL")))
    result = ehr_import(path_or_bytes=bundle(observation("2039-6", 3.4, "ng/mL", status="amended")))
    assert (result.created, result.updated) == (0, 1)
    assert list(patient.lab_results.values_list("value", flat=True)) == [3.4]


def test_results_and_progressions_the_ehr_withdraws_are_removed():
    # A CEA sent, then withdrawn (entered in error) by code and time, another withdrawn
    # by its identifier, and a progression Condition later refuted.
    patient = PatientFactory(patient_id="RT-9001")
    first = observation("2039-6", 30.0, "ng/mL", when="2024-03-01T08:30:00Z")
    second = observation("2039-6", 40.0, "ng/mL", when="2024-04-01T08:30:00Z")
    second["identifier"] = [{"system": "urn:lab", "value": "cea-42"}]
    kept = observation("2039-6", 3.0, "ng/mL", when="2024-05-01T08:30:00Z")
    progression = {
        "resourceType": "Condition",
        "code": {"coding": [{"system": codes.SNOMED, "code": codes.SNOMED_CONDITION_WORSENED}]},
        "subject": {"reference": "urn:uuid:p1"},
        "onsetDateTime": "2024-04-15",
    }
    ehr_import(path_or_bytes=bundle(first, second, kept, progression))
    assert patient.lab_results.count() == 3 and patient.events.count() == 1

    withdrawn_first = {**first, "status": "entered-in-error"}
    withdrawn_second = {**second, "status": "entered-in-error", "effectiveDateTime": "2024-04-02"}
    refuted = {
        **progression,
        "verificationStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                    "code": "refuted",
                }
            ]
        },
    }
    never_stored = observation("2039-6", 9.0, "ng/mL", when="2020-01-01T00:00:00Z")
    never_stored["status"] = "entered-in-error"
    result = ehr_import(
        path_or_bytes=bundle(withdrawn_first, withdrawn_second, refuted, never_stored)
    )
    assert result.retracted == 3 and result.rejected == []
    assert [p.reason for p in result.skipped] == ["entered in error, and no such result stored"]
    assert list(patient.lab_results.values_list("value", flat=True)) == [3.0]
    assert not patient.events.exists()
    assert "3 retracted" in result.summary()


def test_csv_rows_with_bad_values_are_rejected_with_line_and_column(tmp_path):
    PatientFactory(patient_id="RT-1")
    path = tmp_path / "labs.csv"
    path.write_text(
        "patient_id,loinc_code,display,value,unit,observed_at\n"
        "RT-1,2039-6,CEA,3.1,ng/mL,2024-01-02T08:00:00+00:00\n"
        "RT-1,2039-6,CEA,abc,ng/mL,2024-01-03T08:00:00+00:00\n"
        "RT-1,2039-6,CEA,3.3,ng/mL,2024-01-04T08:00:00\n"
        "RT-1,2039-6,CEA,3.3,furlongs,2024-01-05T08:00:00+00:00\n"
        "RT-1,1234-5,Other,3.3,ng/mL,2024-01-05T08:00:00+00:00\n"
    )
    result = ehr_import(path_or_bytes=path)
    problems = {p.where: p.reason for p in result.rejected}
    assert "column value" in problems["labs.csv line 3"]
    assert "UTC offset" in problems["labs.csv line 4"]
    assert "'furlongs'" in problems["labs.csv line 5"] and "2039-6" in problems["labs.csv line 5"]
    assert "1234-5" in problems["labs.csv line 6"]
    assert result.created == 1 and result.records == 5


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"resourceType": "Patient"}', "not a FHIR Bundle"),
        (b'{"resourceType": "Bundle"}', "Bundle field type"),
        (b"a,b\n1,2\n", "neither labs.csv"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (b"  ", "empty"),
    ],
)
def test_unreadable_files_raise_a_clear_error(content, message):
    with pytest.raises(EHRImportError, match=message):
        ehr_import(path_or_bytes=content, source_name="upload.bin")


def test_a_failing_file_writes_nothing(monkeypatch):
    PatientFactory(patient_id="RT-9001")

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ClinicalEvent.objects, "bulk_create", explode)
    data = bundle(observation("2039-6", 3.0, "ng/mL"), patient={
        "resourceType": "Patient", "identifier": [{"value": "RT-9001"}], "deceasedDateTime": "2024-01-01"
    })  # fmt: skip
    with pytest.raises(RuntimeError):
        ehr_import(path_or_bytes=data)
    assert LabResult.objects.count() == 0


def test_command_imports_files_and_prints_one_summary_line(files, known):
    out, err = io.StringIO(), io.StringIO()
    call_command(
        "import_ehr",
        str(files / "labs.csv"),
        str(files / "events.csv"),
        "--quiet",
        stdout=out,
        stderr=err,
    )
    last = out.getvalue().strip().splitlines()[-1]
    assert last.startswith("import_ehr: 2 file(s): ")
    assert f"{LabResult.objects.count() + ClinicalEvent.objects.count()} created" in last
    assert "kept apart" in err.getvalue()


def test_command_fails_clearly_on_missing_or_unreadable_files(tmp_path):
    with pytest.raises(CommandError, match="cannot read .*missing.json"):
        call_command("import_ehr", str(tmp_path / "missing.json"), "--quiet")
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(CommandError, match="bad.json is not valid JSON"):
        call_command("import_ehr", str(bad), "--quiet")


def test_unmatched_records_are_not_duplicated_by_reimport(files):
    first = ehr_import(path_or_bytes=files / "labs.csv")
    count = UnmatchedEHRRecord.objects.count()
    assert count == first.unmatched > 0
    ehr_import(path_or_bytes=files / "labs.csv")
    assert UnmatchedEHRRecord.objects.count() == count
