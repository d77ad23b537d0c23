"""Model inputs from the database, and the worklist: order, flags, filters, query count."""

import datetime as dt
import itertools
import math

import pandas as pd
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from analytics.dashboard.flags import worklist_flags_refresh
from analytics.dashboard.markers import MARKER_RULES, marker_change
from analytics.dashboard.worklist import FLAG_NAMES, worklist
from analytics.models import ResponseAssessment, RiskModelVersion, RiskScore
from analytics.risk.core.features import feature_table_build
from analytics.risk.selectors import (
    FEATURE_MEASUREMENT_COLUMNS,
    RESPONSE_COLUMNS,
    feature_inputs_load,
)
from imaging.models import Lesion, LesionMeasurement, Series
from patients.models import ClinicalEvent, LabResult
from tests.imaging.factories import SeriesFactory, StudyFactory
from tests.patients.factories import PatientFactory

pytestmark = pytest.mark.django_db

CEA, LDH, CRP, ALBUMIN, HB = "2039-6", "2532-0", "1988-5", "1751-7", "718-7"
UNITS = {CEA: "ng/mL", LDH: "U/L", CRP: "mg/L", ALBUMIN: "g/dL", HB: "g/dL"}


def at(day: dt.date, hour: int = 9) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour), dt.UTC)


def lab(patient, code, value, day):
    return LabResult.objects.create(
        patient=patient, loinc_code=code, value=value, unit=UNITS[code], observed_at=at(day)
    )


_uids = itertools.count(1)


def lesion(patient, label, organ="liver"):
    uid = f"2.25.{next(_uids)}"
    return Lesion.objects.create(patient=patient, tracking_uid=uid, label=label, organ=organ)


def measure(lesion_, study, volume, *, status="tracked", review="accepted", **extra):
    return LesionMeasurement.objects.create(
        lesion=lesion_,
        study=study,
        status=status,
        volume_ml=volume,
        longest_diameter_mm=10.0 * volume,
        short_axis_mm=5.0 * volume,
        review_state=review,
        **extra,
    )


def assessment(patient, study, recist, *, new_lesions=False, baseline=False, attention=False):
    return ResponseAssessment.objects.create(
        patient=patient,
        study=study,
        is_baseline=baseline,
        recist_response=recist,
        new_lesions=new_lesions,
        sum_diameters_mm=10.0,
        total_volume_ml=1.0,
        needs_attention=attention,
        response_note="not evaluable: a target not found" if attention else "",
    )


def model_version(**kwargs):
    return RiskModelVersion.objects.create(
        name="test", kind="cox", artifact_path="x.joblib", training_fingerprint="0" * 64, **kwargs
    )


def score(patient, version, value, tier, landmark=dt.date(2024, 6, 1)):
    return RiskScore.objects.create(
        patient=patient, model_version=version, score=value, tier=tier, landmark_date=landmark
    )


