"""Every place that carries a position or an image between studies uses a registration's
full stored transform (its B-spline included), as tracking does, not the 4x4 matrix.

Each registration here is stored as the pipeline stores one (`imaging.pipeline.storage`:
the matrix is the transform's affine part, the .tfm holds the whole): an affine part
12 mm off along S, and a B-spline that brings it back, so that the whole transform is the
true change between the studies (the identity for the patients made of candidates only,
the generator's pose for the rendered one), while the matrix alone puts every lesion
12 mm away, beyond the 10 mm matching gate.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import SimpleITK as sitk
from django.urls import reverse

from analytics.lesions.corrections_viewer import correction_context
from analytics.lesions.review.additions import lesion_add_at_seed
from analytics.lesions.tracking import transforms as tracking_transforms
from analytics.lesions.tracking.track import patient_track
from analytics.lesions.tracking.transforms import registration_mapping
from analytics.lesions.viewer import viewer_build, viewer_file_path
from imaging.core.geometry.nifti import volume_read_nifti
from imaging.core.registration.transforms import SpatialTransform, point_map, transform_write
from imaging.models import (
    Lesion,
    LesionLink,
    LesionMeasurement,
    ProcessingRun,
    Registration,
    Segmentation,
)
from imaging.store import data_dir
from tests.analytics.correction_patient import MISSED, _rendered, correction_patient
from tests.analytics.test_tracking_deformable import _candidate
from tests.imaging.factories import SeriesFactory, StudyFactory
from tests.patients.factories import PatientFactory, UserFactory

pytestmark = pytest.mark.django_db

#: What the affine part gets wrong and the B-spline puts right (LPS mm: 12 mm superior).
OFF_MM = np.array([0.0, 0.0, 12.0])
NODULE = np.array([70.0, 0.0, -60.0])  # LPS mm, the same at every study (no motion)
LIVER = np.array([-90.0, 10.0, -200.0])


def _bspline_undoing(off_mm: np.ndarray) -> sitk.BSplineTransform:
    """A cubic B-spline moving every point of a 1 m box by ``-off_mm`` (equal
    coefficients: the B-spline's partition of unity makes the displacement uniform)."""
    grid = sitk.Image([4, 4, 4], sitk.sitkFloat32)
    grid.SetSpacing((250.0, 250.0, 250.0))
    grid.SetOrigin((-500.0, -500.0, -500.0))
    bspline = sitk.BSplineTransformInitializer(grid, [3, 3, 3], order=3)
    n = bspline.GetNumberOfParameters() // 3
    bspline.SetParameters(tuple(np.repeat(-np.asarray(off_mm, dtype=float), n)))
    return bspline


def _deformable(true_fixed_to_moving: np.ndarray) -> SpatialTransform:
    """The true change as a registration keeping a B-spline would store it: an affine part
    ``OFF_MM`` off, which the B-spline (applied first) undoes."""
    off = np.eye(4)
    off[:3, 3] = OFF_MM
    return SpatialTransform(np.asarray(true_fixed_to_moving) @ off, _bspline_undoing(OFF_MM))


def _registration_store(registration: Registration, transform: SpatialTransform) -> None:
    """``registration`` given ``transform`` as `registration_store` writes it."""
    path = f"registrations/{registration.pk}/to_baseline.tfm"
    (data_dir() / path).parent.mkdir(parents=True, exist_ok=True)
    transform_write(transform=transform, path=data_dir() / path)
    registration.matrix_fixed_to_moving = transform.matrix.tolist()
    registration.transform_path = path
    registration.save()


def _deformed(case) -> Registration:
    """The rendered patient's registration made deformable (same true change)."""
    registration = Registration.objects.get(moving_series=case.studies[1].chosen_series)
    true = np.asarray(registration.matrix_fixed_to_moving, dtype=float)
    _registration_store(registration, _deformable(true))
    patient_track(patient=case.patient)
    return registration


def test_the_stored_transform_is_twelve_mm_from_its_matrix_at_a_lesion():
    transform = _deformable(np.eye(4))
    assert np.allclose(point_map(transform, NODULE), NODULE, atol=1e-6)
    matrix_only = SpatialTransform(transform.matrix)
    assert np.linalg.norm(point_map(matrix_only, NODULE) - NODULE) == pytest.approx(12.0)


# --------------------------------------------------------------------------- viewer
def test_the_viewer_places_follow_up_lesions_and_images_through_the_b_spline():
    case = correction_patient(patient_id="FULL-VIEW", missed_at=())
    registration = _deformed(case)
    baseline, follow_up = case.studies

    viewer = viewer_build(patient=case.patient)

    at_baseline = {r.measurement.lesion_id: r.jump_ras_mm for r in viewer.baseline_rows}
    assert viewer.follow_up_rows
    for row in viewer.follow_up_rows:
        if row.measurement.lesion_id in at_baseline and row.jump_ras_mm is not None:
            gap = np.subtract(row.jump_ras_mm, at_baseline[row.measurement.lesion_id])
            assert np.linalg.norm(gap) < 3.0, row.measurement.lesion.label
    assert viewer.registration == registration and viewer.registration_note == ""
    # A click on the follow-up pane cannot be carried by a matrix: said to the page.
    follow_up_pane = correction_context(viewer=viewer)["sides"]["follow_up"]
    assert follow_up_pane["to_own_lps_exact"] is False and follow_up_pane["to_own_lps_note"]
    # The follow-up's label map on the baseline's grid: the nodule where it is at baseline.
    path = viewer_file_path(study=follow_up, kind="mask", on_baseline_grid=True)
    label = _rendered(1).candidates[MISSED]["component_label"]
    resampled = volume_read_nifti(path=path, kind="label")
    centre = resampled.index_to_lps(np.argwhere(resampled.array == label).mean(axis=0)[::-1])
    assert np.linalg.norm(centre - case.centres[0]) < 3.0
    assert path.name.endswith("-full.nii.gz")
    # Made once, kept by run, segmentation and registration.
    written = path.stat().st_mtime_ns
    assert viewer_file_path(study=follow_up, kind="mask", on_baseline_grid=True) == path
    assert path.stat().st_mtime_ns == written


def test_the_viewer_says_when_only_the_matrix_places_the_follow_up(caplog, client):
    case = correction_patient(patient_id="FULL-NOTE", missed_at=())
    registration = _deformed(case)
    (data_dir() / registration.transform_path).unlink()
    tracking_transforms._transform_loaded.cache_clear()

    viewer = viewer_build(patient=case.patient)

    assert "could not be read (the file is missing)" in viewer.registration_note
    client.force_login(UserFactory(groups=["clinician"]))
    page = client.get(reverse("lesions:viewer", args=[case.patient.pk])).content.decode()
    assert 'data-testid="registration-note"' in page and "the file is missing" in page
    path = viewer_file_path(study=case.studies[1], kind="volume", on_baseline_grid=True)
    assert path.name.endswith("-affine.nii.gz")


def test_a_transform_file_is_read_once_per_registration(monkeypatch):
    case = correction_patient(patient_id="FULL-ONCE", missed_at=())
    registration = _deformed(case)
    tracking_transforms._transform_loaded.cache_clear()
    reads = []
    real = tracking_transforms.transform_read
    monkeypatch.setattr(
        tracking_transforms, "transform_read", lambda **kw: reads.append(kw) or real(**kw)
    )
    for _ in range(3):
        assert registration_mapping(registration).deformable
    assert len(reads) == 1


# --------------------------------------------------------------------------- tracking
def _patient(plan: list[list[dict]], *, geometries=None) -> tuple:
    """A patient with one study per entry of ``plan`` (its candidates), each follow-up
    registered to the baseline through `_deformable` of the identity; ``geometries``:
    each study's stored volume geometry (`ProcessingRun.volume_geometry`)."""
    patient = PatientFactory()
    baseline, segmentations = None, []
    for index, candidates in enumerate(plan):
        day = dt.date(2024, 1, 10) + dt.timedelta(days=91 * index)
        series = SeriesFactory(
            study=StudyFactory(patient=patient, study_date=day), state="processed"
        )
        series.study.chosen_series = series
        series.study.save()
        run = ProcessingRun.objects.create(
            series=series,
            status=ProcessingRun.Status.SUCCEEDED,
            volume_geometry=(geometries or {}).get(index),
        )
        segmentations.append(
            Segmentation.objects.create(
                series=series,
                processing_run=run,
                mask_path=f"masks/{index}.nii.gz",
                model_name="test",
                model_version="1",
                lesions=candidates,
            )
        )
        if baseline is None:
            baseline = series
            continue
        registration = Registration.objects.create(
            moving_series=series,
            fixed_series=baseline,
            backend="simpleitk",
            matrix_fixed_to_moving=np.eye(4).tolist(),
        )
        _registration_store(registration, _deformable(np.eye(4)))
    return patient, segmentations


def test_a_relinked_lesion_is_followed_from_where_the_full_transform_puts_it():
    liver = _candidate(1, "liver", LIVER, 8.0, 25.0)
    nodule = _candidate(2, "lung", NODULE, 0.1, 6.0)
    patient, segmentations = _patient([[liver], [liver, nodule], [liver, nodule]])
    # A radiologist says the nodule first seen at the first follow-up is a lesion of its
    # own: its baseline position is rebuilt from the candidate, and the next study is
    # matched against that position.
    LesionLink.objects.create(
        patient=patient,
        segmentation=segmentations[1],
        component_label=2,
        reason="a lesion of its own",
    )

    summary = patient_track(patient=patient)

    assert not summary.stale_links
    nodules = Lesion.objects.filter(patient=patient, organ="lung")
    assert nodules.count() == 1  # 12 mm off (the matrix alone), the next study splits it
    statuses = [
        m.status
        for m in nodules.get().measurements.order_by("study__study_date")
        if m.status != LesionMeasurement.Status.NOT_FOUND
    ]
    assert statuses == ["new", "tracked"]


def test_a_click_added_lesion_is_looked_for_where_the_full_transform_puts_it():
    case = correction_patient(patient_id="FULL-ADD", missed_at=(0, 1))
    _deformed(case)
    baseline, follow_up = case.studies
    radiologist = UserFactory(groups=["radiologist"])

    added = lesion_add_at_seed(user=radiologist, study=baseline, seed_lps_mm=case.centres[0])

    at_follow_up = {r["study_instance_uid"]: r for r in added.studies}[follow_up.study_instance_uid]
    # The affine part alone looks 12 mm away: most of the 15 mm search radius.
    assert np.linalg.norm(np.array(at_follow_up["searched_at_lps_mm"]) - case.centres[1]) < 2.5
    assert at_follow_up["status"] == "propagated"
    assert np.linalg.norm(np.array(at_follow_up["centroid_lps_mm"]) - case.centres[1]) < 4.0


def _geometry(z_bottom_mm: float) -> dict:
    """A 2 mm grid over x, y in [-200, 198] and 100 mm of z from ``z_bottom_mm`` up."""
    return {
        "shape_ijk": [200, 200, 51],
        "spacing_mm": [2.0, 2.0, 2.0],
        "origin_mm": [-200.0, -200.0, z_bottom_mm],
        "direction": np.eye(3).ravel().tolist(),
    }


# The matrix alone puts the nodule 12 mm superior of where it is at the follow-up.
@pytest.mark.parametrize(
    ("z_bottom_mm", "outside"),
    [
        (NODULE[2] + 6.0 - 100.0, False),  # 6 mm under the top slice; the matrix: above it
        (NODULE[2] + 6.0, True),  # 6 mm under the bottom slice; the matrix: above it, inside
    ],
)
def test_outside_the_scanned_range_is_judged_through_the_full_transform(z_bottom_mm, outside):
    liver = _candidate(1, "liver", [-90.0, 10.0, z_bottom_mm + 50.0], 8.0, 25.0)
    nodule = _candidate(2, "lung", NODULE, 0.1, 6.0)
    patient, _ = _patient([[liver, nodule], [liver]], geometries={1: _geometry(z_bottom_mm)})

    patient_track(patient=patient)

    row = LesionMeasurement.objects.get(lesion__organ="lung", study__study_date__gt="2024-02-01")
    assert row.status == LesionMeasurement.Status.NOT_FOUND
    assert ("outside the scanned range" in row.state_reason) is outside, row.state_reason
