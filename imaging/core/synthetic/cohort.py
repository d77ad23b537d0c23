"""A synthetic longitudinal oncology cohort: simulate patients, render their CT, write the files.

The simulation is cheap and separate from rendering, so hundreds of patients simulate
in seconds (`cohort_simulate`); the disease model is in `imaging.core.synthetic.course`,
the acquisitions in `imaging.core.synthetic.acquisition`. Determinism: everything derives
from ``numpy.random.SeedSequence([seed, patient index, ...])``, so a patient does not
change when the cohort grows, and UIDs come from `synthetic_uid` with fixed entropy.

Files written by `cohort_generate` under ``OUT``:

- ``dicom/<patient_id>/<study>/<series>/IM000001.dcm``...: one CT series per study.
- ``labs.csv``, ``events.csv`` and ``ehr_bundle.json`` (FHIR R4): the patients' records
  (`imaging.core.synthetic.ehr`).
- ``truth.json``: what the images and records were made from
  (`imaging.core.synthetic.truth`).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from imaging.core.dicom.write import CTSeriesAttributes, ct_series_write, synthetic_uid
from imaging.core.synthetic.acquisition import SIZES, SimulatedStudy, Size, studies_sample
from imaging.core.synthetic.anatomy import anatomy_sample
from imaging.core.synthetic.course import (
    course_sample,
    events_simulate,
    labs_simulate,
    lesions_simulate,
)
from imaging.core.synthetic.ehr import ehr_bundle_build, events_csv_write, labs_csv_write
from imaging.core.synthetic.phantom import RenderedStudy, phantom_render
from imaging.core.synthetic.simulated import Cohort, SimulatedPatient
from imaging.core.synthetic.truth import truth_build

_GIVEN = {
    "F": ("Ada", "Beth", "Clara", "Dora", "Edith", "Fay", "Greta", "Hilda", "Ines", "June"),
    "M": ("Abel", "Bruno", "Cyril", "Dario", "Emil", "Felix", "Gus", "Hugo", "Ivo", "Jonah"),
}
_FAMILY = (
    "Synth", "Phantom", "Voxel", "Hounsfield", "Fourier", "Radon", "Tomo", "Kernel",
    "Sievert", "Roentgen", "Bragg", "Compton",
)  # fmt: skip


def cohort_rng(seed: int, *keys: int) -> np.random.Generator:
    """The generator of one stream of a cohort: ``SeedSequence([seed, *keys])``."""
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


# --------------------------------------------------------------------------------------
# Simulation
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Demographics:
    """Who the patient is: name, sex, birth date, and the date of the baseline study."""

    patient_name: str
    sex: str
    birth_date: dt.date
    baseline_date: dt.date


def demographics_sample(rng: np.random.Generator) -> Demographics:
    """An adult of 40-85 at a baseline between 2019 and 2023, with a synthetic name."""
    sex = "F" if rng.random() < 0.5 else "M"
    given = str(rng.choice(_GIVEN[sex]))
    family = str(rng.choice(_FAMILY))
    baseline_date = dt.date(2019, 1, 1) + dt.timedelta(days=int(rng.integers(0, 5 * 365)))
    age_days = int(rng.uniform(40, 85) * 365.25)
    return Demographics(
        patient_name=f"{family}^{given}",
        sex=sex,
        birth_date=baseline_date - dt.timedelta(days=age_days),
        baseline_date=baseline_date,
    )


def patient_simulate(*, seed: int, index: int, n_timepoints: int, size: Size) -> SimulatedPatient:
    """One patient: demographics, anatomy, lesions, studies, labs and events."""
    preset = SIZES[size]
    rng_person, rng_lesion, rng_course, rng_study, rng_labs = (
        cohort_rng(seed, index, stream) for stream in (1, 2, 3, 4, 5)
    )
    patient_id = f"SYN-{seed}-{index + 1:04d}"
    person = demographics_sample(rng_person)
    anatomy = anatomy_sample(rng_person)
    course = course_sample(rng_course, rng_study, n_timepoints=n_timepoints)
    lesions = lesions_simulate(
        rng_lesion, seed=seed, patient_id=patient_id, anatomy=anatomy, course=course
    )
    studies = studies_sample(
        rng_study,
        seed=seed,
        patient_id=patient_id,
        preset=preset,
        anatomy=anatomy,
        baseline_date=person.baseline_date,
        study_days=course.study_days,
    )
    events = events_simulate(
        rng_course, patient_id=patient_id, baseline_date=person.baseline_date, course=course
    )
    labs = labs_simulate(
        rng_labs,
        patient_id=patient_id,
        sex=person.sex,
        baseline_date=person.baseline_date,
        course=course,
        lesions=lesions,
    )
    return SimulatedPatient(
        index=index,
        patient_id=patient_id,
        patient_name=person.patient_name,
        birth_date=person.birth_date,
        sex=person.sex,
        aggressiveness=course.aggressiveness,
        true_risk=course.true_risk,
        baseline_date=person.baseline_date,
        progression_onset_day=course.progression_day,
        anatomy=anatomy,
        lesions=lesions,
        studies=studies,
        labs=labs,
        events=events,
    )


def cohort_simulate(
    *, n_patients: int, n_timepoints: int, seed: int, size: Size = "small"
) -> Cohort:
    """Simulate a cohort (no images): deterministic for ``seed``."""
    if n_patients < 1 or n_timepoints < 1:
        raise ValueError("a cohort needs at least one patient and one timepoint")
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}; got {size!r}")
    patients = tuple(
        patient_simulate(seed=seed, index=i, n_timepoints=n_timepoints, size=size)
        for i in range(n_patients)
    )
    return Cohort(seed=seed, size=size, n_timepoints=n_timepoints, patients=patients)


def cohort_survival(
    cohort: Cohort, *, endpoint: Literal["death", "progression"] = "death"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(durations in days, event observed, true risk) per patient for an endpoint."""
    durations, observed, risk = [], [], []
    for patient in cohort.patients:
        by_kind = {e.kind: e.date for e in patient.events}
        end = by_kind.get("death") or by_kind["censor"]
        if endpoint == "progression" and "progression" in by_kind:
            durations.append((by_kind["progression"] - patient.baseline_date).days)
            observed.append(True)
        else:
            durations.append((end - patient.baseline_date).days)
            observed.append(endpoint == "death" and "death" in by_kind)
        risk.append(patient.true_risk)
    return np.asarray(durations, float), np.asarray(observed, bool), np.asarray(risk, float)


