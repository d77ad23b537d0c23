"""FHIR resources say what the response rules say: a lesion not found is not 0, a merged
lesion points at what absorbed it, a rejected lesion is not sent, a lesion measured by
hand has no volume; reports carry the note, NE's reason, iRECIST, revisions (amended) and
the date PD is dated from; the best overall response is its own Observation."""

import datetime as dt

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation

from analytics.fhir.build import patient_resources_build
from analytics.fhir.bundles import fhir_transaction_build
from analytics.fhir.codes import (
    DATA_ABSENT_REASON,
    FINDING_STATE_SYSTEM,
    IRECIST_SYSTEM,
    PROGRESSION_DATED_FROM_EXTENSION,
    RECIST_SYSTEM,
    RESPONSE_OBSERVATION_SYSTEM,
    RESPONSE_REVISION_EXTENSION,
)
from analytics.fhir.ids import lesion_fhir_id, measurement_fhir_id, response_fhir_id
from analytics.fhir.record import patient_record_load
from analytics.models import BestOverallResponse, ResponseAssessment
from imaging.models import LesionMeasurement
from tests.analytics.finding_rows import NOT_FOUND_REASON, finding_rows_make
from tests.api.helpers import rows_make
from tests.patients.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def rows():
    rows = rows_make()
    rows.findings = finding_rows_make(rows)
    return rows


def _resources(rows):
    return patient_resources_build(record=patient_record_load(pk=rows.alice.pk))


def _members(resources, measurement: LesionMeasurement) -> dict[str, dict]:
    group_id = measurement_fhir_id(
        measurement.lesion.tracking_uid, measurement.study.study_instance_uid
    )
    by_id = {o["id"]: o for o in resources.observations}
    group = by_id[group_id]
    return {"group": group} | {
        ref["reference"].split("/")[1].removeprefix(group_id): by_id[ref["reference"].split("/")[1]]
        for ref in group["hasMember"]
    }


def _absent(member: dict) -> tuple[str, str]:
    assert "valueQuantity" not in member, member["id"]
    reason = member["dataAbsentReason"]
    (coding,) = reason["coding"]
    assert coding["system"] == DATA_ABSENT_REASON
    return coding["code"], reason["text"]


def _component(group: dict, code: str) -> dict:
    return next(c for c in group["component"] if c["code"]["coding"][0]["code"] == code)


def test_everything_validates_against_r4b(rows):
    resources = _resources(rows)
    for resource in resources.all():
        if resource["resourceType"] == "Observation":
            Observation.model_validate(resource)
        if resource["resourceType"] == "DiagnosticReport":
            DiagnosticReport.model_validate(resource)
    Bundle.model_validate(fhir_transaction_build(resources=resources.all()))


def test_a_lesion_not_found_has_no_value_only_the_reason(rows):
    members = _members(_resources(rows), rows.findings.not_found)
    for suffix in ("-volume", "-long-axis", "-short-axis"):
        assert _absent(members[suffix]) == ("unknown", NOT_FOUND_REASON)
    state = _component(members["group"], "finding-state")["valueCodeableConcept"]
    assert state["coding"][0] == {
        "system": FINDING_STATE_SYSTEM,
        "code": "not_found",
        "display": "Not found, needs review",
    }
    assert state["text"] == NOT_FOUND_REASON
    assert members["group"]["status"] == "preliminary"  # nobody reviewed it


def test_a_merged_lesion_points_at_the_lesion_it_merged_into(rows):
    resources = _resources(rows)
    members = _members(resources, rows.findings.merged)
    for suffix in ("-volume", "-long-axis", "-short-axis"):
        code, reason = _absent(members[suffix])
        assert code == "not-applicable" and "merged into Liver 1" in reason
    group = members["group"]
    assert _component(group, "merged-into")["valueString"] == rows.lesion.tracking_uid
    absorber = measurement_fhir_id(rows.lesion.tracking_uid, rows.followup.study_instance_uid)
    assert {"reference": f"Observation/{absorber}"} in group["derivedFrom"]
    assert absorber in {o["id"] for o in resources.observations}


