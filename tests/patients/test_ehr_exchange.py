"""EHR import against third-party data: identifier systems, censored values, plausibility,
times from the report, Bulk Data NDJSON, and files that must be refused with a reason."""

from __future__ import annotations

import datetime as dt
import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.urls import reverse

from patients.ehr.fhir_bundle import MRN_SYSTEM, V2_IDENTIFIER_TYPE
from patients.ehr.importer import ehr_import
from patients.ehr.records import EHRImportError
from patients.models import LabResult, PatientIdentifier, UnmatchedEHRRecord
from tests.patients.factories import PatientFactory, UserFactory

pytestmark = pytest.mark.django_db

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
OTHER_HOSPITAL = "http://other-hospital.example/mrn"
NATIONAL = "urn:oid:2.16.840.1.113883.2.4.6.3"


def cea(value, *, subject, comparator=None, when="2024-03-01T08:30:00Z", extra=None) -> dict:
    quantity = {"value": value, "unit": "ng/mL", "system": UCUM, "code": "ng/mL"}
    if comparator:
        quantity["comparator"] = comparator
    resource = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "2039-6"}]},
        "subject": subject,
        "valueQuantity": quantity,
    }
    if when:
        resource["effectiveDateTime"] = when
    return resource | (extra or {})


def bundle(*resources, full_urls=None) -> bytes:
    entries = []
    for i, r in enumerate(resources):
        entry = {"resource": r}
        if full_urls:
            entry["fullUrl"] = full_urls[i]
        entries.append(entry)
    return json.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries}).encode()


def mrn_patient(mrn: str, *others: dict) -> dict:
    return {
        "resourceType": "Patient",
        "id": "p1",
        "identifier": [
            {
                "type": {"coding": [{"system": V2_IDENTIFIER_TYPE, "code": "MR"}]},
                "system": MRN_SYSTEM,
                "value": mrn,
            },
            *others,
        ],
    }


# -- identifier systems ---------------------------------------------------------------
def test_another_hospitals_mrn_with_the_same_digits_is_kept_apart_with_the_reason():
    ours = PatientFactory(patient_id="12345")
    result = ehr_import(
        path_or_bytes=bundle(
            cea(4.2, subject={"identifier": {"system": OTHER_HOSPITAL, "value": "12345"}})
        )
    )
    assert result.created == 0 and result.unmatched == 1
    assert not ours.lab_results.exists()
    row = UnmatchedEHRRecord.objects.get()
    assert (row.patient_identifier, row.identifier_system) == ("12345", OTHER_HOSPITAL)
    assert OTHER_HOSPITAL in row.reason and "not RadTrack's MRN system" in row.reason
    assert result.unmatched_identifiers == {f"{OTHER_HOSPITAL}|12345"}


def test_a_patient_with_only_a_national_number_does_not_get_it_as_mrn():
    ours = PatientFactory(patient_id="738472983", sex="")
    national_only = {
        "resourceType": "Patient",
        "identifier": [{"system": NATIONAL, "value": "738472983"}],
        "gender": "male",
    }
    result = ehr_import(path_or_bytes=bundle(national_only))
    assert result.unmatched == 1 and result.updated == 0
    ours.refresh_from_db()
    assert ours.sex == ""
    assert NATIONAL in UnmatchedEHRRecord.objects.get().reason


def test_other_identifiers_are_kept_and_then_match_that_patient():
    ours = PatientFactory(patient_id="RT-1")
    first = ehr_import(
        path_or_bytes=bundle(
            mrn_patient(
                "RT-1",
                {
                    "type": {"coding": [{"system": V2_IDENTIFIER_TYPE, "code": "NI"}]},
                    "system": NATIONAL,
                    "value": "738472983",
                },
                {"system": OTHER_HOSPITAL, "value": "12345"},
            )
        )
    )
    assert first.updated == 1
    kept = set(
        PatientIdentifier.objects.filter(patient=ours).values_list("system", "value", "type_code")
    )
    assert kept == {(NATIONAL, "738472983", "NI"), (OTHER_HOSPITAL, "12345", "")}
    # A later lab naming the patient by the national number lands on them.
    later = ehr_import(
        path_or_bytes=bundle(
            cea(3.1, subject={"identifier": {"system": NATIONAL, "value": "738472983"}})
        )
    )
    assert later.created == 1 and ours.lab_results.count() == 1
    # The same (system, value) never moves to another patient.
    other = PatientFactory(patient_id="RT-2")
    clash = ehr_import(
        path_or_bytes=bundle(mrn_patient("RT-2", {"system": NATIONAL, "value": "738472983"}))
    )
    # Its MRN and national number name different patients: kept apart, not matched.
    assert clash.unmatched == 1 and clash.updated == 0
    assert "belong to different patients" in UnmatchedEHRRecord.objects.get().reason
    assert not PatientIdentifier.objects.filter(patient=other).exists()


