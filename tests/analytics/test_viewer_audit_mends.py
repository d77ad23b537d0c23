"""The viewer says what it cannot show: a follow-up without lesion rows never shows the
baseline's under its date, every study is listed (those that cannot be shown marked and
not selectable, with why), and images from an earlier run than the series' latest are
said to be so."""

import datetime as dt
import re

import pytest
from django.urls import reverse

from analytics.lesions.viewer import viewer_build
from imaging.models import ProcessingRun, Segmentation, Series
from tests.imaging.factories import (
    LesionFactory,
    LesionMeasurementFactory,
    SeriesFactory,
    StudyFactory,
)
from tests.patients.factories import PatientFactory, UserFactory

pytestmark = pytest.mark.django_db

D1, D2, D3 = dt.date(2024, 1, 10), dt.date(2024, 4, 10), dt.date(2024, 7, 10)


@pytest.fixture
def clinician(client):
    client.force_login(UserFactory(groups=["clinician"]))
    return client


def processed(patient, day, *, candidates=None):
    """A study whose analysed series has a run that succeeded and stored a volume, and,
    with ``candidates``, a segmentation holding that many lesion candidates."""
    study = StudyFactory(patient=patient, study_date=day)
    series = SeriesFactory(study=study, state=Series.State.PROCESSED)
    study.chosen_series = series
    study.save()
    run = ProcessingRun.objects.create(
        series=series,
        status=ProcessingRun.Status.SUCCEEDED,
        volume_path=f"volumes/{study.pk}.nii.gz",
    )
    if candidates is not None:
        Segmentation.objects.create(
            series=series, processing_run=run, mask_path=f"masks/{study.pk}.nii.gz",
            model_name="test", model_version="1",
            lesions=[{"component_label": k + 1} for k in range(candidates)],
        )  # fmt: skip
    return study


def failed(patient, day, *, error="boom", detail="orientation unreadable"):
    study = StudyFactory(patient=patient, study_date=day)
    series = SeriesFactory(study=study, state=Series.State.FAILED, state_detail=detail)
    study.chosen_series = series
    study.save()
    ProcessingRun.objects.create(series=series, status=ProcessingRun.Status.FAILED, error=error)
    return study


def baseline_lesion(patient, study):
    lesion = LesionFactory(patient=patient, label="Liver 1")
    return LesionMeasurementFactory(
        lesion=lesion, study=study, status="new", longest_diameter_mm=31.4, volume_ml=9.87
    )


def section(page: str, heading_id: str) -> str:
    return re.search(rf'<h2 id="{heading_id}">(.*?)</section>', page, re.S).group(1)


def page_of(client, patient, **query) -> str:
    return client.get(reverse("lesions:viewer", args=[patient.pk]), query).content.decode()


# -- 1. a follow-up's section shows its own rows, or why it has none ---------------------
def test_a_follow_up_without_a_segmentation_says_so_and_never_shows_the_baseline_rows(
    clinician,
):
    patient = PatientFactory(patient_id="MEND-V1")
    baseline = processed(patient, D1, candidates=1)
    processed(patient, D2)  # processed, but no segmentation: not followed
    baseline_lesion(patient, baseline)

    page = page_of(clinician, patient)

    follow_up = section(page, "lesions-heading")
    assert "Lesions at 2024-04-10" in follow_up
    assert "31.4" not in follow_up and "Liver 1" not in follow_up
    assert "This study has no segmentation: its lesions are not followed." in follow_up
    assert "31.4" in section(page, "baseline-heading")  # under the baseline's own heading


def test_a_follow_up_tracking_has_not_taken_in_says_tracking_is_pending(clinician):
    patient = PatientFactory(patient_id="MEND-V2")
    baseline = processed(patient, D1, candidates=1)
    processed(patient, D2, candidates=2)
    baseline_lesion(patient, baseline)

    follow_up = section(page_of(clinician, patient), "lesions-heading")

    assert "Lesion tracking has not yet taken in the segmentation of this study" in follow_up
    assert "31.4" not in follow_up


def test_a_follow_up_whose_segmentation_found_nothing_says_so(clinician):
    patient = PatientFactory(patient_id="MEND-V3")
    processed(patient, D1, candidates=0)
    processed(patient, D2, candidates=0)

    page = page_of(clinician, patient)

    assert "The segmentation found no lesion at this study." in section(page, "lesions-heading")
    assert "The segmentation found no lesion at this study." in section(page, "baseline-heading")


