"""Calibration after training: exact batch-norm statistics and the lesion logit offset."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch

from imaging.core.segmentation.network import (
    SegmenterSpec,
    model_input_array,
    probabilities_predict,
    segmenter_from_network,
)
from imaging.core.segmentation.training.cases import TrainingCase, seeded_rng
from imaging.core.segmentation.training.encoder import is_batch_norm
from imaging.core.segmentation.training.patches import patch_batch
from imaging.core.segmentation.training.settings import TrainingSettings


def batchnorm_recalibrate(
    *,
    network: torch.nn.Module,
    cases: Sequence[TrainingCase],
    spec: SegmenterSpec,
    settings: TrainingSettings,
    device: torch.device,
    skip_prefixes: Sequence[str] = (),
    batches: Callable[[int], np.ndarray] | None = None,
) -> int:
    """Replace batch-norm running statistics by exact averages over fresh training patches.

    With two patches per step the exponential running averages lag and wobble; measured
    on this data at step 150, evaluating with them dropped the liver Dice of a
    validation crop from 0.92 (batch statistics) to 0.62, and recalibrating brought it
    back to 0.93. Layers under ``skip_prefixes`` (a frozen encoder) keep theirs.
    ``batches(n)`` gives the n-th batch of inputs when patches do not come from
    ``cases`` (a generated run). Returns the number of layers recalibrated.
    """
    layers = [
        module
        for name, module in network.named_modules()
        if is_batch_norm(module) and not any((name + ".").startswith(p) for p in skip_prefixes)
    ]
    if not layers or not (cases or batches) or settings.recalibrate_batches <= 0:
        return 0
    was_training = network.training
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average
    network.train()
    for module in network.modules():  # skipped layers must not learn either
        if is_batch_norm(module) and module not in layers:
            module.eval()
    rng = seeded_rng(settings.seed, 13)
    with torch.no_grad():
        for n in range(settings.recalibrate_batches):
            if batches is not None:
                inputs = batches(n)
            else:
                inputs, _targets = patch_batch(
                    cases=cases,
                    rng=rng,
                    spec=spec,
                    count=settings.batch_size,
                    size=settings.patch_size,
                    lesion_bias=settings.lesion_bias,
                    hard_negative_share=settings.hard_negative_share,
                )
            network(torch.from_numpy(np.ascontiguousarray(inputs)).to(device))
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
    network.train(was_training)
    return len(layers)


def _lesion_crops(
    model_spec: SegmenterSpec,
    network: torch.nn.Module,
    cases: Sequence[TrainingCase],
    device: torch.device,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(probabilities, true occupancy, half-occupied core) of a crop around every true lesion."""
    model = segmenter_from_network(network=network, spec=model_spec, device=device)
    crops = []
    for case in cases:
        for number in range(1, len(case.lesions) + 1):
            core = case.lesion_index == number
            if not core.any():
                continue
            idx = np.argwhere(core)
            box = tuple(
                slice(max(0, lo - 16), min(n, hi + 17))
                for lo, hi, n in zip(idx.min(0), idx.max(0), core.shape, strict=True)
            )
            inputs = model_input_array(case.hu[box].astype(np.float32), model_spec)
            probs = probabilities_predict(model=model, inputs=inputs)
            crops.append((probs, case.lesion_fraction[box].astype(np.float32), core[box]))
    return crops


def lesion_offset_calibrate(
    *,
    network: torch.nn.Module,
    spec: SegmenterSpec,
    cases: Sequence[TrainingCase],
    device: torch.device,
    offsets: Sequence[float] = (1.0, 0.5, 0.0, -0.5, -1.0, -1.5, -2.0, -2.5),
) -> tuple[float, list[dict[str, float]]]:
    """Pick the lesion logit offset that makes lesion probabilities sum to lesion volumes.

    A lesion loss weight w shifts the probabilities outwards; -log w undoes it only for
    a network trained to convergence, and an under-trained one is less sure than that.
    So, on held-out cases, each offset is tried on crops around every true lesion: the
    offsets that detect the most lesions (highest lesion probability in the lesion >=
    0.5) are kept, and of those the one whose summed lesion probability (values of at
    least 0.1, as `measure` sums them) comes closest to the true partial-volume sum.
    Returns the offset and the table of what each gave.
    """
    zero = replace(spec, class_logit_offsets=(0.0,) * len(spec.classes))
    crops = _lesion_crops(zero, network, cases, device)
    table = []
    for offset in offsets:
        scale = math.exp(offset)
        found = 0
        soft = exact = 0.0
        for probs, fraction, core in crops:
            lesion = (probs[3] + probs[4]) * scale
            lesion = lesion / (probs[0] + probs[1] + probs[2] + lesion)
            found += int(lesion[core].max() >= 0.5)
            soft += float(lesion[lesion >= 0.1].sum())
            exact += float(fraction.sum())
        table.append(
            {
                "offset": offset,
                "detected": found,
                "lesions": len(crops),
                "volume_ratio": soft / max(exact, 1e-9),
            }
        )
    best = max(r["detected"] for r in table) if table else 0
    kept = [r for r in table if r["detected"] == best]
    chosen = min(kept, key=lambda r: abs(math.log(max(r["volume_ratio"], 1e-9))))
    return float(chosen["offset"]), table
