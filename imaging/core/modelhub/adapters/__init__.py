"""Loading a registered model version of any format behind one ``segment`` call.

`model_inspect` reads what a model folder says about itself (its label map and input
conventions where the format records them); `model_load` checks the files against their
registered SHA-256 and loads the model: ``radtrack`` weights as the shipped network
(`network.Segmenter`), the others as an `base.AdapterSegmenter`. Both answer
``segment(volume=..., device=..., tta=...)`` with a `network.SegmentationOutput`, which
`lesions.lesions_segment` post-processes and measures the same way for every format.
`model_smoke_test` runs a loaded model on a small phantom, so a label map with the wrong
number of channels is refused at registration rather than at the first study.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imaging.core.geometry.volume import Volume
from imaging.core.modelhub.adapters.base import device_for
from imaging.core.modelhub.conventions import (
    FORMATS,
    InputConventions,
    LabelMap,
    ModelDescription,
    ModelDescriptionError,
)
from imaging.core.modelhub.files import model_files_verify
from imaging.core.segmentation.network import (
    CLASSES,
    MANIFEST_NAME,
    Segmenter,
    SegmenterError,
    SegmenterSpec,
    VolumeSegmenter,
    segmenter_load,
)


def radtrack_manifest(root: Path) -> dict[str, Any]:
    """``manifest.json`` of a RadTrack weights folder (what `weights_export` writes)."""
    path = Path(root) / MANIFEST_NAME if Path(root).is_dir() else Path(root).parent / MANIFEST_NAME
    if not path.is_file():
        raise ModelDescriptionError(f"{root}: no {MANIFEST_NAME}: not a RadTrack weights folder")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelDescriptionError(f"{path}: not JSON: {exc}") from exc


def model_inspect(*, fmt: str, root: Path) -> dict[str, Any]:
    """What the model says about itself: ``labels`` (or None) and ``conventions`` (partial);
    RadTrack weights also their name, version and training record."""
    root = Path(root)
    if fmt not in FORMATS:
        raise ModelDescriptionError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt == "radtrack":
        manifest = radtrack_manifest(root)
        spec = SegmenterSpec.from_dict(manifest["spec"])
        return {
            # how the weights were made (data, warm starts): what fine-tuning mixes back
            # in against forgetting and what drift is measured against
            "manifest_training": manifest.get("training", {}).get("data", {}),
            "labels": list(spec.classes),
            "conventions": {
                "spacing_mm": list(spec.spacing_mm),
                "intensity": "windows",
                "windows_hu": [list(w) for w in spec.windows_hu],
            },  # fmt: skip
            "name": spec.name,
            "version": spec.version,
        }
    if fmt == "nnunetv2":
        from imaging.core.modelhub.adapters.nnunet import nnunet_defaults, predictor_build

        conventions, labels = nnunet_defaults(
            root, predictor_build(root=root, device=torch.device("cpu"))
        )
        return {"labels": labels or None, "conventions": conventions}
    if fmt == "monai-bundle":
        from imaging.core.modelhub.adapters.monai_bundle import (
            bundle_conventions,
            bundle_labels,
            bundle_parser,
        )

        parser = bundle_parser(root)
        return {"labels": bundle_labels(parser), "conventions": bundle_conventions(parser)}
    from imaging.core.modelhub.adapters.onnx_model import onnx_file

    onnx_file(root)
    return {"labels": None, "conventions": {}}


def _radtrack_load(description: ModelDescription, root: Path, device: torch.device) -> Segmenter:
    manifest_path = root / MANIFEST_NAME
    manifest = radtrack_manifest(root)
    model = segmenter_load(
        weights_path=root / manifest["file"], manifest_path=manifest_path, device=device
    )
    if (
        tuple(description.labels.labels) != tuple(model.spec.classes)
        or model.spec.classes != CLASSES
    ):
        raise ModelDescriptionError(
            f"RadTrack weights must label {', '.join(CLASSES)}; got {', '.join(model.spec.classes)}"
        )
    # The registry's name, version and digest (over all the version's files, not the
    # weights file alone) are what segmentations record, as for every other format.
    model.spec = replace(model.spec, name=description.name, version=description.version,
                         sha256=description.sha256 or model.spec.sha256)  # fmt: skip
    return model


def model_load(
    *, description: ModelDescription, root: Path, device: str | torch.device | None = "auto",
    verify: bool = True,
) -> VolumeSegmenter:  # fmt: skip
    """Check ``root``'s files against ``description`` and load the model on ``device``."""
    root = Path(root)
    if verify:
        model_files_verify(root=root, files=description.files)
    dev = device_for(device)
    if description.fmt == "radtrack":
        return _radtrack_load(description, root, dev)
    if description.fmt == "nnunetv2":
        from imaging.core.modelhub.adapters.nnunet import nnunet_load

        return nnunet_load(description=description, root=root, device=dev)
    if description.fmt == "monai-bundle":
        from imaging.core.modelhub.adapters.monai_bundle import bundle_load

        return bundle_load(description=description, root=root, device=dev)
    if description.fmt == "onnx":
        from imaging.core.modelhub.adapters.onnx_model import onnx_load

        return onnx_load(description=description, root=root, device=dev)
    raise ModelDescriptionError(f"format {description.fmt!r} is not one of {', '.join(FORMATS)}")


