"""Lesion identities across a patient's studies, and the responses that follow from them.

`patient_track` rebuilds a patient's identities from the latest segmentation of each
study's analysed series, matched in the baseline frame through each follow-up's stored
registration (`imaging.core.matching`). Identities keep their Tracking UID and label
across rebuilds when their first sighting is unchanged, and a radiologist's decisions
about a lesion candidate (accept, reject, override) stay with that candidate. A
radiologist's links (`LesionLink`: this candidate belongs to that lesion, or to a lesion
of its own) are applied study by study before the next study is matched, so a relinked
lesion is followed from where the radiologist put it. Targets are chosen at baseline by
the RECIST 1.1 rules unless a radiologist chose them, and every response assessment is
recomputed in the same transaction.

Decisions are recorded on segmentation candidates ((segmentation, component label)).
When a series is segmented again (new images, ``process --force``), every decision made
on the earlier segmentation is carried to the candidate of the newest one that pairs
with it (`candidates_pair`) and re-keyed there; a decision that cannot be carried, or
whose lesion no longer has the same candidates, is never dropped silently: it is listed
in the `TrackingSummary` (``stale_*``) and, unless the caller records it itself, in a
`ReviewEvent` ("carry_over") with the values that were in force.
"""

from __future__ import annotations

import numpy as np

from analytics.lesions.core.volumetric import responses_table_build
from analytics.lesions.selectors import measurements_table
from analytics.models import ResponseAssessment
from imaging.models import (
    Study,
)
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
                sum_diameters_mm=_finite(row.sum_diameters_mm),
                total_volume_ml=_finite(row.total_volume_ml),
                pct_change_baseline=_finite(row.pct_change_baseline),
                pct_change_nadir=_finite(row.pct_change_nadir),
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


def _finite(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None
