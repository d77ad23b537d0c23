"""Medications from the EHR import: FHIR MedicationStatement, MedicationAdministration and
MedicationRequest (coded, contained or referenced Medication), Bulk Data NDJSON and
``medications.csv``; kept per patient, idempotent, unmatched kept apart, bad input
rejected with the field at fault; and the checkpoint inhibitors' table."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from patients.ehr import fhir_bundle as service
from patients.ehr.checkpoint_inhibitors import (
    ATC_SYSTEMS,
    RXNORM_SYSTEM,
    SNOMED_SYSTEM,
    Coding,
    checkpoint_inhibitor_match,
    checkpoint_inhibitors,
)
from patients.ehr.importer import ehr_import, ehr_import_ndjson_files
from patients.ehr.records import EHRImportError
from patients.models import PatientMedication, UnmatchedEHRRecord
from tests.patients.factories import PatientFactory

ATC = ATC_SYSTEMS[0]
PEMBROLIZUMAB = {
    "coding": [{"system": RXNORM_SYSTEM, "code": "1547545", "display": "pembrolizumab"}]
}
METFORMIN = {"coding": [{"system": ATC, "code": "A10BA02", "display": "metformin"}]}


def mrn_patient(mrn="RT-7001", rid="p1"):
    return {
        "resourceType": "Patient",
        "id": rid,
        "identifier": [{"system": service.MRN_SYSTEM, "value": mrn}],
    }


def statement(medication=None, *, status="active", when="2024-03-01", **extra):
    resource = {
        "resourceType": "MedicationStatement",
        "status": status,
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": PEMBROLIZUMAB if medication is None else medication,
        "effectiveDateTime": when,
    }
    resource.update(extra)
    return {k: v for k, v in resource.items() if v is not None}


def bundle(*resources, mrn="RT-7001"):
    entries = [{"fullUrl": "urn:uuid:p", "resource": mrn_patient(mrn)}]
    entries += [{"resource": r} for r in resources]
    return json.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries}).encode()


def problems(result):
    return [str(p) for p in result.rejected]


# -- the table (no database) -----------------------------------------------------------
@pytest.mark.parametrize(
    ("codings", "text", "expected"),
    [
        ([Coding(ATC, "L01FF02")], "", "pembrolizumab"),
        ([Coding(ATC, "L01FX04")], "", "ipilimumab"),
        ([Coding(ATC, "L01FX20")], "", "tremelimumab"),
        ([Coding(ATC, "L01FY02")], "", "nivolumab and relatlimab"),
        ([Coding(ATC, "L01FF09", "tislelizumab")], "", "tislelizumab"),  # the class L01FF*
        ([Coding(RXNORM_SYSTEM, "1597876")], "", "nivolumab"),
        ([Coding(RXNORM_SYSTEM, "1094833")], "", "ipilimumab"),
        (
            [Coding(RXNORM_SYSTEM, "999", "pembrolizumab 25 MG/ML Injectable Solution")],
            "",
            "pembrolizumab",
        ),
        ([Coding(SNOMED_SYSTEM, "1", "Product containing atezolizumab")], "", "atezolizumab"),
        ([], "KEYTRUDA 100 mg/4 mL", "pembrolizumab"),
        ([], "Imjudo", "tremelimumab"),
        ([], "carboplatin / pemetrexed / Pembrolizumab", "pembrolizumab"),
        ([], "Opdualag", "nivolumab and relatlimab"),
        ([Coding(ATC, "L01FE01", "cetuximab")], "", None),  # an antibody, not a checkpoint one
        ([Coding(ATC, "L01FF")], "", None),  # a group, not a substance
        ([Coding(RXNORM_SYSTEM, "1547545x")], "", None),
        ([], "metformin 500 mg", None),
        ([], "anti-pembrolizumab antibody assay", None),
        ([], "pembrolizumabx", None),
    ],
)
def test_checkpoint_inhibitors_by_atc_rxnorm_or_name(codings, text, expected):
    match = checkpoint_inhibitor_match(codings=codings, text=text)
    assert (match.name if match else None) == expected


def test_the_table_names_every_drug_of_the_brief_with_its_atc_code():
    table = {d.name: d for d in checkpoint_inhibitors()}
    for name in ("pembrolizumab", "nivolumab", "cemiplimab", "dostarlimab", "atezolizumab",
                 "durvalumab", "avelumab", "ipilimumab", "tremelimumab", "relatlimab"):  # fmt: skip
        assert name in table
    assert {d.atc[:5] for d in table.values() if d.target in {"PD-1", "PD-L1"}} == {"L01FF"}
    assert table["ipilimumab"].atc == "L01FX04" and table["pembrolizumab"].rxnorm == "1547545"


# -- FHIR --------------------------------------------------------------------------------
@pytest.mark.django_db
def test_statement_request_and_administration_are_kept_with_codes_dates_and_identifiers():
    patient = PatientFactory(patient_id="RT-7001")
    data = bundle(
        statement(identifier=[{"system": "urn:ehr:meds", "value": "ms-1"}]),
        {
            "resourceType": "MedicationRequest",
            "id": "rq1",
            "status": "active",
            "intent": "order",
            "subject": {"reference": "Patient/p1"},
            "medicationCodeableConcept": METFORMIN,
            "authoredOn": "2024-01-10",
        },
        {
            "resourceType": "MedicationAdministration",
            "status": "completed",
            "subject": {"reference": "Patient/p1"},
            "medicationCodeableConcept": {"text": "Paracetamol 1 g IV"},
            "effectivePeriod": {"start": "2024-02-02T10:00:00Z", "end": "2024-02-02T10:30:00Z"},
        },
    )
    result = ehr_import(path_or_bytes=data, source_name="meds.json")

    assert problems(result) == [] and result.created_by_type["medication"] == 3
    rows = {m.kind: m for m in PatientMedication.objects.filter(patient=patient)}
    pembro = rows["statement"]
    assert (pembro.checkpoint_inhibitor, pembro.started_on, pembro.status) == (
        "pembrolizumab",
        dt.date(2024, 3, 1),
        "active",
    )
    assert pembro.codes == [
        {"system": RXNORM_SYSTEM, "code": "1547545", "display": "pembrolizumab"}
    ]
    assert pembro.identifiers == [{"system": "urn:ehr:meds", "value": "ms-1"}]
    assert pembro.source == "meds.json" and pembro.summary == "pembrolizumab started 2024-03-01"
    request = rows["request"]
    assert (request.name, request.checkpoint_inhibitor, request.started_on) == (
        "metformin",
        "",
        dt.date(2024, 1, 10),
    )
    assert request.identifiers == [{"system": "", "value": "MedicationRequest/rq1"}]
    given = rows["administration"]
    assert (given.name, given.started_on, given.ended_on) == (
        "Paracetamol 1 g IV",
        dt.date(2024, 2, 2),
        dt.date(2024, 2, 2),
    )


@pytest.mark.django_db
def test_a_contained_or_referenced_medication_is_read_and_a_medication_entry_is_not_a_record():
    patient = PatientFactory(patient_id="RT-7001")
    contained = statement(
        medicationCodeableConcept=None,
        medicationReference={"reference": "#m1"},
        contained=[{"resourceType": "Medication", "id": "m1", "code": {"coding": [{"system": ATC, "code": "L01FF01"}]}}],
    )  # fmt: skip
    medication = {
        "resourceType": "Medication",
        "id": "m2",
        "ingredient": [{"itemCodeableConcept": {"text": "Yervoy 5 mg/mL"}}],
    }
    referenced = statement(
        medicationCodeableConcept=None, medicationReference={"reference": "Medication/m2"}, when="2024-04-01"
    )  # fmt: skip
    result = ehr_import(path_or_bytes=bundle(contained, medication, referenced))

    assert problems(result) == []
    drugs = patient.medications.order_by("started_on")
    assert [(m.checkpoint_inhibitor, m.name) for m in drugs] == [
        ("nivolumab", "ATC L01FF01"),
        ("ipilimumab", "Yervoy 5 mg/mL"),
    ]
    assert any("a Medication: read through" in str(p) for p in result.skipped)


@pytest.mark.django_db
def test_reimporting_changes_nothing_and_a_new_status_updates_the_row():
    patient = PatientFactory(patient_id="RT-7001")
    first = ehr_import(path_or_bytes=bundle(statement(id="s1")))
    again = ehr_import(path_or_bytes=bundle(statement(id="s1")))
    assert (first.created, again.created, again.updated, again.unchanged) == (1, 0, 0, 2)
    stopped = statement(
        id="s1",
        status="completed",
        when=None,
        effectivePeriod={"start": "2024-03-01", "end": "2024-06-30"},
    )
    amended = ehr_import(path_or_bytes=bundle(stopped))  # fmt: skip
    row = patient.medications.get()
    assert amended.updated == 1 and (row.status, row.ended_on) == (
        "completed",
        dt.date(2024, 6, 30),
    )


@pytest.mark.django_db
def test_a_medication_for_an_unknown_patient_is_kept_apart_with_the_reason():
    result = ehr_import(path_or_bytes=bundle(statement(), mrn="RT-NOBODY"))
    assert result.unmatched == 2 and result.unmatched_identifiers == {"RT-NOBODY"}
    kept = UnmatchedEHRRecord.objects.get(record_type="MedicationStatement")
    assert kept.patient_identifier == "RT-NOBODY" and "no patient" in kept.reason.lower()
    assert not PatientMedication.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("resource", "message"),
    [
        (statement(status="taken"), "field status: 'taken' is not a MedicationStatement status"),
        (
            statement({"coding": [{"system": "http://hl7.org/fhir/sid/ndc", "code": "0006-3026-02"}]}),
            "field medicationCodeableConcept: coded only in http://hl7.org/fhir/sid/ndc, not ATC, "
            "RxNorm or SNOMED CT, and no text names the medication",
        ),
        (statement({"coding": [{"system": ATC}]}), "neither a coding nor text names the medication"),
        (
            statement(medicationCodeableConcept=None, medicationReference={"reference": "Medication/gone"}),
            "field medicationReference: 'Medication/gone' is not in this file",
        ),
        (
            statement(medicationCodeableConcept=None, medicationReference={"reference": "Patient/p1"}),
            "field medicationReference: names a Patient, not a Medication",
        ),
        (
            statement(when=None, effectivePeriod={"start": "2024-05-01", "end": "2024-04-01"}),
            "field effectivePeriod: its end is before its start",
        ),
        (
            {"resourceType": "MedicationAdministration", "status": "completed", "subject": {"reference": "Patient/p1"},
             "medicationCodeableConcept": PEMBROLIZUMAB, "effectiveDateTime": "2024-03"},
            "field effective[x]: an administration needs a full date",
        ),
        (statement(subject=None), "MedicationStatement"),  # R4B: subject is required
    ],
)  # fmt: skip
def test_bad_medication_records_are_rejected_naming_the_field(resource, message):
    PatientFactory(patient_id="RT-7001")
    result = ehr_import(path_or_bytes=bundle(resource), source_name="bad.json")
    assert len(result.rejected) == 1 and message in str(result.rejected[0])
    assert str(result.rejected[0]).startswith("entry[1] ")
    assert not PatientMedication.objects.exists()


@pytest.mark.django_db
def test_a_reference_with_only_a_display_is_read_from_the_display():
    patient = PatientFactory(patient_id="RT-7001")
    named = statement(
        medicationCodeableConcept=None,
        medicationReference={"reference": "Medication/x", "display": "Keytruda"},
    )
    result = ehr_import(path_or_bytes=bundle(named))  # fmt: skip
    assert (
        problems(result) == [] and patient.medications.get().checkpoint_inhibitor == "pembrolizumab"
    )


@pytest.mark.django_db
def test_bulk_data_ndjson_files_reference_each_other(tmp_path):
    patient = PatientFactory(patient_id="RT-7001")
    (tmp_path / "Patient.ndjson").write_text(json.dumps(mrn_patient()) + "\n")
    medication = {"resourceType": "Medication", "id": "m1", "code": {"text": "Tecentriq 1200 mg"}}
    (tmp_path / "Medication.ndjson").write_text(json.dumps(medication) + "\n")
    request = {
        "resourceType": "MedicationRequest",
        "id": "r1",
        "status": "completed",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "medicationReference": {"reference": "Medication/m1"},
        "authoredOn": "2024-05-06T09:00:00+02:00",
    }
    lines = [json.dumps(request), "{broken", json.dumps({**request, "id": "r2", "status": "sent"})]
    (tmp_path / "MedicationRequest.ndjson").write_text("\n".join(lines) + "\n")
    result = ehr_import_ndjson_files(
        paths=[
            tmp_path / n
            for n in ("Patient.ndjson", "Medication.ndjson", "MedicationRequest.ndjson")
        ]
    )
    row = patient.medications.get()
    assert (row.checkpoint_inhibitor, row.kind, row.started_on) == (
        "atezolizumab",
        "request",
        dt.date(2024, 5, 6),
    )
    assert [str(p) for p in result.rejected] == [
        "MedicationRequest.ndjson line 2: not valid JSON (line 1, column 2: Expecting property name enclosed in double quotes)",
        "MedicationRequest.ndjson line 3 MedicationRequest/r2: field status: 'sent' is not a MedicationRequest status",
    ]  # fmt: skip


# -- medications.csv -------------------------------------------------------------------
CSV_HEADER = "patient_id,code_system,code,name,start_date,end_date,kind,status,id\n"


@pytest.mark.django_db
def test_medications_csv_rows_are_kept_and_bad_rows_rejected_by_line_and_column():
    patient = PatientFactory(patient_id="RT-7001")
    text = CSV_HEADER + (
        "RT-7001,ATC,L01FF02,Keytruda,2024-03-01,,,,rx-1\n"
        "RT-7001,,,ibuprofen 400 mg,2024-02-01,2024-02-10,,,\n"
        "RT-7001,RxNorm,1597876,,2024-04-01,,administration,completed,\n"
        "RT-7001,LOINC-ish,123,,2024-04-01,,,,\n"
        "RT-7001,,,,2024-04-01,,,,\n"
        "RT-7001,ATC,L01FF01,,04/01/2024,,,,\n"
        "RT-7001,ATC,L01FF01,,,,,,\n"
        "RT-7001,ATC,L01FF01,,2024-04-01,,infusion,,\n"
        "RT-7001,ATC,L01FF01,,2024-04-01,,request,taken,\n"
        "RT-7001,ATC,L01FF01,,2024-04-01,2024-03-01,,,\n"
        "RT-NOBODY,ATC,L01FF05,,2024-04-01,,,,\n"
    )
    result = ehr_import(path_or_bytes=text.encode(), source_name="medications.csv")

    assert result.format == "medications CSV"
    rows = list(patient.medications.order_by("started_on"))
    assert [(m.name, m.checkpoint_inhibitor, m.status, m.kind) for m in rows] == [
        ("ibuprofen 400 mg", "", "completed", "statement"),
        ("Keytruda", "pembrolizumab", "active", "statement"),
        ("RxNorm 1597876", "nivolumab", "completed", "administration"),
    ]
    assert rows[1].identifiers == [{"system": "", "value": "rx-1"}]
    assert problems(result) == [
        "medications.csv line 5: column code_system: 'LOINC-ish' is not ATC, RxNorm, SNOMED or a URI",
        "medications.csv line 6: columns code and name: neither a coding nor text names the medication",
        "medications.csv line 7: column start_date: '04/01/2024' is not a date",
        "medications.csv line 8: column start_date: a date is needed",
        "medications.csv line 9: column kind: 'infusion' is not statement, administration or request",
        "medications.csv line 10: column status: 'taken' is not a request status (active, cancelled, "
        "completed, draft, entered-in-error, on-hold, stopped, unknown)",
        "medications.csv line 11: column end_date: before start_date",
    ]  # fmt: skip
    assert (
        result.unmatched == 1 and UnmatchedEHRRecord.objects.get().record_type == "medications.csv"
    )
    again = ehr_import(path_or_bytes=text.encode(), source_name="medications.csv")
    assert (again.created, again.updated, again.unchanged) == (0, 0, 3)


@pytest.mark.django_db
def test_a_csv_of_no_known_layout_names_the_medications_columns_too():
    with pytest.raises(EHRImportError, match=r"nor medications.csv \(code, code_system, name"):
        ehr_import(path_or_bytes=b"patient_id,drug\nRT-1,x\n", source_name="drugs.csv")


@pytest.mark.django_db
def test_the_admin_shows_medications_read_only_and_audits_it(client):
    from django.urls import reverse

    from patients.models import AuditEvent
    from tests.patients.factories import UserFactory

    patient = PatientFactory(patient_id="RT-7001")
    ehr_import(path_or_bytes=bundle(statement()))
    row = patient.medications.get()
    client.force_login(UserFactory(groups=["admin"], is_staff=True))
    listing = client.get(reverse("admin:patients_patientmedication_changelist"))
    assert listing.status_code == 200 and b"pembrolizumab" in listing.content
    view = client.get(reverse("admin:patients_patientmedication_change", args=[row.pk]))
    assert view.status_code == 200 and b'name="_save"' not in view.content
    audited = set(AuditEvent.objects.values_list("action", "patient_id"))
    assert {("admin.list", patient.pk), ("admin.view", patient.pk)} <= audited
    assert client.get(reverse("admin:patients_patientmedication_add")).status_code == 403
