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

from imaging.models import ANALYSED_MODALITIES, ProcessingRun, Series, Study, study_order


def latest_volume_run(series: Series) -> ProcessingRun | None:
    """The newest succeeded run of ``series`` that stored a volume."""
    return (
        ProcessingRun.objects.filter(series=series, status=ProcessingRun.Status.SUCCEEDED)
        .exclude(volume_path="")
        .order_by("-finished_at", "-pk")
        .first()
    )


def _baseline_series(study: Study) -> Series | None:
    """The analysed series of the patient's earliest study before ``study`` that has a
    stored volume: the frame every follow-up is registered to."""
    earlier = (
        Study.objects.filter(patient_id=study.patient_id, chosen_series__isnull=False)
        .exclude(pk=study.pk)
        .select_related("chosen_series")
        .chronological()
    )
    for other in earlier:
        if (
            other.chronological_key < study.chronological_key
            and latest_volume_run(other.chosen_series) is not None
        ):
            return other.chosen_series
    return None


# --------------------------------------------------------------------------- batches
def study_select(
    *, patient_id: str | None = None, study_uid: str | None = None, force: bool = False
):
    """Studies in scope with an analysable series; without ``force`` only those whose
    analysed series is not yet processed. Ordered so each patient's baseline goes first."""
    qs = Study.objects.filter(series__modality__in=ANALYSED_MODALITIES).select_related(
        "patient", "chosen_series"
    )
    if patient_id:
        qs = qs.filter(patient__patient_id=patient_id)
    if study_uid:
        qs = qs.filter(study_instance_uid=study_uid)
    qs = qs.distinct()
    if not force:
        qs = qs.exclude(chosen_series__state=Series.State.PROCESSED)
    return qs.order_by("patient__patient_id", *study_order())
