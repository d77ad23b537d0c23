"""Processing of stored studies: the series chosen, the pipeline run, and its record.

For each study one series is analysed (`study_series_choose`: the rules, or a user's
recorded override). Its run goes: device, DICOM to volume, orientation check against
the anatomy and the patient's baseline, storage as NIfTI, registration to the baseline,
U-Net segmentation with post-processing and measurement, and then the patient's lesion
tracking and response assessment. Each step's name, parameters, library versions,
timing and outcome go to `ProcessingRun.steps`, so every number shown later can be
traced to what made it. Rows (volume, registration, segmentation) are written together
when the run succeeds; a failed step marks the run and the series failed with a
readable reason and leaves earlier results as they were, so running again is safe.
"""

from __future__ import annotations

from django.conf import settings

from imaging.core.registration.register import register, transform_write
from imaging.models import Registration, Study
from imaging.pipeline.run import _read_volume, _registration_store, _run_relative_path
from imaging.pipeline.selectors import latest_volume_run
from imaging.store import data_dir


# --------------------------------------------------------------------------- the patient
def patient_registrations_ensure(*, patient, device: str = "cpu") -> int:
    """Register every processed follow-up that has no registration to the current
    baseline (a study that arrives late can become the baseline); return how many."""

    studies = list(
        Study.objects.filter(patient=patient, chosen_series__isnull=False)
        .select_related("chosen_series")
        .chronological()
    )
    runs = [(s, latest_volume_run(s.chosen_series)) for s in studies]
    runs = [(s, r) for s, r in runs if r is not None]
    if len(runs) < 2:
        return 0
    (baseline_study, baseline_run), follow_ups = runs[0], runs[1:]
    fixed_series = baseline_study.chosen_series
    fixed = None
    done = 0
    backend = settings.RADTRACK_REGISTRATION_BACKEND
    for study, run in follow_ups:
        series = study.chosen_series
        if Registration.objects.filter(moving_series=series, fixed_series=fixed_series).exists():
            continue
        fixed = fixed if fixed is not None else _read_volume(baseline_run)
        registration = register(
            fixed=fixed, moving=_read_volume(run), backend=backend, device=device
        )
        transform_path = _run_relative_path(series, run, f"to_baseline-{fixed_series.pk}.tfm")
        transform_write(transform=registration.transform, path=data_dir() / transform_path)
        _registration_store(
            run=run,
            moving=series,
            fixed=fixed_series,
            registration=registration,
            transform_path=transform_path,
        )
        done += 1
    return done