# --------------------------------------------------------------------------------------
# Rendering and files
# --------------------------------------------------------------------------------------
def study_render(cohort: Cohort, patient: SimulatedPatient, study: SimulatedStudy) -> RenderedStudy:
    """Render one study's CT volume (HU) with its lesions at their volumes that day."""
    return phantom_render(
        anatomy=patient.anatomy,
        lesions=patient.lesions_at(study),
        geometry=study.scanner.geometry(),
        pose_body_to_lps=study.pose_body_to_lps,
        noise_hu=study.scanner.noise_hu,
        rng=cohort_rng(cohort.seed, patient.index, 100 + study.index),
        frame_of_reference_uid=study.frame_of_reference_uid,
    )


def study_dicom_write(
    patient: SimulatedPatient, study: SimulatedStudy, rendered: RenderedStudy, out_dir: Path
) -> list[Path]:
    """Write the rendered study as a CT series under ``out_dir / patient.study_folder``."""
    scanner = study.scanner
    attrs = CTSeriesAttributes(
        patient_id=patient.patient_id,
        study_instance_uid=study.study_instance_uid,
        series_instance_uid=study.series_instance_uid,
        frame_of_reference_uid=study.frame_of_reference_uid,
        patient_name=patient.patient_name,
        patient_birth_date=patient.birth_date,
        patient_sex=patient.sex,
        study_date=study.study_date,
        study_time=study.study_time,
        accession_number=study.accession_number,
        study_id=str(study.index + 1),
        study_description="CT CHEST ABDOMEN WITH CONTRAST",
        series_description=f"AXIAL {scanner.slice_thickness_mm:g}MM {scanner.kernel}",
        patient_position=scanner.patient_position,
        convolution_kernel=scanner.kernel,
        slice_thickness_mm=scanner.slice_thickness_mm,
    )
    n = rendered.volume.array.shape[0]
    sop_uids = [str(synthetic_uid([study.series_instance_uid, str(k)])) for k in range(n)]
    return ct_series_write(
        rendered.volume, out_dir / patient.study_folder(study), attrs, sop_instance_uids=sop_uids
    )


@dataclass(frozen=True)
class GenerationSummary:
    """What `cohort_generate` wrote, and how long it took (seconds)."""

    n_patients: int
    n_studies: int
    n_images: int
    n_lesions: int
    n_labs: int
    n_events: int
    seconds: float


def cohort_generate(
    out_dir: Path,
    *,
    n_patients: int,
    n_timepoints: int,
    seed: int,
    size: Size = "small",
    on_study: Callable[[SimulatedPatient, SimulatedStudy, int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> GenerationSummary:
    """Simulate, render and write a cohort under ``out_dir``.

    ``on_start(total studies)`` is called once and ``on_study(patient, study, images)``
    after each study is written (for progress reporting).
    """
    started = time.perf_counter()
    cohort = cohort_simulate(n_patients=n_patients, n_timepoints=n_timepoints, seed=seed, size=size)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_studies = sum(len(p.studies) for p in cohort.patients)
    if on_start:
        on_start(n_studies)
    n_images = 0
    for patient in cohort.patients:
        for study in patient.studies:
            rendered = study_render(cohort, patient, study)
            paths = study_dicom_write(patient, study, rendered, out_dir)
            n_images += len(paths)
            if on_study:
                on_study(patient, study, len(paths))
    n_labs = labs_csv_write(cohort, out_dir / "labs.csv")
    n_events = events_csv_write(cohort, out_dir / "events.csv")
    (out_dir / "ehr_bundle.json").write_text(json.dumps(ehr_bundle_build(cohort), indent=1))
    (out_dir / "truth.json").write_text(json.dumps(truth_build(cohort), indent=1))
    return GenerationSummary(
        n_patients=len(cohort.patients),
        n_studies=n_studies,
        n_images=n_images,
        n_lesions=sum(len(p.lesions) for p in cohort.patients),
        n_labs=n_labs,
        n_events=n_events,
        seconds=time.perf_counter() - started,
    )
