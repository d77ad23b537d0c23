"""EHR import mends from the audit: the MRN is never overruled by another identifier,
older versions of a lab never overwrite newer ones, a correction moves its result rather
than duplicating it, CSV rows wider than the header are rejected, and a CSV without a
header puts none of its cells into the error (which the audit trail keeps)."""

import datetime as dt
import json

import pytest
from django.urls import reverse

from patients.ehr.importer import ehr_import
from patients.ehr.records import EHRImportError
from patients.models import AuditEvent, LabResult, PatientIdentifier, UnmatchedEHRRecord
from tests.patients.factories import PatientFactory, UserFactory

pytestmark = pytest.mark.django_db

MRN = "https://radtrack.example/fhir/sid/mrn"
NATIONAL = "urn:oid:2.16.840.1.113883.2.4.6.3"
LAB_IDS = "https://lab.example/id"
UCUM = "http://unitsofmeasure.org"


def observation(value, when, *, version="1", updated="2024-03-01T10:00:00Z", status="final"):
    """One version of the lab's CEA result o1 (identifier LAB-1) as a Bundle entry."""
    resource = {
        "resourceType": "Observation",
        "id": "o1",
        "status": status,
        "identifier": [{"system": LAB_IDS, "value": "LAB-1"}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "2039-6"}]},
        "subject": {"identifier": {"system": MRN, "value": "P1"}},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": "ng/mL", "system": UCUM, "code": "ng/mL"},
    }
    if updated:
        resource["meta"] = {"versionId": version, "lastUpdated": updated}
    return {
        "fullUrl": f"https://lab.example/fhir/Observation/o1/_history/{version}",
        "resource": resource,
    }


def bundle(*entries, kind="collection"):
    return json.dumps({"resourceType": "Bundle", "type": kind, "entry": list(entries)}).encode()


def stored():
    return list(LabResult.objects.order_by("observed_at").values_list("value", "observed_at"))


AT_8 = dt.datetime(2024, 3, 1, 8, tzinfo=dt.UTC)
ORIGINAL = observation(5.0, "2024-03-01T08:00:00Z")
AMENDED = observation(
    7.0, "2024-03-01T08:00:00Z", version="2", updated="2024-03-02T10:00:00Z", status="amended"
)


# -- 1. the MRN decides who a record is about -----------------------------------------
def patient_and_lab_bundle(identifiers):
    patient = {"resourceType": "Patient", "identifier": identifiers}
    lab = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2039-6"}]},
        "subject": {"reference": "urn:uuid:aaaaaaaa-0000-0000-0000-000000000001"},
        "effectiveDateTime": "2024-03-01T08:00:00Z",
        "valueQuantity": {"value": 55.0, "unit": "ng/mL"},
    }
    return bundle(
        {"fullUrl": "urn:uuid:aaaaaaaa-0000-0000-0000-000000000001", "resource": patient},
        {"fullUrl": "urn:uuid:aaaaaaaa-0000-0000-0000-000000000002", "resource": lab},
    )


def test_an_unknown_mrn_is_not_overruled_by_another_identifier():
    # M2 is not in RadTrack; the national number is M1's. The lab is not M1's.
    m1 = PatientFactory(patient_id="M1")
    PatientIdentifier.objects.create(patient=m1, system=NATIONAL, value="123456782")
    result = ehr_import(
        path_or_bytes=patient_and_lab_bundle(
            [{"system": MRN, "value": "M2"}, {"system": NATIONAL, "value": "123456782"}]
        )
    )
    assert not LabResult.objects.exists()
    assert result.unmatched == 2 and result.unmatched_identifiers == {"M2"}
    reasons = {what for _, what in result.outcomes}
    assert all(r.startswith("unmatched: MRN matches no patient") for r in reasons)
    kept = UnmatchedEHRRecord.objects.get(record_type="Observation")
    assert kept.patient_identifier == "M2" and "MRN matches no patient" in kept.reason
    assert "123456782" not in kept.reason and "M1" not in kept.reason


