"""Which series of a study is analysed: the rules of `imaging.core.dicom.series_choice`
(CT, axial, soft-tissue kernel, thinnest at or under 5 mm, most coverage), or a user's
override recorded with who, when and why beside what the rules would have chosen.
"""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from imaging.core.dicom.series_choice import series_choose
from imaging.core.dicom.slices import SeriesVolumeError
from imaging.core.dicom.volume import series_summary
from imaging.models import ANALYSED_MODALITIES, Series, Study
from imaging.store import object_local
from patients.audit import audit_record


class SeriesOverrideError(ValueError):
    """A user's series override cannot be applied; the message says why."""


def _series_summaries(study: Study) -> list:
    """The chooser's view of each analysable series; a series whose images cannot be
    read as a volume (a legacy multi-frame CT, mixed series) is marked failed with the
    reason and left out, never left queued."""
    summaries = []
    for series in study.series.filter(modality__in=ANALYSED_MODALITIES).order_by("pk"):
        paths = [
            object_local(p)
            for p in series.instances.order_by("pk").values_list("stored_path", flat=True)
        ]
        if not paths:
            continue
        try:
            summaries.append(series_summary(sources=paths))
        except SeriesVolumeError as exc:
            series.state = Series.State.FAILED
            series.state_detail = f"its images cannot be read as a volume: {exc}"
            series.save(update_fields=["state", "state_detail", "updated_at"])
    return summaries


def study_series_choose(
    *,
    study: Study,
    override_series: Series | None = None,
    reason: str = "",
    user=None,
) -> Series:
    """Choose the series of ``study`` to analyse, record why, and return it.

    Without ``override_series`` an override recorded earlier still holds (a user's pick
    is never undone by new images); with it, the pick, its reason, who made it and when
    are recorded beside what the rules would have chosen. Series not chosen are marked
    "stored, not analysed" with the rule that excluded them. Raises
    `series_choice.NoEligibleSeriesError` when nothing can be analysed, and
    `SeriesOverrideError` for an override without a reason or from another study.
    """

    recorded = (study.series_choice or {}).get("override")
    if override_series is not None:
        if override_series.study_id != study.pk:
            raise SeriesOverrideError("the series chosen belongs to another study")
        if not reason.strip():
            raise SeriesOverrideError("a reason is required to override the series choice")
        override_uid = override_series.series_instance_uid
        override = {
            "series_instance_uid": override_uid,
            "reason": reason.strip(),
            "by": user.get_username() if user is not None else "",
            "at": timezone.now().isoformat(),
        }
    elif recorded:
        override_uid, reason, override = (
            recorded["series_instance_uid"],
            recorded["reason"],
            recorded,
        )
    else:
        override_uid, override = None, None
    choice = series_choose(
        candidates=_series_summaries(study),
        override_series_instance_uid=override_uid,
        override_reason=reason.strip(),
    )
    record = choice.as_record()
    if override is not None:
        record["override"] = override
    chosen = Series.objects.get(series_instance_uid=choice.chosen.series_instance_uid)
    rejected = {r["series_instance_uid"]: r["reason"] for r in record["rejected"]}
    with transaction.atomic():
        study.chosen_series = chosen
        study.series_choice = record
        study.save(update_fields=["chosen_series", "series_choice"])
        others = study.series.filter(modality__in=ANALYSED_MODALITIES).exclude(pk=chosen.pk)
        for series in others.exclude(state=Series.State.FAILED):
            series.state = Series.State.NOT_ANALYSED
            series.state_detail = f"not chosen for analysis: {rejected.get(series.series_instance_uid, 'another series was chosen')}"
            series.save(update_fields=["state", "state_detail", "updated_at"])
        if override_series is not None:
            audit_record(
                user=user,
                action="study.series_override",
                object=f"study {study.pk}",
                patient=study.patient_id,
            )
    return chosen
