"""The synthetic cohort: truth against written images, outcomes against true risk, records.

No database and no Django: `imaging.core.synthetic.cohort` is pure Python. Geometry is checked on
real DICOM files written by the project's writer and read back with pydicom.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import hashlib
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fhir.resources.R4B.bundle import Bundle
from lifelines.utils import concordance_index

from imaging.core.synthetic.acquisition import IMAGE_ORIENTATION, SIZES
from imaging.core.synthetic.anatomy_structures import anatomy_ball_is_within
from imaging.core.synthetic.cohort import (
    cohort_generate,
    cohort_simulate,
    cohort_survival,
    patient_simulate,
    study_dicom_write,
    study_render,
)
from imaging.core.synthetic.ehr import (
    EVENT_SYSTEM,
    MRN_SYSTEM,
    ehr_bundle_build,
    events_csv_write,
    labs_csv_write,
)
from imaging.core.synthetic.lesion_shape import lesion_shape_sample, volume_for_diameter_ml
from imaging.core.synthetic.simulated import LAB_TESTS, SimulatedLesion
from imaging.core.synthetic.truth import truth_build

EXPECTED_LABS = {  # LOINC code -> UCUM unit (checked against LOINC's example units)
    "2039-6": "ng/mL",  # CEA
    "2532-0": "U/L",  # LDH
    "1988-5": "mg/L",  # CRP
    "1751-7": "g/dL",  # albumin
    "718-7": "g/dL",  # haemoglobin
}


@pytest.fixture(scope="module")
def cohort():
    return cohort_simulate(n_patients=12, n_timepoints=4, seed=21)


# -- reading a series back ----------------------------------------------------------
def series_read(folder: Path) -> tuple[np.ndarray, np.ndarray, list[pydicom.Dataset]]:
    """HU array [k, j, i] and LPS mm of every voxel [k, j, i, 3], ordered along the normal."""
    datasets = [pydicom.dcmread(p) for p in sorted(folder.glob("IM*.dcm"))]
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    row, column = iop[:3], iop[3:]
    normal = np.cross(row, column)
    datasets.sort(key=lambda ds: float(np.dot(np.asarray(ds.ImagePositionPatient, float), normal)))
    row_spacing, column_spacing = (float(v) for v in datasets[0].PixelSpacing)
    hu = np.stack(
        [
            ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            for ds in datasets
        ]
    )
    n_rows, n_columns = hu.shape[1:]
    i = np.arange(n_columns)[None, :, None] * column_spacing * row  # along a row: columns
    j = np.arange(n_rows)[:, None, None] * row_spacing * column
    positions = np.stack([np.asarray(ds.ImagePositionPatient, float) for ds in datasets])
    lps = positions[:, None, None, :] + (i + j)[None]
    return hu, lps, datasets


def lesion_probe(hu, lps, centre_lps, radius_mm, lesion_hu):
    """Contrast weights inside a ball: value at the centre voxel, centroid, voxel sum.

    The background is measured in a 3 mm shell around the ball and the lesion's CT
    number rounded, as the stored integer pixels hold both (noise-free images).
    """
    d = np.linalg.norm(lps - centre_lps, axis=-1)
    mask = d <= radius_mm
    background = float(np.median(hu[(d > radius_mm) & (d <= radius_mm + 3.0)]))
    contrast = np.rint(lesion_hu) - background
    weights = (hu[mask] - background) / contrast
    nearest = np.unravel_index(np.argmin(d), d.shape)
    at_centre = (hu[nearest] - background) / contrast
    centroid = (weights[:, None] * lps[mask]).sum(axis=0) / weights.sum()
    return at_centre, centroid, weights.sum()


# -- geometry: truth against the written images ----------------------------------------
def test_truth_centres_and_volumes_match_the_written_dicom_in_every_orientation(tmp_path):
    """HFS/FFS/HFP/FFP, both scan directions, a 9 degree rotated and 17 mm shifted pose.

    Rendered without noise so the check is exact to partial volume: the truth centre's
    voxel is lesion (> 0.5 of the contrast), the contrast-weighted centroid is within
    0.5 mm of the truth centre, and the contrast-weighted voxel sum is the truth volume
    within 2 % + 0.5 voxel (stored integer HU round each voxel's weight by up to
    0.5 / contrast; measured errors were 0.1-0.3 % and 0.02 mm).
    """
    base = patient_simulate(seed=3, index=0, n_timepoints=1, size="small")
    anatomy = base.anatomy
    rng = np.random.default_rng(0)
    nodule_centre = np.asarray(anatomy.right_lung.centre_mm) + [0.0, 0.0, 25.0]
    met_centre = np.asarray(anatomy.liver.centre_mm) + [0.0, 0.0, 15.0]
    lesions = (
        _lesion("N", "lung", lesion_shape_sample(rng, centre_body_mm=nodule_centre, hu=35, irregular=True), 16.0),
        _lesion("M", "liver", lesion_shape_sample(rng, centre_body_mm=met_centre, hu=20, irregular=True), 30.0),
    )  # fmt: skip
    for lesion, organ in zip(lesions, ("right_lung", "liver"), strict=True):
        reach = lesion.shape.bounding_radius_mm(lesion.max_volume_ml) + 12.0
        assert anatomy_ball_is_within(anatomy, lesion.shape.centre_body_mm, reach, organ)
    patient = dataclasses.replace(base, lesions=lesions)
    study0 = patient.studies[0]
    pose = np.eye(4)
    axis = np.array([0.3, -0.4, 1.0]) / np.linalg.norm([0.3, -0.4, 1.0])
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = np.deg2rad(9.0)
    pose[:3, :3] = np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k
    pose[:3, 3] = [12.0, -9.0, 8.0]
    cohort_stub = cohort_simulate(n_patients=1, n_timepoints=1, seed=3)

    for n, (position, craniocaudal) in enumerate(
        [("HFS", True), ("FFS", False), ("HFP", True), ("FFP", False)]
    ):
        scanner = dataclasses.replace(
            study0.scanner, patient_position=position, craniocaudal=craniocaudal, noise_hu=0.0
        )
        study = dataclasses.replace(study0, index=n, pose_body_to_lps=pose, scanner=scanner)
        rendered = study_render(cohort_stub, patient, study)
        study_dicom_write(patient, study, rendered, tmp_path)
        hu, lps, datasets = series_read(tmp_path / patient.study_folder(study))
        assert datasets[0].PatientPosition == position
        row, column = IMAGE_ORIENTATION[position]
        assert np.allclose(datasets[0].ImageOrientationPatient, [*row, *column])
        voxel_ml = scanner.pixel_spacing_mm**2 * scanner.slice_spacing_mm / 1000.0
        for lesion in lesions:
            volume = lesion.volume_ml(study.day)
            centre = study.to_lps(lesion.shape.centre_body_mm)
            radius = lesion.shape.bounding_radius_mm(volume) + 2.0 * scanner.slice_spacing_mm
            at_centre, centroid, weight_sum = lesion_probe(hu, lps, centre, radius, lesion.shape.hu)
            assert at_centre > 0.5, (position, lesion.lesion_id, at_centre)
            assert np.linalg.norm(centroid - centre) < 0.5, (position, lesion.lesion_id)
            assert weight_sum * voxel_ml == pytest.approx(volume, rel=0.02, abs=0.5 * voxel_ml)


def _lesion(name, organ, shape, diameter_mm) -> SimulatedLesion:
    volume = volume_for_diameter_ml(diameter_mm)
    return SimulatedLesion(
        lesion_id=name,
        tracking_uid="1.2.3",
        organ=organ,
        shape=shape,
        onset_day=0.0,
        onset_volume_ml=volume,
        shrink_rate_per_day=0.0,
        growth_rate_per_day=0.0,
        progression_day=1e9,
        max_volume_ml=volume,
        floor_volume_ml=0.01,
    )


def test_cohort_truth_volumes_match_rendered_voxels(cohort):
    """Every present lesion of real cohort studies: voxel fractions sum to the truth volume."""
    checked = 0
    for patient in cohort.patients[:3]:
        for study in patient.studies[:2]:
            rendered = study_render(cohort, patient, study)
            voxel_ml = rendered.volume.voxel_volume_ml
            truth = {t["lesion_id"]: t for t in _truth_study(cohort, patient, study)["lesions"]}
            for lesion_id, fraction in rendered.lesion_fractions.items():
                expected = truth[lesion_id]["volume_ml"]
                assert fraction.volume_ml(voxel_ml) == pytest.approx(
                    expected, rel=0.01, abs=0.05 * voxel_ml
                )
                checked += 1
            absent = [t for t in truth.values() if t["volume_ml"] == 0]
            assert all(t["lesion_id"] not in rendered.lesion_fractions for t in absent)
    assert checked >= 5


def _truth_study(cohort, patient, study) -> dict:
    truth = truth_build(cohort)
    p = next(p for p in truth["patients"] if p["patient_id"] == patient.patient_id)
    return p["studies"][study.index]


# -- outcomes ---------------------------------------------------------------------------
def test_true_risk_drives_outcomes_oracle_c_index():
    cohort = cohort_simulate(n_patients=300, n_timepoints=4, seed=2024)
    durations, observed, risk = cohort_survival(cohort, endpoint="death")
    assert 0.2 < observed.mean() < 0.9  # both deaths and censoring occur
    c_death = concordance_index(durations, -risk, observed)
    assert c_death >= 0.75
    durations, observed, risk = cohort_survival(cohort, endpoint="progression")
    assert concordance_index(durations, -risk, observed) >= 0.70
    # Aggressive tumours grow faster and respond less.
    lesions = [(p.aggressiveness, les) for p in cohort.patients for les in p.lesions]
    a = np.array([x for x, _ in lesions])
    growth = np.array([les.growth_rate_per_day for _, les in lesions])
    shrink = np.array([les.shrink_rate_per_day for _, les in lesions])
    assert np.corrcoef(a, np.log(growth))[0, 1] > 0.5
    assert np.corrcoef(a, shrink)[0, 1] < -0.2


def test_lesion_courses_respond_grow_appear_and_resolve(cohort):
    statuses = set()
    for patient in cohort.patients:
        for lesion in patient.lesions:
            limit = 30.0 if lesion.organ == "lung" else 50.0
            floor = 3.0 if lesion.organ == "lung" else 5.0
            for day in np.linspace(0, 900, 91):
                volume = lesion.volume_ml(day)
                status = lesion.status(day)
                statuses.add(status)
                assert (volume > 0) == (status == "present")
                if volume > 0:
                    d = (6 * volume * 1000 / np.pi) ** (1 / 3)
                    assert floor - 1e-6 <= d <= limit + 1e-6
            if lesion.is_new:
                assert lesion.onset_day > patient.progression_onset_day
                assert lesion.volume_ml(lesion.onset_day - 1) == 0
    many = cohort_simulate(n_patients=60, n_timepoints=4, seed=5)
    everything = [les for p in many.patients for les in p.lesions]
    assert any(les.is_new for les in everything)
    assert any(np.isfinite(les.resolution_day) for les in everything)
    assert any(les.shape.is_irregular for les in everything)
    assert any(not les.shape.is_irregular for les in everything)
    assert {les.organ for les in everything} == {"lung", "liver"}


def test_study_schedule_pose_and_scanner_ranges():
    small = cohort_simulate(n_patients=40, n_timepoints=5, seed=8, size="small")
    full = cohort_simulate(n_patients=40, n_timepoints=5, seed=8, size="full")
    positions = set()
    for cohort in (small, full):
        preset = SIZES[cohort.size]
        for patient in cohort.patients:
            days = [s.day for s in patient.studies]
            assert days[0] == 0
            assert all(42 <= b - a <= 112 for a, b in zip(days, days[1:], strict=False))
            for study in patient.studies:
                rotation = study.pose_body_to_lps[:3, :3]
                assert np.allclose(rotation.T @ rotation, np.eye(3))
                angle = np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1, 1)))
                assert angle <= 10.0 + 1e-9
                assert np.linalg.norm(study.pose_body_to_lps[:3, 3]) <= 20.0 + 1e-9
                s = study.scanner
                positions.add(s.patient_position)
                assert 8.0 <= s.noise_hu <= 25.0
                assert s.rows == s.columns == preset.matrix
                assert s.slice_spacing_mm <= s.slice_thickness_mm + 1e-9
                direction = s.direction
                assert np.allclose(direction.T @ direction, np.eye(3))
                normal = np.cross(direction[:, 0], direction[:, 1])
                assert np.allclose(abs(direction[:, 2] @ normal), 1.0)
                assert (direction[2, 2] < 0) == s.craniocaudal
                # Every lesion, at its largest, lies wholly inside the acquired grid.
                geometry = s.geometry()
                spacing = np.asarray(geometry.spacing_mm)
                for lesion in patient.lesions:
                    reach = lesion.shape.bounding_radius_mm(lesion.max_volume_ml) / spacing
                    centre = study.to_lps(lesion.shape.centre_body_mm) - geometry.origin_mm
                    index = geometry.direction.T @ centre / spacing
                    assert np.all(index - reach >= 0), (patient.patient_id, lesion.lesion_id)
                    assert np.all(index + reach <= np.asarray(geometry.shape_ijk) - 1)
                if cohort.size == "full":
                    assert 0.6 <= s.pixel_spacing_mm <= 1.0
                    assert 150 <= s.n_slices <= 300
                    assert 1.25 <= s.slice_thickness_mm <= 5.0
                else:
                    assert 40 <= s.n_slices <= 75
    assert positions == {"HFS", "FFS", "HFP", "FFP"}


def test_image_orientation_per_patient_position():
    """PS3.3 C.7.6.2.1.1: supine head first rows run to the patient's left, columns posterior."""
    assert IMAGE_ORIENTATION["HFS"] == ((1, 0, 0), (0, 1, 0))
    assert IMAGE_ORIENTATION["FFS"] == ((-1, 0, 0), (0, 1, 0))
    assert IMAGE_ORIENTATION["HFP"] == ((-1, 0, 0), (0, -1, 0))
    assert IMAGE_ORIENTATION["FFP"] == ((1, 0, 0), (0, -1, 0))


