"""The whole pipeline on a generated patient: the real U-Net, registration, tracking.

One small two-study patient (seed 21, never used for training) goes through `process`
as a site would see it: the follow-up arrives and is processed first, then the
baseline, then the follow-up again. Every number is checked against the phantom's
truth, not against what the code happened to produce.
"""

from __future__ import annotations

from io import StringIO

import numpy as np
import pytest
from django.core.management import call_command

from analytics.models import ResponseAssessment
from imaging.core.geometry.nifti import volume_read_nifti
from imaging.core.segmentation.network import manifest_read
from imaging.core.synthetic import cohort
from imaging.ingest.service import ingest_paths
from imaging.models import (
    Lesion,
    LesionMeasurement,
    ProcessingRun,
    Registration,
    Segmentation,
    Series,
    Study,
)
from imaging.pipeline.run import study_process
from imaging.store import data_dir

pytestmark = pytest.mark.django_db

SEED = 21


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    cohort.cohort_generate(out, n_patients=1, n_timepoints=2, seed=SEED, size="small")
    patient = cohort.patient_simulate(seed=SEED, index=0, n_timepoints=2, size="small")
    return out, patient


def _truth_centres(patient, simulated_study) -> dict[str, np.ndarray]:
    return {
        lesion.lesion_id: simulated_study.to_lps(lesion.shape.centre_body_mm)
        for lesion in patient.lesions_at(simulated_study)
        if lesion.volume_ml > 0
    }


def _centroid(m: LesionMeasurement) -> np.ndarray:
    return np.array([m.centroid_x_mm, m.centroid_y_mm, m.centroid_z_mm])


def _match(measurements, centres, tolerance_mm=6.0) -> dict[str, LesionMeasurement]:
    """Truth lesion -> the measurement whose centroid lies within ``tolerance_mm``."""
    found = {}
    for lesion_id, centre in centres.items():
        near = [m for m in measurements if np.linalg.norm(_centroid(m) - centre) < tolerance_mm]
        if near:
            found[lesion_id] = min(near, key=lambda m: np.linalg.norm(_centroid(m) - centre))
    return found


@pytest.mark.slow
def test_two_studies_in_any_order_are_segmented_registered_and_tracked(generated):
    out, simulated = generated
    ingest_paths(paths=[out / "dicom"], process=False)
    baseline, follow_up = Study.objects.order_by("study_date")
    sim_baseline, sim_follow_up = simulated.studies

    # The follow-up arrives first: processed on its own, nothing to register to yet.
    run = study_process(study=follow_up)
    assert run.status == ProcessingRun.Status.SUCCEEDED, run.error
    assert not Registration.objects.exists()

    # Then the baseline: the follow-up is registered to it and the lesions linked.
    run = study_process(study=baseline)
    assert run.status == ProcessingRun.Status.SUCCEEDED, run.error
    registration = Registration.objects.get()
    assert registration.fixed_series == baseline.chosen_series
    assert registration.moving_series == follow_up.chosen_series
    assert not registration.failed and registration.quality["score"] > 0.9
    # The stored transform maps the baseline's lesion centres onto the follow-up's.
    matrix = np.asarray(registration.matrix_fixed_to_moving)
    base_centres = _truth_centres(simulated, sim_baseline)
    follow_centres = _truth_centres(simulated, sim_follow_up)
    for lesion_id, centre in base_centres.items():
        mapped = matrix[:3, :3] @ centre + matrix[:3, 3]
        # Lesions move a little inside the body between studies; the pose dominates.
        assert np.linalg.norm(mapped - follow_centres[lesion_id]) < 8.0

    # Each study's analysed series has a segmentation by the shipped model, its mask and
    # probability map stored on the stored volume's grid.
    for study in (baseline, follow_up):
        study.refresh_from_db()
        assert study.series_choice["chosen_series_instance_uid"] == (
            study.chosen_series.series_instance_uid
        )
        segmentation = Segmentation.objects.get(series=study.chosen_series)
        assert segmentation.model_name == "lesionseg"
        assert segmentation.model_version == manifest_read()["version"]
        assert len(segmentation.model_sha256) == 64
        volume_run = segmentation.processing_run
        volume = volume_read_nifti(path=data_dir() / volume_run.volume_path)
        mask = volume_read_nifti(path=data_dir() / segmentation.mask_path)
        probability = volume_read_nifti(path=data_dir() / segmentation.probability_path)
        assert mask.shape_ijk == probability.shape_ijk == volume.shape_ijk
        labels = set(np.unique(mask.array).tolist()) - {0}
        assert labels == {c["component_label"] for c in segmentation.lesions}
        assert probability.array.min() >= 0.0 and probability.array.max() <= 1.0

    # Every true lesion is found at both studies, in its organ, and followed as one
    # identity; no lesion is invented.
    truth_organs = {lesion.lesion_id: lesion.organ for lesion in simulated.lesions}
    identities = {}
    for study, sim_study in ((baseline, sim_baseline), (follow_up, sim_follow_up)):
        rows = list(LesionMeasurement.objects.filter(study=study).select_related("lesion"))
        present = [m for m in rows if m.volume_ml > 0]
        centres = _truth_centres(simulated, sim_study)
        matched = _match(present, centres)
        assert set(matched) == set(centres), f"missed at {study.study_date}"
        assert len(present) == len(centres), "a false positive was kept"
        for lesion_id, measurement in matched.items():
            assert measurement.lesion.organ == truth_organs[lesion_id]
            identities.setdefault(lesion_id, set()).add(measurement.lesion.tracking_uid)
            # Volumes are measured (accuracy is the benchmark's, on full-size studies:
            # these 3 mm pixels and 5 mm slices blur a 1 ml lesion over a few voxels).
            assert measurement.volume_ml > 0
            assert measurement.longest_diameter_mm >= measurement.short_axis_mm > 0
    assert all(len(uids) == 1 for uids in identities.values()), identities
    assert Lesion.objects.count() == len(base_centres)
    response = ResponseAssessment.objects.get(study=follow_up)
    assert response.recist_response in {"CR", "PR", "SD", "PD"}
    assert response.new_lesions == 0

    # Processing the follow-up again registers it within its own run, keeps the lesion
    # identities, and leaves the earlier run's files in place.
    earlier_files = [data_dir() / s.mask_path for s in Segmentation.objects.all()]
    uids = set(Lesion.objects.values_list("tracking_uid", flat=True))
    run = study_process(study=follow_up, force=True)
    assert run.status == ProcessingRun.Status.SUCCEEDED, run.error
    names = [s["name"] for s in run.steps if "group" not in s]
    assert "register_to_baseline" in names and names[-1] == "track_lesions"
    assert Registration.objects.filter(processing_run=run).get().failed is False
    assert set(Lesion.objects.values_list("tracking_uid", flat=True)) == uids
    assert all(path.exists() for path in earlier_files)

    out_text = StringIO()
    call_command("process", "--all", stdout=out_text, stderr=StringIO())
    assert "nothing" in out_text.getvalue() or "0 studies" in out_text.getvalue()
    assert set(Series.objects.values_list("state", flat=True)) == {Series.State.PROCESSED}
