"""The training loop: seeded patch batches, Dice + cross-entropy loss, logs, checkpoints, validation.

Loss is ``monai.losses.DiceCELoss`` (softmax, batch Dice, soft targets), plus in a
fine-tune with ``distill_weight`` the starting model's softmax kept where it agrees
with the labels (`distillation_loss`). Every step's
patches come from a generator seeded by (seed, step), so a resumed run draws what an
uninterrupted one would. At the last step the batch-norm statistics are recalibrated
and, with a lesion loss weight, the lesion logit offset is calibrated on the
validation cases (`calibration`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imaging.core.segmentation.network import (
    SegmenterSpec,
    device_select,
    network_build,
    segmenter_from_network,
)
from imaging.core.segmentation.training.calibration import (
    batchnorm_recalibrate,
    lesion_offset_calibrate,
)
from imaging.core.segmentation.training.cases import TrainingCase, seeded_rng
from imaging.core.segmentation.training.encoder import (
    encoder_freeze,
    encoder_parameter_prefixes,
    frozen_norms_keep,
)
from imaging.core.segmentation.training.generated import (
    GeneratedData,
    batch_generate,
    loader_build,
)
from imaging.core.segmentation.training.patches import patch_batch
from imaging.core.segmentation.training.settings import TrainingSettings, learning_rate_factor
from imaging.core.segmentation.training.validation import validate

logger = logging.getLogger(__name__)

#: Settings a resumed run may change; every other one must be the checkpoint's.
RESUMABLE_SETTINGS = (
    "steps",
    "validate_every",
    "checkpoint_every",
    "threads",
    "recalibrate_batches",
    "loader_workers",
)


@dataclass
class TrainingResult:
    """Where a run left its checkpoint, how far it got, and its last validation."""

    out_dir: Path
    checkpoint_path: Path
    steps_done: int
    seconds: float
    last_loss: float
    validation: dict[str, Any] | None
    history: list[dict[str, Any]]


@dataclass(eq=False)
class _Run:
    """What the steps of one run share; ``spec`` changes once the lesion offset is calibrated."""

    out_dir: Path
    settings: TrainingSettings
    spec: SegmenterSpec
    train_cases: Sequence[TrainingCase]
    val_cases: Sequence[TrainingCase]
    device: torch.device
    network: torch.nn.Module
    frozen_prefixes: list[str]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    data_description: dict[str, Any] | None
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    #: The starting weights, frozen, where ``settings.distill_weight`` is on.
    teacher: torch.nn.Module | None = None
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds_before: float = 0.0
    started: float = 0.0
    last_loss: float = float("nan")
    window_loss: list[float] = field(default_factory=list)
    validation: dict[str, Any] | None = None
    batches: Iterator[Any] | None = None

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    def seconds(self) -> float:
        """Training time so far, the checkpoint's earlier sessions included."""
        return self.seconds_before + time.perf_counter() - self.started

    def log(self, entry: dict[str, Any]) -> None:
        with (self.out_dir / "train_log.jsonl").open("a") as f:
            f.write(json.dumps(entry) + "\n")


def checkpoint_read(path: Path) -> dict[str, Any]:
    """The contents of a training checkpoint (on the CPU)."""
    return torch.load(path, map_location="cpu", weights_only=False)


def _run_start(
    *,
    out_dir: Path,
    spec: SegmenterSpec,
    settings: TrainingSettings,
    train_cases: Sequence[TrainingCase],
    val_cases: Sequence[TrainingCase],
    initial_state: dict[str, torch.Tensor] | None,
    device: str,
    data_description: dict[str, Any] | None,
    teacher_state: dict[str, torch.Tensor] | None = None,
) -> _Run:
    """The network (from ``initial_state`` if given, encoder frozen if asked), its
    optimiser, and with ``distill_weight`` the teacher (``teacher_state``, else
    ``initial_state``), frozen."""
    dev = device_select(device)
    network = network_build(spec)
    if initial_state is not None:
        network.load_state_dict(initial_state)
    frozen_prefixes: list[str] = []
    if settings.freeze_encoder:
        encoder_freeze(network, spec)
        frozen_prefixes = encoder_parameter_prefixes(spec)
    network.to(dev)
    teacher = None
    if settings.distill_weight > 0:
        kept = teacher_state if teacher_state is not None else initial_state
        if kept is None:
            raise ValueError("distill_weight needs the starting weights (initial_state)")
        teacher = network_build(spec)
        teacher.load_state_dict(kept)
        teacher.to(dev).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(
        [p for p in network.parameters() if p.requires_grad],
        lr=settings.learning_rate,
        weight_decay=settings.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step=step, settings=settings)
    )
    return _Run(
        out_dir=out_dir,
        settings=settings,
        spec=spec,
        train_cases=train_cases,
        val_cases=val_cases,
        device=dev,
        network=network,
        frozen_prefixes=frozen_prefixes,
        optimizer=optimizer,
        scheduler=scheduler,
        data_description=data_description,
        loss_fn=_loss_build(settings, dev),
        teacher=teacher,
    )


