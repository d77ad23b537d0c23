"""A baseline made of a chest CT and an abdomen CT the same day is one time point: its
RECIST 1.1 targets are chosen over both studies (section 4.2: up to five, two per organ,
representative of all involved organs), each lesion once, and every sum uses them; of
two readings of one lesion that day, the larger speaks (a scan ending across a lesion
shortens it), and a material disagreement is said."""

from __future__ import annotations

import csv
import datetime as dt
import io
import math

import numpy as np
import pytest
from django.core.management import call_command
from django.urls import reverse

from analytics.lesions.core.assess import recist_assess
from analytics.lesions.core.readings import NOT_FOUND, LesionReading, StudyReading
from analytics.lesions.core.timepoints import (
    time_point_notes,
    time_point_reading,
    time_points_merge,
)
from analytics.lesions.review.targets import targets_set
from analytics.lesions.tracking.track import patient_track
from analytics.models import ResponseAssessment
from imaging.models import Lesion, LesionMeasurement
from tests.analytics.test_same_day_studies import ABDOMEN, BOTH, CHEST, _patient
from tests.imaging.test_review import BASELINE_DATE, LIVER, LUNG
from tests.patients.factories import UserFactory

FOLLOW_UP = BASELINE_DATE + dt.timedelta(days=91)
#: A 30 mm liver-dome lesion as `measure.lesions_measure` gives it whole (30.5 mm) and
#: cut 13.5 mm below its centre by the chest CT's last slice (14.7 mm), its cut part's
#: centre higher up.
WHOLE_MM, CUT_MM = 30.5, 14.7
DOME_CUT = [(1, "lung", LUNG, 1.8, 16.0), (2, "liver", LIVER + [0.0, 0.0, 8.0], 0.21, CUT_MM)]
DOME_WHOLE = [(1, "liver", LIVER, 14.2, WHOLE_MM)]
SECOND_LIVER = LIVER + np.array([-40.0, 30.0, 10.0])


def _rows(patient, date):
    """The patient's response rows of ``date``, in study order."""
    return list(
        ResponseAssessment.objects.filter(patient=patient, study__study_date=date).order_by(
            "study_id"
        )
    )


def _targets(patient) -> set[str]:
    return set(
        LesionMeasurement.objects.filter(lesion__patient=patient, is_target=True).values_list(
            "lesion__label", flat=True
        )
    )


# --------------------------------------------------------------------------- tracking
@pytest.mark.django_db
def test_a_lesion_of_the_second_study_of_the_baseline_date_is_a_target():
    patient = _patient([(BASELINE_DATE, CHEST), (BASELINE_DATE, ABDOMEN), (FOLLOW_UP, BOTH)])

    assert _targets(patient) == {"Left lung 1", "Liver 1"}
    # The baseline is one time point: both of its rows say the sum of both studies'
    # targets (16 + 32 mm), and the follow-up is measured from it.
    chest, abdomen = _rows(patient, BASELINE_DATE)
    for row in (chest, abdomen):
        assert row.is_baseline and row.sum_diameters_mm == pytest.approx(48.0)
        assert len(row.inputs["targets"]) == 2 and row.inputs["non_targets"] == []
    (later,) = _rows(patient, FOLLOW_UP)
    assert later.sum_diameters_mm == pytest.approx(15.5 + 31.0)
    assert later.pct_change_baseline == pytest.approx((46.5 - 48.0) / 48.0 * 100)
    assert later.recist_response == "SD"


@pytest.mark.django_db
def test_growth_of_a_target_seen_on_the_second_baseline_study_is_progression():
    # RECIST 1.1 section 4.3.1 with both as targets: 48 -> 64 mm, +33 % and +16 mm.
    grown = [(1, "lung", LUNG, 1.8, 16.0), (2, "liver", LIVER, 47.0, 48.0)]
    patient = _patient([(BASELINE_DATE, CHEST), (BASELINE_DATE, ABDOMEN), (FOLLOW_UP, grown)])

    (later,) = _rows(patient, FOLLOW_UP)
    assert later.recist_response == "PD"
    assert later.sum_diameters_mm == pytest.approx(64.0)
    assert later.pct_change_baseline == pytest.approx(100 / 3)
    assert not later.possible_non_target_progression