# -- model inputs ---------------------------------------------------------------------
def test_feature_inputs_follow_the_export_layouts_with_values_in_force():
    patient = PatientFactory(patient_id="MRN-1", birth_date=dt.date(1950, 1, 2), sex="M")
    other = PatientFactory(patient_id="MRN-2")
    base = StudyFactory(patient=patient, study_date=dt.date(2024, 1, 10))
    follow = StudyFactory(patient=patient, study_date=dt.date(2024, 4, 10))
    StudyFactory(patient=patient, study_date=None)  # undated: cannot be placed in time
    liver, lung, ghost = (
        lesion(patient, "Liver 1"),
        lesion(patient, "Lung 1", "lung"),
        lesion(patient, "Liver 2"),
    )
    measure(liver, base, 4.0, status="new")
    measure(
        liver,
        follow,
        5.0,
        override_volume_ml=6.5,
        override_longest_diameter_mm=33.0,
        review="edited",
    )
    measure(lung, base, 2.0, status="new")
    measure(lung, follow, 1.5, status="resolved")  # gone: volume 0 whatever was stored
    measure(ghost, follow, 9.0, status="new", review="rejected")  # a false positive
    assessment(patient, base, "", baseline=True)
    assessment(patient, follow, "PR")
    lab(patient, CEA, 4.2, dt.date(2024, 1, 8))
    lab(other, CEA, 1.0, dt.date(2024, 1, 8))
    ClinicalEvent.objects.create(patient=patient, kind="progression", date=dt.date(2024, 9, 1))

    inputs = feature_inputs_load(patient_ids=["MRN-1"])
    m = inputs.measurements
    assert tuple(m.columns) == FEATURE_MEASUREMENT_COLUMNS
    assert len(m) == 4 and set(m["patient_id"]) == {"MRN-1"}
    assert "Liver 2" not in set(m["lesion_label"])
    row = m[(m["lesion_label"] == "Liver 1") & (m["study_date"] == dt.date(2024, 4, 10))].iloc[0]
    assert row["volume_ml"] == 6.5 and row["longest_diameter_mm"] == 33.0
    assert row["short_axis_mm"] == 25.0  # no override: the automated value
    assert row["study_instance_uid"] == follow.study_instance_uid
    assert row["lesion_uid"] == liver.tracking_uid and row["organ"] == "liver"
    gone = m[(m["lesion_label"] == "Lung 1") & (m["status"] == "resolved")].iloc[0]
    assert gone["volume_ml"] == 0.0 and gone["longest_diameter_mm"] == 0.0

    r = inputs.responses
    assert tuple(r.columns) == RESPONSE_COLUMNS
    assert r["recist_response"].tolist() == ["", "PR"]
    assert inputs.studies["study_date"].tolist() == [dt.date(2024, 1, 10), dt.date(2024, 4, 10)]
    assert inputs.labs["patient_id"].tolist() == ["MRN-1"]
    assert str(inputs.labs["observed_at"].dt.tz) == "UTC"
    assert inputs.events[["kind", "date"]].values.tolist() == [["progression", dt.date(2024, 9, 1)]]
    assert inputs.patients.to_dict("records") == [
        {"patient_id": "MRN-1", "birth_date": dt.date(1950, 1, 2), "sex": "M"}
    ]

    # The blocks compute from these frames.

    table = feature_table_build(
        landmarks=pd.DataFrame(
            [("MRN-1", dt.date(2024, 4, 10))], columns=["patient_id", "landmark_date"]
        ),
        blocks=inputs.blocks(),
    )
    assert table["total_burden_ml"].iloc[0] == 6.5
    assert table["last_recist_ordinal"].iloc[0] == 1.0  # PR
    assert table["cea_latest"].iloc[0] == 4.2
    assert table["sex_male"].iloc[0] == 1.0