def test_an_mrn_and_an_identifier_of_different_patients_are_kept_apart():
    PatientFactory(patient_id="M1")
    m2 = PatientFactory(patient_id="M2")
    PatientIdentifier.objects.create(patient=m2, system=NATIONAL, value="123456782")
    result = ehr_import(
        path_or_bytes=patient_and_lab_bundle(
            [{"system": MRN, "value": "M1"}, {"system": NATIONAL, "value": "123456782"}]
        )
    )
    assert not LabResult.objects.exists() and result.unmatched == 2
    reason = UnmatchedEHRRecord.objects.get(record_type="Observation").reason
    assert (
        reason == "its MRN and another of its identifiers belong to different patients; not matched"
    )


def test_an_mrn_and_an_identifier_of_the_same_patient_still_match():
    m1 = PatientFactory(patient_id="M1")
    PatientIdentifier.objects.create(patient=m1, system=NATIONAL, value="123456782")
    result = ehr_import(
        path_or_bytes=patient_and_lab_bundle(
            [{"system": MRN, "value": "M1"}, {"system": NATIONAL, "value": "123456782"}]
        )
    )
    assert result.unmatched == 0
    assert list(LabResult.objects.values_list("patient__patient_id", flat=True)) == ["M1"]


# -- 2. versions of a lab ---------------------------------------------------------------
def test_a_history_bundle_listing_the_newest_first_keeps_the_amended_value():
    PatientFactory(patient_id="P1")
    result = ehr_import(path_or_bytes=bundle(AMENDED, ORIGINAL, kind="history"))
    assert stored() == [(7.0, AT_8)]
    assert (result.created, result.updated, result.skipped_older) == (1, 0, 1)
    assert result.outcomes[-1] == ("entry[1] Observation/o1", "skipped-older")
    assert "1 older than stored" in result.summary()
    assert LabResult.objects.get().source_last_updated == dt.datetime(2024, 3, 2, 10, tzinfo=dt.UTC)


def test_importing_the_original_again_does_not_revert_the_amendment():
    PatientFactory(patient_id="P1")
    ehr_import(path_or_bytes=bundle(ORIGINAL))
    assert ehr_import(path_or_bytes=bundle(AMENDED)).updated == 1
    again = ehr_import(path_or_bytes=bundle(ORIGINAL))
    assert stored() == [(7.0, AT_8)]
    assert (again.updated, again.unchanged, again.skipped_older) == (0, 0, 1)


def test_a_record_without_last_updated_is_applied_as_before():
    PatientFactory(patient_id="P1")
    ehr_import(path_or_bytes=bundle(ORIGINAL))
    undated = observation(6.0, "2024-03-01T08:00:00Z", version="3", updated=None)
    assert ehr_import(path_or_bytes=bundle(undated)).updated == 1
    assert stored() == [(6.0, AT_8)]
    assert LabResult.objects.get().source_last_updated is None


def test_a_correction_of_the_time_moves_the_result_found_by_its_identifier():
    PatientFactory(patient_id="P1")
    ehr_import(path_or_bytes=bundle(ORIGINAL))
    corrected = observation(
        5.5, "2024-03-01T07:00:00Z", version="2", updated="2024-03-02T10:00:00Z", status="corrected"
    )
    result = ehr_import(path_or_bytes=bundle(corrected))
    assert (result.created, result.updated) == (0, 1)
    assert stored() == [(5.5, dt.datetime(2024, 3, 1, 7, tzinfo=dt.UTC))]
    again = ehr_import(path_or_bytes=bundle(ORIGINAL, corrected))
    assert (again.skipped_older, again.unchanged, LabResult.objects.count()) == (1, 1, 1)


