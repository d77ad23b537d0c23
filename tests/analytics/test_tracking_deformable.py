"""A deformable registration's stored transform places follow-up lesions for matching.

The follow-up's lung moved 15 mm caudally with breathing near a nodule while the rest of
the body stayed put: the registration's affine part is the identity, its B-spline
carries the motion. Through the stored .tfm file the nodule links to its baseline
identity; through the matrix alone it would sit 15 mm off, beyond the 10 mm gate.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import SimpleITK as sitk

from analytics.lesions.tracking.track import patient_track
from imaging.core.registration.transforms import SpatialTransform, point_map, transform_write
from imaging.models import Lesion, Registration, Segmentation
from imaging.store import data_dir
from tests.imaging.factories import SeriesFactory, StudyFactory
from tests.patients.factories import PatientFactory

pytestmark = pytest.mark.django_db

NODULE = np.array([70.0, 0.0, -60.0])  # baseline LPS mm
LIVER = np.array([-90.0, 10.0, -200.0])


def _candidate(label: int, organ: str, centre, volume_ml: float, diameter_mm: float) -> dict:
    return {
        "component_label": label,
        "organ": organ,
        "centroid_lps_mm": [float(v) for v in centre],
        "volume_ml": volume_ml,
        "longest_diameter_mm": diameter_mm,
        "short_axis_mm": diameter_mm * 0.8,
        "max_3d_diameter_mm": diameter_mm * 1.05,
        "mean_hu": 30.0,
        "sd_hu": 9.0,
        "sphericity": 0.9,
        "confidence": 0.95,
        "uncertainty": 0.02,
    }


def _breathing() -> sitk.BSplineTransform:
    """Fixed -> moving: 15 mm caudal (-S) at the nodule, nothing at the liver (its
    control points lie beyond the cubic B-spline's reach of the liver)."""
    grid = sitk.Image([8, 8, 8], sitk.sitkFloat32)
    grid.SetSpacing((40.0, 40.0, 40.0))
    grid.SetOrigin((-160.0, -160.0, -300.0))
    bspline = sitk.BSplineTransformInitializer(grid, [4, 4, 4], order=3)
    coefficients = bspline.GetCoefficientImages()[0]
    i, j, k = coefficients.TransformPhysicalPointToIndex(tuple(NODULE))
    along_s = np.zeros(sitk.GetArrayViewFromImage(coefficients).shape)  # (k, j, i)
    along_s[k - 1 : k + 2, j - 1 : j + 2, i - 1 : i + 2] = 1.0
    n = along_s.size
    unit = np.concatenate([np.zeros(2 * n), along_s.ravel()])  # x, then y, then z
    bspline.SetParameters(tuple(unit))
    per_unit = bspline.TransformPoint(tuple(NODULE))[2] - NODULE[2]
    bspline.SetParameters(tuple(unit * (-15.0 / per_unit)))
    return bspline


@pytest.fixture
def patient():
    patient = PatientFactory(patient_id="TRACK-DEF-1")
    transform = SpatialTransform(np.eye(4), _breathing())
    moved = point_map(transform, NODULE)
    plan = [[NODULE, LIVER], [moved, LIVER]]
    baseline = None
    for index, (nodule, liver) in enumerate(plan):
        # Dates said, not left to the factory's sequence (which wraps after 200 studies).
        day = dt.date(2024, 1, 10) + dt.timedelta(days=91 * index)
        series = SeriesFactory(
            study=StudyFactory(patient=patient, study_date=day), state="processed"
        )
        series.study.chosen_series = series
        series.study.save()
        Segmentation.objects.create(
            series=series,
            mask_path=f"masks/{index}.nii.gz",
            model_name="test",
            model_version="1",
            lesions=[
                _candidate(1, "lung", nodule, 0.1, 6.0),
                _candidate(2, "liver", liver, 8.0, 25.0),
            ],
        )
        if baseline is None:
            baseline = series
            continue
        path = f"registrations/{index}/to_baseline.tfm"
        (data_dir() / path).parent.mkdir(parents=True)
        transform_write(transform=transform, path=data_dir() / path)
        Registration.objects.create(
            moving_series=series,
            fixed_series=baseline,
            backend="simpleitk",
            matrix_fixed_to_moving=np.eye(4).tolist(),
            transform_path=path,
        )
    return patient, moved


def test_the_deformable_transform_links_a_nodule_moved_by_breathing(patient):
    patient, moved = patient
    assert np.linalg.norm(moved - NODULE) == pytest.approx(15.0, abs=0.1)
    patient_track(patient=patient)
    lesions = {lesion.label: lesion for lesion in Lesion.objects.filter(patient=patient)}
    # One identity per lesion, each seen at both studies.
    assert len(lesions) == 2
    for lesion in lesions.values():
        assert [m.status for m in lesion.measurements.order_by("study__study_date")] == [
            "new",
            "tracked",
        ]


def test_without_the_stored_file_the_matrix_alone_splits_the_nodule(patient):
    patient, _ = patient
    Registration.objects.update(transform_path="")
    patient_track(patient=patient)
    lungs = Lesion.objects.filter(patient=patient, organ="lung")
    assert lungs.count() == 2  # 15 mm off, beyond the gate: a new lesion
