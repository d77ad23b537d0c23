"""An nnU-Net v2 trained model folder, run by nnU-Net's own predictor.

The folder is what nnU-Net's training leaves (``nnUNet_results/DatasetXXX/<trainer>__
<plans>__<configuration>``): ``plans.json``, ``dataset.json`` and ``fold_N/
checkpoint_final.pth`` (``checkpoint_best.pth`` when no final one exists).
``nnUNetPredictor.initialize_from_trained_model_folder`` builds the network its plans
describe from every fold found (an ensemble when there are several), and
``predict_single_npy_array`` does nnU-Net's own preprocessing (transpose, its CT
normalisation, resampling to its spacing), sliding windows, mirroring (when ``tta``)
and the way back to the grid it was given. That grid is the study on an LPS grid at the
registered spacing (default: the plans' spacing), handed over as SimpleITK would hand
an LPS-oriented image: array (k, j, i), spacing (k, j, i). Region-based models (sigmoid
outputs) are refused: RadTrack's classes are exclusive. Checkpoints are pickles:
register models only from a source you trust, as with code.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imaging.core.modelhub.adapters.base import AdapterSegmenter
from imaging.core.modelhub.conventions import ModelDescription, ModelDescriptionError

CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_best.pth")


def _quiet_import() -> Any:
    # nnU-Net prints a warning per unset nnUNet_* folder on import; the predictor needs none.
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ.setdefault(name, "")
    with contextlib.redirect_stdout(io.StringIO()):
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    return nnUNetPredictor


def trained_folder_check(root: Path) -> tuple[str, tuple[str, ...]]:
    """The checkpoint name and the folds a trained model folder holds (or why it is not one)."""
    root = Path(root)
    for name in ("plans.json", "dataset.json"):
        if not (root / name).is_file():
            raise ModelDescriptionError(
                f"{root}: no {name}: not an nnU-Net v2 trained model folder"
            )
    for checkpoint in CHECKPOINT_NAMES:
        folds = tuple(
            sorted(
                p.name.removeprefix("fold_")
                for p in root.glob("fold_*")
                if (p / checkpoint).is_file()
            )
        )
        if folds:
            return checkpoint, folds
    raise ModelDescriptionError(f"{root}: no fold_N/{CHECKPOINT_NAMES[0]} (or checkpoint_best.pth)")


def predictor_build(*, root: Path, device: torch.device) -> Any:
    """nnU-Net's predictor, initialised from the trained model folder."""
    nnUNetPredictor = _quiet_import()
    checkpoint, folds = trained_folder_check(root)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            predictor = nnUNetPredictor(
                tile_step_size=0.5,
                use_gaussian=True,
                use_mirroring=True,
                perform_everything_on_device=device.type == "cuda",
                device=device,
                verbose=False,
                verbose_preprocessing=False,
                allow_tqdm=False,
            )
            predictor.initialize_from_trained_model_folder(
                str(root), use_folds=tuple(f if f == "all" else int(f) for f in folds),
                checkpoint_name=checkpoint,
            )  # fmt: skip
    except (KeyError, ValueError, RuntimeError, ImportError, FileNotFoundError) as exc:
        raise ModelDescriptionError(f"{root}: nnU-Net cannot load the model: {exc}") from exc
    if predictor.label_manager.has_regions:
        raise ModelDescriptionError(
            f"{root}: a region-based nnU-Net model (sigmoid outputs); RadTrack needs exclusive classes"
        )
    return predictor


def nnunet_defaults(root: Path, predictor: Any) -> tuple[dict[str, Any], dict[str, int]]:
    """Conventions (the plans' spacing, HU handed over as they are) and ``dataset.json``'s labels."""
    spacing_kji = [float(v) for v in predictor.configuration_manager.spacing]
    transpose = list(predictor.plans_manager.transpose_forward)
    # The plans' spacing is in nnU-Net's transposed axis order; undo it to (k, j, i).
    spacing = [0.0, 0.0, 0.0]
    for position, axis in enumerate(transpose):
        spacing[axis] = spacing_kji[position]
    conventions = {
        "spacing_mm": spacing[::-1],
        "intensity": "none",
        "axes": "LPS",
        "output": "probabilities",
    }
    return conventions, dict(predictor.dataset_json.get("labels", {}))


def nnunet_load(
    *, description: ModelDescription, root: Path, device: torch.device
) -> AdapterSegmenter:
    """The trained model folder under ``root`` as an `AdapterSegmenter`."""
    import nnunetv2

    predictor = predictor_build(root=root, device=device)
    n_outputs = predictor.label_manager.num_segmentation_heads
    if n_outputs != len(description.labels.labels):
        raise ModelDescriptionError(
            f"{root}: the model has {n_outputs} outputs; the label map names "
            f"{len(description.labels.labels)}"
        )
    spacing_kji = [float(v) for v in description.conventions.spacing_mm[::-1]]

    def predict(hu: np.ndarray, mirror: bool) -> np.ndarray:
        predictor.use_mirroring = bool(mirror and predictor.allowed_mirroring_axes)
        with contextlib.redirect_stdout(io.StringIO()):
            _, probabilities = predictor.predict_single_npy_array(
                hu[None].astype(np.float32), {"spacing": spacing_kji}, None, None, True
            )
        return np.asarray(probabilities, dtype=np.float32)

    checkpoint, folds = trained_folder_check(root)
    return AdapterSegmenter(
        description=description,
        predict=predict,
        device=device,
        own_mirroring=True,
        versions={"nnunetv2": getattr(nnunetv2, "__version__", _dist_version()), "torch": torch.__version__},
        details={
            "trainer": predictor.trainer_name,
            "configuration": predictor.configuration_manager.configuration_name
            if hasattr(predictor.configuration_manager, "configuration_name") else "",
            "folds": list(folds),
            "checkpoint": checkpoint,
            "mirroring_axes": list(predictor.allowed_mirroring_axes or ()),
        },
    )  # fmt: skip


def _dist_version() -> str:
    from importlib.metadata import version

    return version("nnunetv2")
