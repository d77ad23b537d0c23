"""Lesion identities over time from stored segmentations and registrations."""

import datetime as dt

import numpy as np
import pytest

from analytics.layouts import EXPORT_RESPONSE_COLUMNS, EXPORT_RESPONSE_EXTRA_COLUMNS
from analytics.lesions.tracking.track import patient_track
from analytics.models import ResponseAssessment
from imaging.models import (
    Lesion,
    LesionMeasurement,
    ProcessingRun,
    Registration,
    Segmentation,
    Study,
)
from tests.imaging.factories import SeriesFactory, StudyFactory
from tests.patients.factories import PatientFactory

pytestmark = pytest.mark.django_db

SHIFT = np.array([12.0, -7.0, 20.0])  # where the follow-ups put the baseline's anatomy


def _candidate(label, organ, centre, volume_ml, diameter_mm):
    return {
        "component_label": label,
        "organ": organ,
        "centroid_lps_mm": list(centre),
        "volume_ml": volume_ml,
        "longest_diameter_mm": diameter_mm,
        "short_axis_mm": diameter_mm * 0.8,
        "max_3d_diameter_mm": diameter_mm * 1.05,
        "mean_hu": 45.0,
        "sd_hu": 9.0,
        "sphericity": 0.9,
        "confidence": 0.95,
        "uncertainty": 0.02,
    }


@pytest.fixture
def patient():
    patient = PatientFactory(patient_id="TRACK-1")
    liver = np.array([-90.0, 10.0, -160.0])
    lung = np.array([70.0, 0.0, -60.0])
    plan = [
        # study: candidates (component label, organ, centre in the baseline frame, ml, mm)
        [(1, "liver", liver, 14.0, 32.0), (2, "lung", lung, 1.8, 16.0)],
        [(1, "liver", liver + 1.0, 9.0, 27.0), (2, "lung", lung - 1.0, 1.2, 14.0)],
        [(3, "liver", liver, 4.0, 21.0), (4, "liver", np.array([-60.0, 30.0, -140.0]), 0.9, 12.0)],
    ]
    baseline_series = None
    for index, candidates in enumerate(plan):
        # Dates said, not left to the factory's sequence (which wraps after 200 studies).
        day = dt.date(2024, 1, 10) + dt.timedelta(days=91 * index)
        series = SeriesFactory(
            study=StudyFactory(patient=patient, study_date=day), state="processed"
        )
        series.study.chosen_series = series
        series.study.save()
        shift = SHIFT if index else np.zeros(3)
        Segmentation.objects.create(
            series=series,
            mask_path=f"masks/{index}.nii.gz",
            model_name="test",
            model_version="1",
            lesions=[_candidate(k, o, c + shift, v, d) for k, o, c, v, d in candidates],
        )
        if baseline_series is None:
            baseline_series = series
        else:
            matrix = np.eye(4)
            matrix[:3, 3] = SHIFT  # baseline LPS -> follow-up LPS
            Registration.objects.create(
                moving_series=series,
                fixed_series=baseline_series,
                backend="test",
                matrix_fixed_to_moving=matrix.tolist(),
            )
    return patient


def test_lesions_are_linked_through_the_registration(patient):
    summary = patient_track(patient=patient)

    assert summary.studies_tracked == 3 and not summary.provisional and not summary.gaps
    lesions = {lesion.label: lesion for lesion in Lesion.objects.filter(patient=patient)}
    assert set(lesions) == {"Liver 1", "Liver 2", "Left lung 1"}
    statuses = [m.status for m in lesions["Liver 1"].measurements.order_by("study__study_date")]
    assert statuses == ["new", "tracked", "tracked"]
    lung = list(lesions["Left lung 1"].measurements.order_by("study__study_date"))
    # Not seen at the third study: not found, needs review; never "resolved" by itself.
    assert [m.status for m in lung] == ["new", "tracked", "not_found"]
    assert [m.finding_state for m in lung] == ["confirmed", "confirmed", "not_found"]
    assert "a radiologist must confirm it gone" in lung[2].state_reason
    new_one = lesions["Liver 2"].measurements.get()
    assert new_one.status == "new" and new_one.finding_state == "equivocal"
    assert "seen once" in new_one.state_reason
    assert LesionMeasurement.objects.filter(is_target=True, status="new").count() == 2


def test_responses_follow_the_tracked_lesions(patient):
    patient_track(patient=patient)

    responses = list(
        ResponseAssessment.objects.filter(patient=patient).order_by("study__study_date")
    )
    # A target not found makes the third study NE (never CR or PR from a missed lesion),
    # and the new lesion, seen once, is equivocal: pending, not PD.
    assert [r.recist_response for r in responses] == ["", "SD", "NE"]
    assert responses[0].is_baseline
    assert responses[1].sum_diameters_mm == pytest.approx(27.0 + 14.0)
    last = responses[2]
    assert not last.new_lesions and last.pending_new_lesions == 1 and last.needs_attention
    assert "target Left lung 1 not evaluated" in last.response_note
    assert "PD pending confirmation of one equivocal new lesion: Liver 2" in last.response_note


