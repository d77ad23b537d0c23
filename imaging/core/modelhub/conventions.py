"""What a registered model's outputs mean (`LabelMap`) and what input it expects
(`InputConventions`), read from and written to the JSON the registry stores.

RadTrack's post-processing and measurement read five classes (`network.CLASSES`:
background, lung, liver, lung nodule, liver lesion). A model with other outputs names
each of its output channels; `LabelMap.fold` sums the channels of each RadTrack class,
and channels RadTrack does not measure (``lymph_node``, ``other``) count as background
(recorded with every run as ``labels_unused``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from imaging.core.segmentation.network import CLASSES, SegmenterError

FORMATS: tuple[str, ...] = ("radtrack", "nnunetv2", "monai-bundle", "onnx")
#: Output names a label map may use: RadTrack's classes and what it does not measure.
UNMEASURED_LABELS: tuple[str, ...] = ("lymph_node", "other")
KNOWN_LABELS: tuple[str, ...] = (*CLASSES, *UNMEASURED_LABELS)
LESION_LABELS: tuple[str, ...] = ("lung_nodule", "liver_lesion")
INTENSITY_MODES: tuple[str, ...] = ("windows", "zscore", "none")
AXES: tuple[str, ...] = ("LPS", "RAS")
OUTPUTS: tuple[str, ...] = ("logits", "probabilities")


class ModelDescriptionError(SegmenterError):
    """A label map, input conventions or model files that cannot be used (says which and why)."""


@dataclass(frozen=True)
class LabelMap:
    """The RadTrack name of each output channel of a model (index = channel)."""

    labels: tuple[str, ...]

    @classmethod
    def from_json(cls, data: Any, *, source: str = "labels") -> LabelMap:
        """From ``{"0": "background", "1": "liver_lesion"}``, ``["background", ...]`` or the
        nnU-Net ``dataset.json`` form ``{"background": 0, "liver_lesion": 1}``."""
        if isinstance(data, Sequence) and not isinstance(data, str):
            pairs = list(enumerate(data))
        elif isinstance(data, Mapping) and data:
            if all(isinstance(v, int) and not isinstance(v, bool) for v in data.values()):
                pairs = [(int(v), str(k)) for k, v in data.items()]
            else:
                try:
                    pairs = [(int(k), v) for k, v in data.items()]
                except (TypeError, ValueError):
                    raise ModelDescriptionError(
                        f'{source}: keys must be channel numbers ({{"0": "background"}}) or '
                        'the values must be (the nnU-Net form {"background": 0})'
                    ) from None
        else:
            raise ModelDescriptionError(f"{source}: expected a list or an object of labels")
        indices = sorted(i for i, _ in pairs)
        if indices != list(range(len(pairs))):
            raise ModelDescriptionError(
                f"{source}: channels must be numbered 0..{len(pairs) - 1} without gaps; "
                f"got {indices}"
            )
        names = dict(pairs)
        labels = tuple(str(names[i]).strip().lower().replace(" ", "_") for i in indices)
        unknown = sorted({n for n in labels if n not in KNOWN_LABELS})
        if unknown:
            raise ModelDescriptionError(
                f"{source}: unknown label(s) {', '.join(unknown)}; use {', '.join(KNOWN_LABELS)}"
            )
        if not any(n in LESION_LABELS for n in labels):
            raise ModelDescriptionError(
                f"{source}: no channel is a lesion ({' or '.join(LESION_LABELS)}); RadTrack "
                "measures lung nodules and liver lesions"
            )
        return cls(labels)

    def as_json(self) -> dict[str, str]:
        return {str(i): name for i, name in enumerate(self.labels)}

    @property
    def unused(self) -> tuple[str, ...]:
        """Output names that RadTrack's post-processing does not read (counted as background)."""
        return tuple(sorted({n for n in self.labels if n in UNMEASURED_LABELS}))

    def fold(self, probabilities: np.ndarray) -> np.ndarray:
        """(len(labels), ...) probabilities to RadTrack's (5, ...) classes, float32."""
        if probabilities.shape[0] != len(self.labels):
            raise ModelDescriptionError(
                f"the model gave {probabilities.shape[0]} output channels but its label map "
                f"names {len(self.labels)}"
            )
        out = np.zeros((len(CLASSES), *probabilities.shape[1:]), dtype=np.float32)
        for channel, name in enumerate(self.labels):
            target = CLASSES.index(name) if name in CLASSES else 0
            out[target] += probabilities[channel]
        return out


def _triple(value: Any, field: str) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ModelDescriptionError(f"conventions.{field}: expected three numbers") from None
    if len(out) != 3 or not all(math.isfinite(v) and v > 0 for v in out):
        raise ModelDescriptionError(f"conventions.{field}: expected three positive numbers")
    return out


