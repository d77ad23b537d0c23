"""The one ``segment`` call of a model in another format, shaped like the shipped model's.

`AdapterSegmenter.segment` does what `network.segment_volume` does for the shipped
network, with the model's own `InputConventions`: crop to the body on the study's grid,
reorient to LPS and resample to the model's spacing (`model_input.model_grid`), cut the
body's box, ask the format's predictor for probabilities in the model's label order,
fold them onto RadTrack's five classes (`LabelMap.fold`) and, with ``tta``, average the
left-right mirrored pass around plausible lesions (the shipped model's TTA; a format
that mirrors by itself, nnU-Net, does it inside its predictor instead). The result is a
`network.SegmentationOutput`, so `lesions.lesions_segment` post-processes and measures
it exactly as it does the shipped model's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from imaging.core.geometry.preprocess import StepRecord
from imaging.core.geometry.volume import Volume
from imaging.core.modelhub.conventions import InputConventions, ModelDescription
from imaging.core.segmentation.model_input import BODY_HU, body_box, body_crop, model_grid
from imaging.core.segmentation.network import (
    SegmentationOutput,
    SegmenterError,
    SegmenterSpec,
    _tta_boxes,
    device_select,
)
from imaging.core.segmentation.precision import half_convert, single_convert

#: HU (k, j, i) of the body's box on the model grid, and whether the predictor may
#: mirror by itself -> probabilities (labels, k, j, i) in the model's label order.
Predict = Callable[[np.ndarray, bool], np.ndarray]


def to_model_axes(array: np.ndarray, axes: str) -> np.ndarray:
    """(C, k, j, i) of an LPS grid to the model's axes: unchanged for ``LPS``; (C, x, y, z)
    with x toward the right and y anterior for ``RAS``."""
    if axes == "LPS":
        return array
    return np.ascontiguousarray(array.transpose(0, 3, 2, 1)[:, ::-1, ::-1, :])


def from_model_axes(array: np.ndarray, axes: str) -> np.ndarray:
    """The inverse of `to_model_axes`."""
    if axes == "LPS":
        return array
    return np.ascontiguousarray(array[:, ::-1, ::-1, :].transpose(0, 3, 2, 1))


def window_plan(
    shape: tuple[int, ...], *, divisor: int, max_voxels: int = 128, overlap_voxels: int = 24
) -> tuple[tuple[int, ...], float]:
    """Windows tiling ``shape`` with about ``overlap_voxels`` overlap, each side a multiple
    of ``divisor`` and at most ``max_voxels`` (the shipped model's plan)."""
    roi = []
    for n in shape:
        count = max(1, math.ceil((n - overlap_voxels) / (max_voxels - overlap_voxels)))
        size = math.ceil((n + (count - 1) * overlap_voxels) / count)
        roi.append(min(max_voxels, max(divisor * 2, divisor * math.ceil(size / divisor))))
    return tuple(roi), float(min(overlap_voxels / min(roi), 0.5))


def windows_predict(
    *,
    network: Callable[[np.ndarray], np.ndarray],
    inputs: np.ndarray,
    conventions: InputConventions,
    device: torch.device,
) -> np.ndarray:
    """Sliding-window probabilities (labels, ...) of ``inputs`` (C, ...) in the model's axes.

    ``network`` maps a window (1, C, a, b, c) float32 to its outputs (1, L, a, b, c)
    (logits or probabilities, as the conventions say); windows are blended with a
    Gaussian and accumulated on the CPU, one at a time (MONAI's sliding window).
    """
    from monai.inferers import sliding_window_inference

    if conventions.window_voxels:
        roi: tuple[int, ...] = tuple(conventions.window_voxels)
        overlap = 0.25
    else:
        roi, overlap = window_plan(inputs.shape[1:], divisor=conventions.divisor)

    def predictor(window: torch.Tensor) -> torch.Tensor:
        out = torch.from_numpy(np.asarray(network(window.cpu().numpy()), dtype=np.float32))
        if conventions.output == "logits":
            out = torch.softmax(out, dim=1)
        return out

    x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))[None]
    with torch.inference_mode():
        out = sliding_window_inference(
            x,
            roi_size=roi,
            sw_batch_size=1,
            predictor=predictor,
            overlap=overlap,
            mode="gaussian",
            sw_device=torch.device("cpu"),
            device=torch.device("cpu"),
        )
    return out[0].numpy().astype(np.float32, copy=False)


