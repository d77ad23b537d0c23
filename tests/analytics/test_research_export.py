"""The de-identified research export: Annex E actions on every attribute, dates shifted per
patient, UIDs remapped with references intact, dciodvfy-clean output, tables under the
same pseudonyms, a key kept apart, refusals, audit, and the researcher group."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import stat
import subprocess
import zipfile
from pathlib import Path

import pydicom
import pytest
from django.core.management import CommandError, call_command
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset

from analytics.research.deid import (
    OPTIONS,
    TABLE_PATH,
    Deidentifier,
    PatientKey,
    UidMap,
    action_table_load,
    descriptor_clean,
)
from patients.models import AuditEvent, LabResult
from tests.conftest import require_program
from tests.interop.conftest import analysed_study, dciodvfy_errors
from tests.patients.factories import UserFactory

pytestmark = pytest.mark.django_db

SOURCE_NAME = "Doe^Jane"
METHOD_CODES = {"113100", "113107", "113108", "113105", "113104"}


# -- the action table, attribute by attribute -------------------------------------
def _table_rows() -> list[dict]:
    lines = [line for line in TABLE_PATH.read_text().splitlines() if not line.startswith("#")]
    return list(csv.DictReader(lines))


def _expected(row: dict) -> str:
    """The action the profile asks for: an applied option's, else the Basic Profile's."""
    return next((row[o] for o in OPTIONS if row[o]), row["basic"])


_VALUES = {
    "DA": "20240110",
    "DT": "20240110101500",
    "TM": "101500",
    "UI": "1.2.826.0.1.3680043.10.999.1",
    "AS": "063Y",
    "IS": "12",
    "DS": "1.5",
    "US": 7,
    "SS": 7,
    "UL": 7,
    "SL": 7,
    "FL": 1.5,
    "FD": 1.5,
    "CS": "DOEJANE",
    "PN": "Doe^Jane",
}


def _listed_dataset() -> tuple[Dataset, dict[int, dict]]:
    """One element per concrete table row whose VR is a plain value, holding an
    identifying-looking value (text holds the patient's name)."""
    dataset, rows = Dataset(), {}
    for row in _table_rows():
        if "x" in row["tag"] or row["tag"] == "private" or row["tag"].startswith("0002"):
            continue
        tag = int(row["tag"], 16)
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            continue
        if vr in {"SQ", "OB", "OW", "UN", "OF", "OD", "OL", "OV", "US or SS", "OB or OW"}:
            continue
        value = _VALUES.get(vr, "Jane Doe 12345678")
        if keyword_for_tag(tag) == "TimezoneOffsetFromUTC":
            value = "+0100"  # kept (C) under modified dates: the shift is whole days
        dataset.add_new(tag, vr, value)
        rows[tag] = row
    dataset.SOPInstanceUID = "1.2.826.0.1.3680043.10.999.2"
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    dataset.add_new(0x00091010, "LO", "private creator text")  # a private attribute
    return dataset, rows


def _check_element(out: Dataset, tag: int, row: dict, original) -> str | None:
    """Why the output element does not follow the table, or None if it does."""
    action = _expected(row)
    present = tag in out
    value = out[tag].value if present else None
    empty = present and (value in ("", None, b"") or value == [])
    name = f"{row['name']} ({tag:08x}, {action})"
    if action == "X" and present:
        return f"{name} was kept"
    if action == "Z" and not empty and str(value) == str(original):
        return f"{name} is neither empty nor a dummy"  # Z allows a dummy (the pseudonym)
    if action in {"D", "U", "X/D", "Z/D", "X/Z/D"} and present and str(value) == str(original):
        return f"{name} still holds the original value"
    if action == "X/Z" and present and not empty:
        return f"{name} neither removed nor emptied"
    if action == "U" and present and not str(value).startswith("2.25."):
        return f"{name} is not a new UID"
    if action == "K" and (not present or str(value) != str(original)):
        return f"{name} was not kept"
    if action == "C" and present and out[tag].VR == "DA" and value != "20230110":
        return f"{name} date not shifted by the patient's offset ({value})"
    text_vrs = {"LO", "SH", "ST", "LT", "UT"}
    if action == "C" and present and out[tag].VR in text_vrs and "Jane" in str(value):
        return f"{name} kept identifying text {value!r}"
    return None


def test_every_attribute_in_the_table_gets_its_profile_action():
    dataset, rows = _listed_dataset()
    originals = {tag: dataset[tag].value for tag in rows}
    key = PatientKey(pseudonym="RES-TEST", offset_days=-365, identifiers=frozenset({"doe"}))
    out = Deidentifier(table=action_table_load(), uids=UidMap(b"salt"))
    out.dataset_deidentify(dataset, key=key)

    assert len(rows) > 300  # most of Table E.1-1 is exercised
    problems = [
        p for tag, row in rows.items() if (p := _check_element(dataset, tag, row, originals[tag]))
    ]
    assert not problems, "\n".join(problems)
    assert 0x00091010 not in dataset  # private attributes removed
    assert (dataset.PatientIdentityRemoved, dataset.PatientID) == ("YES", "RES-TEST")
    assert dataset.LongitudinalTemporalInformationModified == "MODIFIED"
    codes = {c.CodeValue for c in dataset.DeidentificationMethodCodeSequence}
    assert codes == METHOD_CODES


def test_table_is_the_standards_with_its_edition():
    first = TABLE_PATH.read_text().splitlines()[0]
    assert "PS3.15" in first and "Table E.1-1" in first and "2024b" in first
    rows = {row["tag"]: row for row in _table_rows()}
    # Spot checks against the standard: name Z, birth date Z, accession Z, study date
    # Z kept as C under modified dates, SOP Instance UID U, sex kept with characteristics.
    assert rows["00100010"]["basic"] == "Z" and rows["00100030"]["basic"] == "Z"
    assert rows["00080050"]["basic"] == "Z"
    assert (rows["00080020"]["basic"], rows["00080020"]["retain_long_modified_dates"]) == ("Z", "C")
    assert rows["00080018"]["basic"] == "U"
    assert rows["00100040"]["retain_patient_characteristics"] == "K"


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("CT CHEST 2.5mm", True),
        ("Abdomen portal venous", True),
        ("Jane follow-up", False),
        ("CT 2024-01-10", False),
        ("call 0131 555 0199", False),
        ("mrn-77 chest", False),
    ],
)
def test_clean_descriptors(text, kept):
    key = PatientKey(pseudonym="P", offset_days=-400, identifiers=frozenset({"jane", "mrn-77"}))
    assert (descriptor_clean(text, key) == text) is kept