def test_the_baseline_chosen_as_follow_up_is_headed_as_the_baseline(clinician):
    patient = PatientFactory(patient_id="MEND-V4")
    baseline = processed(patient, D1, candidates=1)
    processed(patient, D2)
    baseline_lesion(patient, baseline)

    page = page_of(clinician, patient, study=baseline.pk)

    assert "Lesions at baseline 2024-01-10" in section(page, "lesions-heading")
    assert "31.4" in section(page, "lesions-heading")
    assert 'id="baseline-heading"' not in page


# -- 6. every study listed; failed ones marked; an earlier run said to be one ------------
def test_a_failed_newest_study_is_listed_not_selectable_and_named_in_a_banner(clinician):
    patient = PatientFactory(patient_id="MEND-V5")
    processed(patient, D1)
    older = processed(patient, D2)
    newest = failed(patient, D3, error="orientation could not be read")

    response = clinician.get(reverse("lesions:viewer", args=[patient.pk]))
    page = response.content.decode()

    viewer = response.context["viewer"]
    assert viewer.follow_up.study == older
    assert [c.selectable for c in viewer.studies] == [True, True, False]
    option = re.search(rf'<option value="{newest.pk}"[^>]*>[^<]*</option>', page).group(0)
    assert " disabled" in option and "selected" not in option
    assert "2024-07-10" in option and "processing failed" in option
    banner = re.search(r'data-testid="viewer-not-viewable">(.*?)</div>', page, re.S).group(1)
    assert "2024-07-10" in banner and "orientation could not be read" in banner


def test_a_first_study_that_failed_is_listed_and_the_baseline_is_the_next(clinician):
    patient = PatientFactory(patient_id="MEND-V6")
    first = failed(patient, D1)
    baseline = processed(patient, D2)
    processed(patient, D3)

    page = page_of(clinician, patient)

    first_option = re.search(rf'<option value="{first.pk}"[^>]*>[^<]*</option>', page).group(0)
    assert " disabled" in first_option and "(baseline)" not in first_option
    base_option = re.search(rf'<option value="{baseline.pk}"[^>]*>[^<]*</option>', page).group(0)
    assert "(baseline)" in base_option


def test_asking_for_a_study_that_cannot_be_shown_says_so(clinician):
    patient = PatientFactory(patient_id="MEND-V7")
    processed(patient, D1)
    shown = processed(patient, D2)
    broken = failed(patient, D3, error="no slices")

    response = clinician.get(reverse("lesions:viewer", args=[patient.pk]), {"study": broken.pk})

    assert response.context["viewer"].follow_up.study == shown
    notice = re.search(r'data-testid="viewer-requested">(.*?)</p>', response.content.decode())
    assert "2024-07-10 cannot be shown (processing failed: no slices)" in notice.group(1)


def test_a_failed_reprocess_shows_the_earlier_results_with_a_notice(clinician):
    patient = PatientFactory(patient_id="MEND-V8")
    processed(patient, D1)
    follow = processed(patient, D2)
    shown_run = ProcessingRun.objects.get(series=follow.chosen_series)
    follow.chosen_series.state = Series.State.FAILED
    follow.chosen_series.save()
    latest = ProcessingRun.objects.create(
        series=follow.chosen_series,
        status=ProcessingRun.Status.FAILED,
        error="segmentation crashed",
    )

    response = clinician.get(reverse("lesions:viewer", args=[patient.pk]))

    assert response.context["viewer"].follow_up.run == shown_run
    notice = re.search(
        r'data-testid="run-notice-follow-up">(.*?)</p>', response.content.decode(), re.S
    ).group(1)
    assert "Follow-up 2024-04-10" in notice
    assert f"latest processing of this study (run {latest.pk}) failed: segmentation crashed" in (
        notice
    )
    assert f"from an earlier run (run {shown_run.pk}" in notice


def test_a_reprocess_still_running_is_said_and_a_current_run_needs_no_notice():
    patient = PatientFactory(patient_id="MEND-V9")
    baseline = processed(patient, D1)
    follow = processed(patient, D2)
    ProcessingRun.objects.create(series=follow.chosen_series, status=ProcessingRun.Status.RUNNING)

    viewer = viewer_build(patient=patient)

    assert "has not finished" in viewer.follow_up.run_notice
    assert viewer.baseline.study == baseline and viewer.baseline.run_notice == ""