@dataclass(eq=False)
class AdapterSegmenter:
    """A model of another format, loaded, behind the shipped model's ``segment`` call.

    ``predict`` is the format's own inference (see `Predict`); ``own_mirroring`` says it
    mirrors by itself when allowed (then no second pass is run here and the uncertainty
    map stays 0); ``versions`` and ``details`` go on the run record.
    """

    description: ModelDescription
    predict: Predict
    device: torch.device
    own_mirroring: bool = False
    versions: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return self.description.label

    @property
    def spec(self) -> SegmenterSpec:
        """The grid part of a spec (`model_input.model_grid` reads its spacing), named."""
        d = self.description
        return replace(
            SegmenterSpec(),
            name=d.name,
            version=d.version,
            spacing_mm=d.conventions.spacing_mm,
            sha256=d.sha256,
        )

    def _probabilities(self, hu: np.ndarray, tta: bool) -> np.ndarray:
        out = self.predict(hu, tta)
        if out.shape[1:] != hu.shape:
            raise SegmenterError(
                f"model {self.version} returned a {out.shape[1:]} grid for a {hu.shape} input"
            )
        return self.description.labels.fold(out)

    def _mirrored(
        self, *, hu: np.ndarray, inner: np.ndarray, box: tuple[slice, ...], probs: np.ndarray
    ) -> tuple[np.ndarray, int]:
        """Average the left-right mirrored pass into ``probs`` around plausible lesions
        (as `network._mirrored_pass` does); the uncertainty map and the boxes run."""
        uncertainty = np.zeros(probs.shape[1:], dtype=np.float32)
        boxes = _tta_boxes(inner[3] + inner[4], margin=24)
        for sub in boxes:
            mirrored = np.ascontiguousarray(hu[sub][..., ::-1])
            flipped = self._probabilities(mirrored, False)[..., ::-1]
            original = inner[(slice(None), *sub)]
            full = tuple(
                slice(b.start + s.start, b.start + s.stop) for b, s in zip(box, sub, strict=True)
            )
            probs[(slice(None), *full)] = half_convert(0.5 * (original + flipped))
            uncertainty[full] = np.abs((original[3] + original[4]) - (flipped[3] + flipped[4]))
        return uncertainty, len(boxes)

    def _record(
        self, *, tta: bool, n_boxes: int, box: tuple[slice, ...], timings: dict
    ) -> StepRecord:
        d = self.description
        if self.own_mirroring:
            tta_text = f"the {d.fmt} predictor's own mirroring" if tta else "none"
        else:
            tta_text = "left-right mirror around lesion probability > 0.1" if tta else "none"
        return StepRecord(
            name="segment_" + d.fmt.replace("-", "_"),
            parameters={
                "model": d.label,
                "sha256": d.sha256,
                "format": d.fmt,
                "labels": d.labels.as_json(),
                "labels_unused": list(d.labels.unused),
                "conventions": d.conventions.as_json(),
                "body_threshold_hu": BODY_HU,
                "tta": tta_text,
                "device": str(self.device),
            },
            versions=dict(self.versions),
            seconds=timings["inference"] + timings["tta"],
            details={
                **self.details,
                "body_box_kji": [[s.start, s.stop] for s in box],
                "tta_boxes": n_boxes,
                "seconds_inference": round(timings["inference"], 3),
                "seconds_tta": round(timings["tta"], 3),
            },
        )

    def segment(
        self, *, volume: Volume, device: str | torch.device | None = None, tta: bool = True
    ) -> SegmentationOutput:
        """Segment a CT study in HU (any orientation and spacing); see the module docs.

        ``device`` is the one the model was loaded on (a predictor is bound to it); asking
        for another is an error rather than a silent move."""
        if volume.kind != "scalar":
            raise SegmenterError("segment needs a scalar CT volume in HU")
        if device is not None and device_select(device).type != self.device.type:
            raise SegmenterError(
                f"model {self.version} was loaded on {self.device}; load it again for {device}"
            )
        timings: dict[str, float] = {}
        started = time.perf_counter()
        cropped, crop_record = body_crop(volume=volume)
        grid, records = model_grid(volume=cropped, spec=self.spec)
        hu = grid.array.astype(np.float32, copy=False)
        grid = grid.with_array(hu)
        timings["preprocess"] = time.perf_counter() - started

        t = time.perf_counter()
        box = body_box(hu)
        inner = self._probabilities(np.ascontiguousarray(hu[box]), tta and self.own_mirroring)
        probs = np.zeros((inner.shape[0], *hu.shape), dtype=np.float16)
        probs[0] = 1.0
        probs[(slice(None), *box)] = half_convert(inner)
        timings["inference"] = time.perf_counter() - t

        t = time.perf_counter()
        uncertainty, n_boxes = np.zeros(hu.shape, dtype=np.float32), 0
        if tta and not self.own_mirroring:
            uncertainty[box], n_boxes = self._mirrored(
                hu=hu[box], inner=inner, box=tuple(slice(0, s.stop - s.start) for s in box),
                probs=probs[(slice(None), *box)],
            )  # fmt: skip
        timings["tta"] = time.perf_counter() - t
        label = np.argmax(probs, axis=0).astype(np.uint8)
        lesion = (single_convert(probs[3]) + single_convert(probs[4])).clip(0.0, 1.0)
        timings["total"] = time.perf_counter() - started
        record = self._record(tta=tta, n_boxes=n_boxes, box=box, timings=timings)
        return SegmentationOutput(
            image=grid,
            probabilities=probs,
            label=grid.with_array(label, kind="label"),
            lesion_probability=grid.with_array(lesion),
            uncertainty=grid.with_array(uncertainty),
            model_version=self.version,
            model_sha256=self.description.sha256,
            device=str(self.device),
            tta=tta,
            timings=timings,
            records=(crop_record, *records, record),
        )


def device_for(device: str | torch.device | None) -> torch.device:
    """`network.device_select`, the same rules for every format."""
    return device_select(device or "auto")
