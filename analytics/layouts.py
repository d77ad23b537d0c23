"""The export table layouts other systems rely on (README, "Getting results out").

One row per lesion per study (`export_measurements`) and one row per study
(`export_responses`); the risk features read the same tables. Columns added later go
after these (the ``*_EXTRA_COLUMNS``). Plain tuples, no Django: the cores use them too.

``status`` of a measurement: ``new``, ``tracked``, ``not_found`` (expected and not seen:
its sizes are empty, never 0), ``merged`` (absorbed by ``merged_into_uid``: 0, measured
in that lesion) or ``resolved`` (a radiologist confirmed it gone: 0).
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

#: After the published measurement columns: the finding's state (confirmed, equivocal,
#: not_found, rejected) and why; whether its link is a proposal without registration;
#: a radiologist's "too small to measure" (counted 5 mm); the lesion that absorbed it;
#: the segmenter's confidence; whether a radiologist measured it by hand.
MEASUREMENT_EXTRA_COLUMNS = (
    "finding_state",
    "state_reason",
    "link_provisional",
    "too_small_to_measure",
    "merged_into_uid",
    "confidence",
    "measured_by_hand",
    "volume_core_ml",
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

#: After the published response columns: ``response_note`` first (what the category
#: rests on; why a study is NE), then whether it needs a person's attention, equivocal
#: new lesions pending, possible non-target progression, the date a PD from new lesions
#: is dated from, iRECIST (blank unless it applies to the patient), the patient's best
#: overall responses (RECIST 1.1 and iRECIST, the same on each of the patient's rows) and
#: the category's revisions (JSON).
EXPORT_RESPONSE_EXTRA_COLUMNS = (
    "response_note",
    "needs_attention",
    "pending_new_lesions",
    "possible_non_target_progression",
    "progression_dated_from",
    "irecist_response",
    "best_overall_response",
    "best_overall_response_date",
    "irecist_best_overall_response",
    "irecist_best_overall_response_date",
    "revisions",
)
