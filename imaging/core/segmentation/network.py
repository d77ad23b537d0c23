"""The lesion segmenter: a MONAI 3D U-Net, its shipped weights, and sliding-window inference.

One network labels five classes on a 1.5 mm isotropic grid in LPS: 0 background,
1 lung, 2 liver, 3 lung nodule, 4 liver lesion. Organs and lesions share one softmax,
so a lesion's organ is its class, and the organ masks come for free for the
post-processing and the classical baseline.

Why this network: a residual U-Net (``monai.networks.nets.UNet``, Kerfoot et al. 2018)
with channels 12-24-48-96, three stride-2 levels, one residual unit per level and batch
norm: about 0.34 M parameters. The synthetic lesions are compact and strongly
contrasted and the organs smooth, so depth and width buy little; what is scarce is CPU
time (training on two shared cores, and a whole 512x512x300 study within the 60 s
processing budget). Measured here on the shared two cores, one training step (two
64^3 patches) took 3.7 s with these channels, 8.4 s with 16-32-64-128 (0.6 M
parameters) and 2.7 s with 8-16-32-64; a U-Net needs no more than a few hundred
steps on this data, and its skip connections keep the lesion boundary sharp, which the
measurements need. SegResNet or UNETR (transformer) would cost more for no gain here.
Batch norm rather than instance norm, so that the statistics do not depend on the
window size: inference uses bigger windows (up to 128^3, fewer overlaps) than the
64^3 training patches.

Input (`model_input`): the study is cut to the body's box on its own grid (largest
component above -500 HU, plus 12 mm), and only that is reoriented to LPS (exact) and
resampled linearly to 1.5 mm (`preprocess.Reorient`, `preprocess.Resample`), then fed
as two channels: HU clipped to -1000..1000 and to -150..250, each scaled to [0, 1] (a
lung and a soft-tissue window: liver lesions differ from liver by only 20-45 HU).

Inference: ``monai.inferers.sliding_window_inference`` with windows sized to tile the
box with about 24 voxels of overlap (at most 128 per axis), one window at a time
(``sw_batch_size=1``), Gaussian blending of softmax probabilities accumulated on the
CPU (``device="cpu"``), so GPU memory is one window whatever the study's size; on CUDA
under ``torch.autocast`` (float16). Test-time augmentation mirrors left-right, a
transform the network is trained to be equivariant to (every training patch is
mirrored half the time, `training.generated`): the mirrored pass runs on boxes around
every region with lesion probability above 0.1 (plus context), is mirrored back and
averaged in; the per-voxel uncertainty is the absolute difference of the two lesion
probabilities (0 where the mirrored pass did not run because no lesion is plausible
there). The uncertainty is reported with each lesion and never removes one.

Weights: ``imaging/weights/manifest.json`` names the file, the model name and version,
its SHA-256 and its spec; `segmenter_load` refuses a file whose digest differs.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from scipy import ndimage

from imaging.core.geometry.preprocess import StepRecord
from imaging.core.geometry.volume import Volume
from imaging.core.segmentation.model_input import (
    BODY_HU,
    body_box,
    body_crop,
    model_grid,
    model_input_array,
)
from imaging.core.segmentation.precision import half_convert, single_convert

CLASSES: tuple[str, ...] = ("background", "lung", "liver", "lung_nodule", "liver_lesion")
LESION_CLASSES: dict[int, str] = {3: "lung", 4: "liver"}  # class -> organ
ORGAN_CLASSES: dict[str, int] = {"lung": 1, "liver": 2}
WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"  # imaging/weights
MANIFEST_NAME = "manifest.json"
TTA_LESION_THRESHOLD = 0.1


class SegmenterError(Exception):
    """The segmenter cannot be loaded or run as asked (message shown to users)."""


@dataclass(frozen=True)
class SegmenterSpec:
    """What a set of weights is and expects: name, version, classes, input grid and windows.

    ``spacing_mm`` is the model grid (i, j, k) in LPS; ``windows_hu`` are the input
    channels, each HU clipped to (low, high) and scaled to [0, 1];
    ``class_logit_offsets`` are added to the network's logits before the softmax: minus
    the log of each class's loss weight in training (logit adjustment, Menon et al.
    2021), which undoes the shift a weighted cross-entropy gives the probabilities, so
    that 0.5 is again the lesion's edge; ``sha256`` is what a segmentation records as
    the model's digest: the weights file's SHA-256 when `segmenter_load` reads a
    folder by itself (empty until shipped), the registered version's digest over all
    its files (`SegmentationModel.sha256`) when the registry loads it.
    """

    def same_network(self, other: SegmenterSpec) -> bool:
        """Whether weights of ``other`` fit this spec's network and input."""
        keys = (
            "classes",
            "spacing_mm",
            "windows_hu",
            "channels",
            "strides",
            "num_res_units",
            "norm",
        )
        return all(getattr(self, k) == getattr(other, k) for k in keys)

    name: str = "lesionseg"
    version: str = "0.0.0"
    classes: tuple[str, ...] = CLASSES
    spacing_mm: tuple[float, float, float] = (1.5, 1.5, 1.5)
    windows_hu: tuple[tuple[float, float], ...] = ((-1000.0, 1000.0), (-150.0, 250.0))
    channels: tuple[int, ...] = (12, 24, 48, 96)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 1
    norm: str = "batch"
    max_window_voxels: int = 128
    window_overlap_voxels: int = 24
    class_logit_offsets: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)
    sha256: str = ""

    @property
    def label(self) -> str:
        """``name-version``: what every segmentation records as the model that made it."""
        return f"{self.name}-{self.version}"

    @property
    def divisor(self) -> int:
        return int(np.prod(self.strides))

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["windows_hu"] = [list(w) for w in self.windows_hu]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmenterSpec:
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in data.items() if k in known}
        for key in ("classes", "spacing_mm", "channels", "strides", "class_logit_offsets"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        if "windows_hu" in kwargs:
            kwargs["windows_hu"] = tuple(tuple(float(v) for v in w) for w in kwargs["windows_hu"])
        return cls(**kwargs)


def network_build(spec: SegmenterSpec) -> torch.nn.Module:
    """The MONAI UNet of ``spec`` (untrained)."""
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=3,
        in_channels=len(spec.windows_hu),
        out_channels=len(spec.classes),
        channels=spec.channels,
        strides=spec.strides,
        num_res_units=spec.num_res_units,
        norm=spec.norm,
    )