def test_a_lesion_rejected_for_its_whole_identity_is_not_sent(rows):
    resources = _resources(rows)
    rejected = lesion_fhir_id(rows.findings.rejected_followup.lesion.tracking_uid)
    # The follow-up row is unreviewed, but the baseline rejection holds for the lesion.
    assert rejected not in {r["id"] for r in resources.lesions}
    assert not [o for o in resources.observations if o["focus"][0]["reference"].endswith(rejected)]


def test_a_node_measured_by_hand_has_axes_but_no_volume(rows):
    members = _members(_resources(rows), rows.findings.node)
    code, reason = _absent(members["-volume"])
    assert code == "not-performed" and "by hand" in reason
    assert members["-long-axis"]["valueQuantity"]["value"] == 22.0
    assert members["-short-axis"]["valueQuantity"]["value"] == 16.0
    assert members["group"]["bodySite"]["coding"][0]["code"] == "59441001"


def test_too_small_to_measure_is_not_zero_and_says_it_counts_5_mm(rows):
    members = _members(_resources(rows), rows.findings.too_small)
    code, reason = _absent(members["-long-axis"])
    assert code == "unknown" and "too small to measure" in reason and "5 mm" in reason


def test_no_measured_zero_is_sent_but_for_a_lesion_confirmed_gone(rows):
    rows.at_followup.status = "resolved"
    rows.at_followup.override_longest_diameter_mm = None
    rows.at_followup.save()
    resources = _resources(rows)
    zeros = {
        o["focus"][0]["reference"]
        for o in resources.observations
        if o.get("valueQuantity", {}).get("value") == 0
    }
    assert zeros == {f"BodyStructure/{lesion_fhir_id(rows.lesion.tracking_uid)}"}


def _report(resources, study):
    return next(
        r for r in resources.reports if r["id"] == response_fhir_id(study.study_instance_uid)
    )


def test_an_ne_report_says_why_in_the_conclusion_and_the_code(rows):
    note = "not evaluable: Liver 3 was not found at this study"
    ResponseAssessment.objects.filter(pk=rows.response.pk).update(
        recist_response="NE", volumetric_response="NE", response_note=note, notes=[note]
    )
    report = _report(_resources(rows), rows.followup)
    DiagnosticReport.model_validate(report)
    assert report["conclusion"] == note
    recist = next(c for c in report["conclusionCode"] if c["coding"][0]["system"] == RECIST_SYSTEM)
    assert recist["coding"][0]["code"] == "NE"
    assert recist["text"] == "RECIST 1.1: Not evaluable (Liver 3 was not found at this study)"


def test_non_cr_non_pd_irecist_and_the_date_pd_is_dated_from(rows):
    ResponseAssessment.objects.filter(pk=rows.response.pk).update(
        recist_response="non-CR/non-PD", irecist_response="iUPD",
        progression_dated_from=dt.date(2024, 3, 1), response_note="",
    )  # fmt: skip
    report = _report(_resources(rows), rows.followup)
    codes = {c["coding"][0]["system"]: c["coding"][0]["code"] for c in report["conclusionCode"]}
    assert codes[RECIST_SYSTEM] == "non-CR/non-PD" and codes[IRECIST_SYSTEM] == "iUPD"
    assert "iRECIST: iUPD" in report["conclusion"]  # the summary, when there is no note
    (dated,) = [e for e in report["extension"] if e["url"] == PROGRESSION_DATED_FROM_EXTENSION]
    assert dated["valueDate"] == "2024-03-01"