@pytest.mark.django_db
def test_a_lesion_seen_on_both_baseline_studies_is_one_target_at_its_whole_size():
    # Cut by the chest CT, whole on the abdomen CT: one target, 30.5 mm (not 14.7 mm,
    # not both); unchanged at the follow-up, so SD, not PD from a 14.7 mm baseline.
    follow = [(1, "lung", LUNG, 1.8, 16.0), (2, "liver", LIVER, 14.2, WHOLE_MM)]
    patient = _patient(
        [(BASELINE_DATE, DOME_CUT), (BASELINE_DATE, DOME_WHOLE), (FOLLOW_UP, follow)]
    )

    assert _targets(patient) == {"Left lung 1", "Liver 1"}
    baseline = _rows(patient, BASELINE_DATE)
    (later,) = _rows(patient, FOLLOW_UP)
    for row in baseline:
        assert row.sum_diameters_mm == pytest.approx(16.0 + WHOLE_MM)
        assert row.needs_attention
        assert (
            f"Liver 1: the studies of this date measure {CUT_MM:.1f} mm and {WHOLE_MM:.1f} mm"
            in (row.response_note)
        )
    assert later.recist_response == "SD" and later.pct_change_baseline == pytest.approx(0.0)


@pytest.mark.django_db
def test_a_lesion_seen_twice_at_baseline_takes_one_place_among_its_organs_two():
    # Liver 1 seen at 25 mm (cut) and 30.5 mm: read twice, it would take both of the
    # liver's places (RECIST 1.1 section 4.2: two per organ) and leave out Liver 2.
    chest = [(1, "lung", LUNG, 1.8, 16.0), (2, "liver", LIVER, 6.0, 25.0)]
    abdomen = [(1, "liver", LIVER, 14.2, WHOLE_MM), (2, "liver", SECOND_LIVER, 3.0, 20.0)]
    patient = _patient([(BASELINE_DATE, chest), (BASELINE_DATE, abdomen)])

    assert _targets(patient) == {"Left lung 1", "Liver 1", "Liver 2"}
    for row in _rows(patient, BASELINE_DATE):
        assert row.sum_diameters_mm == pytest.approx(16.0 + WHOLE_MM + 20.0)


@pytest.mark.django_db
def test_a_choice_by_hand_on_the_second_baseline_study_holds_when_tracked_again():
    patient = _patient([(BASELINE_DATE, CHEST), (BASELINE_DATE, ABDOMEN), (FOLLOW_UP, BOTH)])
    rows = LesionMeasurement.objects.filter(lesion__patient=patient)
    rows.update(target_by_hand=True)
    rows.exclude(lesion__organ="liver").update(is_target=False)

    summary = patient_track(patient=patient)

    assert not summary.stale_targets
    assert _targets(patient) == {"Liver 1"}
    for row in _rows(patient, BASELINE_DATE):
        assert row.sum_diameters_mm == pytest.approx(32.0)


@pytest.mark.django_db
def test_a_radiologist_may_choose_a_lesion_of_the_second_baseline_study_as_target():
    patient = _patient([(BASELINE_DATE, CHEST), (BASELINE_DATE, ABDOMEN), (FOLLOW_UP, BOTH)])
    liver = Lesion.objects.get(patient=patient, label="Liver 1")

    targets_set(
        user=UserFactory(groups=["radiologist"]), patient=patient, lesions=[liver],
        reason="the liver lesion is the one to follow",
    )  # fmt: skip

    assert _targets(patient) == {"Liver 1"}
    for row in _rows(patient, BASELINE_DATE):
        assert row.sum_diameters_mm == pytest.approx(32.0)


# --------------------------------------------------------------------------- shown
@pytest.mark.django_db
def test_the_page_and_the_export_show_the_baseline_as_one_time_point(client):
    patient = _patient([(BASELINE_DATE, CHEST), (BASELINE_DATE, ABDOMEN), (FOLLOW_UP, BOTH)])

    out = io.StringIO()
    call_command(
        "export_responses", "--patient", patient.patient_id, stdout=out, stderr=io.StringIO()
    )
    exported = list(csv.DictReader(io.StringIO(out.getvalue())))
    sums = [(r["study_date"], float(r["sum_diameters_mm"])) for r in exported]
    assert sums == [(str(BASELINE_DATE), 48.0), (str(BASELINE_DATE), 48.0), (str(FOLLOW_UP), 46.5)]

    client.force_login(UserFactory(groups=["clinician"]))
    page = client.get(reverse("patients:detail", args=[patient.pk])).content.decode()
    assert page.count(">48.0</td>") == 2
    assert page.count('<span class="badge badge--chosen">target</span>') == 2