def description_build(
    *, name: str, version: str, fmt: str, labels: Any, conventions: Any, files=(), sha256: str = ""
) -> ModelDescription:
    """A checked `ModelDescription` from JSON-like parts (errors name the part)."""
    return ModelDescription(
        name=name,
        version=version,
        fmt=fmt,
        labels=LabelMap.from_json(labels),
        conventions=InputConventions.from_json(conventions),
        files=tuple(files),
        sha256=sha256,
    )


def smoke_phantom(spacing_mm: float = 2.0) -> Volume:
    """A small phantom (air, a body of soft tissue, two lungs, a liver with a hypodense
    lesion): enough for a model to run on, not to be judged on."""
    k, j, i = np.mgrid[0:48, 0:64, 0:64].astype(np.float32) * spacing_mm
    hu = np.full(k.shape, -1000.0, dtype=np.float32)
    hu[((i - 64) / 56) ** 2 + ((j - 64) / 44) ** 2 <= 1] = 40.0
    for centre in (40.0, 88.0):
        hu[((i - centre) / 18) ** 2 + ((j - 60) / 24) ** 2 + ((k - 60) / 30) ** 2 <= 1] = -850.0
    hu[((i - 44) / 26) ** 2 + ((j - 70) / 22) ** 2 + ((k - 30) / 24) ** 2 <= 1] = 60.0
    hu[(i - 44) ** 2 + (j - 70) ** 2 + (k - 30) ** 2 <= 64] = 20.0
    return Volume(array=hu, spacing_mm=(spacing_mm,) * 3, origin_mm=(-64.0, -64.0, -48.0),
                  direction=np.eye(3))  # fmt: skip


def model_smoke_test(model: VolumeSegmenter) -> dict[str, Any]:
    """Run ``model`` once on `smoke_phantom`; a failure is a `SegmenterError` saying why."""
    try:
        output = model.segment(volume=smoke_phantom(), tta=False)
    except SegmenterError:
        raise
    except Exception as exc:  # the format's own error: say it in the registry's terms
        raise SegmenterError(
            f"model {model.version} failed on a test phantom: {type(exc).__name__}: {exc}"
        ) from exc
    counts = np.bincount(output.label.array.ravel(), minlength=len(CLASSES))
    return {"voxels_per_class": {c: int(n) for c, n in zip(CLASSES, counts, strict=True)},
            "seconds": round(output.timings["total"], 3)}  # fmt: skip
