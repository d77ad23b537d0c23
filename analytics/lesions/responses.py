"""The RECIST 1.1 and volumetric response of every study of a patient, recomputed from
the measurements in force and stored as `ResponseAssessment` rows."""

from __future__ import annotations

import numpy as np

from analytics.lesions.core.volumetric import responses_table_build
from analytics.lesions.selectors import measurements_table
from analytics.models import ResponseAssessment
from imaging.models import Study
from patients.models import Patient


def responses_recompute(*, patient: Patient) -> list[ResponseAssessment]:
    """Recompute the RECIST 1.1 and volumetric response of every study of ``patient``.

    Rejected candidates are left out; a radiologist's overrides are in force.
    """
    table = measurements_table(patient_ids=[patient.patient_id], include_rejected=False)
    ResponseAssessment.objects.filter(patient=patient).delete()
    if table.empty:
        return []
    responses = responses_table_build(measurements=table)
    studies = {
        s.study_instance_uid: s
        for s in Study.objects.filter(study_instance_uid__in=list(responses["study_instance_uid"]))
    }
    made = []
    for index, row in enumerate(responses.itertuples(index=False)):
        made.append(
            ResponseAssessment.objects.create(
                patient=patient,
                study=studies[row.study_instance_uid],
                is_baseline=index == 0,
                sum_diameters_mm=finite_or_none(row.sum_diameters_mm),
                total_volume_ml=finite_or_none(row.total_volume_ml),
                pct_change_baseline=finite_or_none(row.pct_change_baseline),
                pct_change_nadir=finite_or_none(row.pct_change_nadir),
                recist_response=row.recist_response or "",
                volumetric_response=row.volumetric_response or "",
                new_lesions=bool(row.new_lesions),
                inputs={
                    "measurements": int(
                        (table["study_instance_uid"] == row.study_instance_uid).sum()
                    )
                },
            )
        )
    return made


def finite_or_none(value: object) -> float | None:
    """``value`` as a float, or None when it is not a finite number (the database and
    JSON hold no NaN or infinity)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None
