"""Images that arrive while their series is being processed are not lost: the run that
read the series without them queues it again, so the next run reads them all."""

from __future__ import annotations

import pytest

from imaging.ingest.service import ingest_paths
from imaging.models import ProcessingRun, Series, Study
from imaging.pipeline.choice import study_series_choose
from imaging.pipeline.run import series_process, study_process
from tests.imaging.factories import ct_files

pytestmark = pytest.mark.django_db


def test_instances_arriving_during_a_run_queue_the_series_again(
    tmp_path, django_capture_on_commit_callbacks
):
    # Twelve slices of one series; the first six arrive, then a run starts.
    files = ct_files(tmp_path / "all", key="late", slices=12, size=24)
    first, late = tmp_path / "first", tmp_path / "late"
    for folder, part in ((first, files[:6]), (late, files[6:])):
        folder.mkdir()
        for path in part:
            path.rename(folder / path.name)
    ingest_paths(paths=[first], process=False)
    series = Series.objects.get()
    sent = []

    def arrive(step: str) -> None:
        # Once the run has read the series, the other six arrive and their import ends
        # (which queues the study, as every import does).
        if step == "orientation_standardise" and not sent:
            with django_capture_on_commit_callbacks(execute=False) as callbacks:
                ingest_paths(paths=[late], process=True)
            sent.append(len(callbacks))

    with django_capture_on_commit_callbacks(execute=False) as requeued:
        run = series_process(series=series, on_step=arrive)
    assert sent == [1], "the late import queued the study"
    assert run.flags["instances_arrived_during_run"] == 6
    # On commit: the late import's task, and the one this run sends to run it again.
    assert len(requeued) == 2
    series.refresh_from_db()
    assert series.state == Series.State.QUEUED  # not "processed" from six of twelve
    assert series.instances.count() == 12

    # The queued task chooses the series again and does not skip it as done.
    study = Study.objects.get()
    assert study_series_choose(study=study).state != Series.State.PROCESSED
    again = study_process(study=study)
    assert again is not None and again.pk != run.pk
    assert "instances_arrived_during_run" not in again.flags
    volume = next(s for s in again.steps if s["name"] == "series_to_volume")
    assert volume["parameters"]["n_files"] == 12
    series.refresh_from_db()
    assert series.state in (Series.State.PROCESSED, Series.State.FAILED)
    assert again.status in (ProcessingRun.Status.SUCCEEDED, ProcessingRun.Status.FAILED)


def test_a_run_nothing_arrived_during_leaves_the_series_done(tmp_path):
    ct_files(tmp_path / "s", key="settled", slices=6, size=24)
    ingest_paths(paths=[tmp_path / "s"], process=False)
    series = Series.objects.get()
    run = series_process(series=series)
    series.refresh_from_db()
    assert "instances_arrived_during_run" not in run.flags
    assert series.state != Series.State.QUEUED