def test_an_identifier_without_a_system_matches_nobody(settings):
    PatientFactory(patient_id="RT-1")
    result = ehr_import(path_or_bytes=bundle(cea(4.2, subject={"identifier": {"value": "RT-1"}})))
    assert result.unmatched == 1
    assert "without a system" in UnmatchedEHRRecord.objects.get().reason
    # With the site's system configured, that system names the MRN.
    settings.RADTRACK_MRN_SYSTEM = "urn:oid:1.2.3"
    result = ehr_import(
        path_or_bytes=bundle(
            cea(4.2, subject={"identifier": {"system": "urn:oid:1.2.3", "value": "RT-1"}})
        )
    )
    assert result.created == 1


# -- censored values and plausibility -------------------------------------------------
def test_a_comparator_is_stored_and_shown_and_a_change_of_it_is_an_amendment():
    ours = PatientFactory(patient_id="RT-1")
    subject = {"reference": "Patient/p1"}
    first = ehr_import(
        path_or_bytes=bundle(mrn_patient("RT-1"), cea(0.5, subject=subject, comparator="<"))
    )
    assert first.created == 1
    lab = ours.lab_results.get()
    assert (lab.comparator, lab.value, lab.value_label) == ("<", 0.5, "< 0.5 ng/mL")
    again = ehr_import(
        path_or_bytes=bundle(mrn_patient("RT-1"), cea(0.5, subject=subject, comparator="<"))
    )
    assert again.created == again.updated == 0
    exact = ehr_import(path_or_bytes=bundle(mrn_patient("RT-1"), cea(0.5, subject=subject)))
    assert exact.updated == 1
    lab.refresh_from_db()
    assert lab.comparator == "" and lab.value_label == "0.5 ng/mL"


def test_csv_comparators_by_prefix_or_column(tmp_path):
    ours = PatientFactory(patient_id="RT-1")
    path = tmp_path / "labs.csv"
    path.write_text(
        "patient_id,loinc_code,value,unit,observed_at,comparator\n"
        "RT-1,2039-6,<0.5,ng/mL,2024-01-01,\n"
        "RT-1,2039-6,7.2,ng/mL,2024-02-01,>=\n"
        "RT-1,2039-6,<0.5,ng/mL,2024-03-01,>\n"
    )
    result = ehr_import(path_or_bytes=path)
    assert sorted(ours.lab_results.values_list("comparator", "value")) == [("<", 0.5), (">=", 7.2)]
    assert [p.where for p in result.rejected] == ["labs.csv line 4"]
    assert "disagrees" in result.rejected[0].reason


@pytest.mark.parametrize(
    "value, unit, shown",
    [(1e308, "ng/mL", "1e+308 ng/mL"), (-2.0, "ng/mL", "-2 ng/mL"), (3.0, "g/L", "3e+06 ng/mL")],
)
def test_an_implausible_value_is_rejected_with_the_range(value, unit, shown):
    ours = PatientFactory(patient_id="RT-1")
    resource = cea(value, subject={"reference": "Patient/p1"})
    resource["valueQuantity"].update(unit=unit, code=unit)
    result = ehr_import(path_or_bytes=bundle(mrn_patient("RT-1"), resource))
    assert not ours.lab_results.exists()
    (problem,) = result.rejected
    assert shown in problem.reason and "outside the plausible range 0-1e+06 ng/mL" in problem.reason


# -- times -----------------------------------------------------------------------------
def test_effective_instant_and_the_reports_time_for_a_result_without_one():
    ours = PatientFactory(patient_id="RT-1")
    instant = cea(2.0, subject={"reference": "Patient/p1"}, when=None, extra={
        "id": "o1", "effectiveInstant": "2024-05-02T10:15:00.5+02:00",
    })  # fmt: skip
    untimed = cea(3.0, subject={"reference": "Patient/p1"}, when=None, extra={"id": "o2"})
    report = {
        "resourceType": "DiagnosticReport",
        "status": "final",
        "code": {"text": "tumour markers"},
        "subject": {"reference": "Patient/p1"},
        "effectivePeriod": {"start": "2024-06-03T07:00:00Z"},
        "result": [{"reference": "Observation/o2"}],
    }
    orphan = cea(4.0, subject={"reference": "Patient/p1"}, when=None, extra={"id": "o3"})
    result = ehr_import(path_or_bytes=bundle(mrn_patient("RT-1"), instant, untimed, report, orphan))
    times = dict(ours.lab_results.values_list("value", "observed_at"))
    assert times == {
        2.0: dt.datetime(2024, 5, 2, 8, 15, 0, 500000, tzinfo=dt.UTC),
        3.0: dt.datetime(2024, 6, 3, 7, 0, tzinfo=dt.UTC),
    }
    assert [p.where for p in result.rejected] == ["entry[4] Observation/o3"]


