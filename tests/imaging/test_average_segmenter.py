"""``manage.py average_segmenter``: a model's weights averaged with its own fine-tune's."""

from __future__ import annotations

import json
from io import StringIO

import pytest
import torch
from django.core.management import call_command
from django.core.management.base import CommandError

from imaging.core.segmentation.network import WEIGHTS_DIR, file_sha256, segmenter_load


def _fine_tune(tmp_path, shipped):
    """One generated step trained on from the shipped weights."""
    run = tmp_path / "tuned"
    call_command("train_segmenter", f"--out={run}", f"--init-from={shipped}", "--generated",
                 "--loader-workers=0", "--recalibrate-batches=0", "--val-patients=0",
                 "--patch-size=16", "--batch-size=1", "--threads=1", "--quiet", "--steps=1",
                 "--lr=0.01", "--model-version=9.0.0", stdout=StringIO(), stderr=StringIO())  # fmt: skip
    return run / "lesionseg-9.0.0.pt"


def test_average_of_the_shipped_model_and_its_fine_tune(tmp_path):
    shipped = WEIGHTS_DIR / json.loads((WEIGHTS_DIR / "manifest.json").read_text())["file"]
    tuned = _fine_tune(tmp_path, shipped)
    out = tmp_path / "averaged"
    stdout = StringIO()
    call_command("average_segmenter", f"--base={shipped}", f"--tuned={tuned}",
                 "--tuned-share=0.5", f"--out={out}", "--model-version=9.0.1", stdout=stdout)  # fmt: skip
    assert "0.50 x" in stdout.getvalue()
    manifest = json.loads((out / "manifest.json").read_text())
    record = manifest["weight_average"]
    assert record["base"]["sha256"] == file_sha256(shipped)
    assert record["tuned"]["sha256"] == file_sha256(tuned)
    assert record["tuned_share"] == 0.5
    assert manifest["training"]["data"]["warm_start"]["checkpoint"] == str(shipped)
    assert manifest["training"]["data"]["warm_start"]["sha256"] == file_sha256(shipped)
    assert "## Weight average" in (out / "MODEL_CARD.md").read_text()

    model = segmenter_load(weights_path=out / manifest["file"], device="cpu")
    assert model.spec.version == "9.0.1"
    a = segmenter_load(weights_path=shipped, device="cpu").network.state_dict()
    b = segmenter_load(weights_path=tuned, device="cpu").network.state_dict()
    averaged = model.network.state_dict()
    moved = [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], b[k])]
    assert moved, "one step at lr 0.01 moved no weight"
    for name in moved:
        expected = ((a[name] + b[name]) / 2).half().float()
        assert torch.allclose(averaged[name], expected, atol=1e-3), name


def test_only_a_model_and_its_own_fine_tune_are_averaged(tmp_path):
    shipped = WEIGHTS_DIR / json.loads((WEIGHTS_DIR / "manifest.json").read_text())["file"]
    tuned = _fine_tune(tmp_path, shipped)
    # The fine-tune started from the shipped weights, not from itself.
    with pytest.raises(CommandError, match="not trained on from"):
        call_command("average_segmenter", f"--base={tuned}", f"--tuned={tuned}",
                     f"--out={tmp_path / 'x'}", "--model-version=9.0.1")  # fmt: skip
    with pytest.raises(CommandError, match="tuned-share"):
        call_command("average_segmenter", f"--base={shipped}", f"--tuned={tuned}",
                     "--tuned-share=1.5", f"--out={tmp_path / 'x'}", "--model-version=9.0.1")  # fmt: skip
    with pytest.raises(CommandError, match="--base: no weights manifest"):
        call_command("average_segmenter", f"--base={tmp_path / 'none.pt'}",
                     f"--tuned={tuned}", f"--out={tmp_path / 'x'}", "--model-version=9.0.1")  # fmt: skip
    assert not (tmp_path / "x").exists()
