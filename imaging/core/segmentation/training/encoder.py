"""Freezing the U-Net's encoder for fine-tuning: which parameters it holds, and its batch norms."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from imaging.core.segmentation.network import SegmenterSpec


def encoder_parameter_prefixes(spec: SegmenterSpec) -> list[str]:
    """Module paths of the MONAI UNet's contracting path and bottom block."""
    prefixes = []
    path = "model"
    for _ in spec.strides:
        prefixes.append(path + ".0.")
        path += ".1.submodule"
    prefixes.append(path + ".")
    return prefixes


def encoder_freeze(network: torch.nn.Module, spec: SegmenterSpec) -> int:
    """Stop gradients in the encoder; return how many parameters were frozen."""
    prefixes = encoder_parameter_prefixes(spec)
    frozen = 0
    for name, parameter in network.named_parameters():
        if any(name.startswith(p) for p in prefixes):
            parameter.requires_grad_(False)
            frozen += parameter.numel()
    return frozen


def is_batch_norm(module: torch.nn.Module) -> bool:
    """Whether ``module`` is a batch-norm layer (any dimension)."""
    return isinstance(module, torch.nn.modules.batchnorm._BatchNorm)


def frozen_norms_keep(*, network: torch.nn.Module, frozen_prefixes: Sequence[str]) -> None:
    """Keep the running statistics of frozen batch norms fixed (eval mode in a training net)."""
    for name, module in network.named_modules():
        if is_batch_norm(module) and any((name + ".").startswith(p) for p in frozen_prefixes):
            module.eval()
