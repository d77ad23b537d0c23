"""Celery tasks of the risk models: thin, they load a row by key and call one service."""

from typing import Any

from django.db import transaction

from analytics.models import RiskModelVersion
from analytics.risk.selectors import current_model_version
from analytics.risk.services import risk_scores_compute
from patients.models import Patient
from radtrack.celery import radtrack_task


@radtrack_task(queue="cpu")
def risk_scores_compute_task(
    model_version_id: int | None = None, patient_pks: list[int] | None = None
) -> int:
    """Recompute the scores of these patients (None: everyone) with one model version
    (default: the latest)."""

    if model_version_id is None:
        version = current_model_version()
    else:
        version = RiskModelVersion.objects.filter(pk=model_version_id).first()
    if version is None:  # no model fitted yet, or deleted since it was queued
        return 0
    if patient_pks is None:
        return risk_scores_compute(model_version=version)
    mrns = list(Patient.objects.filter(pk__in=patient_pks).values_list("patient_id", flat=True))
    if not mrns:
        return 0
    return risk_scores_compute(model_version=version, patient_ids=mrns)


def risk_scores_patients_receive(
    sender: Any, *, patient_pks: frozenset[int], using: str, **_signal: object
) -> None:
    """New lab results or clinical events (an EHR import): these patients' scores are
    recomputed once the write commits, so that the worklist's order and tiers never
    rest on data that has changed since (a CEA spike, a progression, a death)."""
    pks = sorted(patient_pks)
    transaction.on_commit(
        lambda: risk_scores_compute_task.delay(None, patient_pks=pks), using=using
    )
