"""Learning without forgetting: a fine-tune keeps the starting model's softmax where that
model agreed with the labels, and learns where the labels correct it."""

from __future__ import annotations

import pytest
import torch

from imaging.core.segmentation.network import SegmenterSpec, network_build
from imaging.core.segmentation.training.cases import TrainingCase, seeded_rng
from imaging.core.segmentation.training.loop import (
    distillation_loss,
    network_from_checkpoint,
    segmenter_train,
)
from imaging.core.segmentation.training.patches import patch_batch
from imaging.core.segmentation.training.settings import TrainingSettings
from tests.imaging.core.training_case import small_case

SPEC = SegmenterSpec(channels=(4, 8, 16, 32))


def _one_hot(labels: torch.Tensor, classes: int = 5) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, classes).movedim(-1, 1).float()


def test_the_loss_is_zero_where_the_student_is_the_teacher_and_counts_only_agreement():
    torch.manual_seed(0)
    teacher = torch.randn(1, 5, 4, 4, 4)
    labels = teacher.argmax(dim=1)
    assert distillation_loss(
        logits=teacher.clone(), teacher_logits=teacher, targets=_one_hot(labels)
    ).item() == pytest.approx(0.0, abs=1e-6)

    student = torch.randn(1, 5, 4, 4, 4)
    wrong = (labels + 1) % 5  # the labels disagree with the teacher everywhere
    assert distillation_loss(
        logits=student, teacher_logits=teacher, targets=_one_hot(wrong)
    ).item() == pytest.approx(0.0)

    # Half the voxels agree: the loss is the mean KL over those alone.
    half = labels.clone()
    half[..., :2] = wrong[..., :2]
    p = torch.softmax(teacher, dim=1)
    kl = (p * (torch.log(p) - torch.log_softmax(student, dim=1))).sum(dim=1)
    expected = kl[..., 2:].mean().item()
    got = distillation_loss(logits=student, teacher_logits=teacher, targets=_one_hot(half))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert got.item() > 0.0


def _case() -> TrainingCase:
    return small_case("kd")


def _drift(tmp_path, weight: float) -> float:
    """How far from the starting model's softmax a 20-step fine-tune with ``weight`` ends,
    on patches of the case where the starting model agrees with the labels."""
    torch.manual_seed(0)
    start = {k: v.clone() for k, v in network_build(SPEC).state_dict().items()}
    settings = TrainingSettings(steps=20, batch_size=1, patch_size=16, learning_rate=1e-3,
                                warmup_steps=1, recalibrate_batches=1, validate_every=100,
                                distill_weight=weight)  # fmt: skip
    result = segmenter_train(out_dir=tmp_path / f"w{weight:g}", train_cases=[_case()],
                             val_cases=[], spec=SPEC, settings=settings, initial_state=start,
                             device="cpu")  # fmt: skip
    tuned, _, _ = network_from_checkpoint(result.checkpoint_path)
    teacher = network_build(SPEC)
    teacher.load_state_dict(start)
    x, y = patch_batch(cases=[_case()], rng=seeded_rng(5, 1), spec=SPEC, count=2, size=16,
                       lesion_bias=0.5, hard_negative_share=0.4)  # fmt: skip
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    with torch.no_grad():
        return distillation_loss(
            logits=tuned(x), teacher_logits=teacher.eval()(x), targets=y
        ).item()


def test_a_fine_tune_with_the_loss_stays_nearer_the_starting_model(tmp_path):
    # Measured: 0.119 without, 0.058 with weight 10 (a newly initialised network, one case).
    without, kept = _drift(tmp_path, 0.0), _drift(tmp_path, 10.0)
    assert kept < 0.7 * without


def test_the_loss_needs_the_starting_weights(tmp_path):
    settings = TrainingSettings(steps=1, batch_size=1, patch_size=16, distill_weight=1.0)
    with pytest.raises(ValueError, match="distill_weight needs the starting weights"):
        segmenter_train(out_dir=tmp_path / "none", train_cases=[_case()], val_cases=[],
                        spec=SPEC, settings=settings, device="cpu")  # fmt: skip
