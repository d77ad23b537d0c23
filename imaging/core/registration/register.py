"""Register a follow-up CT to the patient's baseline with the named backend.

Two backends return the same `result.RegistrationResult`: `sitk_backend` (SimpleITK,
Mattes mutual information, rigid then affine, then a B-spline deformation for the lungs
and liver, which move between studies) and `torch_backend` (the same rigid-then-affine
model optimised with Adam on the CPU or a CUDA GPU; it has no deformable stage). Both
start from the best of several poses (the header's geometry, body and lung centroids,
the axial sections' principal axes; `start.registration_start`), keep a later stage
only when it improves the metric (a patient who has not changed shape gains nothing
from extra freedom), and end with `quality.registration_quality`'s verdict, so a failed
registration is never used silently. Transforms map fixed (baseline) LPS mm to moving
(follow-up) LPS mm (`transforms.SpatialTransform`), deformable ones included;
`transforms.point_map` carries points either way.
"""

from __future__ import annotations

from typing import Any

from imaging.core.geometry.volume import Volume
from imaging.core.registration.result import Backend, Device, RegistrationResult
from imaging.core.registration.sitk_backend import register_rigid_affine_sitk


def register(
    *,
    fixed: Volume,
    moving: Volume,
    backend: Backend = "simpleitk",
    device: Device = "auto",
    deformable: bool = True,
    **options: Any,
) -> RegistrationResult:
    """Register with the named backend (``device`` applies to torch; SimpleITK is CPU).

    ``deformable`` adds SimpleITK's B-spline stage (kept only when it helps); the torch
    backend has none and records that it ran rigid and affine only.
    """
    if backend == "simpleitk":
        options.setdefault("bspline", deformable)
        return register_rigid_affine_sitk(fixed=fixed, moving=moving, **options)
    if backend == "torch":
        # Imported here so that processes which never register with torch never load it.
        from imaging.core.registration.torch_backend import register_torch

        return register_torch(fixed=fixed, moving=moving, device=device, **options)
    raise ValueError(f"backend must be 'simpleitk' or 'torch'; got {backend!r}")