def _pair(value: Any, field: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ModelDescriptionError(f"conventions.{field}: expected [low, high]") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ModelDescriptionError(f"conventions.{field}: expected finite low < high")
    return low, high


@dataclass(frozen=True)
class InputConventions:
    """The grid and intensities a model is fed, and what its output is.

    ``spacing_mm`` (i, j, k) of the grid the study is resampled to (LPS, linear);
    ``intensity``: ``windows`` (each HU window of ``windows_hu`` scaled to [0, 1], one
    channel each, and clipped to it unless ``window_clip`` is false: MONAI's
    ``ScaleIntensityRange(clip=False)``, its default, leaves values outside the window
    beyond 0 and 1), ``zscore`` (HU clipped to ``clip_hu``, minus ``mean_hu``,
    over ``sd_hu``; one channel) or ``none`` (HU as they are: nnU-Net normalises itself);
    ``axes``: ``LPS`` (arrays (k, j, i) of an LPS grid, as SimpleITK reads one, RadTrack's
    and nnU-Net's default) or ``RAS`` (arrays (x, y, z) with x toward the patient's right
    and y anterior, MONAI's ``Orientation(axcodes="RAS")``); ``output``: ``logits``
    (softmax applied here) or ``probabilities``; ``window_voxels``: a fixed inference
    window in the model's axes (None: sized to the study, a multiple of ``divisor``).
    """

    spacing_mm: tuple[float, float, float] = (1.5, 1.5, 1.5)
    intensity: str = "windows"
    windows_hu: tuple[tuple[float, float], ...] = ((-1000.0, 1000.0), (-150.0, 250.0))
    window_clip: bool = True
    clip_hu: tuple[float, float] = (-1000.0, 1000.0)
    mean_hu: float = 0.0
    sd_hu: float = 1.0
    axes: str = "LPS"
    output: str = "logits"
    window_voxels: tuple[int, int, int] | None = None
    divisor: int = 8

    @property
    def channels(self) -> int:
        return len(self.windows_hu) if self.intensity == "windows" else 1

    def normalise(self, hu: np.ndarray) -> np.ndarray:
        """HU (k, j, i) to the model's channels (C, k, j, i) float32 (still RadTrack's axes)."""
        if self.intensity == "windows":
            out = np.empty((len(self.windows_hu), *hu.shape), dtype=np.float32)
            for c, (low, high) in enumerate(self.windows_hu):
                if self.window_clip:
                    np.clip(hu, low, high, out=out[c])
                else:
                    out[c] = hu
                out[c] -= low
                out[c] /= high - low
            return out
        if self.intensity == "zscore":
            x = np.clip(hu, *self.clip_hu).astype(np.float32)
            return ((x - self.mean_hu) / self.sd_hu)[None]
        return hu.astype(np.float32, copy=False)[None]

    def as_json(self) -> dict[str, Any]:
        return {
            "spacing_mm": list(self.spacing_mm),
            "intensity": self.intensity,
            "windows_hu": [list(w) for w in self.windows_hu],
            "window_clip": self.window_clip,
            "clip_hu": list(self.clip_hu),
            "mean_hu": self.mean_hu,
            "sd_hu": self.sd_hu,
            "axes": self.axes,
            "output": self.output,
            "window_voxels": list(self.window_voxels) if self.window_voxels else None,
            "divisor": self.divisor,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> InputConventions:
        """Checked: every field named in an error says what it needed."""
        data = dict(data or {})
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ModelDescriptionError(f"conventions: unknown field(s) {', '.join(unknown)}")
        base = cls()
        out = {field: _FIELD_CHECKS[field](value) for field, value in data.items()}
        if out.get("sd_hu", base.sd_hu) <= 0:
            raise ModelDescriptionError("conventions.sd_hu: must be positive")
        return cls(**{**{f: getattr(base, f) for f in cls.__dataclass_fields__}, **out})


def _choice(field: str, allowed: tuple[str, ...]) -> Any:
    def check(value: Any) -> str:
        if value not in allowed:
            raise ModelDescriptionError(
                f"conventions.{field}: {value!r} is not one of {', '.join(allowed)}"
            )
        return str(value)

    return check


def _number(field: str) -> Any:
    def check(value: Any) -> float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ModelDescriptionError(f"conventions.{field}: expected a number") from None

    return check


def _windows(value: Any) -> tuple[tuple[float, float], ...]:
    if not isinstance(value, Sequence) or isinstance(value, str) or not value:
        raise ModelDescriptionError("conventions.windows_hu: expected [[low, high], ...]")
    return tuple(_pair(w, "windows_hu") for w in value)


def _flag(field: str) -> Any:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise ModelDescriptionError(f"conventions.{field}: expected true or false")
        return value

    return check


def _window_voxels(value: Any) -> tuple[int, ...] | None:
    return None if value is None else tuple(int(v) for v in _triple(value, "window_voxels"))


def _divisor(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ModelDescriptionError("conventions.divisor: expected a positive integer")
    return value


_FIELD_CHECKS: dict[str, Any] = {
    "spacing_mm": lambda v: _triple(v, "spacing_mm"),
    "intensity": _choice("intensity", INTENSITY_MODES),
    "windows_hu": _windows,
    "window_clip": _flag("window_clip"),
    "clip_hu": lambda v: _pair(v, "clip_hu"),
    "mean_hu": _number("mean_hu"),
    "sd_hu": _number("sd_hu"),
    "axes": _choice("axes", AXES),
    "output": _choice("output", OUTPUTS),
    "window_voxels": _window_voxels,
    "divisor": _divisor,
}


@dataclass(frozen=True)
class ModelFile:
    """One file of a model: path relative to the model's root, SHA-256 and size."""

    path: str
    sha256: str
    bytes: int

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "bytes": self.bytes}


@dataclass(frozen=True)
class ModelDescription:
    """A registered model version as the adapters need it."""

    name: str
    version: str
    fmt: str
    labels: LabelMap
    conventions: InputConventions
    files: tuple[ModelFile, ...] = ()
    sha256: str = ""

    @property
    def label(self) -> str:
        """``name-version``, what every segmentation records as the model that made it."""
        return f"{self.name}-{self.version}"
