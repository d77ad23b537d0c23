"""The ``--from-reviews`` branch of ``manage.py finetune_segmenter`` (kept here, beside the
service it drives, so the command module stays the site-data fine-tuner it was)."""

from __future__ import annotations

import getpass
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from imaging.core.segmentation.network import SegmenterError
from imaging.core.segmentation.training.settings import TrainingSettings
from imaging.modelhub.services import RegistryError


def training_options_check(options: dict[str, Any]) -> None:
    """What every fine-tune of ``finetune_segmenter`` refuses (site data or reviews)."""
    for name in ("steps", "batch_size", "patch_size"):
        if options[name] < 1:
            raise CommandError(f"--{name.replace('_', '-')} must be at least 1")
    if options["patch_size"] % 8:
        raise CommandError("--patch-size must be a multiple of 8 (three 2x poolings)")
    if not 0 < options["lr"] <= 1e-3:
        raise CommandError("--lr must be in (0, 1e-3]: fine-tuning uses a small rate")
    if options["distill_weight"] < 0:
        raise CommandError("--distill-weight cannot be negative")


def _options_check(options: dict[str, Any]) -> None:
    if not options["from_reviews"]:
        raise CommandError("give DATA and --out, or --from-reviews")
    if options["data"] is not None or options["out"] is not None:
        raise CommandError("--from-reviews takes no DATA or --out: the registry keeps the result")
    training_options_check(options)
    for name in ("original_cases", "mining_steps"):
        if options[name] < 0:
            raise CommandError(f"--{name.replace('_', '-')} cannot be negative")
    if not 0 < options["tuned_share"] <= 1:
        raise CommandError("--tuned-share must be in (0, 1]: the share of the fine-tuned weights")


def finetune_from_reviews_command(command: BaseCommand, options: dict[str, Any]) -> None:
    import torch

    from imaging.modelhub.training import finetune_from_reviews

    _options_check(options)
    torch.set_num_threads(options["threads"])
    device = options["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    settings = TrainingSettings(
        seed=options["seed"], steps=options["steps"], batch_size=options["batch_size"],
        patch_size=options["patch_size"], learning_rate=options["lr"],
        warmup_steps=min(20, options["steps"]), validate_every=options["steps"],
        checkpoint_every=max(1, min(50, options["steps"])), threads=options["threads"],
        freeze_encoder=options["freeze_encoder"], lesion_bias=0.6,
        mining_steps=options["mining_steps"], tuned_share=options["tuned_share"],
        distill_weight=options["distill_weight"],
    )  # fmt: skip
    bar = tqdm(total=settings.steps + settings.mining_steps, desc="finetune", unit="step",
               disable=options["quiet"] or None, file=command.stderr._out)  # fmt: skip

    def on_step(step: int, loss: float) -> None:
        bar.n = step
        bar.set_postfix_str(f"loss {loss:.3f}", refresh=False)
        bar.update(0)

    try:
        outcome = finetune_from_reviews(
            settings=settings, version=options["model_version"],
            original_cases=options["original_cases"], device=device, username=getpass.getuser(),
            promote=options["promote"], on_step=on_step,
        )  # fmt: skip
    except (RegistryError, SegmenterError, ValueError) as exc:
        raise CommandError(str(exc)) from exc
    finally:
        bar.close()
    report = outcome.report
    if outcome.retired_reason:
        verdict = f"retired at once: {outcome.retired_reason}"
    elif outcome.promoted:
        verdict = "promoted: it is the active model"
    else:
        verdict = f"a candidate; promote it with manage.py model_promote {outcome.model.label}"
    sens = report.metrics["overall"]["sensitivity"] if report else None
    command.stdout.write(
        f"finetune_segmenter: {outcome.model.label} from {outcome.model.parent.label if outcome.model.parent else '?'} "
        f"on {outcome.examples} reviewed studies + {outcome.original_cases} original cases, "
        f"{settings.steps + settings.mining_steps} steps in {outcome.seconds:.0f} s; "
        "locked-set sensitivity "
        f"{'-' if sens is None else f'{100 * sens:.1f} %'}; {verdict}"
    )
