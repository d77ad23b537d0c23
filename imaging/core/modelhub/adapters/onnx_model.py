"""An ONNX segmentation network run by onnxruntime.

The file holds one network with one input (1, C, a, b, c) float32 in the model's axes
and one output (1, L, a, b, c): logits or probabilities, as its conventions say. Fixed
spatial input sizes in the graph become the inference window; symbolic ones let the
window be sized to the study. CUDA is used when onnxruntime has it and the device asks
for it, else the CPU.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imaging.core.modelhub.adapters.base import (
    AdapterSegmenter,
    from_model_axes,
    to_model_axes,
    windows_predict,
)
from imaging.core.modelhub.conventions import ModelDescription, ModelDescriptionError


def onnx_file(root: Path) -> Path:
    """The ``.onnx`` file of a registered ONNX model (the file itself or the only one in a folder)."""
    root = Path(root)
    if root.is_file():
        return root
    found = sorted(root.glob("*.onnx"))
    if len(found) != 1:
        raise ModelDescriptionError(f"{root}: expected exactly one .onnx file, found {len(found)}")
    return found[0]


def _session(path: Path, device: torch.device) -> Any:
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own classes for a bad graph
        raise ModelDescriptionError(f"{path.name}: onnxruntime cannot load it: {exc}") from exc


def onnx_load(
    *, description: ModelDescription, root: Path, device: torch.device
) -> AdapterSegmenter:
    """The ONNX model under ``root`` as an `AdapterSegmenter`."""
    import onnxruntime as ort

    path = onnx_file(root)
    session = _session(path, device)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) < 1:
        raise ModelDescriptionError(
            f"{path.name}: expected one input and an output, found {len(inputs)} and {len(outputs)}"
        )
    shape = list(inputs[0].shape)
    conventions = description.conventions
    if len(shape) != 5:
        raise ModelDescriptionError(f"{path.name}: input {inputs[0].name} is not 5-D: {shape}")
    if isinstance(shape[1], int) and shape[1] != conventions.channels:
        raise ModelDescriptionError(
            f"{path.name}: the network takes {shape[1]} channel(s); the conventions give "
            f"{conventions.channels}"
        )
    fixed = [s for s in shape[2:] if isinstance(s, int)]
    if len(fixed) == 3 and not conventions.window_voxels:
        window = (int(fixed[0]), int(fixed[1]), int(fixed[2]))
        conventions = replace(conventions, window_voxels=window)
    input_name = inputs[0].name

    def network(window: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: window.astype(np.float32, copy=False)})[0]

    def predict(hu: np.ndarray, _mirror: bool) -> np.ndarray:
        channels = to_model_axes(conventions.normalise(hu), conventions.axes)
        out = windows_predict(
            network=network, inputs=channels, conventions=conventions, device=device
        )
        return from_model_axes(out, conventions.axes)

    return AdapterSegmenter(
        description=description,
        predict=predict,
        device=device,
        versions={"onnxruntime": ort.__version__, "numpy": np.__version__},
        details={
            "file": path.name,
            "providers": session.get_providers(),
            "input": {"name": input_name, "shape": [str(s) for s in shape]},
            "window_voxels": list(conventions.window_voxels) if conventions.window_voxels else None,
        },
    )