def test_burned_in_annotation_is_refused():
    from analytics.research.deid import DeidentificationRefused, burned_in_check

    ct = Dataset()
    ct.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ct.BurnedInAnnotation = "YES"
    with pytest.raises(DeidentificationRefused, match="BurnedInAnnotation"):
        burned_in_check(ct)
    capture = Dataset()
    capture.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    with pytest.raises(DeidentificationRefused, match="secondary capture"):
        burned_in_check(capture)
    capture.BurnedInAnnotation = "NO"
    burned_in_check(capture)


# -- a whole export ------------------------------------------------------------------
@pytest.fixture
def cohort(tmp_path):
    first = analysed_study(
        tmp_path, key="ra1", patient_id="RT-RES-A", study_date=dt.date(2024, 3, 1)
    )
    second = analysed_study(
        tmp_path,
        key="ra2",
        patient_id="RT-RES-A",
        study_date=dt.date(2024, 6, 1),
        patient=first.study.patient,
        lesions=first.lesions,
    )
    other = analysed_study(
        tmp_path, key="rb1", patient_id="RT-RES-B", study_date=dt.date(2024, 2, 1)
    )
    LabResult.objects.create(
        patient=first.study.patient, loinc_code="2039-6", value=4.2, unit="ng/mL",
        observed_at=dt.datetime(2024, 2, 20, 9, 30, tzinfo=dt.UTC),
    )  # fmt: skip
    return first, second, other


def _export(tmp_path, *args) -> tuple[Path, Path, str]:
    out, key = tmp_path / "research", tmp_path / "keys" / "key.json"
    stdout = io.StringIO()
    call_command("export_research", *args, "--out", str(out), "--key", str(key), stdout=stdout)
    return out, key, stdout.getvalue()


def _all_values(dataset: Dataset):
    for element in dataset.iterall():
        if element.VR not in {"SQ", "OB", "OW", "OF", "UN"}:
            yield str(element.value)


def _files(out: Path) -> dict[str, list[Dataset]]:
    by_kind: dict[str, list[Dataset]] = {"CT": [], "SEG": [], "SR": []}
    for path in sorted((out / "dicom").rglob("*.dcm")):
        dataset = pydicom.dcmread(path)
        dataset.filename = str(path)
        by_kind[dataset.Modality].append(dataset)
    return by_kind