def test_feature_inputs_never_read_what_is_not_known_as_zero():
    """Not found: NaN (not 0, which would read as gone); merged: 0 (measured in the lesion
    that absorbed it); too small: 5 mm and no volume; measured by hand: no volume; a
    lesion rejected at one study is left out at every study; a censored lab keeps its
    comparator."""
    patient = PatientFactory(patient_id="MRN-1")
    base = StudyFactory(patient=patient, study_date=dt.date(2024, 1, 10))
    follow = StudyFactory(patient=patient, study_date=dt.date(2024, 4, 10))
    missed, absorbed, small, node, false = (
        lesion(patient, "Liver 1"), lesion(patient, "Liver 2"), lesion(patient, "Liver 3"),
        lesion(patient, "Node 1", "lymph_node"), lesion(patient, "Liver 4"),
    )  # fmt: skip
    for each in (missed, absorbed, small):
        measure(each, base, 2.0, status="new")
    measure(missed, follow, 0.0, status="not_found", finding_state="not_found", review="pending")
    measure(absorbed, follow, 0.0, status="merged", merged_into=missed)
    measure(small, follow, 0.0, too_small=True, review="edited")
    LesionMeasurement.objects.create(
        lesion=node, study=follow, status="new", volume_ml=None, longest_diameter_mm=21.0,
        short_axis_mm=16.0, review_state="accepted",
    )  # fmt: skip
    measure(false, base, 1.0, status="new", review="rejected", finding_state="rejected")
    measure(false, follow, 1.2, review="pending", finding_state="rejected")
    LabResult.objects.create(
        patient=patient, loinc_code=CEA, value=0.5, comparator="<", unit="ng/mL",
        observed_at=at(dt.date(2024, 4, 1)),
    )  # fmt: skip

    inputs = feature_inputs_load(patient_ids=["MRN-1"])
    m = inputs.measurements
    assert tuple(m.columns) == FEATURE_MEASUREMENT_COLUMNS
    assert "Liver 4" not in set(m["lesion_label"])
    later = m[m["study_date"] == dt.date(2024, 4, 10)].set_index("lesion_label")
    sizes = ["volume_ml", "longest_diameter_mm", "short_axis_mm"]
    assert later.loc["Liver 1", sizes].isna().all()
    assert later.loc["Liver 2", sizes].tolist() == [0.0, 0.0, 0.0]
    assert math.isnan(later.loc["Liver 3", "volume_ml"])
    assert later.loc["Liver 3", ["longest_diameter_mm", "short_axis_mm"]].tolist() == [5.0, 5.0]
    assert math.isnan(later.loc["Node 1", "volume_ml"])
    assert later.loc["Node 1", "longest_diameter_mm"] == 21.0
    assert inputs.labs["comparator"].tolist() == ["<"]
    table = feature_table_build(
        landmarks=pd.DataFrame([("MRN-1", dt.date(2024, 4, 10))], columns=["patient_id", "landmark_date"]),
        blocks=inputs.blocks(),
    )  # fmt: skip
    assert math.isnan(table["total_burden_ml"].iloc[0])  # not 0 + 0 + 0
    assert math.isnan(table["cea_latest"].iloc[0])  # "< 0.5" is not 0.5


def test_an_equivocal_finding_is_no_new_lesion_and_no_burden_until_confirmed():
    # As in the response rules: a doubtful new finding awaiting confirmation must not
    # raise the patient's risk through "new lesions" or the tumour burden.
    patient = PatientFactory(patient_id="MRN-1")
    base = StudyFactory(patient=patient, study_date=dt.date(2024, 1, 10))
    follow = StudyFactory(patient=patient, study_date=dt.date(2024, 4, 10))
    known, doubtful = lesion(patient, "Liver 1"), lesion(patient, "Liver 2")
    measure(known, base, 2.0, status="new")
    measure(known, follow, 2.0)
    pending = measure(doubtful, follow, 1.5, status="new", review="pending")
    landmark = pd.DataFrame([("MRN-1", follow.study_date)], columns=["patient_id", "landmark_date"])

    def features():
        table = feature_table_build(
            landmarks=landmark, blocks=feature_inputs_load(patient_ids=["MRN-1"]).blocks()
        )
        return table["new_lesions"].iloc[0], table["total_burden_ml"].iloc[0]

    LesionMeasurement.objects.filter(pk=pending.pk).update(finding_state="equivocal")
    assert features() == (0.0, 2.0)
    LesionMeasurement.objects.filter(pk=pending.pk).update(finding_state="confirmed")
    assert features() == (1.0, 3.5)


def test_feature_inputs_of_nobody_are_empty_frames_with_columns():
    inputs = feature_inputs_load(patient_ids=[])
    assert (
        inputs.measurements.empty
        and tuple(inputs.measurements.columns) == FEATURE_MEASUREMENT_COLUMNS
    )
    assert inputs.labs.empty and inputs.events.empty and inputs.patients.empty


# -- worklist order -------------------------------------------------------------------
def test_worklist_orders_by_tier_then_score_with_the_unscored_last():
    version = model_version()
    rows = {
        "A": ("low", -2.0),
        "B": ("high", 1.5),
        "C": ("intermediate", 0.1),
        "D": ("high", 2.5),
        "E": ("intermediate", 0.4),
        "F": None,
    }
    for mrn, value in rows.items():
        patient = PatientFactory(patient_id=mrn)
        if value:
            score(patient, version, value[1], value[0])
    result = worklist()
    assert [r.patient_id for r in result] == ["D", "B", "E", "C", "A", "F"]
    assert result[0].tier == "high" and result[0].score == 2.5
    assert result[0].model_version_id == version.pk
    assert result[-1].tier is None and result[-1].tier_label == "Not scored"
    assert [r.patient_id for r in worklist(tier="intermediate")] == ["E", "C"]
    assert [r.patient_id for r in worklist(order="patient")] == list("ABCDEF")


