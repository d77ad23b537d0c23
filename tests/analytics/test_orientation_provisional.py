"""A study whose left/right cannot be taken as read has its lesion links provisional.

Two studies of one patient, registered (the follow-up 10 mm along L of the baseline).
Their processing runs carry the orientation step's flags as `imaging.pipeline.run`
writes them: ``orientation_review`` when the header and the anatomy disagree (a
baseline flipped on its anatomy alone, as the first study of a patient with situs
inversus is), ``orientation_baseline_unchecked`` when comparing the follow-up with the
baseline raised and the anatomy alone decided its left/right.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from analytics.lesions.finality import measurements_up_to, response_pending_reasons
from analytics.lesions.tracking.track import patient_track
from analytics.models import ResponseAssessment
from imaging.models import LesionMeasurement, ProcessingRun, Registration, Segmentation
from tests.imaging.factories import SeriesFactory, StudyFactory
from tests.patients.factories import PatientFactory

pytestmark = pytest.mark.django_db

SHIFT = np.array([10.0, 0.0, 0.0])  # baseline LPS -> follow-up LPS
LIVER = np.array([-90.0, 10.0, -160.0])
LUNG = np.array([70.0, 0.0, -60.0])


def _candidate(label: int, organ: str, centre: np.ndarray, diameter_mm: float) -> dict:
    return {
        "component_label": label,
        "organ": organ,
        "centroid_lps_mm": [float(v) for v in centre],
        "volume_ml": diameter_mm**3 / 2000.0,
        "longest_diameter_mm": diameter_mm,
        "short_axis_mm": diameter_mm * 0.8,
        "max_3d_diameter_mm": diameter_mm * 1.05,
        "mean_hu": 45.0,
        "sd_hu": 9.0,
        "sphericity": 0.9,
        "confidence": 0.95,
        "uncertainty": 0.02,
    }


def _patient(*, baseline_flags: dict, follow_up_flags: dict):
    patient = PatientFactory(patient_id="ORIENT-1")
    studies = []
    for index, flags in enumerate((baseline_flags, follow_up_flags)):
        day = dt.date(2024, 1, 10) + dt.timedelta(days=91 * index)
        series = SeriesFactory(
            study=StudyFactory(patient=patient, study_date=day), state="processed"
        )
        series.study.chosen_series = series
        series.study.save()
        run = ProcessingRun.objects.create(series=series, status="succeeded", flags=flags)
        shift = SHIFT if index else np.zeros(3)
        Segmentation.objects.create(
            series=series,
            processing_run=run,
            mask_path=f"masks/{index}.nii.gz",
            model_name="test",
            model_version="1",
            lesions=[
                _candidate(1, "liver", LIVER + shift, 30.0),
                _candidate(2, "lung", LUNG + shift, 15.0),
            ],
        )
        if index:
            matrix = np.eye(4)
            matrix[:3, 3] = SHIFT
            Registration.objects.create(
                moving_series=series,
                fixed_series=studies[0].chosen_series,
                backend="test",
                matrix_fixed_to_moving=matrix.tolist(),
            )
        studies.append(series.study)
    return patient, studies


def test_registered_studies_read_as_they_are_link_normally():
    patient, studies = _patient(baseline_flags={}, follow_up_flags={})

    summary = patient_track(patient=patient)

    assert not summary.provisional
    assert not LesionMeasurement.objects.filter(link_provisional=True).exists()
    assert ResponseAssessment.objects.get(study=studies[1]).recist_response == "SD"


def test_a_follow_up_whose_left_right_was_not_compared_with_the_baseline_is_provisional():
    unchecked = "not compared with the baseline (RuntimeError: no overlap); anatomy alone"
    patient, studies = _patient(
        baseline_flags={}, follow_up_flags={"orientation_baseline_unchecked": unchecked}
    )

    summary = patient_track(patient=patient)

    follow_up = LesionMeasurement.objects.filter(study=studies[1])
    assert follow_up.count() == 2 and all(m.link_provisional for m in follow_up)
    assert not LesionMeasurement.objects.filter(study=studies[0], link_provisional=True)
    assert len(summary.provisional) == 1
    assert "decided by its anatomy alone" in summary.provisional[0]
    assert unchecked in summary.provisional[0]
    response = ResponseAssessment.objects.get(study=studies[1])
    assert response.recist_response == "NE" and response.needs_attention
    assert "mirrored header from a mirrored patient" in response.response_note


def test_a_baseline_flipped_on_its_anatomy_alone_is_flagged_with_its_links():
    # The first study of a patient with situs inversus: the anatomy contradicts a true
    # header, and without a baseline to veto it the orientation step mirrored the study.
    finding = "left-right flipped"
    patient, studies = _patient(
        baseline_flags={"orientation_review": finding, "orientation_corrected": True},
        follow_up_flags={},
    )

    summary = patient_track(patient=patient)

    baseline = LesionMeasurement.objects.filter(study=studies[0])
    assert baseline.count() == 2 and all(m.link_provisional for m in baseline)
    assert len(summary.provisional) == 1
    assert f"orientation was flagged for review ({finding})" in summary.provisional[0]
    assert "place its lesions at their mirror images" in summary.provisional[0]
    # Every later response rests on those positions: none is final until a radiologist
    # has confirmed them (analytics.lesions.finality).
    follow_up = ResponseAssessment.objects.get(study=studies[1])
    rows = LesionMeasurement.objects.filter(lesion__patient=patient).select_related("study")
    reasons = response_pending_reasons(
        assessment=follow_up, measurements=measurements_up_to(follow_up, rows)
    )
    assert "a lesion's link to earlier studies is provisional" in reasons