def test_export_deidentifies_every_object_and_keeps_references(tmp_path, cohort):
    first, second, other = cohort
    out, key_path, said = _export(tmp_path, "--all")
    key = json.loads(key_path.read_text())
    files = _files(out)

    assert len(files["CT"]) == 15 and len(files["SEG"]) == 3 and len(files["SR"]) == 3
    source = pydicom.dcmread(first.files[0])
    secrets_in_source = {
        "RT-RES-A", "RT-RES-B", SOURCE_NAME, source.PatientBirthDate,
        source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID,
        source.FrameOfReferenceUID, first.study.study_instance_uid, "20240301",
    }  # fmt: skip
    for dataset in [d for kind in files.values() for d in kind]:
        assert dataset.PatientIdentityRemoved == "YES"
        assert {c.CodeValue for c in dataset.DeidentificationMethodCodeSequence} == METHOD_CODES
        assert dataset.PatientID in {p["pseudonym"] for p in key["patients"]}
        assert dataset.file_meta.MediaStorageSOPInstanceUID == dataset.SOPInstanceUID
        leaked = secrets_in_source & set(_all_values(dataset))
        assert not leaked, f"{dataset.filename} holds {leaked}"
    _references_resolve(files)
    assert "3 patients" not in said and "2 patients" in said


def _references_resolve(files: dict[str, list[Dataset]]) -> None:
    """Every SEG and SR reference names an exported object (same series, same frame)."""
    known = {d.SOPInstanceUID: d for kind in files.values() for d in kind}
    for seg in files["SEG"]:
        (series_ref,) = seg.ReferencedSeriesSequence
        refs = [i.ReferencedSOPInstanceUID for i in series_ref.ReferencedInstanceSequence]
        assert refs and all(uid in known for uid in refs)
        assert all(known[uid].SeriesInstanceUID == series_ref.SeriesInstanceUID for uid in refs)
        assert all(known[uid].FrameOfReferenceUID == seg.FrameOfReferenceUID for uid in refs)
        assert all(known[uid].StudyInstanceUID == seg.StudyInstanceUID for uid in refs)
    for sr in files["SR"]:
        cited = [e.value for e in sr.iterall() if e.keyword == "ReferencedSOPInstanceUID"]
        assert cited and all(uid in known for uid in cited), sr.filename
        assert any(known[uid].Modality == "SEG" for uid in cited)


def test_dates_move_by_one_offset_per_patient_and_differ_across_patients(tmp_path, cohort):
    first, second, other = cohort
    out, key_path, _ = _export(tmp_path, "--all")
    key = {p["mrn"]: p for p in json.loads(key_path.read_text())["patients"]}
    offsets = {mrn: p["date_offset_days"] for mrn, p in key.items()}
    assert offsets["RT-RES-A"] != offsets["RT-RES-B"]
    assert all(-1095 <= days <= -365 for days in offsets.values())

    originals = {c.study.study_date: c for c in cohort}
    shifted_by_patient: dict[str, set[int]] = {}
    for dataset in [d for kind in _files(out).values() for d in kind]:
        mrn = next(m for m, p in key.items() if p["pseudonym"] == dataset.PatientID)
        new = dt.datetime.strptime(dataset.StudyDate, "%Y%m%d").date()
        old = min(originals, key=lambda d: abs((new - d).days - offsets[mrn]))
        shifted_by_patient.setdefault(mrn, set()).add((new - old).days)
        assert dataset.get("PatientBirthDate", "") == ""
    assert shifted_by_patient == {mrn: {offsets[mrn]} for mrn in offsets}

    measurements = list(csv.DictReader((out / "measurements.csv").open()))
    by_pseudonym = {p["pseudonym"]: p for p in key.values()}
    for row in measurements:
        assert row["patient_id"] in by_pseudonym
        assert row["study_date"] not in {"2024-03-01", "2024-06-01", "2024-02-01"}
    dates_a = sorted(
        r["study_date"] for r in measurements if r["patient_id"] == key["RT-RES-A"]["pseudonym"]
    )
    gap = dt.date.fromisoformat(dates_a[-1]) - dt.date.fromisoformat(dates_a[0])
    assert gap.days == (dt.date(2024, 6, 1) - dt.date(2024, 3, 1)).days  # intervals kept
    (lab,) = list(csv.DictReader((out / "labs.csv").open()))
    observed = dt.datetime.fromisoformat(lab["observed_at"])
    assert observed == dt.datetime(2024, 2, 20, 9, 30, tzinfo=dt.UTC) + dt.timedelta(
        days=offsets["RT-RES-A"]
    )
    assert (lab["patient_id"], lab["loinc_code"], float(lab["value"])) == (
        key["RT-RES-A"]["pseudonym"], "2039-6", 4.2,
    )  # fmt: skip


def test_tables_use_the_dicom_uids(tmp_path, cohort):
    out, _, _ = _export(tmp_path, "--patients", "RT-RES-A")
    files = _files(out)
    studies = {d.StudyInstanceUID for d in files["CT"]}
    tracking = {s.TrackingUID for seg in files["SEG"] for s in seg.SegmentSequence}
    rows = list(csv.DictReader((out / "measurements.csv").open()))
    assert {r["study_instance_uid"] for r in rows} == studies
    assert {r["lesion_uid"] for r in rows} == tracking
    assert {d.PatientID for kind in files.values() for d in kind} == {rows[0]["patient_id"]}


