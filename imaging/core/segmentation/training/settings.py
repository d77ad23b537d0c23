"""The settings of a training run and the learning-rate schedule they define."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class TrainingSettings:
    """Everything that decides a training run (recorded in the checkpoint and model card)."""

    seed: int = 0
    steps: int = 1200
    batch_size: int = 2
    patch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    warmup_steps: int = 50
    lesion_bias: float = 0.5
    #: Of the patches not on a lesion, the share centred on a candidate a radiologist
    #: rejected, in reviewed studies that have them (`training.patches`).
    hard_negative_share: float = 0.4
    #: Then this many steps more after the network's own false candidates on the
    #: training cases were added to their hard negatives (`training.mining`); 0: none.
    mining_steps: int = 0
    #: Of a fine-tune, the share of the tuned weights kept; the rest is the starting
    #: model's (`training.interpolation`, weight-space ensembling); 1.0: as tuned.
    tuned_share: float = 1.0
    #: Of a fine-tune, the weight of a loss that keeps the starting model's softmax
    #: wherever its argmax agrees with the labels (learning without forgetting: Li and
    #: Hoiem, 2017; `training.loop`): what it did right elsewhere is kept, what the
    #: labels correct is learnt. 0: off.
    distill_weight: float = 0.0
    lambda_dice: float = 1.0
    lambda_ce: float = 1.0
    validate_every: int = 400
    checkpoint_every: int = 50
    threads: int = 2
    freeze_encoder: bool = False
    recalibrate_batches: int = 40
    lesion_weight: float = 1.0
    #: Draw every patch fresh from the variation generator (`training.generated`)
    #: instead of from rendered cohort studies; ``plain_share`` of them plain phantom.
    generated: bool = False
    plain_share: float = 0.2
    #: Of the plain patches, the share acquired as the cohort generator acquires.
    cohort_acquisition_share: float = 0.0
    loader_workers: int = 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def learning_rate_factor(*, step: int, settings: TrainingSettings) -> float:
    """Linear warm-up over ``warmup_steps``, then a cosine decay to 5 % of the rate."""
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