def device_select(device: str | torch.device | None = "auto") -> torch.device:
    """``auto``: CUDA when torch sees a GPU, else the CPU; ``cuda`` without one is an error."""
    if isinstance(device, torch.device):
        return device
    requested = (device or "auto").lower()
    if requested not in ("auto", "cpu", "cuda") and not requested.startswith("cuda:"):
        raise SegmenterError(f"device must be auto, cpu or cuda; got {device!r}")
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda" if requested == "auto" else requested)
    if requested.startswith("cuda"):
        raise SegmenterError("device cuda was asked for but torch sees no CUDA GPU")
    return torch.device("cpu")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(eq=False)
class Segmenter:
    """A loaded network with its spec, on a device, in eval mode."""

    network: torch.nn.Module
    spec: SegmenterSpec
    device: torch.device
    weights_path: Path | None = None

    @property
    def version(self) -> str:
        return self.spec.label

    def segment(
        self, *, volume: Volume, device: str | torch.device | None = None, tta: bool = True
    ) -> SegmentationOutput:
        """`segment_volume` with this network: the call every model format answers."""
        return segment_volume(volume=volume, model=self, device=device, tta=tta)


class VolumeSegmenter(Protocol):
    """A loaded model of any format (`Segmenter`, `imaging.core.modelhub.adapters`): its
    ``name-version`` and one call from a study in HU to probabilities on its grid."""

    @property
    def version(self) -> str: ...

    def segment(
        self, *, volume: Volume, device: str | torch.device | None = None, tta: bool = True
    ) -> SegmentationOutput: ...


def segmenter_from_network(
    *, network: torch.nn.Module, spec: SegmenterSpec, device: str | torch.device = "auto"
) -> Segmenter:
    """Wrap an in-memory network (training, validation) as a `Segmenter`."""
    dev = device_select(device)
    return Segmenter(network=network.to(dev).eval(), spec=spec, device=dev)


def manifest_read(path: Path | None = None) -> dict[str, Any]:
    path = Path(path) if path else WEIGHTS_DIR / MANIFEST_NAME
    if not path.exists():
        raise SegmenterError(f"no weights manifest at {path}")
    return json.loads(path.read_text())


