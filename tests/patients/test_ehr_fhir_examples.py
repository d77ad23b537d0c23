"""The EHR import against HL7's own FHIR R4 example resources (CC0; `fhir_r4_examples/`):
the outcome of every entry is the one `expected.json` gives, and the labs written are
the examples' values in RadTrack's canonical units."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from patients.ehr.fhir_bundle import bundle_records
from patients.ehr.fhir_references import FhirEntry, ReferenceResolver
from patients.ehr.importer import ehr_import
from patients.ehr.records import EHRImportResult
from patients.models import LabResult, Patient
from tests.patients.factories import PatientFactory

pytestmark = pytest.mark.django_db

CORPUS = Path(__file__).parent / "fhir_r4_examples"
EXPECTED = json.loads((CORPUS / "expected.json").read_text())
PAT2_MRN_SYSTEM = "urn:oid:0.1.2.3.4.5.6.7"
FILES = sorted(name for name in EXPECTED if not name.startswith("_"))


@pytest.fixture
def pat2(settings) -> Patient:
    settings.RADTRACK_MRN_SYSTEM = PAT2_MRN_SYSTEM
    return PatientFactory(patient_id="123456", sex="", birth_date=None)


def _outcomes(result: EHRImportResult) -> list[list[str]]:
    rows = [
        [where, what.split(":")[0], what.split(": ", 1)[1][:60] if ": " in what else ""]
        for where, what in result.outcomes
    ]
    rows += [[p.where, "skipped", p.reason[:60]] for p in result.skipped]
    rows += [[p.where, "rejected", p.reason[:60]] for p in result.rejected]
    return sorted(rows)


def test_the_corpus_is_the_files_described_and_licensed():
    assert "CC0 1.0 Universal" in (CORPUS / "LICENSE").read_text()
    on_disk = {p.name for p in CORPUS.iterdir() if p.suffix in {".json", ".ndjson"}}
    assert on_disk - {"expected.json"} == set(FILES)
    readme = (CORPUS / "README.md").read_text()
    assert all(name in readme for name in FILES)


@pytest.mark.parametrize("name", FILES)
def test_every_entry_has_its_expected_outcome(pat2, name):
    result = ehr_import(path_or_bytes=CORPUS / name)
    assert _outcomes(result) == EXPECTED[name]
    # Every entry (or line) of the file has an outcome: none is passed over in silence.
    text = (CORPUS / name).read_text()
    if name.endswith(".ndjson"):
        tops = [f"{name} line {n}" for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    else:
        tops = [f"entry[{i}]" for i in range(len(json.loads(text)["entry"]))]
    for top in tops:
        assert any(row[0] == top or row[0].startswith(f"{top} ") for row in EXPECTED[name]), top


def test_the_general_health_profile_labs_in_canonical_units_at_the_panels_time(pat2):
    ehr_import(path_or_bytes=CORPUS / "variant-ghp-with-patient.json")
    labs = {
        lab.loinc_code: (lab.value, lab.unit, lab.observed_at, lab.comparator)
        for lab in pat2.lab_results.all()
    }
    taken = dt.datetime(2015, 8, 16, 6, 40, 17, tzinfo=dt.UTC)  # the panels' effectiveDateTime
    assert labs == {
        "718-7": (17.6, "g/dL", taken, ""),  # 176 g/L
        "2532-0": (131.0, "U/L", taken, ""),
        "1751-7": (4.2, "g/dL", taken, ""),  # 42 g/L
    }
    haemoglobin = pat2.lab_results.get(loinc_code="718-7")
    assert {"system": "urn:ietf:rfc:3986", "value": "https://example.com/base/Observation/r1"} in (
        haemoglobin.identifiers
    )
    pat2.refresh_from_db()
    assert pat2.sex == "O"  # filled from the Patient's gender "other"
    again = ehr_import(path_or_bytes=CORPUS / "variant-ghp-with-patient.json")
    assert (again.created, again.updated) == (0, 0)


def test_a_censored_component_keeps_its_comparator(pat2):
    ehr_import(path_or_bytes=CORPUS / "variant-contained-and-components.json")
    cea = pat2.lab_results.get(loinc_code="2039-6")
    assert (cea.comparator, cea.value, cea.value_label) == ("<", 0.5, "< 0.5 ng/mL")
    assert cea.observed_at == dt.datetime(2015, 9, 1, 8, tzinfo=dt.UTC)  # effectiveInstant
    contained = pat2.lab_results.get(loinc_code="718-7")
    assert contained.observed_at == dt.datetime(2015, 8, 16, 6, 40, 17, tzinfo=dt.UTC)


def test_without_the_site_mrn_system_nothing_lands_on_a_patient(settings):
    """The examples' MR number 123456 is another organisation's while RADTRACK_MRN_SYSTEM
    is not theirs: a RadTrack patient with the same digits gets nothing."""
    settings.RADTRACK_MRN_SYSTEM = "https://radtrack.example/fhir/sid/mrn"
    same_digits = PatientFactory(patient_id="123456")
    result = ehr_import(path_or_bytes=CORPUS / "variant-ghp-with-patient.json")
    assert result.created == 0 and not LabResult.objects.filter(patient=same_digits).exists()
    assert result.unmatched == 4
    assert all("is not RadTrack's MRN system" in what for _, what in result.outcomes)


def test_references_resolve_as_r4_says_on_its_own_example():
    bundle = json.loads((CORPUS / "Bundle-bundle-references.json").read_text())
    entries = [
        FhirEntry(f"entry[{i}]", e.get("fullUrl"), e["resource"])
        for i, e in enumerate(bundle["entry"])
    ]
    resolver = ReferenceResolver(entries)

    def target(index: int) -> str | None:
        found = resolver.resolve(
            entries[index].resource["subject"].get("reference"), entries[index]
        )
        return found.where if found else None

    assert target(2) == "entry[0]"  # Patient/23 from http://example.org/fhir/
    assert target(3) == "entry[0]"  # the absolute http://example.org/fhir/Patient/23
    assert target(4) == "entry[1]"  # urn:uuid:
    assert target(5) is None  # http://example.org/fhir-2/Patient/1: not in the Bundle
    assert target(6) is None  # Patient/23 read against http://example.org/fhir-2/
    version = bundle["entry"][8]["resource"]["meta"]["versionId"]
    assert target(9) == f"entry[{8 if version == '2' else 7}]"  # Patient/45/_history/2
    result = EHRImportResult("references", "FHIR Bundle")
    bundle_records(text=json.dumps(bundle), result=result)
    assert result.records == 11
