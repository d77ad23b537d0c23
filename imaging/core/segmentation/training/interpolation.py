"""Weight-space ensembling of a fine-tune with the model it started from (WiSE-FT).

A network fine-tuned on a few reviewed studies learns what they show (a lesion kind it
missed) and, with it, moves its outputs elsewhere: new false positives on anatomy the
reviews did not cover. Wortsman et al. (Robust fine-tuning of zero-shot models, CVPR
2022) showed that the straight line between the starting weights and the fine-tuned
ones keeps most of the gain while giving back much of what was lost elsewhere: the
shipped weights are ``share * tuned + (1 - share) * base``. Batch-norm running
statistics are not weights of that line (they describe the activations the mixed
weights make), so they are measured afresh on the training patches.

``TrainingSettings.tuned_share`` (1.0: the fine-tuned weights as they are) is recorded
with the version like every other setting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from imaging.core.segmentation.network import SegmenterSpec, device_select
from imaging.core.segmentation.training.calibration import batchnorm_recalibrate
from imaging.core.segmentation.training.cases import TrainingCase
from imaging.core.segmentation.training.loop import network_from_checkpoint
from imaging.core.segmentation.training.settings import TrainingSettings


def weights_interpolate(
    *, base: Mapping[str, torch.Tensor], tuned: Mapping[str, torch.Tensor], share: float
) -> dict[str, torch.Tensor]:
    """``share * tuned + (1 - share) * base`` for every floating-point tensor; the
    others (batch-norm step counters) are ``tuned``'s."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"tuned_share must be in [0, 1], not {share}")
    if set(base) != set(tuned):
        missing = sorted(set(base) ^ set(tuned))[:3]
        raise ValueError(f"the two networks differ in their layers ({', '.join(missing)} ...)")
    out: dict[str, torch.Tensor] = {}
    for name, t in tuned.items():
        b = base[name]
        if b.shape != t.shape:
            raise ValueError(f"layer {name}: shape {tuple(b.shape)} against {tuple(t.shape)}")
        if t.is_floating_point():
            out[name] = (share * t.float() + (1.0 - share) * b.float().to(t.device)).to(t.dtype)
        else:
            out[name] = t.clone()
    return out


def checkpoint_interpolate(
    *,
    checkpoint: Path,
    base: Mapping[str, torch.Tensor],
    share: float,
    cases: Sequence[TrainingCase],
    spec: SegmenterSpec,
    settings: TrainingSettings,
    device: str,
    out_dir: Path,
) -> Path:
    """The fine-tune in ``checkpoint`` moved back towards ``base`` (`weights_interpolate`),
    its batch-norm statistics measured on ``cases``' training patches, saved as
    ``out_dir/checkpoint.pt`` (the training checkpoint's layout, the share recorded in
    its settings and data)."""
    network, _spec, state = network_from_checkpoint(checkpoint)
    mixed = weights_interpolate(base=base, tuned=network.state_dict(), share=share)
    network.load_state_dict(mixed)
    dev = device_select(device)
    network.to(dev)
    batchnorm_recalibrate(network=network, cases=cases, spec=spec, settings=settings, device=dev)
    network.eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = {
        **{k: v for k, v in state.items() if k not in ("optimizer", "scheduler")},
        "network": {k: v.detach().cpu() for k, v in network.state_dict().items()},
        "settings": {**state["settings"], "tuned_share": share},
        "data": {**(state.get("data") or {}), "interpolated_from": str(checkpoint),
                 "tuned_share": share},
    }  # fmt: skip
    path = out_dir / "checkpoint.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(saved, tmp)
    tmp.replace(path)
    return path
