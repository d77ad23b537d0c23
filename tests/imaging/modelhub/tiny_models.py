"""Tiny segmentation models written in each registry format, and a phantom they label.

Every model is the same rule in its format's own network: the class is decided by the
HU of the voxel alone (air background, lung, a hypodense liver lesion at 0..30 HU, liver
from 30 HU up), so all formats must find and measure the phantom's lesion alike. The
rule is four affine logits of the normalised intensity (their argmax gives intervals),
which fits a 1x1x1 convolution and the 1x1x1 nnU-Net PlainConvUNet below.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from imaging.core.geometry.volume import Volume

#: Output channels of every tiny model, in order.
TINY_LABELS = {"0": "background", "1": "lung", "2": "liver_lesion", "3": "liver"}
#: Class edges in HU: background | lung | lesion | liver.
EDGES_HU = (-925.0, -300.0, 30.0)
SHARPNESS = 400.0
LESION_RADIUS_MM = 9.0


def _affine(edges: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Slopes and intercepts whose argmax over classes switches at ``edges``."""
    slopes = SHARPNESS * np.arange(len(edges) + 1, dtype=np.float64)
    intercepts = np.zeros(len(edges) + 1)
    for c, edge in enumerate(edges):
        intercepts[c + 1] = intercepts[c] - SHARPNESS * edge
    return slopes.astype(np.float32), intercepts.astype(np.float32)


def window_rule() -> tuple[np.ndarray, np.ndarray]:
    """The rule on HU -1000..1000 scaled to [0, 1] (ONNX, MONAI bundle)."""
    return _affine(tuple((e + 1000.0) / 2000.0 for e in EDGES_HU))


def conv_rule() -> torch.nn.Conv3d:
    conv = torch.nn.Conv3d(1, 4, kernel_size=1)
    slopes, intercepts = window_rule()
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(slopes).view(4, 1, 1, 1, 1))
        conv.bias.copy_(torch.from_numpy(intercepts))
    return conv.eval()


def phantom(*, seed: int = 0, noise_hu: float = 4.0) -> tuple[Volume, np.ndarray, float]:
    """A 2 mm study: air, a body of liver-like tissue (60 HU), two lungs, and a 9 mm
    radius lesion (15 HU). Returns the volume, the lesion centre (LPS mm) and its volume (ml)."""
    rng = np.random.default_rng(seed)
    shape = (40, 56, 64)
    k, j, i = np.mgrid[0 : shape[0], 0 : shape[1], 0 : shape[2]].astype(np.float32) * 2.0
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[((i - 64) / 58) ** 2 + ((j - 56) / 46) ** 2 <= 1] = 60.0
    for centre in (34.0, 94.0):
        hu[((i - centre) / 18) ** 2 + ((j - 52) / 22) ** 2 + ((k - 52) / 20) ** 2 <= 1] = -850.0
    centre_kji = np.array([30.0, 62.0, 66.0])
    inside = (k - centre_kji[0]) ** 2 + (j - centre_kji[1]) ** 2 + (i - centre_kji[2]) ** 2
    hu[inside <= LESION_RADIUS_MM**2] = 15.0
    hu += rng.normal(0.0, noise_hu, shape).astype(np.float32)
    origin = np.array([-60.0, -50.0, -40.0])
    volume = Volume(
        array=hu, spacing_mm=(2.0, 2.0, 2.0), origin_mm=tuple(origin), direction=np.eye(3)
    )
    centre_lps = origin + centre_kji[::-1]
    return volume, centre_lps, 4.0 / 3.0 * np.pi * LESION_RADIUS_MM**3 / 1000.0