# -- determinism ----------------------------------------------------------------------------
def test_same_seed_same_cohort_and_images(tmp_path):
    one = truth_build(cohort_simulate(n_patients=3, n_timepoints=3, seed=4))
    two = truth_build(cohort_simulate(n_patients=3, n_timepoints=3, seed=4))
    other = truth_build(cohort_simulate(n_patients=3, n_timepoints=3, seed=5))
    assert json.dumps(one) == json.dumps(two)
    assert json.dumps(one) != json.dumps(other)
    # A patient does not change when the cohort grows.
    bigger = truth_build(cohort_simulate(n_patients=4, n_timepoints=3, seed=4))
    assert json.dumps(bigger["patients"][:3]) == json.dumps(one["patients"])

    def digest(out: Path) -> str:
        h = hashlib.sha256()
        for path in sorted(out.rglob("*")):
            if path.is_file():
                h.update(path.relative_to(out).as_posix().encode())
                h.update(path.read_bytes())
        return h.hexdigest()

    for name in ("a", "b"):
        cohort_generate(tmp_path / name, n_patients=1, n_timepoints=1, seed=9)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")


# -- records ----------------------------------------------------------------------------------
def test_labs_csv(cohort, tmp_path):
    path = tmp_path / "labs.csv"
    n = labs_csv_write(cohort, path)
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == n > 0
    assert set(rows[0]) == {"patient_id", "loinc_code", "display", "value", "unit", "observed_at"}
    assert {t.loinc_code: t.unit for t in LAB_TESTS} == EXPECTED_LABS
    limits = {"2039-6": (0, 5000), "2532-0": (80, 3000), "1988-5": (0, 500), "1751-7": (1.5, 5.5), "718-7": (6, 18)}  # fmt: skip
    for row in rows:
        assert EXPECTED_LABS[row["loinc_code"]] == row["unit"]
        lo, hi = limits[row["loinc_code"]]
        assert lo <= float(row["value"]) <= hi
        assert dt.datetime.fromisoformat(row["observed_at"]).tzinfo is not None
    # Labs follow the disease: CEA correlates with aggressiveness across patients.
    cea = {}
    for row in rows:
        if row["loinc_code"] == "2039-6":
            cea.setdefault(row["patient_id"], []).append(float(row["value"]))
    big = cohort_simulate(n_patients=80, n_timepoints=3, seed=12)
    a = [p.aggressiveness for p in big.patients]
    mean_log_cea = [
        np.mean([np.log(lab.value + 0.1) for lab in p.labs if lab.test.key == "cea"])
        for p in big.patients
    ]
    assert np.corrcoef(a, mean_log_cea)[0, 1] > 0.3


