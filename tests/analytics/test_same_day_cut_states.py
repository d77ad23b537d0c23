"""Two studies of one date, one of which cuts a lesion (the chest CT's last slice ends
across the liver dome) while the other images it whole: each row keeps its own finding
state, the whole reading speaks for the time point, and the lesion can be a target; when
both cut it, its size is not assessable at that time point (NE for a target)."""

from __future__ import annotations

import datetime as dt

import pytest

from analytics.models import ResponseAssessment
from imaging.models import LesionMeasurement
from tests.analytics.test_same_day_studies import _patient as same_day_patient
from tests.imaging.test_review import BASELINE_DATE, LIVER, LUNG

pytestmark = pytest.mark.django_db

FOLLOW_UP = BASELINE_DATE + dt.timedelta(days=91)
State = LesionMeasurement.FindingState
#: The liver-dome lesion whole (30.5 mm) and cut by the chest CT's last slice (14.7 mm,
#: its cut part's centre higher up), as `test_same_day_targets` has it.
WHOLE_MM, CUT_MM = 30.5, 14.7
LUNG_WHOLE = (1, "lung", LUNG, 1.8, 16.0, ())
DOME_CUT = (2, "liver", LIVER + [0.0, 0.0, 8.0], 0.21, CUT_MM, ("scan_end",))
DOME_CUT_ABDOMEN = (1, "liver", LIVER - [0.0, 0.0, 3.0], 6.0, 26.0, ("scan_start",))
DOME_WHOLE = (1, "liver", LIVER, 14.2, WHOLE_MM, ())


def _patient(plan):
    """Studies (date, candidates (label, organ, centre, ml, mm, edges)), tracked."""
    return same_day_patient(plan, patient_id="SAMEDAY-CUT-1")


def _liver_rows(patient, date) -> list[LesionMeasurement]:
    return list(
        LesionMeasurement.objects.filter(
            lesion__patient=patient, lesion__organ="liver", study__study_date=date
        ).order_by("study_id")
    )


def _responses(patient, date) -> list[ResponseAssessment]:
    return list(
        ResponseAssessment.objects.filter(patient=patient, study__study_date=date).order_by(
            "study_id"
        )
    )


@pytest.mark.parametrize("chest_first", [True, False], ids=["chest-first", "abdomen-first"])
def test_the_whole_reading_of_a_baseline_date_keeps_its_size_and_is_a_target(chest_first):
    chest, abdomen = [LUNG_WHOLE, DOME_CUT], [DOME_WHOLE]
    baseline = [(BASELINE_DATE, chest), (BASELINE_DATE, abdomen)]
    follow_up = [(FOLLOW_UP, [(1, "lung", LUNG, 1.8, 16.0, ()), (2, *DOME_WHOLE[1:])])]
    patient = _patient((baseline if chest_first else baseline[::-1]) + follow_up)

    rows = _liver_rows(patient, BASELINE_DATE)
    cut = next(r for r in rows if r.edges_reached)
    whole = next(r for r in rows if not r.edges_reached)
    # each row its own state: the cut one's size is not assessable, the whole one's is
    assert cut.finding_state == State.NOT_ASSESSABLE
    assert "edge of the scanned range" in cut.state_reason
    assert whole.finding_state == State.CONFIRMED, whole.state_reason
    assert "edge" not in whole.state_reason
    assert whole.is_target and cut.is_target  # one lesion, chosen over the time point
    for row in _responses(patient, BASELINE_DATE):
        assert row.sum_diameters_mm == pytest.approx(16.0 + WHOLE_MM)
    (later,) = _responses(patient, FOLLOW_UP)
    assert later.recist_response == "SD", later.response_note
    assert later.pct_change_baseline == pytest.approx(0.0)


def test_a_target_whole_on_one_study_of_a_follow_up_date_is_evaluated_there():
    baseline = [(BASELINE_DATE, [LUNG_WHOLE, (2, *DOME_WHOLE[1:])])]
    same_day = [(FOLLOW_UP, [LUNG_WHOLE, DOME_CUT]), (FOLLOW_UP, [DOME_WHOLE])]
    patient = _patient(baseline + same_day)

    cut, whole = _liver_rows(patient, FOLLOW_UP)
    assert cut.finding_state == State.NOT_ASSESSABLE
    assert whole.finding_state == State.CONFIRMED, whole.state_reason
    for row in _responses(patient, FOLLOW_UP):
        assert row.recist_response == "SD", row.response_note
        assert row.sum_diameters_mm == pytest.approx(16.0 + WHOLE_MM)


def test_a_target_cut_by_both_studies_of_a_follow_up_date_makes_it_not_evaluable():
    baseline = [(BASELINE_DATE, [LUNG_WHOLE, (2, *DOME_WHOLE[1:])])]
    same_day = [(FOLLOW_UP, [LUNG_WHOLE, DOME_CUT]), (FOLLOW_UP, [DOME_CUT_ABDOMEN])]
    patient = _patient(baseline + same_day)

    rows = _liver_rows(patient, FOLLOW_UP)
    assert len(rows) == 2
    assert {r.finding_state for r in rows} == {State.NOT_ASSESSABLE}
    assert [r.edges_reached for r in rows] == [["scan_end"], ["scan_start"]]
    for row in _responses(patient, FOLLOW_UP):
        assert row.recist_response == "NE", row.response_note
        assert "size is not assessable" in row.response_note


def test_a_lesion_cut_by_both_studies_of_the_baseline_date_is_not_a_target():
    baseline = [(BASELINE_DATE, [LUNG_WHOLE, DOME_CUT]), (BASELINE_DATE, [DOME_CUT_ABDOMEN])]
    follow_up = [(FOLLOW_UP, [LUNG_WHOLE, (2, *DOME_WHOLE[1:])])]
    patient = _patient(baseline + follow_up)

    rows = _liver_rows(patient, BASELINE_DATE)
    assert {r.finding_state for r in rows} == {State.NOT_ASSESSABLE}
    assert all("cannot be a target lesion" in r.state_reason for r in rows)
    assert not any(r.is_target for r in LesionMeasurement.objects.filter(lesion__organ="liver"))
    (later,) = _responses(patient, FOLLOW_UP)
    assert later.sum_diameters_mm == pytest.approx(16.0)
    assert later.recist_response != "PD" and later.new_lesions == 0
