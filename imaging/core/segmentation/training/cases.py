"""Training cases: simulated studies rendered the way a real one reaches the network, with exact truth.

A case is rendered on the study's own scanner grid (patient position, slice thickness
and spacing, noise), with the in-plane pixel coarsened to at least
``native_pixel_min_mm`` to save time (0.6-1.0 mm pixels are 2-7 times more voxels for
little difference once resampled to 1.5 mm), then reoriented and resampled exactly as
`network.segment_volume` does, and cropped to the body. The truth is rendered
analytically on that model grid (`phantom.study_label_render`): organ codes and the
exact partial-volume occupancy of each lesion, so the targets are soft (a voxel half
inside a nodule is half nodule, half lung) and a network trained on them learns where
the surface lies inside a voxel. With ``lesion_resize`` each lesion is given a random
size (equivalent diameter log-uniform 3-30 mm, within what its organ holds) half the
time, so small and absent-at-baseline lesions are seen often.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imaging.core.geometry.triples import vec3
from imaging.core.geometry.volume import Volume
from imaging.core.segmentation.network import CLASSES, SegmenterSpec, body_box, model_grid
from imaging.core.synthetic.acquisition import Size
from imaging.core.synthetic.cohort import cohort_rng, patient_simulate
from imaging.core.synthetic.labels import LABEL_CODES, StudyLabels, study_label_render
from imaging.core.synthetic.lesion_shape import equivalent_diameter_mm, volume_for_diameter_ml
from imaging.core.synthetic.phantom import LesionAtStudy, ScanGeometry, phantom_render
from imaging.core.synthetic.simulated import SimulatedLesion

N_CLASSES = len(CLASSES)


@dataclass(frozen=True, eq=False)
class TrainingCase:
    """One study on the model grid: HU (int16), organ codes, soft lesion targets, identities.

    ``organ`` holds 0 / 1 (lung) / 2 (liver); ``lesion_fraction`` the lesion occupancy
    (0..1) and ``lesion_code`` the lesion class (3 or 4) wherever a lesion touches;
    ``lesion_index`` 1 + the lesion's position in ``lesions`` where it occupies at
    least half the voxel. ``lesions`` are dicts: lesion_id, organ, volume_ml,
    diameter_mm (equivalent).
    """

    case_id: str
    hu: np.ndarray
    organ: np.ndarray
    lesion_fraction: np.ndarray
    lesion_code: np.ndarray
    lesion_index: np.ndarray
    lesions: tuple[dict[str, Any], ...]
    spacing_mm: tuple[float, float, float]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> np.ndarray:
        """Hard labels: organ, with lesion classes where a lesion occupies >= half a voxel."""
        out = self.organ.copy()
        core = self.lesion_index > 0
        out[core] = self.lesion_code[core]
        return out

    def save(self, path: Path) -> None:
        """Write the case as a compressed ``.npz`` (arrays plus a JSON ``info`` entry)."""
        np.savez_compressed(
            path,
            hu=self.hu,
            organ=self.organ,
            lesion_fraction=self.lesion_fraction,
            lesion_code=self.lesion_code,
            lesion_index=self.lesion_index,
            info=np.array(
                json.dumps(
                    {
                        "case_id": self.case_id,
                        "lesions": list(self.lesions),
                        "spacing_mm": list(self.spacing_mm),
                        "meta": self.meta,
                    }
                )
            ),
        )

    @classmethod
    def load(cls, path: Path) -> TrainingCase:
        """Read a case written by `save`."""
        with np.load(path) as data:
            info = json.loads(str(data["info"]))
            return cls(
                case_id=info["case_id"],
                hu=data["hu"],
                organ=data["organ"],
                lesion_fraction=data["lesion_fraction"],
                lesion_code=data["lesion_code"],
                lesion_index=data["lesion_index"],
                lesions=tuple(info["lesions"]),
                spacing_mm=tuple(info["spacing_mm"]),
                meta=info["meta"],
            )


def seeded_rng(*keys: int) -> np.random.Generator:
    """A generator seeded by a sequence of integers (the same keys draw the same numbers)."""
    return np.random.default_rng(np.random.SeedSequence(list(keys)))


def hu_int16(hu: np.ndarray) -> np.ndarray:
    """HU rounded and clipped to the CT range -1024..3071, as stored in a case."""
    return np.clip(np.round(hu), -1024, 3071).astype(np.int16)


def _coarsened(geometry: ScanGeometry, min_pixel_mm: float) -> ScanGeometry:
    pixel = geometry.spacing_mm[0]
    if pixel >= min_pixel_mm:
        return geometry
    ni, nj, nk = geometry.shape_ijk
    factor = pixel / min_pixel_mm
    centre = np.asarray(geometry.origin_mm) + geometry.direction @ (
        (np.asarray(geometry.shape_ijk, float) - 1) / 2 * np.asarray(geometry.spacing_mm)
    )
    return ScanGeometry.centred(
        centre_lps_mm=centre,
        shape_ijk=(max(8, round(ni * factor)), max(8, round(nj * factor)), nk),
        spacing_mm=(min_pixel_mm, min_pixel_mm, geometry.spacing_mm[2]),
        direction=geometry.direction,
        slice_thickness_mm=geometry.slice_thickness_mm,
    )


def _lesions_resized(
    simulated: Sequence[SimulatedLesion], lesions: list[LesionAtStudy], rng: np.random.Generator
) -> list[LesionAtStudy]:
    """Half the lesions given a log-uniform 3-30 mm diameter, within what their organ holds."""
    resized = []
    for sim, lesion in zip(simulated, lesions, strict=True):
        if rng.random() < 0.5:
            diameter = float(np.exp(rng.uniform(np.log(3.0), np.log(30.0))))
            volume = min(volume_for_diameter_ml(diameter), sim.max_volume_ml)
            lesion = LesionAtStudy(lesion.lesion_id, lesion.shape, volume)
        resized.append(lesion)
    return resized


def _body_crop(volume: Volume, spec: SegmenterSpec) -> tuple[Volume, np.ndarray, ScanGeometry]:
    """The study on the model grid, its HU cropped to the body, and the crop's geometry."""
    grid, _ = model_grid(volume=volume, spec=spec)
    box = body_box(grid.array)
    hu = grid.array[box]
    start_ijk = np.array([box[2].start, box[1].start, box[0].start], dtype=float)
    origin = grid.index_to_lps(start_ijk)
    crop = ScanGeometry(
        shape_ijk=(hu.shape[2], hu.shape[1], hu.shape[0]),
        spacing_mm=grid.spacing_mm,
        origin_mm=vec3(origin),
        direction=grid.direction,
        slice_thickness_mm=grid.spacing_mm[2],
    )
    return grid, hu, crop