def segmenter_load(
    *,
    weights_path: Path | str | None = None,
    device: str | torch.device = "auto",
    manifest_path: Path | str | None = None,
) -> Segmenter:
    """Load shipped weights after checking their SHA-256 against the manifest.

    ``weights_path`` defaults to the file the manifest names; the manifest defaults to
    ``manifest.json`` beside the weights (``imaging/weights/`` when neither is given).
    A file whose digest differs from the manifest's is refused with `SegmenterError`.
    """
    if manifest_path is None:
        folder = Path(weights_path).parent if weights_path else WEIGHTS_DIR
        manifest_path = folder / MANIFEST_NAME
    manifest = manifest_read(Path(manifest_path))
    path = Path(weights_path) if weights_path else Path(manifest_path).parent / manifest["file"]
    if not path.exists():
        raise SegmenterError(f"weights file {path} does not exist")
    expected = manifest.get("sha256", "")
    actual = file_sha256(path)
    if actual != expected:
        raise SegmenterError(
            f"weights {path.name} have SHA-256 {actual[:16]}..., but the manifest says "
            f"{expected[:16]}...: the file was altered or belongs to another model; refusing "
            "to load it"
        )
    payload = torch.load(path, map_location="cpu", weights_only=True)
    spec = replace(SegmenterSpec.from_dict(manifest["spec"]), sha256=actual)
    if (spec.name, spec.version) != (manifest.get("name"), manifest.get("version")):
        raise SegmenterError("the manifest's name and version disagree with its spec")
    network = network_build(spec)
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    network.load_state_dict(state)
    dev = device_select(device)
    return Segmenter(network=network.to(dev).eval(), spec=spec, device=dev, weights_path=path)


# --------------------------------------------------------------------------- input
def _window_plan(shape: tuple[int, ...], spec: SegmenterSpec) -> tuple[tuple[int, ...], float]:
    """Window size per axis (a multiple of the network's divisor) and the overlap fraction."""
    ov, top, div = spec.window_overlap_voxels, spec.max_window_voxels, spec.divisor
    roi = []
    for n in shape:
        count = max(1, math.ceil((n - ov) / (top - ov)))
        size = math.ceil((n + (count - 1) * ov) / count)
        roi.append(min(top, max(div * 2, div * math.ceil(size / div))))
    overlap = ov / min(roi)
    return tuple(roi), float(min(overlap, 0.5))


def probabilities_predict(
    *, model: Segmenter, inputs: np.ndarray, device: torch.device | None = None
) -> np.ndarray:
    """Softmax probabilities (classes, k, j, i) float32 of one input array (C, k, j, i).

    Sliding windows one at a time on ``device``, blended and accumulated on the CPU.
    """
    from monai.inferers import sliding_window_inference

    dev = device or model.device
    network = model.network
    if next(network.parameters()).device != dev:
        network = network.to(dev)
    roi, overlap = _window_plan(inputs.shape[1:], model.spec)
    offsets = torch.tensor(model.spec.class_logit_offsets, dtype=torch.float32, device=dev)
    offsets = offsets.view(1, -1, 1, 1, 1)

    def predictor(window: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=dev.type == "cuda"):
            logits = network(window)
        return torch.softmax(logits.float() + offsets, dim=1)

    x = torch.from_numpy(np.ascontiguousarray(inputs))[None]
    with torch.inference_mode():
        out = sliding_window_inference(
            x,
            roi_size=roi,
            sw_batch_size=1,
            predictor=predictor,
            overlap=overlap,
            mode="gaussian",
            sw_device=dev,
            device=torch.device("cpu"),
        )
    return out[0].numpy().astype(np.float32, copy=False)


# --------------------------------------------------------------------------- output
@dataclass(frozen=True, eq=False)
class SegmentationOutput:
    """What `segment_volume` made, all on the model grid (LPS, ``spec.spacing_mm``).

    ``image`` is the study in HU on that grid; ``probabilities`` (classes, k, j, i,
    float16) the softmax; ``label`` the argmax (kind ``label``, codes of `CLASSES`);
    ``lesion_probability`` the probability of either lesion class (for display);
    ``uncertainty`` the flip-TTA disagreement of the lesion probability (0..1, 0 where
    not evaluated); ``model_version`` is ``name-version`` of the weights.
    """

    image: Volume
    probabilities: np.ndarray
    label: Volume
    lesion_probability: Volume
    uncertainty: Volume
    model_version: str
    model_sha256: str
    device: str
    tta: bool
    timings: dict[str, float]
    records: tuple[StepRecord, ...] = field(default_factory=tuple)

    def class_probability(self, class_index: int) -> np.ndarray:
        return single_convert(self.probabilities[class_index])


