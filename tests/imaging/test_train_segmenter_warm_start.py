"""``train_segmenter --init-from`` accepts the shipped weights, not only a run's checkpoint."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from django.core.management.base import CommandError

from imaging.core.segmentation.network import WEIGHTS_DIR, SegmenterSpec
from imaging.management.commands.train_segmenter import _warm_start


def test_shipped_weights_warm_start_with_their_training_record():
    manifest = json.loads((WEIGHTS_DIR / "manifest.json").read_text())
    shipped = WEIGHTS_DIR / manifest["file"]
    data: dict = {}
    state = _warm_start(shipped, spec=SegmenterSpec(version="9.9.9"), data=data)
    expected = torch.load(shipped, map_location="cpu", weights_only=False)["state_dict"]
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    record = data["warm_start"]
    assert record["checkpoint"] == str(shipped)
    assert record["steps"] == manifest["training"]["steps"]
    assert record["settings"] == manifest["training"]["settings"]
    assert record["sha256"] == manifest["sha256"]
    if "weight_average" in manifest:  # averaged weights say so in what trains on from them
        assert record["data"]["weight_average"] == manifest["weight_average"]


def test_shipped_weights_without_their_manifest_are_refused(tmp_path):
    manifest = json.loads((WEIGHTS_DIR / "manifest.json").read_text())
    alone = tmp_path / manifest["file"]
    shutil.copy2(WEIGHTS_DIR / manifest["file"], alone)
    with pytest.raises(CommandError, match="no training record"):
        _warm_start(alone, spec=SegmenterSpec(version="9.9.9"), data={})


def test_warm_start_with_distillation_records_its_weight(tmp_path):
    """``--distill-weight`` trains on from the shipped weights keeping their softmax where
    it agrees with the labels; the weight is in the run's record."""
    from io import StringIO

    from django.core.management import call_command

    manifest = json.loads((WEIGHTS_DIR / "manifest.json").read_text())
    run = tmp_path / "distilled"
    tiny = ["--generated", "--loader-workers=0", "--recalibrate-batches=0", "--val-patients=0",
            "--patch-size=16", "--batch-size=1", "--threads=1", "--quiet", "--steps=1",
            f"--init-from={WEIGHTS_DIR / manifest['file']}"]  # fmt: skip
    call_command("train_segmenter", f"--out={run}", "--distill-weight=1", *tiny,
                 stdout=StringIO(), stderr=StringIO())  # fmt: skip
    recorded = json.loads((run / "manifest.json").read_text())["training"]
    assert recorded["settings"]["distill_weight"] == 1.0
    assert recorded["data"]["warm_start"]["checkpoint"].endswith(manifest["file"])


def test_distillation_needs_a_starting_model(tmp_path):
    from django.core.management import call_command

    with pytest.raises(CommandError, match="needs --init-from"):
        call_command("train_segmenter", f"--out={tmp_path / 'x'}", "--generated",
                     "--distill-weight=1")  # fmt: skip
    with pytest.raises(CommandError, match="distill-weight must be >= 0"):
        call_command("train_segmenter", f"--out={tmp_path / 'x'}", "--generated",
                     "--distill-weight=-1")  # fmt: skip
