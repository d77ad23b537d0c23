"""Reads for the risk models: the database as the tables the feature blocks take.

`feature_inputs_load` gives labs, demographics, clinical events, CT studies, lesion
measurements and response assessments as DataFrames (imaging in the export layouts of
`analytics.layouts`), keyed by MRN; `current_model_version` is the model whose scores
the pages show.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

import pandas as pd
from django.db.models import QuerySet
from django.db.models.functions import Coalesce

from analytics.layouts import EXPORT_RESPONSE_COLUMNS as RESPONSE_COLUMNS
from analytics.layouts import MEASUREMENT_COLUMNS
from analytics.models import ResponseAssessment, RiskModelVersion
from analytics.risk.core.features import DemographicFeatures, ImagingFeatures, LabFeatures
from imaging.models import LesionMeasurement, Study, study_order
from patients.models import ClinicalEvent, LabResult, Patient

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


def rows_frame(*, rows: Iterable[tuple], columns: tuple[str, ...]) -> pd.DataFrame:
    """A DataFrame of ``rows`` (e.g. a ``values_list`` query) with these column names."""
    return pd.DataFrame.from_records(list(rows), columns=list(columns))


def feature_inputs_load(*, patient_ids: Collection[str] | None = None) -> FeatureInputs:
    """Load the model inputs of the patients with these MRNs (all patients when None).

    Six queries. Imaging follows the export layouts of `analytics.layouts`, with each
    measurement's values in force (a radiologist's override, else the automated value):

    - a measurement a radiologist rejected (a false positive) is left out;
    - a lesion resolved at a study keeps its row there, with volume and diameters 0;
    - studies without a study date are left out (they cannot be placed in time).
    """
    patients = Patient.objects.all()
    if patient_ids is not None:
        patients = patients.filter(patient_id__in=list(patient_ids))
    within = patients.values("pk")
    return FeatureInputs(
        labs=_labs_load(within),
        patients=rows_frame(
            rows=patients.order_by("patient_id").values_list(*PATIENT_COLUMNS),
            columns=PATIENT_COLUMNS,
        ),
        events=_events_load(within),
        studies=_studies_load(within),
        measurements=_measurements_load(within),
        responses=_responses_load(within),
    )


def _labs_load(within: QuerySet) -> pd.DataFrame:
    labs = rows_frame(
        rows=LabResult.objects.filter(patient__in=within)
        .order_by("patient__patient_id", "loinc_code", "observed_at")
        .values_list("patient__patient_id", "loinc_code", "value", "unit", "observed_at"),
        columns=LAB_COLUMNS,
    )
    if not labs.empty:
        labs["observed_at"] = pd.to_datetime(labs["observed_at"], utc=True)
    return labs


def _events_load(within: QuerySet) -> pd.DataFrame:
    return rows_frame(
        rows=ClinicalEvent.objects.filter(patient__in=within)
        .order_by("patient__patient_id", "date", "kind")
        .values_list("patient__patient_id", "kind", "date"),
        columns=EVENT_COLUMNS,
    )


def _studies_load(within: QuerySet) -> pd.DataFrame:
    return rows_frame(
        rows=Study.objects.filter(patient__in=within, study_date__isnull=False)
        .order_by("patient__patient_id", *study_order())
        .values_list("patient__patient_id", "study_instance_uid", "study_date"),
        columns=STUDY_COLUMNS,
    )


def _measurements_load(within: QuerySet) -> pd.DataFrame:
    """One row per lesion per dated study, values in force; resolved lesions measure 0."""
    measurements = rows_frame(
        rows=LesionMeasurement.objects.filter(
            study__patient__in=within, study__study_date__isnull=False
        )
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
        columns=MEASUREMENT_COLUMNS,
    )
    if not measurements.empty:
        resolved = measurements["status"] == LesionMeasurement.Status.RESOLVED
        measurements.loc[resolved, ["volume_ml", "longest_diameter_mm", "short_axis_mm"]] = 0.0
    return measurements


def _responses_load(within: QuerySet) -> pd.DataFrame:
    return rows_frame(
        rows=ResponseAssessment.objects.filter(patient__in=within, study__study_date__isnull=False)
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
        columns=RESPONSE_COLUMNS,
    )


def current_model_version() -> RiskModelVersion | None:
    """The most recently fitted model version, whose scores the worklist shows."""
    return RiskModelVersion.objects.order_by("-created_at", "-pk").first()