def test_a_rebuild_keeps_identities_and_review_decisions(patient):
    patient_track(patient=patient)
    uids = set(Lesion.objects.values_list("tracking_uid", flat=True))
    new_one = LesionMeasurement.objects.get(lesion__label="Liver 2")
    new_one.review_state = LesionMeasurement.Review.REJECTED
    new_one.review_reason = "a vessel, not a lesion"
    new_one.save()
    # The radiologist confirms the lung target gone at the third study.
    gone = LesionMeasurement.objects.get(lesion__label="Left lung 1", status="not_found")
    gone.review_state = LesionMeasurement.Review.ACCEPTED
    gone.save()

    patient_track(patient=patient)

    assert set(Lesion.objects.values_list("tracking_uid", flat=True)) == uids
    again = LesionMeasurement.objects.get(lesion__label="Liver 2")
    assert again.review_state == "rejected" and again.finding_state == "rejected"
    assert again.review_reason == "a vessel, not a lesion"
    lung = LesionMeasurement.objects.get(lesion__label="Left lung 1", study=gone.study)
    assert lung.status == "resolved" and lung.finding_state == "confirmed"
    last = ResponseAssessment.objects.filter(patient=patient).order_by("study__study_date").last()
    assert not last.new_lesions and not last.pending_new_lesions  # rejected: not counted
    assert last.recist_response == "PR"  # 21 mm against 48 mm at baseline
    # The third study read NE before the review and PR after: the change is recorded.
    assert [(r["field"], r["from"], r["to"]) for r in last.revisions] == [
        ("recist_response", "NE", "PR"),
        ("volumetric_response", "NE", "PR"),
    ]
    assert all("now:" in r["reason"] for r in last.revisions)


def test_a_failed_registration_never_stops_tracking(patient):
    last = Registration.objects.order_by("pk").last()
    last.failed = True
    last.failure_reason = "lung overlap 0.56 < 0.8"
    last.save()

    summary = patient_track(patient=patient)

    # The follow-up is followed all the same: its lesions measured and linked, the links
    # provisional, its response NE with the reason.
    assert summary.studies_tracked == 3
    assert "registration to the baseline failed (lung overlap 0.56 < 0.8)" in summary.provisional[0]
    third = last.moving_series.study
    rows = list(LesionMeasurement.objects.filter(study=third).select_related("lesion"))
    found = [m for m in rows if m.is_found]
    assert len(found) == 2 and all(m.volume_ml > 0 for m in found)
    assert all(m.link_provisional for m in rows)
    response = ResponseAssessment.objects.get(study=third)
    assert response.recist_response == "NE" and response.needs_attention
    assert "not evaluable: its registration to the baseline failed" in response.response_note
    assert "provisional until a radiologist confirms them" in response.response_note


def test_a_deformable_transform_that_cannot_be_read_leaves_the_links_provisional(patient):
    # Placed by the affine part alone, lesions in a moving lung or liver can be linked to
    # a neighbour: never silently.
    last = Registration.objects.order_by("pk").last()
    last.transform_path = "registrations/lost.tfm"
    last.save()

    summary = patient_track(patient=patient)

    third = last.moving_series.study
    assert (
        "deformable transform could not be read (the file is missing)" in (summary.provisional[0])
    )
    assert all(m.link_provisional for m in LesionMeasurement.objects.filter(study=third))
    response = ResponseAssessment.objects.get(study=third)
    assert response.recist_response == "NE" and response.needs_attention
    assert "placed by its affine part only" in response.response_note


def test_a_follow_up_whose_orientation_is_to_review_waits_for_a_radiologist(patient):
    # Mirrored, each lesion would be linked to its mirror image: the links are proposals.
    last = Registration.objects.order_by("pk").last()
    series = last.moving_series
    run = ProcessingRun.objects.create(
        series=series,
        status="succeeded",
        flags={"orientation_review": "the anatomy reads left-right mirrored"},
    )
    Segmentation.objects.filter(series=series).update(processing_run=run)

    patient_track(patient=patient)

    response = ResponseAssessment.objects.get(study=series.study)
    assert response.recist_response == "NE" and response.needs_attention
    assert (
        "orientation was flagged for review (the anatomy reads left-right mirrored)"
        in response.response_note
    )
    assert all(m.link_provisional for m in LesionMeasurement.objects.filter(study=series.study))


def test_a_follow_up_whose_ct_numbers_are_not_hu_is_not_evaluable(patient):
    last = Registration.objects.order_by("pk").last()
    series = last.moving_series
    run = ProcessingRun.objects.create(
        series=series, status="succeeded", flags={"hu_implausible": "air reads 0 HU"}
    )
    Segmentation.objects.filter(series=series).update(processing_run=run)

    patient_track(patient=patient)

    response = ResponseAssessment.objects.get(study=series.study)
    assert response.recist_response == "NE" and response.needs_attention
    assert "its CT numbers are implausible (air reads 0 HU)" in response.response_note
    # Its links themselves were registered: not proposals.
    assert not LesionMeasurement.objects.filter(study=series.study, link_provisional=True)