def test_worklist_shows_the_latest_score_of_the_current_version_only():
    old, patient = model_version(), PatientFactory(patient_id="P")
    score(patient, old, 9.0, "high")
    current = model_version()
    score(patient, current, -1.0, "low", landmark=dt.date(2024, 1, 1))
    score(patient, current, 0.5, "intermediate", landmark=dt.date(2024, 5, 1))
    (row,) = worklist()
    assert (row.score, row.tier, row.landmark_date) == (0.5, "intermediate", dt.date(2024, 5, 1))
    assert row.model_version_id == current.pk
    (row,) = worklist(model_version=old)
    assert row.score == 9.0


def test_worklist_without_any_model_lists_patients_unscored():
    PatientFactory(patient_id="Q")
    (row,) = worklist()
    assert row.score is None and row.model_version_id is None


# -- flags ----------------------------------------------------------------------------
@pytest.fixture
def flagged():
    """One patient per flag, and one with none."""
    day = dt.date(2024, 1, 10)
    later = dt.date(2024, 3, 10)
    made = {}

    p = made["new_progression"] = PatientFactory(patient_id="PD")
    s1, s2 = StudyFactory(patient=p, study_date=day), StudyFactory(patient=p, study_date=later)
    assessment(p, s1, "", baseline=True)
    assessment(p, s2, "PD")

    p = made["new_lesion"] = PatientFactory(patient_id="NEW")
    s1, s2 = StudyFactory(patient=p, study_date=day), StudyFactory(patient=p, study_date=later)
    assessment(p, s1, "PD", new_lesions=True)  # an older PD does not count...
    assessment(p, s2, "SD", new_lesions=True)  # ...only the latest assessment

    p = made["rising_marker"] = PatientFactory(patient_id="CEA")
    lab(p, CEA, 4.0, day)
    lab(p, CEA, 6.0, later)  # +50%, +2 ng/mL
    lab(p, ALBUMIN, 4.0, day)
    lab(p, ALBUMIN, 3.5, later)  # -12.5%, -0.5 g/dL

    p = made["processing_failed"] = PatientFactory(patient_id="FAIL")
    SeriesFactory(study=StudyFactory(patient=p, study_date=day), state=Series.State.FAILED)

    p = made["awaiting_review"] = PatientFactory(patient_id="REVIEW")
    measure(lesion(p, "Liver 1"), StudyFactory(patient=p, study_date=day), 3.0, review="pending")

    p = made["needs_attention"] = PatientFactory(patient_id="NE")
    s1, s2 = StudyFactory(patient=p, study_date=day), StudyFactory(patient=p, study_date=later)
    assessment(p, s1, "", baseline=True)
    assessment(p, s2, "NE", attention=True)  # a study that could not be assessed

    p = made["none"] = PatientFactory(patient_id="QUIET")
    s1, s2 = StudyFactory(patient=p, study_date=day), StudyFactory(patient=p, study_date=later)
    assessment(p, s1, "", baseline=True)
    assessment(p, s2, "PR")
    SeriesFactory(study=s1, state=Series.State.PROCESSED)
    measure(lesion(p, "Lung 1", "lung"), s1, 2.0, review="accepted")
    lab(p, CEA, 4.0, day)
    lab(p, CEA, 4.8, later)  # +20%: under the 30% threshold
    lab(p, LDH, 200.0, dt.date(2023, 1, 1))
    lab(p, LDH, 400.0, later)  # doubled, but over 180 days apart: not the latest trend
    lab(p, HB, 13.0, day)
    lab(p, HB, 14.5, later)  # rising haemoglobin is not a warning
    # Responses and measurements written straight into the tables, not by a tracking
    # rebuild (whose `responses_written` refreshes the flags): refresh them as it would.
    worklist_flags_refresh()
    return made


