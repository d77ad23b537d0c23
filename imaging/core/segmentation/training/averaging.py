"""Weights averaged between a model and its own fine-tune (WiSE-FT: Wortsman et al.,
"Robust fine-tuning of zero-shot models", CVPR 2022).

A network trained on from another's weights stays in the same basin of the loss, so the
straight line between the two holds networks that are as good as either on the data
each was trained for, and often better than both on data neither saw: the fine-tune's
new knowledge with less of its drift. Measured for RadTrack's lesion network in
benchmarks/README.md ("Half the shipped weights, half a distilled fine-tune").

The average is written like any other weights (`network.weights_export`): float16, a
manifest with its SHA-256, and a record of both parents (file, version, SHA-256) and of
the share, so that the result can be traced and remade. The spec, including the class
logit offsets, is the tuned model's: those offsets answer the tuned run's loss weights.
The arithmetic is `interpolation.weights_interpolate`'s; unlike a fine-tune's
interpolation (`interpolation.checkpoint_interpolate`) the batch-norm statistics are
averaged too, not measured afresh: two finished weights files carry no training patches,
and the shipped average was measured as made here.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from imaging.core.segmentation.network import Segmenter, network_build, weights_export
from imaging.core.segmentation.training.interpolation import weights_interpolate


def _parent(model: Segmenter, manifest: dict[str, Any]) -> dict[str, Any]:
    return {"version": model.spec.version, "file": manifest["file"],
            "sha256": manifest["sha256"]}  # fmt: skip


def weights_average(
    *,
    base: Segmenter,
    base_manifest: dict[str, Any],
    tuned: Segmenter,
    tuned_manifest: dict[str, Any],
    tuned_share: float,
    version: str,
    out_dir: Path,
) -> tuple[Path, dict[str, Any]]:
    """Write the average of ``base`` and ``tuned`` (its fine-tune) as version ``version``
    in ``out_dir``; the manifest keeps the tuned run's training record and adds
    ``weight_average`` (both parents and the share)."""
    if not base.spec.same_network(tuned.spec):
        raise ValueError("the two weights files hold different networks")
    if not 0.0 < tuned_share <= 1.0:
        raise ValueError(f"tuned_share must be in (0, 1], got {tuned_share}")
    averaged = weights_interpolate(
        base=base.network.state_dict(), tuned=tuned.network.state_dict(), share=tuned_share
    )
    built = network_build(tuned.spec)
    built.load_state_dict(averaged)
    spec = replace(tuned.spec, version=version, sha256="")
    record = {
        "base": _parent(base, base_manifest),
        "tuned": _parent(tuned, tuned_manifest),
        "tuned_share": tuned_share,
        "method": "WiSE-FT: every floating-point tensor (1 - share) * base + share * tuned; "
        "spec and class logit offsets of the tuned model",
    }
    extra = {
        "training": tuned_manifest.get("training", {}),
        "weight_average": record,
        "validation": None,
        "lesion_offset_calibration": tuned_manifest.get("lesion_offset_calibration"),
    }
    return weights_export(network=built, spec=spec, out_dir=out_dir, manifest_extra=extra)
