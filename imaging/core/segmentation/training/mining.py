"""Hard negatives mined from labelled cases: where a network being fine-tuned sees a
lesion that the labels say is not there.

A reviewed study's labels are complete (every lesion the radiologist accepted, added or
drew is in them, and everything else the old model proposed was rejected), and so are
a generated case's. Any candidate a network makes on such a case that touches no
labelled lesion is a false positive it can be shown. The rejected candidates of the
review are the *old* model's mistakes; a network fine-tuned on a new lesion kind makes
new ones (a faint opacity learnt as a lesion fires on faint vessels), which the review
never saw. `hard_negatives_mine` segments each case with the network as it is now and
adds the centres of its false candidates to the case's hard negatives
(``meta["hard_negatives_kji"]``), on which `training.patches` centres a share of the
patches; a further round of training then learns them (`train_with_mining`, with
``TrainingSettings.mining_steps``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imaging.core.geometry.volume import Volume
from imaging.core.segmentation.lesions import lesions_segment
from imaging.core.segmentation.network import (
    SegmenterSpec,
    VolumeSegmenter,
    segmenter_from_network,
)
from imaging.core.segmentation.training.cases import TrainingCase
from imaging.core.segmentation.training.interpolation import checkpoint_interpolate
from imaging.core.segmentation.training.loop import network_from_checkpoint, segmenter_train
from imaging.core.segmentation.training.patches import hard_negative_organs
from imaging.core.segmentation.training.settings import TrainingSettings


def case_false_candidates(
    *, case: TrainingCase, model: VolumeSegmenter, device: str
) -> list[list[int]]:
    """The centres (the case's k, j, i) of the candidates ``model`` makes on ``case``
    that touch no voxel a lesion touches in its labels."""
    # The case is on the model grid (LPS, its own spacing): its index is its position.
    study = Volume(array=case.hu.astype(np.float32), spacing_mm=case.spacing_mm,
                   origin_mm=(0.0, 0.0, 0.0))  # fmt: skip
    # The network's own candidates: the second readers' are not its mistakes.
    seg = lesions_segment(volume=study, model=model, device=device, tta=False, second_reader=False)
    labels = seg.candidate_mask.array
    lesion = case.lesion_code > 0
    shape = np.array(lesion.shape)
    centres: list[list[int]] = []
    for value in np.unique(labels[labels > 0]):
        kji = np.argwhere(labels == value)
        lps = seg.candidate_mask.index_to_lps(kji[:, ::-1])
        on_case = np.round(study.lps_to_index(lps)[:, ::-1]).astype(int)
        inside = np.all((on_case >= 0) & (on_case < shape), axis=1)
        on_case = on_case[inside]
        if len(on_case) == 0 or lesion[tuple(on_case.T)].any():
            continue
        centres.append(np.round(on_case.mean(axis=0)).astype(int).tolist())
    return centres


def hard_negatives_mine(
    *, cases: Sequence[TrainingCase], model: VolumeSegmenter, device: str
) -> tuple[list[TrainingCase], int]:
    """``cases`` with ``model``'s false candidates added to their hard negatives, and
    how many were added in all."""
    mined: list[TrainingCase] = []
    added = 0
    for case in cases:
        centres = case_false_candidates(case=case, model=model, device=device)
        added += len(centres)
        known = list(case.meta.get("hard_negatives_kji") or [])
        meta = {**case.meta, "hard_negatives_kji": [*known, *centres]}
        mined.append(dataclasses.replace(case, meta=meta))
    return mined, added


def train_with_mining(
    *,
    out_dir: Path,
    cases: Sequence[TrainingCase],
    spec: SegmenterSpec,
    settings: TrainingSettings,
    initial_state: dict[str, torch.Tensor],
    device: str,
    on_step: Callable[[int, float], None] | None = None,
    data_description: dict[str, Any] | None = None,
) -> tuple[Path, int]:
    """Fine-tune from ``initial_state`` for ``settings.steps``; then, when
    ``settings.mining_steps`` is set, mine the network's false candidates on ``cases``
    (`hard_negatives_mine`) and train ``mining_steps`` more from where it stopped; then,
    when ``settings.tuned_share`` is under 1, move the weights that far back towards
    ``initial_state`` (`training.interpolation`).

    Returns the final checkpoint and how many false candidates were mined.
    """
    first = segmenter_train(out_dir=out_dir / "train", train_cases=cases, val_cases=[], spec=spec,
                            settings=settings, initial_state=initial_state, device=device,
                            on_step=on_step, data_description=data_description)  # fmt: skip
    checkpoint, added = first.checkpoint_path, 0
    if settings.mining_steps:
        checkpoint, added = _mined_train(out_dir=out_dir, cases=cases, spec=spec, settings=settings,
                                         checkpoint=checkpoint, device=device, on_step=on_step,
                                         data_description=data_description,
                                         teacher_state=initial_state)  # fmt: skip
    if settings.tuned_share < 1.0:
        checkpoint = checkpoint_interpolate(checkpoint=checkpoint, base=initial_state,
                                            share=settings.tuned_share, cases=cases, spec=spec,
                                            settings=settings, device=device,
                                            out_dir=out_dir / "interpolated")  # fmt: skip
    return checkpoint, added


def _mined_train(
    *,
    out_dir: Path,
    cases: Sequence[TrainingCase],
    spec: SegmenterSpec,
    settings: TrainingSettings,
    checkpoint: Path,
    device: str,
    on_step: Callable[[int, float], None] | None,
    data_description: dict[str, Any] | None,
    teacher_state: dict[str, torch.Tensor],
) -> tuple[Path, int]:
    """Mine the false candidates of the network in ``checkpoint`` and train on from it
    (a distillation loss keeps ``teacher_state``, the model the fine-tune started from)."""
    network = network_from_checkpoint(checkpoint)[0]
    tuned = segmenter_from_network(network=network, spec=spec, device=device)
    mined, added = hard_negatives_mine(cases=cases, model=tuned, device=device)
    by_organ = _mined_by_organ(before=cases, after=mined)
    state = {k: v.detach().cpu().float() for k, v in network.state_dict().items()}
    again = dataclasses.replace(settings, steps=settings.mining_steps, warmup_steps=0,
                                validate_every=settings.mining_steps,
                                checkpoint_every=min(50, settings.mining_steps))  # fmt: skip

    def on_mined_step(step: int, loss: float) -> None:
        if on_step is not None:
            on_step(settings.steps + step, loss)

    second = segmenter_train(out_dir=out_dir / "train-mined", train_cases=mined, val_cases=[],
                             spec=spec, settings=again, initial_state=state, device=device,
                             on_step=on_mined_step, teacher_state=teacher_state,
                             data_description={**(data_description or {}), "mined": added,
                                               "mined_by_organ": by_organ,
                                               "after_steps": settings.steps})  # fmt: skip
    return second.checkpoint_path, added


def _mined_by_organ(
    *, before: Sequence[TrainingCase], after: Sequence[TrainingCase]
) -> dict[str, int]:
    """How many of the mined false candidates lie in the lung, the liver, and elsewhere."""
    names = {0: "elsewhere", 1: "lung", 2: "liver"}
    counts = dict.fromkeys(names.values(), 0)
    for old, new in zip(before, after, strict=True):
        known = len(old.meta.get("hard_negatives_kji") or [])
        centres = list(new.meta.get("hard_negatives_kji") or [])[known:]
        for organ in hard_negative_organs(new, centres):
            counts[names.get(organ, "elsewhere")] += 1
    return counts