def test_each_flag_is_raised_for_its_patient_only(flagged):
    rows = {r.patient_id: r for r in worklist()}
    for flag, patient in flagged.items():
        row = rows[patient.patient_id]
        assert row.flags == (() if flag == "none" else (flag,)), patient.patient_id
    assert rows["PD"].last_recist == "PD" and rows["PD"].last_assessment_date == dt.date(
        2024, 3, 10
    )
    assert rows["NEW"].last_recist == "SD"
    assert [str(m) for m in rows["CEA"].rising_markers] == [
        "cea 4 → 6 ng/mL",
        "albumin 4 → 3.5 g/dL",
    ]
    assert rows["CEA"].rising_markers[0].relative_change == pytest.approx(0.5)
    assert rows["QUIET"].last_study_date == dt.date(2024, 3, 10)
    assert rows["CEA"].last_study_date is None


def test_a_follow_up_not_assessable_after_pd_keeps_the_progression_flagged():
    # PD ends the course: a later study that failed or could not be assessed (NE) must
    # not take the patient off the "new progression" list.
    p = PatientFactory(patient_id="PD-THEN-NE")
    days = [dt.date(2024, 1, 10), dt.date(2024, 3, 10), dt.date(2024, 5, 10)]
    s1, s2, s3 = (StudyFactory(patient=p, study_date=d) for d in days)
    assessment(p, s1, "", baseline=True)
    assessment(p, s2, "PD")
    assessment(p, s3, "NE", attention=True)
    worklist_flags_refresh()
    (row,) = worklist(flags=["new_progression"])
    assert row.patient_id == "PD-THEN-NE" and row.last_recist == "NE"
    assert set(row.flags) == {"new_progression", "needs_attention"}


def test_flag_and_search_filters(flagged):
    assert [r.patient_id for r in worklist(flags=["awaiting_review"])] == ["REVIEW"]
    assert [r.patient_id for r in worklist(flags=["needs_attention"])] == ["NE"]
    assert [r.patient_id for r in worklist(flags=["new_progression", "rising_marker"])] == []
    assert [r.patient_id for r in worklist(search="cea")] == ["CEA"]
    with pytest.raises(ValueError, match="unknown flags"):
        worklist(flags=["bogus"])
    with pytest.raises(ValueError, match="tier"):
        worklist(tier="extreme")
    assert set(FLAG_NAMES) == set(flagged) - {"none"}


@pytest.mark.parametrize(
    ("code", "previous", "latest", "flagged"),
    [
        (CEA, 4.0, 5.2, True),  # +30%, +1.2: both thresholds met
        (CEA, 4.0, 5.1, False),  # +27.5%
        (CEA, 1.0, 1.9, False),  # +90% but only +0.9 ng/mL
        (LDH, 200.0, 240.0, True),
        (LDH, 200.0, 230.0, False),
        (CRP, 10.0, 15.0, True),
        (CRP, 2.0, 6.0, False),  # tripled, but +4 mg/L
        (ALBUMIN, 4.0, 3.6, True),
        (ALBUMIN, 4.0, 4.6, False),  # rising albumin is not a warning
        (HB, 12.0, 10.8, True),
        (HB, 12.0, 11.2, False),
    ],
)
def test_marker_rules(code, previous, latest, flagged):
    rule = next(r for r in MARKER_RULES if r.loinc_code == code)
    change = marker_change(
        rule,
        previous=previous,
        latest=latest,
        previous_at=at(dt.date(2024, 1, 1)),
        latest_at=at(dt.date(2024, 2, 1)),
    )
    assert (change is not None) is flagged


