"""What a registration returns, whichever backend found it: the transform, one record
per stage, the quality, library versions and settings."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from imaging.core.registration.quality import RegistrationQuality
from imaging.core.registration.transforms import SpatialTransform

Backend = Literal["simpleitk", "torch"]
Device = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class StageRecord:
    """One stage (rigid, affine, bspline): per level its spacing, iterations and final metric."""

    name: str
    levels_mm: tuple[float, ...]
    iterations: tuple[int, ...]
    metric: tuple[float, ...]
    seconds: float
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class RegistrationResult:
    """A registration of ``moving`` to ``fixed``: transform, how it was found, and quality."""

    transform: SpatialTransform
    backend: Backend
    device: str
    seconds: float
    stages: tuple[StageRecord, ...]
    quality: RegistrationQuality
    versions: dict[str, str]
    settings: dict[str, Any]

    @property
    def failed(self) -> bool:
        return self.quality.failed

    @property
    def reason(self) -> str:
        return "; ".join(self.quality.reasons)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready record (a B-spline's coefficients go to a file, `transform_write`)."""
        return {
            "transform": self.transform.as_dict(),
            "backend": self.backend,
            "device": self.device,
            "seconds": round(self.seconds, 3),
            "stages": [asdict(s) for s in self.stages],
            "quality": self.quality.as_dict(),
            "failed": self.failed,
            "reason": self.reason,
            "versions": dict(self.versions),
            "settings": dict(self.settings),
        }
