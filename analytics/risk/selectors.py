"""Reads for analytics: the model inputs as DataFrames, and the risk-ordered worklist.

`feature_inputs_load` maps the database onto the tables `analytics.core.features`
expects (the ``export_measurements`` / ``export_responses`` layouts of DESIGN.md for
imaging). `worklist` gives one typed row per patient with the latest risk score of the
current model version and the flags a triage nurse acts on, in a fixed number of queries
whatever the number of patients.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

import pandas as pd
from django.db.models.functions import Coalesce

from analytics.layouts import EXPORT_RESPONSE_COLUMNS as RESPONSE_COLUMNS
from analytics.layouts import MEASUREMENT_COLUMNS
from analytics.models import ResponseAssessment, RiskModelVersion
from analytics.risk.core.features import DemographicFeatures, ImagingFeatures, LabFeatures
from imaging.models import LesionMeasurement, Study, study_order
from patients.models import ClinicalEvent, LabResult, Patient

# --------------------------------------------------------------------------------------
# Model inputs
# --------------------------------------------------------------------------------------
LAB_COLUMNS = ("patient_id", "loinc_code", "value", "unit", "observed_at")


PATIENT_COLUMNS = ("patient_id", "birth_date", "sex")


EVENT_COLUMNS = ("patient_id", "kind", "date")


STUDY_COLUMNS = ("patient_id", "study_instance_uid", "study_date")


@dataclass(frozen=True)
class FeatureInputs:
    """Everything the feature blocks and outcomes read, keyed by MRN (``patient_id``).

    - ``labs``: `LAB_COLUMNS`, values in the canonical unit, ``observed_at`` tz-aware UTC.
    - ``patients``: `PATIENT_COLUMNS` (``sex`` F/M/O or blank).
    - ``events``: `EVENT_COLUMNS` (progression / death / censor).
    - ``studies``: `STUDY_COLUMNS`, every dated CT study (processed or not).
    - ``measurements``: `MEASUREMENT_COLUMNS`, one row per lesion per study.
    - ``responses``: `RESPONSE_COLUMNS`, one row per assessed study.
    """

    labs: pd.DataFrame
    patients: pd.DataFrame
    events: pd.DataFrame
    studies: pd.DataFrame
    measurements: pd.DataFrame
    responses: pd.DataFrame

    def blocks(self, *, lookback_days: float = 365.0) -> list:
        """The feature blocks over these inputs: labs, age and sex, imaging."""
        return [
            LabFeatures(self.labs, lookback_days=lookback_days),
            DemographicFeatures(self.patients),
            ImagingFeatures(self.measurements, self.responses),
        ]


def _frame(rows: Iterable[tuple], columns: tuple[str, ...]) -> pd.DataFrame:
    return pd.DataFrame.from_records(list(rows), columns=list(columns))


def feature_inputs_load(*, patient_ids: Collection[str] | None = None) -> FeatureInputs:
    """Load the model inputs of the patients with these MRNs (all patients when None).

    Six queries. Imaging follows the export layouts of DESIGN.md, with each
    measurement's values in force (a radiologist's override, else the automated value):

    - a measurement a radiologist rejected (a false positive) is left out;
    - a lesion resolved at a study keeps its row there, with volume and diameters 0;
    - studies without a study date are left out (they cannot be placed in time).
    """
    patients = Patient.objects.all()
    if patient_ids is not None:
        patients = patients.filter(patient_id__in=list(patient_ids))
    within = patients.values("pk")

    labs = _frame(
        LabResult.objects.filter(patient__in=within)
        .order_by("patient__patient_id", "loinc_code", "observed_at")
        .values_list("patient__patient_id", "loinc_code", "value", "unit", "observed_at"),
        LAB_COLUMNS,
    )
    if not labs.empty:
        labs["observed_at"] = pd.to_datetime(labs["observed_at"], utc=True)
    people = _frame(patients.order_by("patient_id").values_list(*PATIENT_COLUMNS), PATIENT_COLUMNS)
    events = _frame(
        ClinicalEvent.objects.filter(patient__in=within)
        .order_by("patient__patient_id", "date", "kind")
        .values_list("patient__patient_id", "kind", "date"),
        EVENT_COLUMNS,
    )
    studies = _frame(
        Study.objects.filter(patient__in=within, study_date__isnull=False)
        .order_by("patient__patient_id", *study_order())
        .values_list("patient__patient_id", "study_instance_uid", "study_date"),
        STUDY_COLUMNS,
    )
    measurements = _frame(
        LesionMeasurement.objects.filter(study__patient__in=within, study__study_date__isnull=False)
        .exclude(review_state=LesionMeasurement.Review.REJECTED)
        .annotate(
            volume_in_force=Coalesce("override_volume_ml", "volume_ml"),
            longest_in_force=Coalesce("override_longest_diameter_mm", "longest_diameter_mm"),
            short_in_force=Coalesce("override_short_axis_mm", "short_axis_mm"),
        )
        .order_by("study__patient__patient_id", "study__study_date", "study_id", "lesion__label")
        .values_list(
            "study__patient__patient_id",
            "study__study_instance_uid",
            "study__study_date",
            "lesion__tracking_uid",
            "lesion__label",
            "lesion__organ",
            "status",
            "volume_in_force",
            "longest_in_force",
            "short_in_force",
            "centroid_x_mm",
            "centroid_y_mm",
            "centroid_z_mm",
            "is_target",
            "review_state",
        ),
        MEASUREMENT_COLUMNS,
    )
    if not measurements.empty:
        resolved = measurements["status"] == LesionMeasurement.Status.RESOLVED
        measurements.loc[resolved, ["volume_ml", "longest_diameter_mm", "short_axis_mm"]] = 0.0
    responses = _frame(
        ResponseAssessment.objects.filter(patient__in=within, study__study_date__isnull=False)
        .order_by("patient__patient_id", "study__study_date", "pk")
        .values_list(
            "patient__patient_id",
            "study__study_instance_uid",
            "study__study_date",
            "sum_diameters_mm",
            "total_volume_ml",
            "pct_change_baseline",
            "pct_change_nadir",
            "recist_response",
            "volumetric_response",
            "new_lesions",
        ),
        RESPONSE_COLUMNS,
    )
    return FeatureInputs(
        labs=labs,
        patients=people,
        events=events,
        studies=studies,
        measurements=measurements,
        responses=responses,
    )


def current_model_version() -> RiskModelVersion | None:
    """The most recently fitted model version, whose scores the worklist shows."""
    return RiskModelVersion.objects.order_by("-created_at", "-pk").first()
