"""A MONAI bundle's network, read through ``monai.bundle``.

A bundle is a folder: ``configs/inference.json`` (or ``.yaml``) whose ``network_def``
builds the network, ``configs/metadata.json`` (its ``network_data_format`` may name
the output channels: ``outputs.pred.channel_def``), and ``models/model.pt`` (a state
dict) or ``models/model.ts`` (TorchScript). What the bundle's own preprocessing does is
read from its config where it is one of MONAI's usual transforms (``Spacingd`` pixdim,
``Orientationd`` axcodes RAS or LPS, ``ScaleIntensityRanged`` to [0, 1], clipped or not
as its ``clip`` says, MONAI's default being not) and its
``inferer`` roi_size becomes the window; anything else must be declared in the
registered conventions. A bundle config can run Python (``$`` expressions) and a
checkpoint is a pickle: register bundles only from a source you trust, as with code.
"""

from __future__ import annotations

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


def bundle_config_path(root: Path) -> Path:
    for name in ("inference.json", "inference.yaml", "inference.yml"):
        path = Path(root) / "configs" / name
        if path.is_file():
            return path
    raise ModelDescriptionError(f"{root}: no configs/inference.json (or .yaml): not a MONAI bundle")


def bundle_parser(root: Path) -> Any:
    """The bundle's config parser (metadata read when present, ``bundle_root`` set)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    meta = Path(root) / "configs" / "metadata.json"
    if meta.is_file():
        parser.read_meta(str(meta))
    parser.read_config(str(bundle_config_path(root)))
    parser["bundle_root"] = str(root)
    return parser


def _transforms(parser: Any) -> list[dict[str, Any]]:
    raw = parser.get("preprocessing", default=None)
    items = raw.get("transforms", []) if isinstance(raw, dict) else []
    return [t for t in items if isinstance(t, dict) and isinstance(t.get("_target_"), str)]


def _clip_flag(value: Any) -> bool:
    """``ScaleIntensityRanged``'s ``clip`` (MONAI's default: False, values outside the
    window go beyond [0, 1]); an expression or reference is not evaluated here."""
    if isinstance(value, bool):
        return value
    raise ModelDescriptionError(
        f"the bundle's ScaleIntensityRanged has clip={value!r}, not true or false: declare "
        "its conventions (window_clip) when registering it"
    )


def bundle_conventions(parser: Any) -> dict[str, Any]:
    """Conventions read from the bundle's config where it uses MONAI's usual transforms."""
    found: dict[str, Any] = {"intensity": "windows", "axes": "RAS", "divisor": 16}
    for transform in _transforms(parser):
        target = transform["_target_"].rsplit(".", 1)[-1]
        if target in ("Spacingd", "Spacing") and "pixdim" in transform:
            found["spacing_mm"] = [float(v) for v in transform["pixdim"]]
        elif target in ("Orientationd", "Orientation"):
            axcodes = str(transform.get("axcodes", "RAS")).upper()
            if axcodes not in ("RAS", "LPS"):
                raise ModelDescriptionError(
                    f"the bundle orients to {axcodes}; RadTrack reads RAS or LPS bundles"
                )
            found["axes"] = axcodes
        elif target in ("ScaleIntensityRanged", "ScaleIntensityRange"):
            if (float(transform.get("b_min", 0.0)), float(transform.get("b_max", 1.0))) != (
                0.0,
                1.0,
            ):
                raise ModelDescriptionError(
                    "the bundle scales intensities to a range other than [0, 1]: declare "
                    "its conventions when registering it"
                )
            found["windows_hu"] = [[float(transform["a_min"]), float(transform["a_max"])]]
            found["window_clip"] = _clip_flag(transform.get("clip", False))
    inferer = parser.get("inferer", default=None)
    if isinstance(inferer, dict) and isinstance(inferer.get("roi_size"), list):
        found["window_voxels"] = [int(v) for v in inferer["roi_size"]]
    return found


def bundle_labels(parser: Any) -> dict[str, str] | None:
    """``metadata.json`` ``network_data_format.outputs.pred.channel_def``, when given."""
    try:
        outputs = parser.get("_meta_", default={}).get("network_data_format", {}).get("outputs", {})
    except AttributeError:
        return None
    for entry in outputs.values() if isinstance(outputs, dict) else []:
        if isinstance(entry, dict) and isinstance(entry.get("channel_def"), dict):
            return {str(k): str(v) for k, v in entry["channel_def"].items()}
    return None


def _network(root: Path, parser: Any) -> torch.nn.Module:
    models = Path(root) / "models"
    if (models / "model.ts").is_file() and not (models / "model.pt").is_file():
        return torch.jit.load(str(models / "model.ts"), map_location="cpu")
    if not (models / "model.pt").is_file():
        raise ModelDescriptionError(f"{root}: no models/model.pt or models/model.ts")
    try:
        network = parser.get_parsed_content("network_def", instantiate=True)
    except Exception as exc:  # a config error comes as any of MONAI's or Python's classes
        raise ModelDescriptionError(f"{root}: network_def cannot be built: {exc}") from exc
    state = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "network"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelDescriptionError(
            f"{root}: models/model.pt does not fit network_def: {exc}"
        ) from exc
    return network


def bundle_load(
    *, description: ModelDescription, root: Path, device: torch.device
) -> AdapterSegmenter:
    """The bundle under ``root`` as an `AdapterSegmenter` (network in eval mode on ``device``)."""
    import monai

    parser = bundle_parser(root)
    network = _network(root, parser).to(device).eval()
    conventions = description.conventions

    def forward(window: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(window).to(device)
            with torch.autocast(
                device_type="cuda", dtype=torch.float16, enabled=device.type == "cuda"
            ):
                out = network(x)
            return out.float().cpu().numpy()

    def predict(hu: np.ndarray, _mirror: bool) -> np.ndarray:
        channels = to_model_axes(conventions.normalise(hu), conventions.axes)
        out = windows_predict(
            network=forward, inputs=channels, conventions=conventions, device=device
        )
        return from_model_axes(out, conventions.axes)

    return AdapterSegmenter(
        description=description,
        predict=predict,
        device=device,
        versions={"monai": monai.__version__, "torch": torch.__version__},
        details={
            "config": bundle_config_path(root).name,
            "bundle_name": str(parser.get("_meta_", default={}).get("name", "")),
            "bundle_version": str(parser.get("_meta_", default={}).get("version", "")),
        },
    )
