"""Weight-space ensembling: the shipped weights lie on the line between the starting model
and the fine-tune, and batch-norm statistics are measured for the mixed weights."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from imaging.core.segmentation.network import SegmenterSpec, network_build
from imaging.core.segmentation.training.cases import TrainingCase
from imaging.core.segmentation.training.interpolation import (
    checkpoint_interpolate,
    weights_interpolate,
)
from imaging.core.segmentation.training.loop import checkpoint_read, network_from_checkpoint
from imaging.core.segmentation.training.settings import TrainingSettings
from tests.imaging.core.training_case import small_case

SPEC = SegmenterSpec(channels=(4, 8, 16, 32))


def _case() -> TrainingCase:
    return small_case("mix")


def _states() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    base = {k: v.clone() for k, v in network_build(SPEC).state_dict().items()}
    tuned = {
        k: (v + torch.randn_like(v) if v.is_floating_point() else v + 7) for k, v in base.items()
    }
    return base, tuned


def test_the_mixed_weights_lie_on_the_line_and_counters_are_the_tuned_ones():
    base, tuned = _states()
    mixed = weights_interpolate(base=base, tuned=tuned, share=0.25)
    for name, value in mixed.items():
        if value.is_floating_point():
            assert torch.allclose(value, 0.25 * tuned[name] + 0.75 * base[name], atol=1e-6), name
        else:
            assert torch.equal(value, tuned[name]), name
    assert all(torch.equal(weights_interpolate(base=base, tuned=tuned, share=1.0)[k], tuned[k])
               for k in tuned)  # fmt: skip


def test_mismatched_networks_and_shares_outside_0_1_are_refused():
    base, tuned = _states()
    with pytest.raises(ValueError, match=r"tuned_share must be in \[0, 1\], not 1.5"):
        weights_interpolate(base=base, tuned=tuned, share=1.5)
    name = next(iter(tuned))
    with pytest.raises(ValueError, match="differ in their layers"):
        weights_interpolate(
            base={k: v for k, v in base.items() if k != name}, tuned=tuned, share=0.5
        )
    wrong = {**base, name: torch.zeros(3)}
    with pytest.raises(ValueError, match=f"layer {name}: shape"):
        weights_interpolate(base=wrong, tuned=tuned, share=0.5)


def test_a_checkpoint_moved_back_keeps_its_layout_records_the_share_and_measures_its_norms(
    tmp_path,
):
    base, tuned = _states()
    settings = TrainingSettings(steps=1, batch_size=1, patch_size=16, recalibrate_batches=3)
    torch.save({"network": tuned, "optimizer": {}, "scheduler": {}, "step": 1,
                "settings": settings.as_dict(), "spec": SPEC.as_dict(), "history": [],
                "seconds": 1.0, "data": {"from_reviews": True}}, tmp_path / "tuned.pt")  # fmt: skip

    path = checkpoint_interpolate(checkpoint=tmp_path / "tuned.pt", base=base, share=0.5,
                                  cases=[_case()], spec=SPEC, settings=settings, device="cpu",
                                  out_dir=tmp_path / "mixed")  # fmt: skip

    network, spec, state = network_from_checkpoint(path)
    assert spec == SPEC and state["step"] == 1 and "optimizer" not in state
    assert state["settings"]["tuned_share"] == 0.5 and state["data"]["tuned_share"] == 0.5
    assert state["data"]["from_reviews"] is True
    assert TrainingSettings(**state["settings"]) == replace(settings, tuned_share=0.5)
    mixed = network.state_dict()
    norms = [k for k in mixed if k.endswith("running_mean")]
    assert norms
    for name, value in mixed.items():
        if name.endswith(("running_mean", "running_var")):
            # measured on the case's patches, not the halfway point of two statistics
            assert not torch.allclose(value, 0.5 * (tuned[name] + base[name]), atol=1e-3), name
            assert torch.isfinite(value).all(), name
        elif value.is_floating_point():
            assert torch.allclose(value, 0.5 * (tuned[name] + base[name]), atol=1e-6), name
    assert "tuned_share" not in checkpoint_read(tmp_path / "tuned.pt")["data"]  # left as it was