def test_events_csv(cohort, tmp_path):
    path = tmp_path / "events.csv"
    events_csv_write(cohort, path)
    rows = list(csv.DictReader(path.open()))
    by_patient: dict[str, list[dict]] = {}
    for row in rows:
        by_patient.setdefault(row["patient_id"], []).append(row)
    assert set(by_patient) == {p.patient_id for p in cohort.patients}
    for patient in cohort.patients:
        events = by_patient[patient.patient_id]
        kinds = [e["kind"] for e in events]
        assert kinds.count("death") + kinds.count("censor") == 1
        assert set(kinds) <= {"progression", "death", "censor"}
        dates = [dt.date.fromisoformat(e["date"]) for e in events]
        assert dates == sorted(dates)
        assert dates[0] >= patient.baseline_date
        assert dates[-1] >= patient.studies[-1].study_date


def test_ehr_bundle_is_valid_fhir_r4(cohort):
    bundle = ehr_bundle_build(cohort)
    parsed = Bundle.model_validate(bundle)
    assert parsed.type == "collection"
    resources = [e["resource"] for e in bundle["entry"]]
    urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(set(urls)) == len(urls)
    patients = {r["identifier"][0]["value"]: r for r in resources if r["resourceType"] == "Patient"}
    assert set(patients) == {p.patient_id for p in cohort.patients}
    for resource in patients.values():
        identifier = resource["identifier"][0]
        assert identifier["system"] == MRN_SYSTEM
        assert identifier["type"]["coding"][0]["code"] == "MR"
    for patient in cohort.patients:
        death = [e for e in patient.events if e.kind == "death"]
        deceased = patients[patient.patient_id].get("deceasedDateTime")
        assert deceased == (death[0].date.isoformat() if death else None)
    labs = [r for r in resources if r["resourceType"] == "Observation" and "valueQuantity" in r]
    assert len(labs) == sum(len(p.labs) for p in cohort.patients)
    for obs in labs:
        coding = obs["code"]["coding"][0]
        assert coding["system"] == "http://loinc.org"
        quantity = obs["valueQuantity"]
        assert quantity["system"] == "http://unitsofmeasure.org"
        assert quantity["code"] == quantity["unit"] == EXPECTED_LABS[coding["code"]]
        assert obs["status"] == "final"
        assert obs["subject"]["reference"] in urls
    statuses = [
        r for r in resources if r["resourceType"] == "Observation" and "valueQuantity" not in r
    ]
    kinds = [
        c["code"] for r in statuses for c in r["code"]["coding"] if c["system"] == EVENT_SYSTEM
    ]
    expected = [e.kind for p in cohort.patients for e in p.events if e.kind != "death"]
    assert sorted(kinds) == sorted(expected)
    for r in statuses:
        codes = {c["code"] for c in r["code"]["coding"]}
        if "progression" in codes:
            assert "97509-4" in codes
            assert r["valueCodeableConcept"]["coding"][0]["code"] == "271299001"


