"""The locked validation set: generated studies fixed by a seed and a checksum, with
exact truth, plus any reviewed studies a site adds (`ValidationCase` either way).

The generated part comes from the evaluation-only generator (`imaging.core.synthetic_eval`:
its own anatomy, lesion kinds, scanner and kernels, nothing shared with the training
generator), drawn at ``spec.seed`` with a thickness per study so that thin and thick
slices are both in it. Studies are rendered once and kept (HU as int16) under a cache
folder; the checksum is taken over what a model is fed and judged against (HU, grid,
truth), so a changed generator, a changed cache or a changed spec shows as a different
checksum and the registry refuses to compare a report against a set it was not made on.

Truth per lesion: organ, side (LPS x > 0 is the patient's left), kind, exact volume and
centroid (from the generator), equivalent diameter, the longest axial diameter of its
true shape (sampled on a 0.25-0.5 mm grid, planes of constant LPS z, the measurement's
own outline function), and a mask on any grid (`ValidationCase.truth_labels`) for Dice.
Simple cysts are in the truth as negatives: a candidate on one is a false positive.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imaging.core.geometry.volume import Volume
from imaging.core.segmentation.measure import axial_diameters_mm
from imaging.core.synthetic_eval.cohort import EvalPatient, EvalStudy, patient_draw, study_render

POSITIONS = ("HFS", "FFS", "HFP", "FFP")
#: Checksums of the shipped set definitions (rendered on 2 CPU cores, numpy 2.4): a
#: generator or cache that renders anything else is refused rather than compared.
LOCKED_CHECKSUMS = {
    "eval-locked-v1": "88404c421c1e8f48dd351cf6a04756a0d70adbc3e762423fbe966b3b36499138",
}
SIZE_BANDS_MM: tuple[float, ...] = (5.0, 10.0, 20.0)


def size_band(diameter_mm: float) -> str:
    """``<5``, ``5-10``, ``10-20`` or ``>=20`` mm (equivalent diameter)."""
    low = 0.0
    for edge in SIZE_BANDS_MM:
        if diameter_mm < edge:
            return f"<{edge:g}" if low == 0 else f"{low:g}-{edge:g}"
        low = edge
    return f">={SIZE_BANDS_MM[-1]:g}"


@dataclass(frozen=True)
class ValidationSetSpec:
    """Which generated studies make the locked set (``size``: the generator's preset)."""

    name: str = "eval-locked-v1"
    seed: int = 6161
    studies: int = 5
    size: str = "medium"
    thicknesses_mm: tuple[float, ...] = (1.25, 2.5, 5.0, 2.0, 3.0)
    lesion_counts: tuple[int, int, int] = (3, 2, 1)

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "generator": "imaging.core.synthetic_eval"}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ValidationSetSpec:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("thicknesses_mm", "lesion_counts"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)


@dataclass(frozen=True)
class TruthLesion:
    """A true lesion (or, ``negative``, a cyst) of one study, in its LPS mm."""

    lesion_id: str
    organ: str
    side: str
    kind: str
    negative: bool
    volume_ml: float
    centre_lps_mm: tuple[float, float, float]
    longest_axial_mm: float | None

    @property
    def diameter_mm(self) -> float:
        """Equivalent diameter (mm) of the volume."""
        return float(np.cbrt(6.0 * self.volume_ml * 1000.0 / np.pi))

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "centre_lps_mm": list(self.centre_lps_mm)}


@dataclass(frozen=True, eq=False)
class ValidationCase:
    """One study of the set: the volume, its truth, and how it was acquired.

    ``truth_labels`` renders the true lesions onto a grid (1 + index into ``truths``,
    negatives left out), or is None where only centres and sizes are known (a site's
    reviewed study: Dice is not measured there).
    """

    case_id: str
    source: str
    volume: Volume
    truths: tuple[TruthLesion, ...]
    acquisition: dict[str, Any]
    truth_labels: Callable[[Volume], np.ndarray] | None = None
    digest: str = ""


# --------------------------------------------------------------------------- truth shapes
def _inside(patient: EvalPatient, study: EvalStudy, lesion_id: str) -> Callable[..., np.ndarray]:
    """``inside(x, y, z)`` (LPS mm arrays) of one lesion of a study, breathing included."""
    lesion = next(item for item in study.lesions if item.lesion_id == lesion_id)
    mapping = patient.mapping(study)

    def inside(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return np.asarray(lesion.field(*mapping.to_reference(x, y, z)) < 0)

    return inside


def longest_axial_mm(
    inside: Callable[..., np.ndarray], centre: np.ndarray, reach_mm: float
) -> float:
    """Longest diameter of the true outline over planes of constant LPS z (mm)."""
    half = reach_mm + 2.0
    step = float(np.clip(half / 40.0, 0.25, 0.5))
    axis = np.arange(-half, half + 1e-6, step)
    gy, gx = np.meshgrid(axis + centre[1], axis + centre[0], indexing="ij")
    best = 0.0
    for z in centre[2] + axis[::2]:
        plane = inside(gx, gy, np.full_like(gx, z)).astype(np.float32)
        if plane.sum() < 3:
            continue
        longest, _ = axial_diameters_mm(plane, axis + centre[0], axis + centre[1], level=0.5)
        best = max(best, longest)
    return float(best)


def truth_labels_renderer(
    patient: EvalPatient, study: EvalStudy, truths: Sequence[TruthLesion]
) -> Callable[[Volume], np.ndarray]:
    """``render(grid)``: 1 + index into ``truths`` at each voxel centre inside that true
    lesion (negatives left out), 0 elsewhere."""

    def render(grid: Volume) -> np.ndarray:
        out = np.zeros(grid.array.shape, dtype=np.uint16)
        for index, truth in enumerate(truths, start=1):
            if truth.negative:
                continue
            lesion = next(item for item in study.lesions if item.lesion_id == truth.lesion_id)
            reach = lesion.reach_mm + 2.0
            centre = np.asarray(truth.centre_lps_mm)
            corners = np.array([[centre[0] + a, centre[1] + b, centre[2] + c]
                                for a in (-reach, reach) for b in (-reach, reach) for c in (-reach, reach)])  # fmt: skip
            ijk = grid.lps_to_index(corners)
            lo = np.maximum(np.floor(ijk.min(axis=0)).astype(int), 0)
            hi = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + 1, np.asarray(grid.shape_ijk))
            if np.any(hi <= lo):
                continue
            ii, jj, kk = np.meshgrid(
                *(np.arange(a, b) for a, b in zip(lo, hi, strict=True)), indexing="ij"
            )
            points = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1).astype(float)
            lps = grid.index_to_lps(points)
            hit = _inside(patient, study, truth.lesion_id)(lps[:, 0], lps[:, 1], lps[:, 2])
            sel = points[hit].astype(int)
            out[sel[:, 2], sel[:, 1], sel[:, 0]] = index
        return out

    return render