def _checkpoint_resume(run: _Run) -> None:
    if not run.checkpoint_path.exists():
        raise FileNotFoundError(f"nothing to resume: {run.checkpoint_path} does not exist")
    state = checkpoint_read(run.checkpoint_path)
    saved = TrainingSettings(**state["settings"])
    settings = run.settings
    if replace(saved, **{k: getattr(settings, k) for k in RESUMABLE_SETTINGS}) != settings:
        raise ValueError("resume needs the checkpoint's settings (only --steps may change)")
    run.network.load_state_dict(state["network"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.step = int(state["step"])
    run.history = list(state.get("history", []))
    run.seconds_before = float(state.get("seconds", 0.0))
    torch.set_rng_state(state["torch_rng"])


def _loss_build(settings: TrainingSettings, device: torch.device) -> Callable[..., torch.Tensor]:
    from monai.losses import DiceCELoss

    # Lesion voxels are under 1 % of a patch: without extra weight the network first
    # learns organs and, after 300 steps, still gave liver lesions a probability of 0.005.
    weight = torch.tensor([1.0, 1.0, 1.0, settings.lesion_weight, settings.lesion_weight])
    return DiceCELoss(
        softmax=True,
        batch=True,
        lambda_dice=settings.lambda_dice,
        lambda_ce=settings.lambda_ce,
        weight=weight.to(device),
    )


def _checkpoint_save(run: _Run) -> None:
    tmp = run.checkpoint_path.with_suffix(".tmp")
    torch.save(
        {
            "network": run.network.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "step": run.step,
            "settings": run.settings.as_dict(),
            "spec": run.spec.as_dict(),
            "history": run.history,
            "seconds": run.seconds(),
            "torch_rng": torch.get_rng_state(),
            "data": run.data_description or {},
        },
        tmp,
    )
    tmp.replace(run.checkpoint_path)


def _train_mode(run: _Run) -> None:
    run.network.train()
    frozen_norms_keep(network=run.network, frozen_prefixes=run.frozen_prefixes)


def _recalibrate(run: _Run) -> None:
    settings = run.settings
    batches = None
    if settings.generated:
        data = generated_data(settings)

        def batches(n: int) -> np.ndarray:
            return batch_generate(seed=settings.seed, step=n, spec=run.spec, data=data,
                                   stream=13)[0]  # fmt: skip

    batchnorm_recalibrate(
        network=run.network,
        cases=run.train_cases,
        spec=run.spec,
        settings=settings,
        device=run.device,
        skip_prefixes=run.frozen_prefixes,
        batches=batches,
    )


def generated_data(settings: TrainingSettings) -> GeneratedData:
    """What a generated run's patches are made of, from its settings."""
    return GeneratedData(
        patch_size=settings.patch_size,
        batch_size=settings.batch_size,
        lesion_bias=settings.lesion_bias,
        plain_share=settings.plain_share,
        cohort_acquisition_share=settings.cohort_acquisition_share,
    )


def _batch(run: _Run) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's batch: from the generator's loader, or patches of the training cases."""
    settings = run.settings
    if settings.generated:
        if run.batches is None:
            run.batches = iter(
                loader_build(
                    seed=settings.seed,
                    spec=run.spec,
                    data=generated_data(settings),
                    first_step=run.step,
                    last_step=settings.steps,
                    workers=settings.loader_workers,
                )
            )
        inputs, targets = next(run.batches)
        return torch.as_tensor(inputs), torch.as_tensor(targets)
    inputs, targets = patch_batch(
        cases=run.train_cases,
        rng=seeded_rng(settings.seed, 7, run.step),
        spec=run.spec,
        count=settings.batch_size,
        size=settings.patch_size,
        lesion_bias=settings.lesion_bias,
        hard_negative_share=settings.hard_negative_share,
    )
    return torch.from_numpy(inputs), torch.from_numpy(targets)


def distillation_loss(
    *, logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """KL(teacher || student) of the softmax, averaged over the voxels where the
    teacher's argmax is the labels' (``targets``: one-hot or soft, classes on axis 1);
    zero (with a gradient) where there are none."""
    teacher = torch.softmax(teacher_logits.float(), dim=1)
    agree = teacher.argmax(dim=1) == targets.argmax(dim=1)
    if not bool(agree.any()):
        return logits.sum() * 0.0
    log_student = torch.log_softmax(logits.float(), dim=1)
    kl = (teacher * (torch.log(teacher.clamp_min(1e-8)) - log_student)).sum(dim=1)
    return kl[agree].mean()


def _optimisation_step(run: _Run) -> None:
    inputs, targets = _batch(run)
    x = inputs.to(run.device)
    y = targets.to(run.device)
    run.optimizer.zero_grad(set_to_none=True)
    logits = run.network(x)
    loss = run.loss_fn(logits, y)
    if run.teacher is not None:
        with torch.no_grad():
            teacher_logits = run.teacher(x)
        kept = distillation_loss(logits=logits, teacher_logits=teacher_logits, targets=y)
        loss = loss + run.settings.distill_weight * kept
    loss.backward()
    run.optimizer.step()
    run.scheduler.step()
    run.step += 1
    run.last_loss = float(loss.detach())
    run.window_loss.append(run.last_loss)


def _progress_log(run: _Run) -> None:
    entry = {
        "step": run.step,
        "loss": round(float(np.mean(run.window_loss)), 5),
        "lr": run.optimizer.param_groups[0]["lr"],
        "seconds": round(run.seconds(), 1),
    }
    run.window_loss = []
    run.log(entry)
    logger.info("step %d loss %.4f", run.step, entry["loss"])


def _lesion_offset_step(run: _Run) -> None:
    """Calibrate the lesion logit offset on the validation cases; the spec takes it."""
    _recalibrate(run)
    run.network.eval()
    offset, table = lesion_offset_calibrate(
        network=run.network, spec=run.spec, cases=run.val_cases, device=run.device
    )
    _train_mode(run)
    run.spec = replace(run.spec, class_logit_offsets=(0.0, 0.0, 0.0, offset, offset))
    run.log({"step": run.step, "lesion_offset_calibration": table, "chosen": offset})
    run.history.append({"step": run.step, "lesion_offset_calibration": table, "chosen": offset})


def _validation_step(run: _Run) -> None:
    _recalibrate(run)
    run.network.eval()
    run.validation = validate(
        model=segmenter_from_network(network=run.network, spec=run.spec, device=run.device),
        cases=run.val_cases,
    )
    _train_mode(run)
    run.history.append({"step": run.step, "validation": run.validation})
    run.log({"step": run.step, "validation": run.validation})


def _after_step(run: _Run) -> None:
    """Log, calibrate, validate and checkpoint when the step calls for it."""
    settings = run.settings
    last = run.step == settings.steps
    if run.step % 10 == 0 or last:
        _progress_log(run)
    if last and settings.lesion_weight != 1.0 and run.val_cases:
        _lesion_offset_step(run)
    validating = bool(run.val_cases and settings.validate_every)
    if validating and (run.step % settings.validate_every == 0 or last):
        _validation_step(run)
    if last and not validating:
        _recalibrate(run)  # the shipped statistics are exact averages either way
    if run.step % settings.checkpoint_every == 0 or last:
        _checkpoint_save(run)


def segmenter_train(
    *,
    out_dir: Path,
    train_cases: Sequence[TrainingCase],
    val_cases: Sequence[TrainingCase],
    spec: SegmenterSpec,
    settings: TrainingSettings,
    resume: bool = False,
    initial_state: dict[str, torch.Tensor] | None = None,
    device: str = "auto",
    on_step: Callable[[int, float], None] | None = None,
    data_description: dict[str, Any] | None = None,
    teacher_state: dict[str, torch.Tensor] | None = None,
) -> TrainingResult:
    """Train (or resume) and checkpoint into ``out_dir``; validate every ``validate_every`` steps.

    ``out_dir/checkpoint.pt`` holds the network, optimiser, step, settings, spec and
    history; ``out_dir/train_log.jsonl`` one line per logged step and per validation.
    ``resume`` continues from the checkpoint up to ``settings.steps`` (the settings
    must match the checkpoint's apart from ``steps``, ``validate_every`` and
    ``checkpoint_every``). ``initial_state`` starts from given weights (fine-tuning);
    with ``settings.distill_weight`` the run keeps ``teacher_state``'s softmax (default:
    ``initial_state``'s) where it agrees with the labels.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    run = _run_start(
        out_dir=out_dir,
        spec=spec,
        settings=settings,
        train_cases=train_cases,
        val_cases=val_cases,
        initial_state=initial_state,
        device=device,
        data_description=data_description,
        teacher_state=teacher_state,
    )
    if resume:
        _checkpoint_resume(run)
    run.started = time.perf_counter()
    if run.history and "validation" in run.history[-1]:
        run.validation = run.history[-1]["validation"]
    _train_mode(run)
    while run.step < settings.steps:
        _optimisation_step(run)
        if on_step:
            on_step(run.step, run.last_loss)
        _after_step(run)
    if not run.checkpoint_path.exists():
        _checkpoint_save(run)
    run.network.eval()
    return TrainingResult(
        out_dir=out_dir,
        checkpoint_path=run.checkpoint_path,
        steps_done=run.step,
        seconds=run.seconds(),
        last_loss=run.last_loss,
        validation=run.validation,
        history=run.history,
    )


def network_from_checkpoint(path: Path) -> tuple[torch.nn.Module, SegmenterSpec, dict[str, Any]]:
    """The network of a training checkpoint (eval mode, CPU), its spec and the whole checkpoint."""
    state = checkpoint_read(path)
    spec = SegmenterSpec.from_dict(state["spec"])
    network = network_build(spec)
    network.load_state_dict(state["network"])
    return network.eval(), spec, state
