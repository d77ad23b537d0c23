"""SimpleITK registration of a follow-up CT to its baseline: rigid, then affine, then
optionally a B-spline free-form deformation.

Mattes mutual information on random samples of the fixed body where the moving study
has data, multi-resolution (8 then 4 mm by default) rigid (``Euler3DTransform``) from
the best two starting poses of `start.registration_start`, then affine at 4 mm, then
optionally a cubic B-spline on a 90 mm grid (L-BFGS-B) for the lungs and liver that
move with breathing. A later stage is kept only when it improves the metric.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np
import SimpleITK as sitk

from imaging.core.geometry.volume import Volume
from imaging.core.registration.quality import (
    METRIC_HU,
    QualityThresholds,
    coarse_registration_quality,
)
from imaging.core.registration.result import RegistrationResult, StageRecord
from imaging.core.registration.start import RegistrationStart, registration_start, sampling_mask
from imaging.core.registration.transforms import SpatialTransform


@dataclass(frozen=True, eq=False)
class _Images:
    """The coarse fixed and moving images (float32, clamped to `METRIC_HU`) and the
    fixed sampling mask, with the finest level's spacing."""

    fixed: sitk.Image
    moving: sitk.Image
    mask: sitk.Image
    base_mm: float


def _sitk_method(
    mask: sitk.Image, *, samples: int, factors: list[int], seed: int
) -> sitk.ImageRegistrationMethod:
    """Mattes MI (32 bins) on about ``samples`` random fixed-mask points per level."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    in_mask = float(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
    method.SetMetricSamplingPercentagePerLevel(
        [min(1.0, samples * f**3 / max(in_mask, 1.0)) for f in factors], seed
    )
    method.SetMetricFixedMask(mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel(factors)
    # Block-averaged already at the finest level; coarser levels get smoothed first.
    method.SetSmoothingSigmasPerLevel([0.5 * (f - 1) for f in factors])
    method.SetSmoothingSigmasAreSpecifiedInPhysicalUnits(False)
    return method


def _sitk_metric(images: _Images, transform: sitk.Transform, *, samples: int, seed: int) -> float:
    """The metric of ``transform`` on a fresh random sample (at the finest level)."""
    method = _sitk_method(images.mask, samples=samples, factors=[1], seed=seed)
    method.SetInitialTransform(transform, inPlace=False)
    return float(method.MetricEvaluate(images.fixed, images.moving))


def _sitk_stage(
    images: _Images,
    transform: sitk.Transform,
    *,
    factors: list[int],
    iterations: int,
    samples: int,
    max_step_mm: float,
    seed: int,
    moving_initial: sitk.Transform | None = None,
    optimizer: Literal["step", "lbfgsb"] = "step",
) -> tuple[list[int], list[float], float]:
    """Optimise ``transform`` in place; iterations and last metric value per level, and
    the first metric value of the finest level (at the transform it started from).

    The regular-step gradient descent gets its learning rate from the parameter scales
    (``SetOptimizerScalesFromPhysicalShift``) so that its first step moves no point more
    than ``max_step_mm``; the step shrinks by 0.7 whenever the gradient turns back.
    Without that estimate a step is a fixed length in parameter space, which for an
    affine matrix is far too long.
    """
    method = _sitk_method(images.mask, samples=samples, factors=factors, seed=seed)
    if optimizer == "lbfgsb":
        method.SetOptimizerAsLBFGSB(
            gradientConvergenceTolerance=1e-5,
            numberOfIterations=iterations,
            maximumNumberOfCorrections=5,
            maximumNumberOfFunctionEvaluations=4 * iterations,
            costFunctionConvergenceFactor=1e7,
        )
    else:
        method.SetOptimizerAsRegularStepGradientDescent(
            learningRate=1.0,
            minStep=1e-2,
            numberOfIterations=iterations,
            relaxationFactor=0.7,
            gradientMagnitudeTolerance=1e-8,
            estimateLearningRate=method.Once,
            maximumStepSizeInPhysicalUnits=max_step_mm,
        )
        method.SetOptimizerScalesFromPhysicalShift()
    if moving_initial is not None:
        method.SetMovingInitialTransform(moving_initial)
    method.SetInitialTransform(transform, inPlace=True)
    counts: list[int] = []
    metrics: list[float] = []
    first: list[float] = []

    def on_level() -> None:
        counts.append(0)
        metrics.append(float("nan"))

    def on_iteration() -> None:
        if counts[-1] == 0:
            first.append(method.GetMetricValue())
        counts[-1] += 1
        metrics[-1] = method.GetMetricValue()

    method.AddCommand(sitk.sitkMultiResolutionIterationEvent, on_level)
    method.AddCommand(sitk.sitkIterationEvent, on_iteration)
    method.Execute(images.fixed, images.moving)
    return counts, [round(m, 5) for m in metrics], first[-1] if first else float("nan")


_METRIC_SETTINGS = {"metric": "Mattes mutual information, 32 bins", "metric_hu": list(METRIC_HU)}


def _level_factors(levels_mm: tuple[float, ...], base_mm: float) -> list[int]:
    return [max(1, int(round(level / base_mm))) for level in levels_mm]


def _euler_matrix(euler: sitk.Euler3DTransform) -> dict[str, list[float]]:
    parameters = euler.GetParameters()
    return {
        "angles_rad": list(parameters[:3]),
        "translation_mm": list(parameters[3:]),
        "centre_mm": list(euler.GetCenter()),
    }


def _images(start: RegistrationStart, base_mm: float) -> _Images:
    def clamped(volume: Volume) -> sitk.Image:
        return sitk.Clamp(
            sitk.Cast(volume.to_sitk(), sitk.sitkFloat32), sitk.sitkFloat32, *METRIC_HU
        )

    sampling = start.sampling if start.sampling is not None else sampling_mask(start.fixed_masks[0])
    mask = start.fixed.with_array(sampling.astype(np.uint8), kind="label")
    return _Images(clamped(start.fixed), clamped(start.moving), mask.to_sitk(), base_mm)


def _rigid_stage(
    images: _Images,
    start: RegistrationStart,
    levels_mm: tuple[float, ...],
    *,
    iterations: int,
    samples: int,
    seed: int,
) -> tuple[StageRecord, sitk.Euler3DTransform]:
    """Euler3D about the fixed body centroid, from the starting pose."""
    t0 = time.perf_counter()
    rigid = sitk.Euler3DTransform()
    rigid.SetCenter(tuple(start.centre_fixed))
    rigid.SetRotation(0.0, 0.0, start.axial_angle_rad)
    rigid.SetTranslation(tuple(start.centre_moving - start.centre_fixed))
    counts, metrics, _ = _sitk_stage(
        images,
        rigid,
        factors=_level_factors(levels_mm, images.base_mm),
        iterations=iterations,
        max_step_mm=4.0,
        samples=samples,
        seed=seed,
    )
    record = StageRecord(
        "rigid",
        tuple(levels_mm),
        tuple(counts),
        tuple(metrics),
        time.perf_counter() - t0,
        _euler_matrix(rigid) | {"kept": True},
    )
    return record, rigid


def _affine_stage(
    images: _Images,
    rigid: sitk.Euler3DTransform,
    levels_mm: tuple[float, ...],
    *,
    iterations: int,
    samples: int,
    seed: int,
) -> tuple[StageRecord, sitk.AffineTransform]:
    """An affine started from the rigid result; kept when its metric ends below its start."""
    t0 = time.perf_counter()
    affine = sitk.AffineTransform(3)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    counts, metrics, start = _sitk_stage(
        images,
        affine,
        factors=_level_factors(levels_mm, images.base_mm),
        iterations=max(1, iterations // 2),
        max_step_mm=1.0,
        samples=samples,
        seed=seed,
    )
    record = StageRecord(
        "affine",
        tuple(levels_mm),
        tuple(counts),
        tuple(metrics),
        time.perf_counter() - t0,
        {
            "parameters": list(affine.GetParameters()),
            "centre_mm": list(affine.GetCenter()),
            "start_metric": round(start, 5),
            "kept": metrics[-1] < start,
        },
    )
    return record, affine


def _bspline_stage(
    images: _Images,
    transform: SpatialTransform,
    *,
    grid_mm: float,
    iterations: int,
    samples: int,
    seed: int,
) -> tuple[StageRecord, SpatialTransform]:
    """A cubic B-spline after ``transform``'s affine, judged on a held-out sample."""
    t0 = time.perf_counter()
    extent = np.asarray(images.fixed.GetSize()) * np.asarray(images.fixed.GetSpacing())
    mesh = [max(1, int(round(e / grid_mm))) for e in extent]
    deformation = sitk.BSplineTransformInitializer(images.fixed, mesh, order=3)
    counts, metrics, _ = _sitk_stage(
        images,
        deformation,
        factors=[2],
        iterations=max(1, min(iterations // 2, 25)),
        max_step_mm=1.0,
        moving_initial=transform.affine_sitk(),
        optimizer="lbfgsb",
        samples=samples,
        seed=seed,
    )
    # Judged on a sample it was not fitted to: with this many parameters and few
    # samples a B-spline can always improve its own sample by fitting noise.
    candidate = SpatialTransform(transform.matrix, deformation)
    held_out = {"samples": samples, "seed": seed + 1}
    start = _sitk_metric(images, transform.to_sitk(), **held_out)
    value = _sitk_metric(images, candidate.to_sitk(), **held_out)
    record = StageRecord(
        "bspline",
        (images.base_mm,),
        tuple(counts),
        tuple(metrics),
        time.perf_counter() - t0,
        {
            "mesh_size": mesh,
            "grid_mm": grid_mm,
            "held_out_metric_before": round(start, 5),
            "held_out_metric_after": round(value, 5),
            "kept": value < start,
        },
    )
    return record, candidate


def _stages(
    images: _Images,
    start: RegistrationStart,
    *,
    rigid_levels_mm: tuple[float, ...],
    affine_levels_mm: tuple[float, ...] | None,
    bspline_grid_mm: float | None,
    bspline_samples: int,
    iterations: int,
    samples: int,
    seed: int,
) -> tuple[list[StageRecord], SpatialTransform]:
    """Rigid, then affine (unless no levels), then B-spline (given a grid); each later
    stage's transform replaces the one before only when the stage was kept."""
    common = {"iterations": iterations, "samples": samples, "seed": seed}
    stage, rigid = _rigid_stage(images, start, rigid_levels_mm, **common)
    if start.alternative is not None:
        # The second-best distinct start too: gradient descent keeps whichever optimum
        # it starts near, and the better of the two is judged on the same held-out sample.
        other_stage, other = _rigid_stage(images, start.alternative, rigid_levels_mm, **common)
        held_out = {"samples": samples, "seed": seed + 2}
        ours = _sitk_metric(images, rigid, **held_out)
        theirs = _sitk_metric(images, other, **held_out)
        stage = replace(stage, parameters={**stage.parameters, "alternative_start": {
            "metric": round(theirs, 5), "chosen_metric": round(min(ours, theirs), 5),
            "chosen": "alternative" if theirs < ours else "best"}})  # fmt: skip
        if theirs < ours:
            stage = replace(other_stage, parameters={**other_stage.parameters,
                                                     **{"alternative_start": stage.parameters["alternative_start"]}})  # fmt: skip
            rigid = other
    stage = replace(stage, parameters={**stage.parameters, "start_tried": start.tried,
                                       "start_candidates": list(start.candidates[:5])})  # fmt: skip
    stages = [stage]
    transform = SpatialTransform.from_sitk(rigid)
    if affine_levels_mm:
        stage, affine = _affine_stage(images, rigid, affine_levels_mm, **common)
        stages.append(stage)
        if stage.parameters["kept"]:
            transform = SpatialTransform.from_sitk(affine)
    if bspline_grid_mm is not None:
        stage, candidate = _bspline_stage(
            images, transform, grid_mm=bspline_grid_mm,
            **(common | {"samples": bspline_samples}),
        )  # fmt: skip
        stages.append(stage)
        if stage.parameters["kept"]:
            transform = candidate
    return stages, transform


def register_rigid_affine_sitk(
    *,
    fixed: Volume,
    moving: Volume,
    rigid_levels_mm: tuple[float, ...] = (8.0, 4.0),
    affine_levels_mm: tuple[float, ...] | None = (4.0,),
    bspline: bool = False,
    bspline_grid_mm: float = 90.0,
    bspline_samples: int = 12_000,
    iterations: int = 100,
    samples: int = 10_000,
    seed: int = 1,
    thresholds: QualityThresholds | None = None,
    start_search: bool = True,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` with SimpleITK (Mattes MI); transform fixed -> moving.

    Rigid (Euler3D about the fixed body centroid) over ``rigid_levels_mm`` from the best
    of the starting poses `start.registration_start` tries (and from the best distinct
    alternative, keeping the better on a held-out sample), then affine over
    ``affine_levels_mm`` (None skips it), then, if ``bspline``, a cubic B-spline with
    control points about ``bspline_grid_mm`` apart (L-BFGS-B at twice the finest
    spacing on ``bspline_samples`` points; `benchmarks/registration.py`: a 60 mm grid on
    5 000 points doubled the landmark error, 90 mm on 20 000 halved it where the organs
    moved with breathing). Levels are resolutions in mm (shrunk block-averaged copies);
    the metric samples about ``samples`` random points of the fixed body per level
    (``seed``) where the moving study has data.

    A later stage is kept only if it improves the metric on the finest level (its last
    value against its first, which is the previous stage's result, on the same sample;
    the B-spline on a held-out sample): gradient descent returns where it stopped, not
    the best point it saw, and an affine fit to a patient who has not changed shape can
    only add error. Stage records say whether each stage was kept. The affine stage runs
    at most ``iterations // 2`` steps and the B-spline at most 25: they refine. Without
    ``start_search`` only the body centroids and principal axes start the rigid stage.
    """
    started = time.perf_counter()
    thresholds = thresholds or QualityThresholds()
    base_mm = min([*rigid_levels_mm, *(affine_levels_mm or ())])
    start = registration_start(fixed=fixed, moving=moving, spacing_mm=base_mm, search=start_search)
    common = {"samples": samples, "seed": seed}
    stages, transform = _stages(
        _images(start, base_mm),
        start,
        rigid_levels_mm=rigid_levels_mm,
        affine_levels_mm=affine_levels_mm,
        bspline_grid_mm=bspline_grid_mm if bspline else None,
        bspline_samples=bspline_samples,
        iterations=iterations,
        **common,
    )
    quality = coarse_registration_quality(
        fixed_coarse=start.fixed,
        moving_coarse=start.moving,
        transform=transform,
        thresholds=thresholds,
        fixed_masks=start.fixed_masks,
    )
    return RegistrationResult(
        transform=transform,
        backend="simpleitk",
        device="cpu",
        seconds=time.perf_counter() - started,
        stages=tuple(stages),
        quality=quality,
        versions={"SimpleITK": sitk.Version_VersionString(), "numpy": np.__version__},
        settings={
            "rigid_levels_mm": list(rigid_levels_mm),
            "affine_levels_mm": list(affine_levels_mm or ()),
            "bspline": bspline,
            "bspline_grid_mm": bspline_grid_mm,
            "bspline_samples": bspline_samples,
            "iterations": iterations,
            "start_search": start_search,
            **_METRIC_SETTINGS,
            **common,
            "thresholds": asdict(thresholds),
        },
    )
