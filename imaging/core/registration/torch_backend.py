"""Torch registration of a follow-up CT to its baseline, on the CPU or a CUDA GPU.

The same rigid-then-affine model and start as the SimpleITK backend, optimised with
Adam (``device="auto"`` picks CUDA when torch sees one), with MONAI's
``GlobalMutualInformationLoss`` (Mattes' B-spline Parzen windows) on a fresh random
sample of body points each step, like ITK's random metric sampling. Sampling points
(``grid_sample`` at scattered points) rather than warping the whole grid each step is
what keeps the CPU path within seconds; MONAI's dense ``Warp``/``AffineTransform`` would
cost the whole grid per step. This module imports torch and MONAI: import it lazily
from code a web process loads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import monai
import numpy as np
import SimpleITK as sitk
import torch
from monai.losses import GlobalMutualInformationLoss

from imaging.core.geometry.volume import Volume
from imaging.core.registration.quality import (
    METRIC_HU,
    QualityThresholds,
    coarse_registration_quality,
)
from imaging.core.registration.result import Device, RegistrationResult, StageRecord
from imaging.core.registration.start import RegistrationStart, registration_start, sampling_mask
from imaging.core.registration.transforms import SpatialTransform


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without one is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA GPU")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda; got {device!r}")
    return device


def _skew(w: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros((), dtype=w.dtype, device=w.device)
    return torch.stack(
        [
            torch.stack([zero, -w[2], w[1]]),
            torch.stack([w[2], zero, -w[0]]),
            torch.stack([-w[1], w[0], zero]),
        ]
    )


def _pool(volume: Volume, tensor: torch.Tensor, factor: int) -> tuple[torch.Tensor, np.ndarray]:
    """Block-average a [1, 1, k, j, i] tensor by ``factor``; the matching 4x4 index -> LPS."""
    if factor == 1:
        return tensor, volume.affine_lps
    pooled = torch.nn.functional.avg_pool3d(tensor, factor, stride=factor)
    affine = volume.affine_lps.copy()
    affine[:3, 3] = volume.index_to_lps(np.full(3, (factor - 1) / 2.0))
    affine[:3, :3] *= factor
    return pooled, affine


class _TorchLevel:
    """One resolution: fixed body points (LPS mm) with their intensities, and the moving
    tensor with the map from LPS mm to ``grid_sample``'s normalised coordinates."""

    def __init__(
        self,
        start: RegistrationStart,
        level_mm: float,
        base_mm: float,
        tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        device: str,
    ) -> None:
        fixed_t, moving_t, mask_t = tensors
        factor = max(1, int(round(level_mm / base_mm)))
        f_t, f_affine = _pool(start.fixed, fixed_t, factor)
        m_t, m_affine = _pool(start.moving, moving_t, factor)
        k_t, _ = _pool(start.fixed, mask_t, factor)
        kji = torch.nonzero(k_t[0, 0] > 0.25)
        f_aff = torch.as_tensor(f_affine, dtype=torch.float32, device=device)
        self.points = kji.flip(1).float() @ f_aff[:3, :3].T + f_aff[:3, 3]
        self.values = f_t[0, 0][kji[:, 0], kji[:, 1], kji[:, 2]]
        self.moving = m_t
        inverse = torch.as_tensor(np.linalg.inv(m_affine), dtype=torch.float32, device=device)
        # Normalised coordinate n = 2 i / (size - 1) - 1 (align_corners=True), x = i.
        size = torch.as_tensor(m_t.shape[2:][::-1], dtype=torch.float32, device=device)
        self.to_grid = inverse[:3, :3] * (2.0 / (size - 1.0))[:, None]
        self.grid_offset = inverse[:3, 3] * 2.0 / (size - 1.0) - 1.0

    def __len__(self) -> int:
        return self.points.shape[0]

    def sample(
        self,
        points: torch.Tensor,
        linear: torch.Tensor,
        centre: torch.Tensor,
        shift: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Moving intensities at ``linear (p - centre) + centre + shift`` and which fall inside."""
        mapped = (points - centre) @ linear.T + centre + shift
        grid = mapped @ self.to_grid.T + self.grid_offset
        inside = (grid.abs() <= 1.0).all(dim=1)
        values = torch.nn.functional.grid_sample(
            self.moving, grid[None, :, None, None, :], mode="bilinear", align_corners=True
        )[0, 0, :, 0, 0]
        return values, inside


@dataclass(eq=False)
class _Problem:
    """What every stage shares: the levels, the loss, the rotation centre, the random
    generator, and a fixed check sample of the finest level to compare stages on."""

    start: RegistrationStart
    device: str
    levels: dict[float, _TorchLevel]
    finest: _TorchLevel
    check: torch.Tensor
    centre: torch.Tensor
    loss_fn: GlobalMutualInformationLoss
    generator: torch.Generator
    iterations: int
    samples: int

    def metric(self, linear: torch.Tensor, shift: torch.Tensor) -> float:
        """The loss on one fixed sample of the finest level, to compare stages."""
        finest, check = self.finest, self.check
        with torch.no_grad():
            values, inside = finest.sample(finest.points[check], linear, self.centre, shift)
            return float(
                self.loss_fn(values[inside][None, None], finest.values[check][inside][None, None])
            )

    def run(
        self,
        levels_mm: Sequence[float],
        linear_of: Callable[[], torch.Tensor],
        params: list[torch.Tensor],
        rate: float,
    ) -> tuple[list[int], list[float], float]:
        """Adam over ``params`` (the last is the shift in units of 100 mm) at each level;
        iterations and final loss per level, and the seconds taken."""
        t0 = time.perf_counter()
        counts, values = [], []
        for level_mm in levels_mm:
            level = self.levels[level_mm]
            optimizer = torch.optim.Adam(params, lr=rate)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer, self.iterations, eta_min=rate * 0.02
            )
            everything = self.samples >= len(level)  # on a GPU: every body point, every step
            for _ in range(self.iterations):
                if everything:
                    points, targets = level.points, level.values
                else:
                    pick = torch.randint(
                        0, len(level), (self.samples,), generator=self.generator, device=self.device
                    )
                    points, targets = level.points[pick], level.values[pick]
                moved, inside = level.sample(points, linear_of(), self.centre, params[-1] * 100.0)
                loss = self.loss_fn(moved[inside][None, None], targets[inside][None, None])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
            counts.append(self.iterations)
            values.append(round(float(loss.detach()), 5))
        return counts, values, time.perf_counter() - t0

    def matrix(self, linear: torch.Tensor, shift: torch.Tensor) -> np.ndarray:
        """The 4x4 fixed -> moving matrix of ``linear`` about the centre, then ``shift`` (mm)."""
        centre = self.start.centre_fixed
        linear_np = linear.detach().double().cpu().numpy()
        matrix = np.eye(4)
        matrix[:3, :3] = linear_np
        matrix[:3, 3] = centre + shift.detach().double().cpu().numpy() - linear_np @ centre
        return matrix


def _problem(
    start: RegistrationStart,
    *,
    device: str,
    levels_mm: set[float],
    base_mm: float,
    iterations: int,
    samples: int,
    seed: int,
) -> _Problem:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    lo, hi = METRIC_HU

    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float32, device=device)[
            None, None
        ]

    tensors = (
        (tensor(start.fixed.array).clamp(lo, hi) - lo) / (hi - lo),
        (tensor(start.moving.array).clamp(lo, hi) - lo) / (hi - lo),
        tensor(
            (
                start.sampling
                if start.sampling is not None
                else sampling_mask(start.fixed_masks[0])
            ).astype(np.float32)
        ),
    )
    levels = {mm: _TorchLevel(start, mm, base_mm, tensors, device) for mm in levels_mm}
    loss_fn = GlobalMutualInformationLoss(kernel_type="b-spline", num_bins=32).to(device)
    centre = torch.as_tensor(start.centre_fixed, dtype=torch.float32, device=device)
    finest = levels[base_mm]
    check = torch.randperm(len(finest), generator=generator, device=device)[: 4 * samples]
    return _Problem(
        start, device, levels, finest, check, centre, loss_fn, generator, iterations, samples
    )


def _rigid_stage(
    problem: _Problem, levels_mm: tuple[float, ...], learning_rate: float
) -> tuple[StageRecord, torch.Tensor, torch.Tensor, float]:
    """Rotation vector and shift from the starting pose; the stage, the rotation matrix,
    the shift (units of 100 mm) and the check metric."""
    start, device = problem.start, problem.device
    rotation = torch.tensor([0.0, 0.0, start.axial_angle_rad], device=device, requires_grad=True)
    shift = torch.as_tensor(
        (start.centre_moving - start.centre_fixed) / 100.0, dtype=torch.float32, device=device
    ).requires_grad_(True)
    counts, values, seconds = problem.run(
        levels_mm,
        lambda: torch.linalg.matrix_exp(_skew(rotation)),
        [rotation, shift],
        learning_rate,
    )
    linear = torch.linalg.matrix_exp(_skew(rotation)).detach()
    best = problem.metric(linear, shift.detach() * 100.0)
    record = StageRecord(
        "rigid",
        tuple(levels_mm),
        tuple(counts),
        tuple(values),
        seconds,
        {
            "rotation_vector_rad": rotation.detach().double().cpu().numpy().tolist(),
            "translation_mm": (shift.detach().double().cpu().numpy() * 100.0).tolist(),
            "centre_mm": start.centre_fixed.tolist(),
            "final_metric": round(best, 5),
            "kept": True,
        },
    )
    return record, linear, shift, best


def _affine_stage(
    problem: _Problem,
    levels_mm: tuple[float, ...],
    learning_rate: float,
    *,
    linear: torch.Tensor,
    shift: torch.Tensor,
    best: float,
) -> tuple[StageRecord, SpatialTransform]:
    """The matrix entries and shift from the rigid result, at a tenth of the rate; the
    stage and its transform (kept when the check metric ends below ``best``)."""
    linear_a = linear.clone().requires_grad_(True)
    shift_a = shift.detach().clone().requires_grad_(True)
    counts, values, seconds = problem.run(
        levels_mm, lambda: linear_a, [linear_a, shift_a], learning_rate * 0.1
    )
    value = problem.metric(linear_a.detach(), shift_a.detach() * 100.0)
    record = StageRecord(
        "affine",
        tuple(levels_mm),
        tuple(counts),
        tuple(values),
        seconds,
        {
            "linear": linear_a.detach().double().cpu().numpy().tolist(),
            "translation_mm": (shift_a.detach().double().cpu().numpy() * 100.0).tolist(),
            "centre_mm": problem.start.centre_fixed.tolist(),
            "final_metric": round(value, 5),
            "kept": value < best,
        },
    )
    return record, SpatialTransform(problem.matrix(linear_a, shift_a * 100.0))


def register_torch(
    *,
    fixed: Volume,
    moving: Volume,
    device: Device = "auto",
    rigid_levels_mm: tuple[float, ...] = (8.0, 4.0),
    affine_levels_mm: tuple[float, ...] | None = (4.0,),
    iterations: int = 60,
    samples: int | None = None,
    learning_rate: float = 0.02,
    seed: int = 1,
    threads: int | None = None,
    thresholds: QualityThresholds | None = None,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` in torch (CPU or CUDA); transform fixed -> moving.

    The same model and start as `register_rigid_affine_sitk` (rigid about the fixed body
    centroid, then affine, each stage kept only if it improves the metric), optimised
    with Adam, ``iterations`` steps per level with a cosine-decayed step: the rotation
    vector (rad) and the translation in units of 100 mm share ``learning_rate``, so a
    step moves a point 100 mm from the centre by about ``learning_rate`` x 100 mm; the
    affine matrix entries get a tenth of it. The metric is MONAI's
    ``GlobalMutualInformationLoss`` (32 bins, B-spline Parzen windows) between fixed body
    samples and the moving volume at their mapped positions (trilinear), ``samples``
    fresh random points per step: 5 000 on the CPU (MONAI's loss builds a samples x bins
    matrix per image, so more points cost proportionally more), 500 000 on CUDA.
    ``threads`` sets torch's CPU threads (one is fastest for these small operations
    when the cores are shared; restored afterwards).
    """
    threads_before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _register_torch(
            fixed=fixed,
            moving=moving,
            device=resolve_device(device),
            rigid_levels_mm=rigid_levels_mm,
            affine_levels_mm=affine_levels_mm,
            iterations=iterations,
            samples=samples,
            learning_rate=learning_rate,
            seed=seed,
            thresholds=thresholds or QualityThresholds(),
        )
    finally:
        torch.set_num_threads(threads_before)


def _register_torch(
    *,
    fixed: Volume,
    moving: Volume,
    device: str,
    rigid_levels_mm: tuple[float, ...],
    affine_levels_mm: tuple[float, ...] | None,
    iterations: int,
    samples: int | None,
    learning_rate: float,
    seed: int,
    thresholds: QualityThresholds,
) -> RegistrationResult:
    started = time.perf_counter()
    if samples is None:
        samples = 5_000 if device == "cpu" else 500_000
    base_mm = min([*rigid_levels_mm, *(affine_levels_mm or ())])
    start = registration_start(fixed=fixed, moving=moving, spacing_mm=base_mm)
    problem = _problem(
        start,
        device=device,
        levels_mm={*rigid_levels_mm, *(affine_levels_mm or ())},
        base_mm=base_mm,
        iterations=iterations,
        samples=samples,
        seed=seed,
    )
    stage, linear, shift, best = _rigid_stage(problem, rigid_levels_mm, learning_rate)
    stages = [stage]
    transform = SpatialTransform(problem.matrix(linear, shift * 100.0))
    if affine_levels_mm:
        stage, candidate = _affine_stage(
            problem, affine_levels_mm, learning_rate, linear=linear, shift=shift, best=best
        )
        stages.append(stage)
        if stage.parameters["kept"]:
            transform = candidate
    quality = coarse_registration_quality(
        fixed_coarse=start.fixed,
        moving_coarse=start.moving,
        transform=transform,
        thresholds=thresholds,
        fixed_masks=start.fixed_masks,
    )
    return RegistrationResult(
        transform=transform,
        backend="torch",
        device=device,
        seconds=time.perf_counter() - started,
        stages=tuple(stages),
        quality=quality,
        versions={
            "torch": torch.__version__,
            "monai": monai.__version__,
            "SimpleITK": sitk.Version_VersionString(),
        },
        settings={
            "rigid_levels_mm": list(rigid_levels_mm),
            "affine_levels_mm": list(affine_levels_mm or ()),
            "iterations": iterations,
            "samples": samples,
            "learning_rate": learning_rate,
            "seed": seed,
            "threads": torch.get_num_threads(),
            "metric": "MONAI GlobalMutualInformationLoss, b-spline Parzen, 32 bins",
            "metric_hu": list(METRIC_HU),
            "thresholds": asdict(thresholds),
            "deformable": "none: the torch backend registers rigid then affine only",
        },
    )