@pytest.mark.parametrize(
    "code, previous, latest, flagged",
    [
        # (value, comparator) pairs: a censored result is a bound, not a value.
        (CEA, (0.5, "<"), (0.6, ""), False),  # at least +0.1 from at most 0.5: not proven
        (CEA, (0.5, "<"), (5.0, ""), True),  # at least +4.5 from at most 0.5
        (CEA, (0.6, ""), (1000.0, ">"), True),  # at least +999
        (CEA, (0.6, ""), (2.0, "<"), False),  # the latest may be below 0.6
        (CEA, (1000.0, ">"), (2000.0, ""), False),  # the previous may be above 2000
        (CEA, (4.0, "<="), (8.0, ">"), True),  # from 4 or less to over 8
        (CEA, (4.0, ">="), (8.0, ">"), False),  # the previous may be above 8
        (ALBUMIN, (4.0, ">"), (3.5, ""), True),  # a fall of at least 0.5 from over 4
        (ALBUMIN, (4.0, "<"), (3.5, ""), False),  # it may have been 3.4 before
        (ALBUMIN, (4.0, ""), (3.0, "<"), True),  # to under 3: a fall of at least 1
    ],
)
def test_a_censored_marker_is_flagged_only_when_its_bounds_prove_the_move(
    code, previous, latest, flagged
):
    rule = next(r for r in MARKER_RULES if r.loinc_code == code)
    change = marker_change(
        rule, previous=previous[0], latest=latest[0], previous_comparator=previous[1],
        latest_comparator=latest[1], previous_at=at(dt.date(2024, 1, 1)),
        latest_at=at(dt.date(2024, 2, 1)),
    )  # fmt: skip
    assert (change is not None) is flagged


def test_the_worklist_shows_a_censored_marker_with_its_comparator():
    proven, unproven = PatientFactory(patient_id="UP"), PatientFactory(patient_id="LOW")
    for patient, results in (
        (proven, [(0.6, ""), (1000.0, ">")]),
        (unproven, [(0.5, "<"), (0.6, "")]),
    ):
        for day, (value, comparator) in zip(
            (dt.date(2024, 1, 1), dt.date(2024, 2, 1)), results, strict=True
        ):
            LabResult.objects.create(
                patient=patient, loinc_code=CEA, value=value, comparator=comparator,
                unit="ng/mL", observed_at=at(day),
            )  # fmt: skip
    rows = {r.patient_id: r for r in worklist()}
    assert [str(m) for m in rows["UP"].rising_markers] == ["cea 0.6 → > 1000 ng/mL"]
    assert rows["LOW"].rising_markers == () and "rising_marker" not in rows["LOW"].flags


# -- query count ----------------------------------------------------------------------
def _patients_with_everything(n: int, version: RiskModelVersion, start: int) -> None:
    for i in range(start, start + n):
        patient = PatientFactory(patient_id=f"N-{i:04d}")
        s1 = StudyFactory(patient=patient, study_date=dt.date(2024, 1, 1))
        s2 = StudyFactory(patient=patient, study_date=dt.date(2024, 3, 1))
        SeriesFactory(study=s2, state=Series.State.FAILED if i % 2 else Series.State.PROCESSED)
        measure(lesion(patient, "Liver 1"), s2, 1.0, review="pending" if i % 3 else "accepted")
        assessment(patient, s1, "", baseline=True)
        assessment(patient, s2, "PD" if i % 4 else "SD", new_lesions=bool(i % 5))
        lab(patient, CEA, 3.0, dt.date(2024, 1, 1))
        lab(patient, CEA, 3.0 + i % 7, dt.date(2024, 2, 28))
        score(patient, version, float(i), ("low", "intermediate", "high")[i % 3])
    worklist_flags_refresh()  # as a tracking rebuild would (see `flagged`)


def _queries(**kwargs) -> tuple[int, int]:
    with CaptureQueriesContext(connection) as queries:
        rows = worklist(**kwargs)
        for row in rows:  # everything a page reads, nothing lazy
            _ = (
                row.flags,
                row.tier_label,
                row.rising_markers,
                row.display_name,
                row.last_study_date,
            )
    return len(queries), len(rows)


def test_worklist_query_count_does_not_grow_with_patients():
    version = model_version()
    _patients_with_everything(5, version, 0)
    few, n_few = _queries()
    _patients_with_everything(45, version, 5)
    many, n_many = _queries()
    assert (n_few, n_many) == (5, 50)
    assert few == many <= 3
    assert _queries(flags=["rising_marker"], tier="high", search="N-")[0] == few