def _lesion_records(
    truth: StudyLabels, lesions: Sequence[LesionAtStudy]
) -> tuple[dict[str, Any], ...]:
    """One dict per lesion of ``truth``, in its order: id, organ, volume, equivalent diameter."""
    volumes = {lesion.lesion_id: lesion.volume_ml for lesion in lesions}
    return tuple(
        {
            "lesion_id": lesion_id,
            "organ": organ_name,
            "volume_ml": volumes[lesion_id],
            "diameter_mm": equivalent_diameter_mm(volumes[lesion_id]),
        }
        for lesion_id, organ_name in zip(truth.lesion_ids, truth.lesion_organs, strict=True)
    )


def case_render(
    *,
    cohort_seed: int,
    size: Size,
    patient_index: int,
    study_index: int,
    spec: SegmenterSpec,
    lesion_resize: bool = False,
    native_pixel_min_mm: float = 1.25,
    n_timepoints: int = 3,
) -> TrainingCase:
    """Render one simulated study and its exact truth on the model grid (see module docs)."""
    patient = patient_simulate(
        seed=cohort_seed, index=patient_index, n_timepoints=n_timepoints, size=size
    )
    study = patient.studies[min(study_index, len(patient.studies) - 1)]
    lesions = patient.lesions_at(study)
    if lesion_resize:
        rng = seeded_rng(cohort_seed, patient_index, study_index, 77)
        lesions = _lesions_resized(patient.lesions, lesions, rng)
    scanner = study.scanner
    geometry = _coarsened(scanner.geometry(), native_pixel_min_mm)
    rendered = phantom_render(
        anatomy=patient.anatomy,
        lesions=lesions,
        geometry=geometry,
        pose_body_to_lps=study.pose_body_to_lps,
        noise_hu=scanner.noise_hu,
        rng=cohort_rng(cohort_seed, patient_index, 100 + study_index),
    )
    grid, hu, crop = _body_crop(rendered.volume, spec)
    truth = study_label_render(
        anatomy=patient.anatomy,
        lesions=lesions,
        lesion_organs={lesion.lesion_id: lesion.organ for lesion in patient.lesions},
        geometry=crop,
        pose_body_to_lps=study.pose_body_to_lps,
    )
    organ = truth.label.copy()
    organ[organ == LABEL_CODES["lung_lesion"]] = LABEL_CODES["lung"]
    organ[organ == LABEL_CODES["liver_lesion"]] = LABEL_CODES["liver"]
    return TrainingCase(
        case_id=f"{size}-s{cohort_seed}-p{patient_index}-t{study.index}"
        + ("-r" if lesion_resize else ""),
        hu=hu_int16(hu),
        organ=organ,
        lesion_fraction=truth.lesion_fraction.astype(np.float16),
        lesion_code=truth.lesion_code,
        lesion_index=truth.lesion_index.astype(np.uint8),
        lesions=_lesion_records(truth, lesions),
        spacing_mm=grid.spacing_mm,
        meta={
            "patient_position": scanner.patient_position,
            "slice_thickness_mm": scanner.slice_thickness_mm,
            "noise_hu": scanner.noise_hu,
            "native_pixel_mm": geometry.spacing_mm[0],
            "size": size,
        },
    )