# -- NDJSON ------------------------------------------------------------------------------
def test_ndjson_files_read_together_with_errors_by_line(tmp_path):
    ours = PatientFactory(patient_id="RT-1")
    (tmp_path / "Patient.ndjson").write_text(json.dumps(mrn_patient("RT-1")) + "\n")
    lines = [
        json.dumps(cea(1.0, subject={"reference": "Patient/p1"})),
        "",
        "{not json",
        json.dumps(cea(2.0, subject={"reference": "Patient/p9"}, when="2024-04-01")),
        json.dumps(["a list"]),
    ]
    (tmp_path / "Observation.ndjson").write_text("\n".join(lines) + "\n")
    out, err = StringIO(), StringIO()
    call_command(
        "import_ehr",
        str(tmp_path / "Patient.ndjson"),
        str(tmp_path / "Observation.ndjson"),
        "--quiet",
        stdout=out,
        stderr=err,
    )
    assert list(ours.lab_results.values_list("value", flat=True)) == [1.0]
    problems = err.getvalue()
    assert "Observation.ndjson line 3: not valid JSON" in problems
    assert "Observation.ndjson line 4 Observation" in problems and "'Patient/p9'" in problems
    assert "Observation.ndjson line 5: the line is not a JSON object" in problems
    assert "1 created" in out.getvalue()


def test_the_api_takes_fhir_ndjson(client):
    client.force_login(UserFactory(groups=["radiologist"]))
    ours = PatientFactory(patient_id="RT-1")
    body = "\n".join(
        [json.dumps(mrn_patient("RT-1")), json.dumps(cea(1.5, subject={"reference": "Patient/p1"}))]
    )
    response = client.post(reverse("api-ehr-import"), body, content_type="application/fhir+ndjson")
    assert response.status_code == 201
    assert response.json()["format"] == "FHIR NDJSON"
    assert ours.lab_results.get().value == 1.5


# -- files refused whole, with a reason (never an HTML 500) --------------------------------
@pytest.mark.parametrize(
    "body, content_type, reason",
    [
        (b"[" * 100_000 + b"]" * 100_000, "application/fhir+json", "nested more than 100"),
        (
            json.dumps(
                {
                    "resourceType": "Bundle",
                    "type": "collection",
                    "entry": [
                        {
                            "resource": {
                                "resourceType": "Basic",
                                "extension": [{"x": [[[[{}]]]]}] * 1,
                            }
                        }
                    ]
                    * 1,
                }
            )
            .replace("{}", "[" * 150 + "]" * 150)
            .encode(),
            "application/json",
            "nested more than 100",
        ),
        (
            b"patient_id,loinc_code,value,unit,observed_at\nRT-1,2039-6,1,"
            + b"x" * (128 * 1024)
            + b",2024-01-01\n",
            "text/csv",
            "line 2",
        ),
        (
            b'patient_id,loinc_code,value,unit,observed_at\nRT-1,2039-6,1,"'
            + b"x" * 200_000
            + b'",2024-01-01\n',
            "text/csv",
            "line 2: cannot be read as CSV",
        ),
        (
            b'{"resourceType": "Bundle", "type": "collection", "x": "a\\u0000b"}',
            "application/json",
            "NUL",
        ),
    ],
    ids=["deep-array", "deep-bundle", "csv-field-128k", "csv-field-200k", "nul"],
)
def test_unreadable_files_are_400_with_the_reason(client, body, content_type, reason):
    client.force_login(UserFactory(groups=["radiologist"]))
    response = client.post(reverse("api-ehr-import"), body, content_type=content_type)
    assert response.status_code == 400
    assert response["Content-Type"].startswith("application/json")
    assert reason in response.json()["detail"]
    assert not LabResult.objects.exists()


def test_a_long_csv_field_refuses_the_file_naming_line_and_column(tmp_path):
    PatientFactory(patient_id="RT-1")
    path = tmp_path / "labs.csv"
    path.write_text(
        "patient_id,loinc_code,value,unit,observed_at\n"
        "RT-1,2039-6,1,ng/mL,2024-01-02\n"
        f"RT-1,2039-6,1,{'x' * 5000},2024-01-01\n"
    )
    with pytest.raises(EHRImportError, match="labs.csv line 3: column unit is longer than 4096"):
        ehr_import(path_or_bytes=path)
    assert not LabResult.objects.exists()


def test_a_deep_file_from_the_command_is_refused_by_name(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(EHRImportError, match="deep.json: JSON nested more than 100 levels"):
        ehr_import(path_or_bytes=path)


def test_the_patient_page_shows_a_censored_lab_with_its_bound(client):
    client.force_login(UserFactory(groups=["clinician"]))
    patient = PatientFactory(patient_id="RT-1")
    LabResult.objects.create(
        patient=patient, loinc_code="2039-6", comparator="<", value=0.5, unit="ng/mL",
        observed_at=dt.datetime(2024, 3, 1, 8, tzinfo=dt.UTC),
    )  # fmt: skip
    LabResult.objects.create(
        patient=patient, loinc_code="2039-6", value=7.25, unit="ng/mL",
        observed_at=dt.datetime(2024, 6, 1, 8, tzinfo=dt.UTC),
    )  # fmt: skip
    content = client.get(reverse("patients:detail", args=[patient.pk])).content.decode()
    table = content[content.index('data-testid="lab-table"') :]
    assert "&lt; 0.5 ng/mL" in table and "7.25 ng/mL" in table
