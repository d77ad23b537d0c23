"""A generated patient whose automated result misses a lung nodule, stored as processed
studies (volumes, label maps, segmentations, the registration to the baseline), for the
tests of a radiologist's corrections.

The patient is one of the cohort `manage.py generate_cohort` writes (small size: 128 x
128 pixels of about 3 mm, 4.5 mm slices): a liver lesion and two lung nodules at both
studies. The "automated result" is each lesion's true mask (the generator's occupancy
of at least 0.5), measured as `interactive.mask_measure` measures a mask, with the
nodule `MISSED` left out where a test says; the registration is the true pose change
between the studies. Nothing of the segmenter runs, so the tests are fast and exact.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from django.conf import settings
from scipy import ndimage

from analytics.lesions.tracking.track import patient_track
from imaging.core.geometry.nifti import volume_write_nifti
from imaging.core.geometry.volume import Volume
from imaging.core.segmentation.interactive import mask_measure
from imaging.core.synthetic import cohort as cohort_mod
from imaging.models import ProcessingRun, Registration, Segmentation, Series
from imaging.pipeline.storage import candidate_entry
from patients.models import Patient
from radtrack.provenance import json_safe
from tests.imaging.factories import SeriesFactory, StudyFactory
from tests.patients.factories import PatientFactory

SEED, INDEX = 1616, 6
#: The 1.4 ml lung nodule (about 14 mm): a RECIST target when it is seen at baseline.
MISSED = "SYN-1616-0007-L02"


@dataclass
class CorrectionCase:
    patient: Patient
    studies: list  # Study rows, oldest first
    #: the missed nodule's true centre at each study (that study's LPS mm)
    centres: list[np.ndarray] = field(default_factory=list)
    volumes_ml: list[float] = field(default_factory=list)


def _masks(rendered, lesion_ids: list[str]) -> dict[str, np.ndarray]:
    shape = rendered.volume.array.shape
    out = {}
    for lesion_id in lesion_ids:
        frac = rendered.lesion_fractions.get(lesion_id)
        if frac is None:
            continue
        mask = np.zeros(shape, dtype=bool)
        k0, j0, i0 = frac.start_kji
        nk, nj, ni = frac.fraction.shape
        mask[k0 : k0 + nk, j0 : j0 + nj, i0 : i0 + ni] = frac.fraction >= 0.5
        if mask.any():
            out[lesion_id] = mask
    return out


def _erase(volume, mask: np.ndarray, seed: int) -> None:
    """Paint lung over the nodule (it has gone at this study)."""
    around = ndimage.binary_dilation(mask, iterations=2)
    ring = ndimage.binary_dilation(around, iterations=2) & ~around
    lung = float(np.median(volume.array[ring]))
    noise = np.random.default_rng(seed).normal(0.0, 10.0, int(around.sum()))
    volume.array[around] = lung + noise


@dataclass(frozen=True, eq=False)
class _Rendered:
    """One generated study, rendered and its lesions measured once per test session."""

    volume: Volume
    masks: dict[str, np.ndarray]
    candidates: dict[str, dict]
    centre: np.ndarray
    volume_ml: float
    study_date: object
    slice_thickness_mm: float
    pose: np.ndarray


@functools.cache
def _rendered(index: int) -> _Rendered:
    cohort = cohort_mod.cohort_simulate(
        n_patients=INDEX + 1, n_timepoints=2, seed=SEED, size="small"
    )
    simulated = cohort.patients[INDEX]
    sim_study = simulated.studies[index]
    rendered = cohort_mod.study_render(cohort, simulated, sim_study)
    volume = rendered.volume
    lesion_ids = [lesion.lesion_id for lesion in simulated.lesions]
    organs = {lesion.lesion_id: lesion.organ for lesion in simulated.lesions}
    truth = {lesion.lesion_id: lesion.volume_ml for lesion in simulated.lesions_at(sim_study)}
    masks = _masks(rendered, lesion_ids)
    candidates = {}
    for number, lesion_id in enumerate(lesion_ids, start=1):
        if lesion_id in masks:
            measured = mask_measure(study=volume, mask=masks[lesion_id], organ=organs[lesion_id])
            entry = json_safe(candidate_entry(measured))
            entry.update(component_label=number, confidence=0.95)
            candidates[lesion_id] = entry
    centre = volume.index_to_lps(np.argwhere(masks[MISSED]).mean(axis=0)[::-1])
    return _Rendered(volume, masks, candidates, centre, truth[MISSED], sim_study.study_date,
                     float(sim_study.scanner.slice_thickness_mm), sim_study.pose_body_to_lps)  # fmt: skip


def correction_patient(
    *, patient_id: str = "CORR-1", missed_at: tuple[int, ...] = (0,), gone_at: tuple[int, ...] = ()
) -> CorrectionCase:
    """The patient stored as processed and tracked; the nodule is left out of the
    automated result at the studies ``missed_at`` and painted out of the images at
    ``gone_at`` (indices, 0 the baseline)."""
    patient = PatientFactory(patient_id=patient_id)
    case = CorrectionCase(patient, [])
    root = Path(settings.DATA_DIR)
    baseline: tuple[Series, np.ndarray] | None = None
    for index in range(2):
        data = _rendered(index)
        volume = data.volume.with_array(data.volume.array.copy())
        case.centres.append(data.centre)
        case.volumes_ml.append(data.volume_ml)
        if index in gone_at:
            _erase(volume, data.masks[MISSED], index)
        label_map = np.zeros(volume.array.shape, dtype=np.uint8)
        candidates = []
        for lesion_id, entry in data.candidates.items():
            if lesion_id == MISSED and (index in missed_at or index in gone_at):
                continue
            label_map[data.masks[lesion_id]] = entry["component_label"]
            candidates.append(dict(entry))
        study = StudyFactory(patient=patient, study_date=data.study_date)
        series = SeriesFactory(
            study=study, state=Series.State.PROCESSED, slice_thickness_mm=data.slice_thickness_mm
        )
        study.chosen_series = series
        study.save()
        volume_path = f"volumes/{patient_id}-{index}.nii.gz"
        mask_path = f"masks/{patient_id}-{index}.nii.gz"
        volume_write_nifti(volume=volume, path=root / volume_path)
        volume_write_nifti(volume=volume.with_array(label_map, kind="label"), path=root / mask_path)
        run = ProcessingRun.objects.create(
            series=series, status=ProcessingRun.Status.SUCCEEDED, volume_path=volume_path
        )
        Segmentation.objects.create(
            series=series,
            processing_run=run,
            mask_path=mask_path,
            model_name="test-segmenter",
            model_version="1",
            lesions=candidates,
        )
        if baseline is None:
            baseline = (series, data.pose)
        else:
            Registration.objects.create(
                moving_series=series,
                fixed_series=baseline[0],
                backend="test",
                matrix_fixed_to_moving=(data.pose @ np.linalg.inv(baseline[1])).tolist(),
            )
        case.studies.append(study)
    patient_track(patient=patient)
    return case