# --------------------------------------------------------------------------- generated set
def _draw(spec: ValidationSetSpec, index: int) -> EvalPatient:
    thickness = spec.thicknesses_mm[index % len(spec.thicknesses_mm)]
    return patient_draw(
        seed=spec.seed, index=index, n_studies=1, size=spec.size,
        positions=(POSITIONS[index % len(POSITIONS)],), thicknesses=(thickness,),
        lesion_counts=spec.lesion_counts,
    )  # fmt: skip


def _render(patient: EvalPatient, spec: ValidationSetSpec) -> tuple[Volume, list[TruthLesion]]:
    study = patient.studies[0]
    rendered = study_render(patient, study, seed=spec.seed)
    truths = []
    for t in rendered.lesions:
        lesion = next(item for item in study.lesions if item.lesion_id == t.lesion_id)
        longest = None if t.negative else longest_axial_mm(
            _inside(patient, study, t.lesion_id), np.asarray(t.centre_lps_mm), lesion.reach_mm
        )  # fmt: skip
        truths.append(TruthLesion(t.lesion_id, t.organ, t.side, t.kind, t.negative,
                                  round(float(t.volume_ml), 6),
                                  tuple(round(float(v), 4) for v in t.centre_lps_mm),  # type: ignore[arg-type]
                                  None if longest is None else round(longest, 4)))  # fmt: skip
    hu = np.clip(np.round(rendered.volume.array), -1024, 3071).astype(np.int16)
    return rendered.volume.with_array(hu.astype(np.float32)), truths


def case_digest(volume: Volume, truths: Sequence[TruthLesion]) -> str:
    """SHA-256 of what a model is fed and judged against: HU (int16), grid and truth."""
    digest = hashlib.sha256()
    digest.update(np.clip(np.round(volume.array), -1024, 3071).astype("<i2").tobytes())
    geometry = [list(volume.array.shape), [round(v, 6) for v in volume.spacing_mm],
                [round(v, 4) for v in volume.origin_mm], np.round(volume.direction, 6).tolist()]  # fmt: skip
    digest.update(json.dumps(geometry).encode())
    digest.update(json.dumps([t.as_json() for t in truths], sort_keys=True).encode())
    return digest.hexdigest()


def _cached(path: Path) -> tuple[Volume, list[TruthLesion]] | None:
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        volume = Volume(array=data["hu"].astype(np.float32), spacing_mm=tuple(data["spacing"]),
                        origin_mm=tuple(data["origin"]), direction=data["direction"])  # fmt: skip
        truths = [TruthLesion(**{**t, "centre_lps_mm": tuple(t["centre_lps_mm"])})
                  for t in json.loads(str(data["truth"]))]  # fmt: skip
    return volume, truths


def generated_cases(
    *, spec: ValidationSetSpec, cache_dir: Path | None, on_case: Callable[[str], None] | None = None
) -> list[ValidationCase]:
    """The generated studies of ``spec`` (rendered, or read from ``cache_dir``)."""
    cases = []
    for index in range(spec.studies):
        patient = _draw(spec, index)
        study = patient.studies[0]
        path = cache_dir / f"{spec.name}-{patient.patient_id}.npz" if cache_dir else None
        cached = _cached(path) if path is not None else None
        if cached is None:
            volume, truths = _render(patient, spec)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp.npz")
                np.savez_compressed(tmp, hu=volume.array.astype(np.int16), spacing=volume.spacing_mm,
                                    origin=volume.origin_mm, direction=volume.direction,
                                    truth=json.dumps([t.as_json() for t in truths]))  # fmt: skip
                tmp.replace(path)
        else:
            volume, truths = cached
        acq = study.acquisition
        cases.append(ValidationCase(
            case_id=patient.patient_id, source="generated", volume=volume, truths=tuple(truths),
            acquisition={"position": acq.position, "slice_thickness_mm": acq.slice_thickness_mm,
                         "pixel_mm": round(acq.pixel_mm, 3), "kernel": acq.kernel,
                         "noise_hu": round(acq.noise_hu, 2)},
            truth_labels=truth_labels_renderer(patient, study, truths),
            digest=case_digest(volume, truths),
        ))  # fmt: skip
        if on_case:
            on_case(patient.patient_id)
    return cases


def set_checksum(cases: Sequence[ValidationCase]) -> str:
    """One SHA-256 over the cases' digests, in order."""
    digest = hashlib.sha256()
    for case in cases:
        digest.update(f"{case.case_id}\t{case.digest}\n".encode())
    return digest.hexdigest()
