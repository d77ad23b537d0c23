"""`SpatialTransform.from_sitk`: every SimpleITK matrix transform maps points as ITK does."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from imaging.core.registration.transforms import SpatialTransform

_CENTRE = (12.0, -30.0, 45.0)
_POINTS = np.array([[0.0, 0.0, 0.0], [100.0, -50.0, 20.0], [-35.5, 80.0, -120.0]])


def _euler() -> sitk.Transform:
    return sitk.Euler3DTransform(_CENTRE, 0.1, -0.2, 0.3, (5.0, -2.0, 7.0))


def _similarity() -> sitk.Transform:
    return sitk.Similarity3DTransform(1.1, (0.0, 0.6, 0.8), 0.25, (3.0, 4.0, -1.0), _CENTRE)


def _affine() -> sitk.Transform:
    affine = sitk.AffineTransform((1.1, 0.1, 0.0, -0.05, 0.9, 0.2, 0.0, 0.1, 1.2), (4, 5, 6))
    affine.SetCenter(_CENTRE)
    return affine


def _scale() -> sitk.Transform:  # no translation: no GetTranslation
    return sitk.ScaleTransform(3, (1.5, 0.8, 1.2))


def _versor() -> sitk.Transform:  # a rotation about a centre, no translation
    versor = sitk.VersorTransform((0.0, 0.0, 1.0), 0.4)
    versor.SetCenter(_CENTRE)
    return versor


@pytest.mark.parametrize("build", [_euler, _similarity, _affine, _scale, _versor])
def test_from_sitk_maps_points_as_simpleitk(build) -> None:
    transform = build()
    if isinstance(transform, sitk.ScaleTransform):
        transform.SetCenter(_CENTRE)
    ours = SpatialTransform.from_sitk(transform).map_points(_POINTS)
    theirs = np.array([transform.TransformPoint(tuple(p)) for p in _POINTS])
    np.testing.assert_allclose(ours, theirs, atol=1e-9)


@pytest.mark.parametrize(
    "transform",
    [sitk.AffineTransform(2), sitk.Euler2DTransform(), sitk.DisplacementFieldTransform(3)],
    ids=["affine-2d", "euler-2d", "displacement-field"],
)
def test_from_sitk_refuses_what_is_not_a_3d_matrix(transform) -> None:
    with pytest.raises(ValueError, match="is not 3D|cannot express"):
        SpatialTransform.from_sitk(transform)
