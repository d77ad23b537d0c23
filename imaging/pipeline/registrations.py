"""Registrations of a patient's follow-ups to the baseline that the runs did not make:
when a study that arrives late becomes the baseline, every follow-up is registered to it."""

from __future__ import annotations

import logging

from django.conf import settings

from imaging.core.registration.register import register
from imaging.core.registration.transforms import transform_write
from imaging.models import Registration, Study
from imaging.pipeline.selectors import latest_volume_run
from imaging.pipeline.storage import (
    registration_failure_store,
    registration_store,
    run_relative_path,
    run_volume_read,
)
from imaging.store import data_dir, derived_publish
from patients.models import Patient
from radtrack.celery import NEVER_SWALLOWED

logger = logging.getLogger(__name__)


def patient_registrations_ensure(*, patient: Patient, device: str = "cpu") -> int:
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
        fixed = fixed if fixed is not None else run_volume_read(baseline_run)
        try:
            registration = register(
                fixed=fixed, moving=run_volume_read(run), backend=backend, device=device
            )
        except NEVER_SWALLOWED:  # "not now" is retried; the time limit ends the task
            raise
        except Exception as exc:  # never stops tracking: the follow-up is linked provisionally
            logger.exception("registration of series %s raised", series.pk)
            registration_failure_store(
                run=run,
                moving=series,
                fixed=fixed_series,
                backend=backend,
                device=device,
                reason=f"registration raised {type(exc).__name__}: {exc}",
            )
            done += 1
            continue
        transform_path = run_relative_path(series, run, f"to_baseline-{fixed_series.pk}.tfm")
        transform_write(transform=registration.transform, path=data_dir() / transform_path)
        derived_publish(transform_path)
        registration_store(
            run=run,
            moving=series,
            fixed=fixed_series,
            registration=registration,
            transform_path=transform_path,
        )
        done += 1
    return done