def _tta_boxes(lesion_prob: np.ndarray, margin: int) -> list[tuple[slice, slice, slice]]:
    """Boxes (with ``margin`` voxels of context) around regions where a lesion is plausible."""
    mask = lesion_prob > TTA_LESION_THRESHOLD
    if not mask.any():
        return []
    labels, n = ndimage.label(ndimage.binary_dilation(mask, iterations=2))
    boxes = []
    for found in ndimage.find_objects(labels):
        if found is None:
            continue
        boxes.append(
            tuple(
                slice(max(0, s.start - margin), min(size, s.stop + margin))
                for s, size in zip(found, lesion_prob.shape, strict=True)
            )
        )
    # Merge overlapping boxes so no region is predicted twice.
    merged: list[list[int]] = []
    for box in boxes:
        cur = [v for s in box for v in (s.start, s.stop)]
        changed = True
        while changed:
            changed = False
            for other in merged:
                if all(
                    cur[2 * a] < other[2 * a + 1] and other[2 * a] < cur[2 * a + 1]
                    for a in range(3)
                ):
                    merged.remove(other)
                    cur = [
                        min(cur[0], other[0]), max(cur[1], other[1]),
                        min(cur[2], other[2]), max(cur[3], other[3]),
                        min(cur[4], other[4]), max(cur[5], other[5]),
                    ]  # fmt: skip
                    changed = True
                    break
        merged.append(cur)
    return [(slice(b[0], b[1]), slice(b[2], b[3]), slice(b[4], b[5])) for b in merged]


def _body_inference(
    *, hu: np.ndarray, model: Segmenter, device: torch.device
) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray, np.ndarray]:
    """The body box, its input channels, the probabilities over the whole grid (background
    outside the box, float16) and the network's probabilities inside the box (float32)."""
    box = body_box(hu)
    inputs = model_input_array(hu[box], model.spec)
    probs = np.zeros((len(model.spec.classes), *hu.shape), dtype=np.float16)
    probs[0] = 1.0
    inner = probabilities_predict(model=model, inputs=inputs, device=device)
    probs[(slice(None), *box)] = half_convert(inner)
    return box, inputs, probs, inner


def _mirrored_pass(
    *,
    model: Segmenter,
    device: torch.device,
    inputs: np.ndarray,
    inner: np.ndarray,
    box: tuple[slice, slice, slice],
    probs: np.ndarray,
) -> tuple[np.ndarray, int]:
    """Average the left-right mirrored pass into ``probs`` (in place) around plausible lesions.

    Returns the uncertainty map (|p - p mirrored| of the lesion probability, 0 where the
    mirrored pass did not run) and the number of boxes it ran on.
    """
    uncertainty = np.zeros(probs.shape[1:], dtype=np.float32)
    tta_boxes = _tta_boxes(inner[3] + inner[4], margin=24)
    for sub in tta_boxes:
        mirrored = np.ascontiguousarray(inputs[(slice(None), *sub)][..., ::-1])
        flipped = probabilities_predict(model=model, inputs=mirrored, device=device)[..., ::-1]
        original = inner[(slice(None), *sub)]
        averaged = 0.5 * (original + flipped)
        diff = np.abs((original[3] + original[4]) - (flipped[3] + flipped[4]))
        full = tuple(
            slice(b.start + s.start, b.start + s.stop) for b, s in zip(box, sub, strict=True)
        )
        probs[(slice(None), *full)] = half_convert(averaged)
        uncertainty[full] = diff
    return uncertainty, len(tta_boxes)


