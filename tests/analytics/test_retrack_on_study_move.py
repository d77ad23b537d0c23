"""A study moved to another date or patient, or removed, has both patients tracked again."""

from __future__ import annotations

import datetime as dt

import pytest

from analytics.models import ResponseAssessment
from imaging.models import Study
from tests.imaging.test_review import patient_with_studies

pytestmark = pytest.mark.django_db


def _responses(patient) -> list[tuple[dt.date, str, bool]]:
    return [
        (r.study.study_date, r.study.patient_id, r.is_baseline)
        for r in ResponseAssessment.objects.filter(patient=patient)
        .select_related("study")
        .order_by("study__study_date")
    ]


def test_a_misfiled_baseline_moved_to_its_patient_is_tracked_again_for_both(
    django_capture_on_commit_callbacks,
):
    patient = patient_with_studies("MOVE-1")
    other = patient_with_studies("MOVE-2")
    baseline = Study.objects.filter(patient=patient).order_by("study_date").first()
    assert _responses(patient)[0][2]  # measured from the study about to move

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        baseline.patient = other
        baseline.save()

    assert len(callbacks) == 1
    # The first patient's responses no longer rest on a study that is not theirs: the
    # first study left is their baseline now, and no row names the moved study.
    rows = _responses(patient)
    assert rows and all(owner == patient.pk for _, owner, _ in rows)
    assert rows[0][2] and baseline.study_date not in [when for when, _, _ in rows]
    # The other patient's responses take the study in (its date is their earliest).
    assert any(when == baseline.study_date for when, _, _ in _responses(other))


def test_a_new_date_or_a_removal_tracks_again_a_new_study_or_a_state_does_not(
    django_capture_on_commit_callbacks,
):
    patient = patient_with_studies("MOVE-3")
    studies = list(Study.objects.filter(patient=patient).order_by("study_date"))

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        series = studies[0].series.first()
        series.state = "failed"
        series.save()
    assert callbacks == []  # the worklist's flags follow a state; tracking does not

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        last = studies[-1]
        last.study_date = studies[0].study_date - dt.timedelta(days=30)
        last.save()
    assert len(callbacks) == 1
    assert _responses(patient)[0][0] == last.study_date  # the earliest is the baseline now
