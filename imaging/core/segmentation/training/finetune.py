"""Fine-tuning the shipped segmenter on a site's labelled cases, validated before and after.

`segmenter_finetune` starts from shipped weights, uses a small learning rate, can
freeze the encoder (the contracting path and the bottom of the U-Net), and reports
validation before and after on the site's held-out cases.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imaging.core.segmentation.network import Segmenter
from imaging.core.segmentation.training.cases import TrainingCase, seeded_rng
from imaging.core.segmentation.training.loop import segmenter_train
from imaging.core.segmentation.training.settings import TrainingSettings
from imaging.core.segmentation.training.shipping import percent_text, weights_ship
from imaging.core.segmentation.training.validation import validate


@dataclass
class FinetuneResult:
    """The fine-tuned weights and manifest, validation before and after, and the report."""

    out_dir: Path
    weights_path: Path
    manifest: dict[str, Any]
    before: dict[str, Any]
    after: dict[str, Any]
    report_path: Path
    seconds: float


def segmenter_finetune(
    *,
    base: Segmenter,
    cases: Sequence[TrainingCase],
    out_dir: Path,
    version: str,
    settings: TrainingSettings,
    validation_fraction: float = 0.25,
    device: str = "auto",
    on_step: Callable[[int, float], None] | None = None,
) -> FinetuneResult:
    """Adapt ``base`` to a site's cases: split, validate before, train, validate after, ship.

    The split is by case, seeded; at least one case validates (so at least two are
    needed). Writes the weights, manifest, MODEL_CARD.md and ``finetune_report.json``
    / ``finetune_report.md`` (before/after per-class Dice and lesion detection) in
    ``out_dir``.
    """
    if len(cases) < 2:
        raise ValueError("fine-tuning needs at least two labelled cases (one to validate)")
    started = time.perf_counter()
    order = seeded_rng(settings.seed, 11).permutation(len(cases))
    n_val = min(len(cases) - 1, max(1, round(validation_fraction * len(cases))))
    val = [cases[i] for i in order[:n_val]]
    train = [cases[i] for i in order[n_val:]]
    before = validate(model=base, cases=val)
    state = {k: v.detach().cpu().float() for k, v in base.network.state_dict().items()}
    result = segmenter_train(
        out_dir=out_dir,
        train_cases=train,
        val_cases=val,
        spec=base.spec,
        settings=settings,
        initial_state=state,
        device=device,
        on_step=on_step,
    )
    after = result.validation or before
    data = {
        "base_model": base.spec.label,
        "base_sha256": base.spec.sha256,
        "train_cases": [c.case_id for c in train],
        "validation_cases": [c.case_id for c in val],
    }
    report = {"base": base.spec.label, "version": version, "before": before, "after": after, **data}
    report_json = Path(out_dir) / "finetune_report.json"
    report_json.write_text(json.dumps(report, indent=1))
    md = _finetune_report_markdown(before, after, base.spec.label, version)
    report_md = Path(out_dir) / "finetune_report.md"
    report_md.write_text(md)
    path, manifest = weights_ship(
        checkpoint_path=result.checkpoint_path,
        out_dir=out_dir,
        version=version,
        data=data,
        title="Lesion segmenter (fine-tuned)",
        extra_card=md,
    )
    return FinetuneResult(
        out_dir=Path(out_dir),
        weights_path=path,
        manifest=manifest,
        before=before,
        after=after,
        report_path=report_md,
        seconds=time.perf_counter() - started,
    )


def _finetune_report_markdown(
    before: dict[str, Any], after: dict[str, Any], base: str, version: str
) -> str:
    lines = [
        f"## Fine-tuning report: {base} -> {version}",
        "",
        "| measure (site validation cases) | before | after |",
        "| --- | --- | --- |",
    ]
    for name in before["dice"]:
        b, a = before["dice"][name], after["dice"][name]
        lines.append(
            f"| Dice {name} | {'-' if b is None else f'{b:.3f}'} | {'-' if a is None else f'{a:.3f}'} |"
        )
    lines.append(
        f"| sensitivity >= 5 mm | {percent_text(before['sensitivity_5mm'])} | "
        f"{percent_text(after['sensitivity_5mm'])} |"
    )
    lines.append(
        f"| false positives per case | {before['false_positives_per_case']:.2f} | "
        f"{after['false_positives_per_case']:.2f} |"
    )
    return "\n".join(lines) + "\n"