def test_truth_schema_and_consistency(cohort):
    truth = json.loads(json.dumps(truth_build(cohort)))
    assert truth["schema_version"] == 1
    for p, patient in zip(truth["patients"], cohort.patients, strict=True):
        assert p["true_risk"] == pytest.approx(1.2 * p["aggressiveness"], abs=1e-5)
        ids = [les["lesion_id"] for les in p["lesions"]]
        assert len(set(ids)) == len(ids)
        for s, study in zip(p["studies"], patient.studies, strict=True):
            assert s["study_instance_uid"] == study.study_instance_uid
            assert [les["lesion_id"] for les in s["lesions"]] == ids
            pose = np.asarray(s["pose_body_to_lps"])
            assert pose.shape == (4, 4)
            for les, identity in zip(s["lesions"], p["lesions"], strict=True):
                assert (les["volume_ml"] > 0) == (les["status"] == "present")
                expected = pose[:3, :3] @ identity["centre_body_mm"] + pose[:3, 3]
                assert np.allclose(les["centre_lps_mm"], expected, atol=1e-4)
                d = (6 * les["volume_ml"] * 1000 / np.pi) ** (1 / 3)
                assert les["equivalent_diameter_mm"] == pytest.approx(d, abs=1e-3)
            assert s["dicom_dir"].startswith(f"dicom/{p['patient_id']}/")
            assert s["patient_position"] in IMAGE_ORIENTATION
