"""Studies of one date are one time point: a chest and an abdomen CT made the same day
(RECIST 1.1 reads the disease at each assessment, whatever the number of scans)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from analytics.lesions.tracking.track import patient_track
from analytics.models import ResponseAssessment
from imaging.models import LesionMeasurement, Registration, Segmentation
from tests.imaging.factories import SeriesFactory, StudyFactory
from tests.imaging.test_review import BASELINE_DATE, LIVER, LUNG, SHIFT, candidate
from tests.patients.factories import PatientFactory

pytestmark = pytest.mark.django_db

CHEST = [(1, "lung", LUNG, 1.8, 16.0)]
ABDOMEN = [(1, "liver", LIVER, 14.0, 32.0)]
BOTH = [(1, "lung", LUNG, 1.7, 15.5), (2, "liver", LIVER, 13.0, 31.0)]


def _lesion(spec: tuple, shift: np.ndarray) -> dict:
    label, organ, centre, ml, mm, *edges = spec
    lesion = candidate(label, organ, centre + shift, ml, mm)
    return {**lesion, "edges_reached": list(edges[0])} if edges else lesion


def _patient(plan, *, patient_id: str = "SAMEDAY-1"):
    """Studies (date, candidates (label, organ, centre, ml, mm[, edges reached])), each
    registered to the first (moved by SHIFT), tracked."""
    patient = PatientFactory(patient_id=patient_id)
    first = None
    for index, (date, candidates) in enumerate(plan):
        study = StudyFactory(patient=patient, study_date=date)
        series = SeriesFactory(study=study, state="processed")
        study.chosen_series = series
        study.save()
        shift = SHIFT if index else np.zeros(3)
        Segmentation.objects.create(
            series=series, mask_path=f"masks/sameday-{index}.nii.gz", model_name="test",
            model_version="1",
            lesions=[_lesion(spec, shift) for spec in candidates],
        )  # fmt: skip
        if first is None:
            first = series
            continue
        matrix = np.eye(4)
        matrix[:3, 3] = SHIFT
        Registration.objects.create(moving_series=series, fixed_series=first, backend="test",
                                    matrix_fixed_to_moving=matrix.tolist())  # fmt: skip
    patient_track(patient=patient)
    return patient


def test_an_abdomen_ct_the_day_of_the_chest_ct_is_part_of_the_baseline_not_new_disease():
    follow_up = BASELINE_DATE + dt.timedelta(days=91)
    patient = _patient([(BASELINE_DATE, CHEST), (BASELINE_DATE, ABDOMEN), (follow_up, BOTH)])

    rows = {
        r.study.study_instance_uid: r
        for r in ResponseAssessment.objects.filter(patient=patient).select_related("study")
    }
    by_date = sorted(rows.values(), key=lambda r: (r.study.study_date, r.study_id))
    first, second, later = by_date
    # Both studies of the baseline's date are the baseline, each saying it is read with
    # the other; the liver lesion is baseline disease, so the follow-up is not PD.
    assert first.is_baseline and second.is_baseline
    assert "one time point with the other 1 study of this date" in second.response_note
    assert later.recist_response not in ("PD", "NE"), later.response_note
    assert later.new_lesions == 0
    liver = LesionMeasurement.objects.get(
        lesion__patient=patient, lesion__organ="liver", study__study_date=follow_up
    )
    assert liver.finding_state == LesionMeasurement.FindingState.CONFIRMED
    assert "new since baseline" not in liver.state_reason