def test_a_revised_category_carries_the_earlier_category(rows):
    rows.findings.not_found.delete()  # every remaining measurement reviewed
    rows.findings.rejected_followup.delete()
    revision = {
        "at": "2024-05-02T10:00:00+00:00", "field": "recist_response", "from": "SD",
        "to": "PD", "reason": "a later study confirmed an equivocal new lesion",
    }  # fmt: skip
    ResponseAssessment.objects.filter(pk=rows.response.pk).update(
        recist_response="PD", revisions=[revision]
    )
    report = _report(_resources(rows), rows.followup)
    # Final: "amended" is for a report the receiver already holds, which only the push
    # knows (`fhir_push_plan`); the revision travels as an extension either way.
    assert report["status"] == "final"
    (ext,) = [e for e in report["extension"] if e["url"] == RESPONSE_REVISION_EXTENSION]
    parts = {e["url"]: e.get("valueString") or e.get("valueDateTime") for e in ext["extension"]}
    assert parts == {
        "field": "RECIST 1.1", "from": "SD", "to": "PD",
        "reason": "a later study confirmed an equivocal new lesion",
        "at": "2024-05-02T10:00:00Z",  # the same instant, as the R4B model writes it
    }  # fmt: skip
    # Unreviewed measurements: revised, but not signed off.
    LesionMeasurement.objects.filter(pk=rows.at_followup.pk).update(review_state="pending")
    assert _report(_resources(rows), rows.followup)["status"] == "preliminary"


def test_the_best_overall_response_is_an_observation_per_criterion(rows):
    BestOverallResponse.objects.create(
        patient=rows.alice, recist="PR", recist_date=dt.date(2024, 4, 10),
        recist_note="PR confirmed on 2024-05-10 (28+ days later)", irecist="iPR",
        irecist_date=dt.date(2024, 4, 10), irecist_note="the same",
        settings={"confirmation_days": 28, "min_sd_days": 42, "require_confirmation": True},
    )  # fmt: skip
    resources = _resources(rows)
    recist, irecist = resources.best_responses
    for resource in (recist, irecist):
        Observation.model_validate(resource)
        assert resource in resources.all()
        assert resource["status"] == "preliminary"  # a pending measurement
        assert resource["derivedFrom"] == [{"reference": f"ImagingStudy/study-{rows.followup.pk}"}]
        assert resource["effectiveDateTime"] == "2024-04-10"
    assert (
        recist["id"] == f"bor-{rows.alice.pk}" and irecist["id"] == f"bor-{rows.alice.pk}-irecist"
    )
    assert recist["code"]["coding"][0]["system"] == RESPONSE_OBSERVATION_SYSTEM
    assert recist["valueCodeableConcept"]["coding"][0] == {
        "system": RECIST_SYSTEM, "code": "PR", "display": "Partial response",
    }  # fmt: skip
    assert irecist["valueCodeableConcept"]["coding"][0]["system"] == IRECIST_SYSTEM
    assert recist["note"] == [{"text": "PR confirmed on 2024-05-10 (28+ days later)"}]
    assert "28 days" in recist["method"]["text"] and "42 days" in recist["method"]["text"]


def test_the_best_overall_response_is_read_searched_and_in_everything(client, rows):
    BestOverallResponse.objects.create(
        patient=rows.alice, recist="SD", recist_date=rows.followup.study_date
    )
    client.force_login(UserFactory(groups=["clinician"]))
    patient = f"patient-{rows.alice.pk}"
    read = client.get(f"/fhir/Observation/bor-{rows.alice.pk}")
    assert (
        read.status_code == 200 and read.json()["valueCodeableConcept"]["coding"][0]["code"] == "SD"
    )
    assert client.get(f"/fhir/Observation/bor-{rows.alice.pk}-irecist").status_code == 404
    search = client.get("/fhir/Observation", {"patient": patient, "_count": 500}).json()
    assert f"bor-{rows.alice.pk}" in {e["resource"]["id"] for e in search["entry"]}
    everything = client.get(f"/fhir/Patient/{patient}/$everything", {"_count": 500}).json()
    assert f"bor-{rows.alice.pk}" in {e["resource"]["id"] for e in everything["entry"]}