def test_versions_without_a_business_identifier_are_one_result_by_their_full_url():
    PatientFactory(patient_id="P1")
    first = observation(5.0, "2024-03-01T08:00:00Z")
    second = observation(5.5, "2024-03-01T07:00:00Z", version="2")
    for entry in (first, second):
        entry["resource"] = {**entry["resource"], "identifier": []}
    ehr_import(path_or_bytes=bundle(first))
    assert ehr_import(path_or_bytes=bundle(second)).updated == 1
    assert stored() == [(5.5, dt.datetime(2024, 3, 1, 7, tzinfo=dt.UTC))]


def test_a_corrected_time_already_taken_by_another_result_is_rejected():
    PatientFactory(patient_id="P1")
    other = observation(9.0, "2024-03-01T07:00:00Z")
    other["fullUrl"] = "https://lab.example/fhir/Observation/o2"
    other["resource"] = {**other["resource"], "id": "o2", "identifier": []}
    ehr_import(path_or_bytes=bundle(ORIGINAL, other))
    corrected = observation(
        5.5, "2024-03-01T07:00:00Z", version="2", updated="2024-03-02T10:00:00Z"
    )
    result = ehr_import(path_or_bytes=bundle(corrected))
    assert "another result of this test" in result.rejected[0].reason
    assert stored() == [(9.0, dt.datetime(2024, 3, 1, 7, tzinfo=dt.UTC)), (5.0, AT_8)]


# -- 3. CSV rows wider than the header ---------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "patient_id,loinc_code,unit,observed_at,value\nP1,1751-7,g/dL,2024-03-01,3,9\n",
        "patient_id,loinc_code,display,value,unit,observed_at\n"
        "P1,2039-6,CEA,2.5,ng/mL,2024-03-02,<\n",
    ],
)
def test_a_csv_row_with_more_cells_than_the_header_is_rejected(text):
    PatientFactory(patient_id="P1")
    result = ehr_import(path_or_bytes=text.encode(), source_name="labs.csv")
    columns = text.split("\n")[0].count(",") + 1
    assert [(p.where, p.reason) for p in result.rejected] == [
        (
            "labs.csv line 2",
            f"{columns + 1} cells but the header has {columns} columns; the row is not read",
        )
    ]
    assert result.created == 0 and not LabResult.objects.exists()


# -- 4. a CSV without its header ---------------------------------------------------------
def test_a_csv_without_a_header_names_columns_never_cells(client):
    text = "RT-SECRET-7,2039-6,CEA,3.1,ng/mL,2024-01-02\n"
    with pytest.raises(EHRImportError) as refused:
        ehr_import(path_or_bytes=text.encode(), source_name="labs.csv")
    message = str(refused.value)
    assert message.startswith("labs.csv line 1: its 6 columns are neither labs.csv ")
    assert "(loinc_code, observed_at, patient_id, unit, value missing)" in message
    assert "RT-SECRET-7" not in message and "3.1" not in message

    client.force_login(UserFactory(groups=["radiologist"]))
    response = client.post(reverse("api-ehr-import"), text.encode(), content_type="text/csv")
    assert response.status_code == 400
    audit = AuditEvent.objects.get(action="ehr.import").object
    assert "refused" in audit and "6 columns" in audit
    assert "RT-SECRET-7" not in audit and "2024-01-02" not in audit


def test_a_patient_said_alive_withdraws_a_death_recorded_in_error():
    from tests.patients.test_ehr_exchange import bundle, mrn_patient

    ours = PatientFactory(patient_id="RT-ALIVE")
    dead = {**mrn_patient("RT-ALIVE"), "deceasedDateTime": "2026-11-01"}
    ehr_import(path_or_bytes=bundle(dead))
    assert list(ours.events.values_list("kind", flat=True)) == ["death"]

    result = ehr_import(path_or_bytes=bundle({**mrn_patient("RT-ALIVE"), "deceasedBoolean": False}))

    assert not ours.events.exists()
    assert result.retracted == 1
    # Saying so again (or for a patient never recorded dead) withdraws nothing, quietly.
    again = ehr_import(path_or_bytes=bundle({**mrn_patient("RT-ALIVE"), "deceasedBoolean": False}))
    assert again.retracted == 0 and not again.skipped