def onnx_build(folder: Path) -> Path:
    """``model.onnx``: the rule as one 1x1x1 convolution, spatial axes symbolic."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    k, j, i = (torch.export.Dim(n, min=2, max=1024) for n in ("k", "j", "i"))
    torch.onnx.export(
        conv_rule(), (torch.zeros(1, 1, 16, 16, 16),), str(path), input_names=["image"],
        output_names=["logits"], dynamic_shapes={"input": {2: k, 3: j, 4: i}}, dynamo=True,
        verbose=False,
    )  # fmt: skip
    for extra in folder.glob("*.data"):
        extra.unlink()
    return path


def monai_bundle_build(folder: Path) -> Path:
    """A MONAI bundle: configs/inference.json (network_def, preprocessing, inferer),
    configs/metadata.json (channel_def), models/model.pt."""
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(parents=True, exist_ok=True)
    inference = {
        "bundle_root": ".",
        "network_def": {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 4,
                        "kernel_size": 1},
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [2.0, 2.0, 2.0]},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -1000, "a_max": 1000,
             "b_min": 0.0, "b_max": 1.0, "clip": True},
        ]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32], "sw_batch_size": 1},
    }  # fmt: skip
    metadata = {
        "name": "tiny_rule",
        "version": "0.1.0",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "num_channels": 1}},
            "outputs": {"pred": {"type": "image", "num_channels": 4, "channel_def": TINY_LABELS}},
        },
    }
    (folder / "configs" / "inference.json").write_text(json.dumps(inference, indent=1))
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=1))
    torch.save(conv_rule().state_dict(), folder / "models" / "model.pt")
    return folder


_ARCH = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {
        "n_stages": 2, "features_per_stage": [2, 2], "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[1, 1, 1], [1, 1, 1]], "strides": [[1, 1, 1], [2, 2, 2]],
        "n_conv_per_stage": [1, 1], "n_conv_per_stage_decoder": [1], "conv_bias": True,
        "norm_op": None, "norm_op_kwargs": None, "dropout_op": None, "dropout_op_kwargs": None,
        "nonlin": "torch.nn.ReLU", "nonlin_kwargs": {"inplace": True},
    },
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}  # fmt: skip


def _plans() -> dict:
    resampling = {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": "Dataset901_TinyRule", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [2.0, 2.0, 2.0],
        "original_median_shape_after_transp": [40, 56, 64], "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 1000.0, "mean": 0.0, "median": 0.0, "min": -1000.0,
            "percentile_00_5": -1000.0, "percentile_99_5": 1000.0, "std": 1000.0}},
        "configurations": {"3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": [32, 32, 32], "median_image_size_in_voxels": [40, 56, 64],
            "spacing": [2.0, 2.0, 2.0], "normalization_schemes": ["CTNormalization"],
            "use_mask_for_norm": [False], "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": resampling,
            "resampling_fn_seg_kwargs": {**resampling, "is_seg": True},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": resampling,
            "architecture": _ARCH, "batch_dice": False}},
    }  # fmt: skip


def nnunet_build(folder: Path, *, labels: dict | None = None) -> Path:
    """An nnU-Net v2 trained model folder (plans.json, dataset.json, fold_0/checkpoint_final.pth)
    whose PlainConvUNet computes the rule on nnU-Net's CT normalisation (HU / 1000)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    dataset = {"channel_names": {"0": "CT"}, "numTraining": 1, "file_ending": ".nii.gz",
               "labels": labels or {name: int(c) for c, name in TINY_LABELS.items()}}  # fmt: skip
    (folder / "plans.json").write_text(json.dumps(_plans(), indent=1))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    net = get_network_from_plans(_ARCH["network_class_name"], _ARCH["arch_kwargs"],
                                 _ARCH["_kw_requires_import"], 1, 4, deep_supervision=False)  # fmt: skip
    slopes, intercepts = _affine(tuple(e / 1000.0 for e in EDGES_HU))
    shift = 10.0  # ReLU(x + 10) passes x in [-1, 1] unchanged but for the shift
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.encoder.stages[0][0].convs[0].conv.weight[0, 0] = 1.0
        net.encoder.stages[0][0].convs[0].conv.bias[0] = shift
        # The decoder's input is (upsampled deep features, skip): pass the skip's channel 0.
        net.decoder.stages[0].convs[0].conv.weight[0, 2] = 1.0
        net.decoder.seg_layers[0].weight[:, 0] = torch.from_numpy(slopes).view(4, 1, 1, 1)
        net.decoder.seg_layers[0].bias.copy_(torch.from_numpy(intercepts - slopes * shift))
    torch.save(
        {"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
         "init_args": {"configuration": "3d_fullres", "fold": 0},
         "inference_allowed_mirroring_axes": (0, 1, 2)},
        folder / "fold_0" / "checkpoint_final.pth",
    )  # fmt: skip
    return folder
