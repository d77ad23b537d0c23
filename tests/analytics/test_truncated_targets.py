"""A lesion that reaches the edge of what was imaged at a study (its scanned range ends
across it, or the field of view cuts it) is seen there, but its size is not assessable:
a target in that state makes the time point NE (never PR, CR or PD from a cut reading),
and a lesion cut at baseline is not chosen as a target."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from analytics.lesions.core.assess import recist_assess
from analytics.lesions.core.findings import Sighting, finding_states
from analytics.lesions.core.readings import (
    CONFIRMED,
    EQUIVOCAL,
    NOT_ASSESSABLE,
    LesionReading,
    StudyReading,
    timeline_from_measurements,
)
from analytics.lesions.core.volumetric import volumetric_assess
from analytics.lesions.tracking.track import patient_track
from analytics.models import ResponseAssessment
from imaging.core.geometry.volume import Volume
from imaging.core.segmentation.measure import LesionMeasurement as Measured
from imaging.core.segmentation.measure import lesions_measure
from imaging.core.segmentation.postprocess import LesionCandidate
from imaging.models import LesionMeasurement, Registration, Segmentation
from tests.imaging.core.test_measure import occupancy_on
from tests.imaging.factories import SeriesFactory, StudyFactory
from tests.imaging.test_review import BASELINE_DATE, LIVER, candidate
from tests.patients.factories import PatientFactory

D0, D1 = dt.date(2024, 1, 1), dt.date(2024, 3, 1)
WHOLE, CUT_IN_Z, CUT_IN_PLANE = (40, 40, 40), (12, 40, 40), (40, 40, 18)


def _measured(shape_kji) -> Measured:
    """An unchanged 30 mm liver lesion centred at (30, 30, 30) mm, on a 1.5 mm scan of
    ``shape_kji`` from the origin (`CUT_IN_Z`: the range ends 13.5 mm below its centre;
    `CUT_IN_PLANE`: the field of view ends 3 mm short of it)."""
    grid = Volume(np.zeros(shape_kji, np.float32), (1.5,) * 3, (0.0, 0.0, 0.0))
    probability = occupancy_on(grid, semi_axes_mm=(15.0,) * 3,
                               centre_lps_mm=np.array([30.0, 30.0, 30.0]), supersample=2)  # fmt: skip
    mask = (probability.array >= 0.5).astype(np.uint16)
    nz = np.nonzero(mask)
    lesion = LesionCandidate(1, "liver", int(mask.sum()), 0.0, 0.95, 0.9,
                             tuple((int(x.min()), int(x.max()) + 1) for x in nz))  # fmt: skip
    (out,) = lesions_measure(lesion_probability=probability,
                             candidate_mask=grid.with_array(mask, kind="label"),
                             candidates=[lesion])  # fmt: skip
    return out


def _timeline(baseline: Measured, follow_up: Measured):
    """The two studies as the rules read them, states from the finding-state rules."""
    sightings = [
        Sighting("t", index, date, "liver", True, longest_diameter_mm=m.longest_axial_diameter_mm,
                 confidence=0.95, edges_reached=m.edges_reached)
        for index, (date, m) in enumerate(((D0, baseline), (D1, follow_up)))
    ]  # fmt: skip
    states = finding_states(sightings=sightings)
    timeline = [
        StudyReading(uid, date, (LesionReading("t", "liver", m.longest_axial_diameter_mm,
                                               m.volume_ml, m.short_axis_mm,
                                               state=states[("t", index)].state,
                                               note=states[("t", index)].reason),))
        for index, (uid, date, m) in enumerate((("S0", D0, baseline), ("S1", D1, follow_up)))
    ]  # fmt: skip
    return states, timeline


# --------------------------------------------------------------------------- the rules
@pytest.mark.parametrize("follow_up", [CUT_IN_Z, CUT_IN_PLANE], ids=["last-slice", "field-of-view"])
def test_a_target_cut_at_follow_up_makes_the_time_point_not_evaluable(follow_up):
    baseline, cut = _measured(WHOLE), _measured(follow_up)
    # what the cut reading says (14.7 mm / 0.21 ml, or 4.48 ml, of a 30 mm, 14 ml lesion)
    assert cut.volume_ml < 0.5 * baseline.volume_ml

    states, timeline = _timeline(baseline, cut)
    recist = recist_assess(timeline=timeline)
    volumetric = volumetric_assess(timeline=timeline)

    assert states[("t", 1)].state == NOT_ASSESSABLE
    assert "size is not assessable" in states[("t", 1)].reason
    assert recist[0].target_uids == ("t",)
    assert recist[1].category == "NE"
    assert any("not evaluated" in n and "edge" in n for n in recist[1].notes), recist[1].notes
    assert volumetric[1].category == "NE"


def test_the_state_names_the_edge_reached():
    states, _ = _timeline(_measured(WHOLE), _measured(CUT_IN_Z))

    assert states[("t", 1)].reason.startswith(
        "seen, but it reaches the edge of the scanned range (its last slice), so only part "
        "of it was imaged: its size is not assessable at this study"
    )
    assert states[("t", 0)].state == CONFIRMED


def test_a_lesion_cut_at_baseline_is_not_a_target_and_its_whole_reading_later_is_not_pd():
    states, timeline = _timeline(_measured((15, 40, 40)), _measured(WHOLE))
    recist = recist_assess(timeline=timeline)

    assert states[("t", 0)].state == NOT_ASSESSABLE
    assert "cannot be a target lesion" in states[("t", 0)].reason
    assert recist[0].target_uids == ()
    assert recist[0].non_target_uids == ("t",)
    assert recist[1].category != "PD"
    assert not recist[1].new_lesions


def test_a_radiologist_s_measurement_of_a_cut_lesion_counts():
    sighting = Sighting("t", 1, D1, "liver", True, longest_diameter_mm=29.0,
                        review_state="edited", edges_reached=("scan_end",))  # fmt: skip
    first = Sighting("t", 0, D0, "liver", True, longest_diameter_mm=30.0)

    assert finding_states(sightings=[first, sighting])[("t", 1)].state == CONFIRMED


def test_a_new_lesion_cut_by_the_scan_stays_equivocal_and_says_so():
    first = Sighting("a", 0, D0, "liver", True, longest_diameter_mm=30.0)
    new = Sighting("n", 1, D1, "liver", True, longest_diameter_mm=12.0, confidence=0.95,
                   edges_reached=("field_of_view",))  # fmt: skip

    state = finding_states(sightings=[first, new])[("n", 1)]

    assert state.state == EQUIVOCAL
    assert "it reaches the edge of the field of view" in state.reason


def test_a_reading_not_assessable_is_present_with_no_size():
    reading = LesionReading("t", "liver", 14.7, 0.21, 12.0, state=NOT_ASSESSABLE)

    assert reading.state == CONFIRMED and not reading.size_assessable
    assert reading.present and not reading.evaluated
    assert np.isnan(reading.size_mm) and np.isnan(reading.volume_ml)


def test_an_exported_state_not_assessable_reads_as_not_evaluated():
    table = pd.DataFrame(
        [
            dict(patient_id="P", study_instance_uid=uid, study_date=date, lesion_uid="t",
                 organ="liver", status=status, volume_ml=ml, longest_diameter_mm=mm,
                 short_axis_mm=mm * 0.8, finding_state=state)
            for uid, date, status, ml, mm, state in (
                ("S0", D0, "new", 14.2, 30.5, CONFIRMED),
                ("S1", D1, "tracked", 0.21, 14.7, NOT_ASSESSABLE),
            )
        ]
    )  # fmt: skip

    recist = recist_assess(timeline=timeline_from_measurements(table)["P"])

    assert recist[1].category == "NE"


# --------------------------------------------------------------------------- tracking
def _patient(plan):
    """Studies (date, candidates) of one patient, follow-ups registered to the first."""
    patient = PatientFactory(patient_id="CUT-1")
    first = None
    for index, (date, candidates) in enumerate(plan):
        study = StudyFactory(patient=patient, study_date=date)
        series = SeriesFactory(study=study, state="processed")
        study.chosen_series = series
        study.save()
        Segmentation.objects.create(series=series, mask_path=f"masks/cut-{index}.nii.gz",
                                    model_name="test", model_version="1", lesions=candidates)  # fmt: skip
        if first is None:
            first = series
            continue
        Registration.objects.create(moving_series=series, fixed_series=first, backend="test",
                                    matrix_fixed_to_moving=np.eye(4).tolist())  # fmt: skip
    patient_track(patient=patient)
    return patient


def _cut(entry: dict, edges: list[str]) -> dict:
    return {**entry, "edges_reached": edges}


FOLLOW_UP = BASELINE_DATE + dt.timedelta(days=60)


@pytest.mark.django_db
def test_tracking_keeps_the_edges_and_the_cut_target_makes_the_follow_up_ne():
    patient = _patient([
        (BASELINE_DATE, [candidate(1, "liver", LIVER, 14.2, 30.5)]),
        (FOLLOW_UP, [_cut(candidate(1, "liver", LIVER + [0.0, 0.0, 8.0], 0.21, 14.7), ["scan_end"])]),
    ])  # fmt: skip

    row = LesionMeasurement.objects.get(lesion__patient=patient, study__study_date=FOLLOW_UP)
    assert row.status == LesionMeasurement.Status.TRACKED
    assert row.edges_reached == ["scan_end"]
    assert row.finding_state == LesionMeasurement.FindingState.NOT_ASSESSABLE
    assert "edge of the scanned range (its last slice)" in row.state_reason
    assert row.is_target
    later = ResponseAssessment.objects.get(patient=patient, study__study_date=FOLLOW_UP)
    assert later.recist_response == "NE"
    assert later.volumetric_response == "NE"
    assert "size is not assessable" in later.response_note


@pytest.mark.django_db
def test_tracking_does_not_choose_a_lesion_cut_at_baseline_as_a_target():
    patient = _patient([
        (BASELINE_DATE, [_cut(candidate(1, "liver", LIVER, 0.21, 14.7), ["scan_end"])]),
        (FOLLOW_UP, [candidate(1, "liver", LIVER, 14.2, 30.5)]),
    ])  # fmt: skip

    rows = LesionMeasurement.objects.filter(lesion__patient=patient).order_by("study__study_date")
    baseline, later = rows
    assert baseline.finding_state == LesionMeasurement.FindingState.NOT_ASSESSABLE
    assert "cannot be a target lesion" in baseline.state_reason
    assert not baseline.is_target and not later.is_target
    assert later.finding_state == LesionMeasurement.FindingState.CONFIRMED
    response = ResponseAssessment.objects.get(patient=patient, study__study_date=FOLLOW_UP)
    assert response.recist_response != "PD"
    assert response.new_lesions == 0
