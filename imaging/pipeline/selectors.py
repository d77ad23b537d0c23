"""Reads the pipeline needs: a series' latest stored volume, the patient's baseline, and
the studies a batch run has to process."""

from __future__ import annotations

from django.db.models import QuerySet

from imaging.models import ANALYSED_MODALITIES, ProcessingRun, Series, Study, study_order


def latest_volume_run(series: Series) -> ProcessingRun | None:
    """The newest succeeded run of ``series`` that stored a volume."""
    return (
        ProcessingRun.objects.filter(series=series, status=ProcessingRun.Status.SUCCEEDED)
        .exclude(volume_path="")
        .order_by("-finished_at", "-pk")
        .first()
    )


def baseline_series_of(study: Study) -> Series | None:
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


def study_select(
    *, patient_id: str | None = None, study_uid: str | None = None, force: bool = False
) -> QuerySet[Study]:
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