def test_a_baseline_whose_ct_numbers_are_not_hu_leaves_no_follow_up_evaluable(patient):
    baseline = Study.objects.filter(patient=patient).order_by("study_date").first()
    run = ProcessingRun.objects.create(
        series=baseline.chosen_series, status="succeeded", flags={"hu_implausible": "air at 0"}
    )
    Segmentation.objects.filter(series=baseline.chosen_series).update(processing_run=run)

    patient_track(patient=patient)

    follow_ups = ResponseAssessment.objects.filter(patient=patient, is_baseline=False)
    assert follow_ups.count() == 2
    for response in follow_ups:
        assert response.recist_response == "NE"
        assert "its baseline's CT numbers are implausible (air at 0)" in response.response_note


def test_thin_slices_far_apart_make_a_lesion_measurable_only_at_twice_their_spacing(patient):
    # 1 mm slices every 10 mm: a lesion must be 20 mm to be measurable (RECIST 1.1
    # section 3.1.1), so the 16 mm lung lesion is no target.
    baseline = Study.objects.filter(patient=patient).order_by("study_date").first()
    series = baseline.chosen_series
    series.slice_thickness_mm = 1.0
    series.save()
    run = ProcessingRun.objects.create(
        series=series, status="succeeded", volume_geometry={"spacing_mm": [0.8, 0.8, 10.0]}
    )
    Segmentation.objects.filter(series=series).update(processing_run=run)

    patient_track(patient=patient)

    targets = set(
        LesionMeasurement.objects.filter(study=baseline, is_target=True).values_list(
            "lesion__organ", flat=True
        )
    )
    assert targets == {"liver"}


def test_an_earlier_study_that_failed_is_said_on_the_baseline_it_leaves(patient):
    # The pre-treatment scan failed processing: the first study followed becomes the
    # baseline, and its row says so and asks for attention.
    first = Study.objects.filter(patient=patient).order_by("study_date").first()
    earlier = StudyFactory(patient=patient, study_date=first.study_date - dt.timedelta(days=30))
    series = SeriesFactory(study=earlier, state="failed", state_detail="the volume is empty")
    earlier.chosen_series = series
    earlier.save()

    patient_track(patient=patient)

    baseline = ResponseAssessment.objects.get(study=first)
    assert baseline.is_baseline and baseline.needs_attention
    assert "an earlier study could not be analysed" in baseline.response_note
    assert "processing failed: the volume is empty" in baseline.response_note
    assert ResponseAssessment.objects.get(study=earlier).recist_response == "NE"


def test_export_responses_lists_every_study_in_the_published_columns(patient):
    import csv
    import io

    from django.core.management import call_command

    patient_track(patient=patient)
    out = io.StringIO()
    call_command("export_responses", "--patient", "TRACK-1", stdout=out, stderr=io.StringIO())

    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert tuple(rows[0]) == (*EXPORT_RESPONSE_COLUMNS, *EXPORT_RESPONSE_EXTRA_COLUMNS)
    assert tuple(rows[0])[len(EXPORT_RESPONSE_COLUMNS)] == "response_note"
    assert [r["recist_response"] for r in rows] == ["", "SD", "NE"]
    assert rows[2]["new_lesions"] == "False" and rows[2]["pending_new_lesions"] == "1"
    assert "not evaluated" in rows[2]["response_note"] and rows[2]["needs_attention"] == "True"


@pytest.mark.parametrize("undated", [1, 2])
def test_an_undated_study_is_tracked_last_and_rebuilds_again(patient, undated):
    patient_track(patient=patient)
    uids = set(Lesion.objects.values_list("tracking_uid", flat=True))
    studies = list(patient.studies.order_by("study_date"))
    studies[undated].study_date = None  # e.g. corrected to "unknown" after ingest
    studies[undated].save()

    first = patient_track(patient=patient)  # old rows of dated and undated studies
    again = patient_track(patient=patient)

    assert first.studies_tracked == again.studies_tracked == 3
    assert set(Lesion.objects.values_list("tracking_uid", flat=True)) == uids
    baseline = ResponseAssessment.objects.get(patient=patient, is_baseline=True)
    assert baseline.study == studies[0]
    assert LesionMeasurement.objects.filter(study=studies[undated]).exists()


def test_track_lesions_command_recomputes_from_what_is_stored(patient):
    import io

    from django.core.management import CommandError, call_command

    out = io.StringIO()
    call_command("track_lesions", "--patient", "TRACK-1", stdout=out, stderr=io.StringIO())
    assert "3 studies, 3 lesions" in out.getvalue()
    assert ResponseAssessment.objects.filter(patient=patient).count() == 3
    with pytest.raises(CommandError, match="no patient with MRN"):
        call_command("track_lesions", "--patient", "NOPE", stdout=io.StringIO())
