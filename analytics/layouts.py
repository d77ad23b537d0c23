"""The export table layouts other systems rely on (README, "Getting results out").

One row per lesion per study (`export_measurements`) and one row per study
(`export_responses`); the risk features read the same tables. Columns added later go
after these. Plain tuples, no Django: the cores use them too.
"""

#: ``manage.py export_measurements``: one row per lesion identity known at a study.
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

#: ``manage.py export_responses``: one row per processed follow-up, assessable or not.
EXPORT_RESPONSE_COLUMNS = (
    "patient_id",
    "study_instance_uid",
    "study_date",
    "sum_diameters_mm",
    "total_volume_ml",
    "pct_change_baseline",
    "pct_change_nadir",
    "recist_response",
    "volumetric_response",
    "new_lesions",
)