# --------------------------------------------------------------------------- the cores
D0, D1 = dt.date(2024, 1, 1), dt.date(2024, 3, 1)


def _liver(mm: float, **kwargs) -> LesionReading:
    return LesionReading("t", "liver", mm, label="Liver 1", **kwargs)


@pytest.mark.parametrize(
    ("readings", "kept_mm", "said"),
    [
        # the chest CT (first) cuts it, the abdomen CT sees it whole: whichever comes first
        ((_liver(CUT_MM), _liver(WHOLE_MM)), WHOLE_MM, True),
        ((_liver(WHOLE_MM), _liver(CUT_MM)), WHOLE_MM, True),
        # within reading variability: the larger, nothing said
        ((_liver(20.0), _liver(21.0)), 21.0, False),
        ((_liver(40.0), _liver(45.0)), 45.0, False),  # 5 mm, 11 %
        ((_liver(40.0), _liver(46.0)), 46.0, True),  # over 5 mm
        ((_liver(10.0), _liver(12.6)), 12.6, True),  # over 20 % of the larger
        ((_liver(20.0), _liver(20.0)), 20.0, False),
        # a reading that saw it speaks before one that did not (not found, gone), and
        # one with a size before one seen without (a study that reaches part of it)
        ((_liver(math.nan, volume_ml=0.21), _liver(WHOLE_MM)), WHOLE_MM, False),
        ((_liver(WHOLE_MM), _liver(math.nan, volume_ml=0.21)), WHOLE_MM, False),
        ((_liver(math.nan, state=NOT_FOUND), _liver(18.0)), 18.0, False),
        ((_liver(0.0, volume_ml=0.0), _liver(18.0)), 18.0, False),
        ((_liver(18.0), _liver(math.nan, state=NOT_FOUND)), 18.0, False),
        # a node by its short axis (RECIST 1.1 section 4.2)
        (
            (
                LesionReading("t", "lymph_node", 30.0, short_axis_mm=16.0),
                LesionReading("t", "lymph_node", 24.0, short_axis_mm=18.0),
            ),
            24.0,
            False,
        ),
    ],
)
def test_the_reading_that_speaks_for_a_lesion_at_a_time_point_of_two_studies(
    readings, kept_mm, said
):
    assert time_point_reading(readings).longest_diameter_mm == pytest.approx(kept_mm)
    timeline = [StudyReading(f"s{i}", D1, (r,)) for i, r in enumerate(readings)]
    merged, _ = time_points_merge(timeline)
    assert merged[0].reading("t").longest_diameter_mm == pytest.approx(kept_mm)
    assert bool(time_point_notes(timeline)) is said


def test_a_target_cut_by_the_first_study_of_a_date_is_not_a_partial_response():
    timeline = [
        StudyReading("base", D0, (_liver(WHOLE_MM, volume_ml=14.2),)),
        StudyReading("chest", D1, (_liver(CUT_MM, volume_ml=0.21),)),  # acquired first
        StudyReading("abdomen", D1, (_liver(WHOLE_MM, volume_ml=14.2),)),  # sees it whole
    ]
    merged, members = time_points_merge(timeline)
    rows = recist_assess(timeline=merged)

    assert members["chest"] == ("chest", "abdomen")
    assert rows[1].category == "SD" and rows[1].pct_change_baseline == pytest.approx(0.0)
    assert time_point_notes(timeline) == {
        "chest": (
            f"Liver 1: the studies of this date measure {CUT_MM:.1f} mm and {WHOLE_MM:.1f} mm; "
            f"the {WHOLE_MM:.1f} mm reading is used (a scan that ends across a lesion "
            "shortens it): check which study images it whole",
        )
    }
    assert time_point_notes(timeline[:2]) == {}  # one study a date: nothing to compare
