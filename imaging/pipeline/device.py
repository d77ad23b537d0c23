"""Which device a run uses: ``auto`` (CUDA when torch sees a GPU, else the CPU), ``cpu``
or ``cuda``, from the request or settings ``RADTRACK_DEVICE``."""

from __future__ import annotations

from django.conf import settings

from imaging.pipeline.record import StepFailed


def device_resolve(requested: str | None) -> str:
    """``auto`` picks CUDA when torch sees a GPU, else the CPU; ``cuda`` without one fails."""
    requested = (requested or settings.RADTRACK_DEVICE or "auto").lower()
    if requested not in {"auto", "cpu", "cuda"}:
        raise ValueError(f"device must be auto, cpu or cuda; got {requested!r}")
    if requested == "cpu":
        return "cpu"
    # torch loads only when a device is asked for: processes that queue work never do.
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if requested == "cuda":
        raise StepFailed("--device cuda was asked for but torch sees no CUDA GPU")
    return "cpu"