def _inference_record(
    *,
    model: Segmenter,
    device: torch.device,
    box: tuple[slice, slice, slice],
    inputs: np.ndarray,
    tta: bool,
    n_tta_boxes: int,
    timings: dict[str, float],
) -> StepRecord:
    versions = {"torch": torch.__version__, "monai": _monai_version(), "numpy": np.__version__}
    return StepRecord(
        name="segment_unet",
        parameters={
            "model": model.spec.label,
            "sha256": model.spec.sha256,
            "windows_hu": [list(w) for w in model.spec.windows_hu],
            "body_threshold_hu": BODY_HU,
            "window_plan": list(_window_plan(inputs.shape[1:], model.spec)[0]),
            "sw_batch_size": 1,
            "blend": "gaussian",
            "tta": "left-right mirror around lesion probability > 0.1" if tta else "none",
            "device": str(device),
            "autocast_float16": device.type == "cuda",
        },
        versions=versions,
        seconds=timings["inference"] + timings["tta"],
        details={
            "body_box_kji": [[s.start, s.stop] for s in box],
            "tta_boxes": n_tta_boxes,
            "seconds_inference": round(timings["inference"], 3),
            "seconds_tta": round(timings["tta"], 3),
        },
    )


def segment_volume(
    *,
    volume: Volume,
    model: Segmenter,
    device: str | torch.device | None = None,
    tta: bool = True,
) -> SegmentationOutput:
    """Segment a CT study (HU, any orientation and spacing) with ``model``.

    Steps (each recorded): crop to the body on the study's own grid, reorient to LPS,
    resample to the model grid, window the channels, sliding-window inference, and
    (``tta``) the left-right mirrored pass around plausible lesions. Returns
    probabilities on the model grid of the body's box with its geometry; map them back
    with `preprocess.volume_resample` if the original grid is wanted (nearest neighbour
    for labels).
    """
    if volume.kind != "scalar":
        raise SegmenterError("segment_volume needs a scalar CT volume in HU")
    dev = device_select(device) if device is not None else model.device
    timings: dict[str, float] = {}
    started = time.perf_counter()
    cropped, crop_record = body_crop(volume=volume)
    grid, records = model_grid(volume=cropped, spec=model.spec)
    records = (crop_record, *records)
    grid = grid.with_array(grid.array.astype(np.float32, copy=False))
    timings["preprocess"] = time.perf_counter() - started

    t = time.perf_counter()
    box, inputs, probs, inner = _body_inference(hu=grid.array, model=model, device=dev)
    timings["inference"] = time.perf_counter() - t

    t = time.perf_counter()
    uncertainty, n_tta_boxes = np.zeros(grid.array.shape, dtype=np.float32), 0
    if tta:
        uncertainty, n_tta_boxes = _mirrored_pass(
            model=model, device=dev, inputs=inputs, inner=inner, box=box, probs=probs
        )
    timings["tta"] = time.perf_counter() - t
    label = np.argmax(probs, axis=0).astype(np.uint8)
    lesion = (single_convert(probs[3]) + single_convert(probs[4])).clip(0.0, 1.0)
    timings["total"] = time.perf_counter() - started
    record = _inference_record(
        model=model,
        device=dev,
        box=box,
        inputs=inputs,
        tta=tta,
        n_tta_boxes=n_tta_boxes,
        timings=timings,
    )
    return SegmentationOutput(
        image=grid,
        probabilities=probs,
        label=grid.with_array(label, kind="label"),
        lesion_probability=grid.with_array(lesion),
        uncertainty=grid.with_array(uncertainty),
        model_version=model.spec.label,
        model_sha256=model.spec.sha256,
        device=str(dev),
        tta=tta,
        timings=timings,
        records=(*records, record),
    )


def _monai_version() -> str:
    import monai

    return monai.__version__


# --------------------------------------------------------------------------- shipping
def weights_export(
    *,
    network: torch.nn.Module,
    spec: SegmenterSpec,
    out_dir: Path,
    manifest_extra: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Write ``<name>-<version>.pt`` (float16 state dict) and ``manifest.json`` with its SHA-256."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()
        for k, v in network.state_dict().items()
    }
    path = out_dir / f"{spec.label}.pt"
    torch.save({"state_dict": state, "spec": spec.as_dict()}, path)
    digest = file_sha256(path)
    shipped = replace(spec, sha256=digest)
    manifest = {
        "name": spec.name,
        "version": spec.version,
        "file": path.name,
        "sha256": digest,
        "bytes": path.stat().st_size,
        "classes": list(spec.classes),
        "spacing_mm": list(spec.spacing_mm),
        "spec": {**shipped.as_dict(), "sha256": ""},
        **(manifest_extra or {}),
    }
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return path, manifest