def test_exported_files_pass_dciodvfy_and_dcentvfy(tmp_path, cohort):
    first, _, _ = cohort
    out, _, _ = _export(tmp_path, "--patients", "RT-RES-A")
    files = _files(out)
    assert dciodvfy_errors(first.files[0]) == []  # the source is valid, and so is its copy
    for dataset in files["CT"][:1] + files["SEG"] + files["SR"]:
        assert dciodvfy_errors(Path(dataset.filename)) == [], dataset.filename
    # The de-identified objects of a patient agree with each other, entity by entity
    # (one patient, study and series attributes across all their files).
    dcentvfy = require_program("dcentvfy", why="checks entities across the exported files")
    paths = [d.filename for kind in files.values() for d in kind]
    result = subprocess.run([dcentvfy, *paths], capture_output=True, text=True, timeout=120)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "Error" in line]
    assert result.returncode == 0 and not errors, errors[:5]


def test_key_is_apart_private_and_the_export_audited(tmp_path, cohort):
    out, key_path, _ = _export(tmp_path, "--all")
    assert not key_path.is_relative_to(out)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert not any("RT-RES" in p.read_text(errors="ignore") for p in out.glob("*.csv"))
    assert "RT-RES" not in (out / "manifest.json").read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    assert {c["code"] for c in manifest["method_codes"]} == METHOD_CODES
    assert "2024b" in manifest["action_table"]
    events = AuditEvent.objects.filter(action="research.export")
    assert {e.patient.patient_id for e in events} == {"RT-RES-A", "RT-RES-B"}
    assert all(e.username.startswith("cli:") for e in events)


def test_an_existing_folder_is_never_overwritten_and_unknown_mrns_refused(tmp_path, cohort):
    (tmp_path / "research").mkdir()
    (tmp_path / "research" / "keep.txt").write_text("mine")
    with pytest.raises(CommandError, match="exists"):
        _export(tmp_path, "--all")
    assert (tmp_path / "research" / "keep.txt").read_text() == "mine"
    with pytest.raises(CommandError, match="NOPE"):
        call_command("export_research", "--patients", "NOPE", "--out", str(tmp_path / "x"))
    assert not AuditEvent.objects.filter(action="research.export").exists()


def test_a_series_with_burned_in_annotation_is_refused_whole(tmp_path, cohort):
    first, _, _ = cohort
    for path in first.files:
        dataset = pydicom.dcmread(path)
        dataset.BurnedInAnnotation = "YES"
        dataset.save_as(path)
    # The stored copies are what the export reads.
    from imaging.models import Instance
    from imaging.store import object_path

    for instance in Instance.objects.filter(series__study=first.study):
        dataset = pydicom.dcmread(object_path(instance.stored_path))
        dataset.BurnedInAnnotation = "YES"
        dataset.save_as(object_path(instance.stored_path))
    out, _, _ = _export(tmp_path, "--patients", "RT-RES-A")
    manifest = json.loads((out / "manifest.json").read_text())
    assert any("BurnedInAnnotation" in r for r in manifest["refused"])
    assert any("source series was refused" in r for r in manifest["refused"])
    assert len(_files(out)["CT"]) == 5  # the other study's series only


# -- the researcher group --------------------------------------------------------------
def test_researchers_see_no_identified_page_or_api_and_download_pseudonymised_tables(
    client, cohort
):
    first, _, _ = cohort
    client.force_login(UserFactory(groups=["researcher"]))
    for url in (
        "/",
        "/patients/",
        f"/patients/{first.study.patient.pk}/",
        "/api/v1/patients/",
        "/api/v1/labs/",
        f"/fhir/Patient/patient-{first.study.patient.pk}",
        "/audit/",
    ):
        assert client.get(url).status_code == 403, url
    page = client.get("/research/")
    assert page.status_code == 200 and b"pseudonym" in page.content
    response = client.post("/research/")
    assert response.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert set(archive.namelist()) == {
        "measurements.csv",
        "responses.csv",
        "labs.csv",
        "manifest.json",
    }
    text = "".join(archive.read(n).decode() for n in archive.namelist())
    assert "RT-RES-A" not in text and "Doe" not in text and "2024-03-01" not in text
    rows = AuditEvent.objects.filter(action="research.export")
    assert {e.patient.patient_id for e in rows} == {"RT-RES-A", "RT-RES-B"}


def test_clinicians_may_not_download_research_data(client):
    client.force_login(UserFactory(groups=["clinician"]))
    assert client.get("/research/").status_code == 403
    assert client.post("/research/").status_code == 403
