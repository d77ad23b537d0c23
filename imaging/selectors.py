"""Reads over lesions and measurements, shaped as the tables DESIGN.md publishes."""

from __future__ import annotations

import pandas as pd

from imaging.models import LesionMeasurement

#: ``manage.py export_measurements`` columns, in order (DESIGN.md).
MEASUREMENT_COLUMNS = (
    "patient_id",
    "study_instance_uid",
    "study_date",
    "lesion_uid",
    "lesion_label",
    "organ",
    "status",
    "volume_ml",
    "longest_diameter_mm",
    "short_axis_mm",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
    "is_target",
    "review_state",
)


def measurements_table(
    *, patient_ids: list[str] | None = None, include_rejected: bool = True
) -> pd.DataFrame:
    """One row per lesion per study, values as in force (a radiologist's override wins).

    A lesion gone at a study has a row there with status ``resolved`` and volume 0.
    Centroids are LPS mm in that study's own patient coordinates. Rows a radiologist
    rejected as false positives are kept with ``review_state`` "rejected" unless
    ``include_rejected`` is false (the response assessment leaves them out).
    """
    rows = LesionMeasurement.objects.select_related("lesion__patient", "study").order_by(
        "lesion__patient__patient_id", "study__study_date", "study__study_time", "lesion__label"
    )
    if patient_ids is not None:
        rows = rows.filter(lesion__patient__patient_id__in=patient_ids)
    if not include_rejected:
        rows = rows.exclude(review_state=LesionMeasurement.Review.REJECTED)
    records = [
        (
            m.lesion.patient.patient_id,
            m.study.study_instance_uid,
            m.study.study_date,
            m.lesion.tracking_uid,
            m.lesion.label,
            m.lesion.organ,
            m.status,
            m.effective_volume_ml,
            m.effective_longest_diameter_mm,
            m.effective_short_axis_mm,
            m.centroid_x_mm,
            m.centroid_y_mm,
            m.centroid_z_mm,
            m.is_target,
            m.review_state,
        )
        for m in rows
    ]
    return pd.DataFrame.from_records(records, columns=list(MEASUREMENT_COLUMNS))
