"""Choosing the series to analyse in a study: the rules, a user's recorded override."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from imaging.ingest.service import ingest_paths
from imaging.models import Series, Study
from imaging.pipeline.choice import SeriesOverrideError, study_series_choose
from imaging.pipeline.queue import study_series_override
from imaging.pipeline.run import study_process
from patients.models import AuditEvent
from tests.imaging.factories import ct_files
from tests.patients.factories import UserFactory

pytestmark = pytest.mark.django_db

STUDY_UID = "1.2.826.0.1.3680043.8.498.777"


@pytest.fixture
def two_series(tmp_path):
    """One study with a short series (12 slices) and a longer one (20 slices)."""
    ct_files(tmp_path / "short", key="short", slices=12, size=24, study_instance_uid=STUDY_UID)
    ct_files(tmp_path / "long", key="long", slices=20, size=24, study_instance_uid=STUDY_UID)
    ingest_paths(paths=[tmp_path], process=False)
    study = Study.objects.get()
    short, long = sorted(study.series.all(), key=lambda s: s.slice_count)
    return study, short, long


def test_the_rules_choose_the_longer_series_and_say_why(two_series):
    study, short, long = two_series

    chosen = study_series_choose(study=study)

    study.refresh_from_db()
    short.refresh_from_db()
    assert chosen == long == study.chosen_series
    assert study.series_choice["chosen_series_instance_uid"] == long.series_instance_uid
    assert not study.series_choice["overridden"]
    assert short.state == Series.State.NOT_ANALYSED
    assert short.state_detail.startswith("not chosen for analysis:")


def test_an_override_is_recorded_with_who_and_why_and_survives_new_choices(
    two_series, django_capture_on_commit_callbacks
):
    study, short, long = two_series
    radiologist = UserFactory(groups=["radiologist"])

    with django_capture_on_commit_callbacks(execute=True):
        study_series_override(
            study=study, series=short, reason="long series is motion-degraded", user=radiologist
        )

    study.refresh_from_db()
    record = study.series_choice
    assert study.chosen_series == short
    assert record["overridden"] and record["automatic_series_instance_uid"] == (
        long.series_instance_uid
    )
    assert record["override"]["by"] == radiologist.username
    assert record["override"]["reason"] == "long series is motion-degraded"
    assert AuditEvent.objects.filter(action="study.series_override", user=radiologist).exists()
    short.refresh_from_db()
    long.refresh_from_db()
    assert short.state == Series.State.PROCESSED  # queued and run (eager Celery here)
    assert long.state == Series.State.NOT_ANALYSED

    # Processing the study again (new images, a forced rerun) keeps the user's pick.
    study_process(study=study, force=True)
    study.refresh_from_db()
    assert study.chosen_series == short and study.series_choice["override"]["by"]


def test_an_override_needs_a_reason_and_a_series_of_the_study(two_series, tmp_path):
    study, short, _ = two_series
    with pytest.raises(SeriesOverrideError, match="reason"):
        study_series_override(study=study, series=short, reason="  ", user=None)
    ct_files(tmp_path / "other", key="other", slices=12, size=24)
    ingest_paths(paths=[tmp_path / "other"], process=False)
    other = Series.objects.exclude(study=study).get()
    with pytest.raises(SeriesOverrideError, match="another study"):
        study_series_override(study=study, series=other, reason="why not", user=None)
    study.refresh_from_db()
    assert "override" not in (study.series_choice or {})


def test_choose_series_command(two_series):
    study, short, long = two_series
    out = StringIO()
    call_command(
        "choose_series",
        "--study",
        STUDY_UID,
        "--series",
        short.series_instance_uid,
        "--reason",
        "contrast phase",
        stdout=out,
    )
    text = out.getvalue()
    assert f"series {short.series_instance_uid} chosen" in text
    assert "because chosen by user override: contrast phase" in text
    assert f"not {long.series_instance_uid}: the rules' choice, overridden" in text
    with pytest.raises(CommandError, match="reason"):
        call_command(
            "choose_series", "--study", STUDY_UID, "--series", long.series_instance_uid,
            stdout=StringIO(),
        )  # fmt: skip
    with pytest.raises(CommandError, match="no study"):
        call_command("choose_series", "--study", "1.2.3", stdout=StringIO())


def test_new_images_in_another_series_do_not_rerun_the_processed_one(
    two_series, tmp_path, django_capture_on_commit_callbacks
):
    study, short, long = two_series
    study_process(study=study)
    long.refresh_from_db()
    assert long.state == Series.State.PROCESSED and long.processing_runs.count() == 1

    # A late reconstruction of the same study arrives through the ingest service.
    ct_files(tmp_path / "late", key="late", slices=11, size=24, study_instance_uid=STUDY_UID)
    with django_capture_on_commit_callbacks(execute=True):
        ingest_paths(paths=[tmp_path / "late"], process=True)

    long.refresh_from_db()
    study.refresh_from_db()
    assert study.chosen_series == long
    assert long.state == Series.State.PROCESSED and long.processing_runs.count() == 1
    late = study.series.get(slice_count=11)
    assert late.state == Series.State.NOT_ANALYSED
