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


def test_shipped_weights_without_their_manifest_are_refused(tmp_path):
    manifest = json.loads((WEIGHTS_DIR / "manifest.json").read_text())
    alone = tmp_path / manifest["file"]
    shutil.copy2(WEIGHTS_DIR / manifest["file"], alone)
    with pytest.raises(CommandError, match="no training record"):
        _warm_start(alone, spec=SegmenterSpec(version="9.9.9"), data={})