@dataclass(frozen=True)
class CohortSource:
    """Which simulated studies make a split: a seed, a size and patient indices."""

    seed: int
    size: Size
    patients: tuple[int, ...]
    timepoints: int = 2
    lesion_resize: bool = False

    def studies(self) -> list[tuple[int, int]]:
        return [(p, t) for p in self.patients for t in range(self.timepoints)]


def cases_load(
    *,
    sources: Sequence[CohortSource],
    spec: SegmenterSpec,
    cache_dir: Path | None,
    on_case: Callable[[str], None] | None = None,
) -> list[TrainingCase]:
    """Render (or read from ``cache_dir``) every case of ``sources``; duplicates dropped."""
    cases: list[TrainingCase] = []
    seen: set[str] = set()
    for source in sources:
        for patient_index, study_index in source.studies():
            name = (
                f"{source.size}-s{source.seed}-p{patient_index}-t{study_index}"
                f"{'-r' if source.lesion_resize else ''}-{spec.spacing_mm[0]:g}mm.npz"
            )
            path = cache_dir / name if cache_dir else None
            if path is not None and path.exists():
                case = TrainingCase.load(path)
            else:
                case = case_render(
                    cohort_seed=source.seed,
                    size=source.size,
                    patient_index=patient_index,
                    study_index=study_index,
                    spec=spec,
                    lesion_resize=source.lesion_resize,
                    n_timepoints=max(source.timepoints, 1),
                )
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    case.save(path)
            if case.case_id in seen:  # a patient with fewer studies repeats its last one
                continue
            seen.add(case.case_id)
            cases.append(case)
            if on_case:
                on_case(case.case_id)
    return cases
