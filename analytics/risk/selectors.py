"""Reads for the risk models: the database as the tables the feature blocks take.

`feature_inputs_load` gives labs, demographics, clinical events, CT studies, lesion
measurements and response assessments as DataFrames (imaging in the export layouts of
`analytics.layouts`), keyed by MRN; `current_model_version` is the model whose scores
the pages show.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from django.db.models import QuerySet
from django.db.models.functions import Coalesce
from django.utils import timezone

from analytics.layouts import EXPORT_RESPONSE_COLUMNS as RESPONSE_COLUMNS
from analytics.layouts import MEASUREMENT_COLUMNS
from analytics.models import ResponseAssessment, RiskModelVersion
from analytics.risk.core.features import DemographicFeatures, ImagingFeatures, LabFeatures
from imaging.models import LesionMeasurement, Study, study_order
from patients.models import ClinicalEvent, LabResult, Patient

#: RECIST 1.1 section 4.3.2: a lesion present but too small to measure counts 5 mm (the
#: same default as the lesion rules, which this layer sits below).
TOO_SMALL_MM = 5.0
LAB_COLUMNS = ("patient_id", "loinc_code", "value", "unit", "observed_at")
#: After `LAB_COLUMNS`: the bound of a censored result ("<", "<=", ">=", ">"; "" exact).
LAB_EXTRA_COLUMNS = ("comparator",)
PATIENT_COLUMNS = ("patient_id", "birth_date", "sex")
EVENT_COLUMNS = ("patient_id", "kind", "date")
STUDY_COLUMNS = ("patient_id", "study_instance_uid", "study_date")


@dataclass(frozen=True)
class FeatureInputs:
    """Everything the feature blocks and outcomes read, keyed by MRN (``patient_id``).

    - ``labs``: `LAB_COLUMNS` then `LAB_EXTRA_COLUMNS`, values in the canonical unit,
      ``observed_at`` tz-aware UTC; a censored value keeps its ``comparator`` (the
      features never read it as exact).
    - ``patients``: `PATIENT_COLUMNS` (``sex`` F/M/O or blank).
    - ``events``: `EVENT_COLUMNS` (progression / death / censor).
    - ``studies``: `STUDY_COLUMNS`, every dated CT study (processed or not).
    - ``measurements``: `FEATURE_MEASUREMENT_COLUMNS`, one row per lesion per study.
    - ``responses``: `RESPONSE_COLUMNS`, one row per assessed study.
    """

    labs: pd.DataFrame
    patients: pd.DataFrame
    events: pd.DataFrame
    studies: pd.DataFrame
    measurements: pd.DataFrame
    responses: pd.DataFrame

    def blocks(self, *, lookback_days: float = 365.0) -> list:
        """The feature blocks over these inputs: labs, age and sex, imaging.

        A landmark date ends at midnight in the current time zone (``TIME_ZONE``): the
        one `timezone.localdate` gives "today" in, and the services date labs in.
        """
        return [
            LabFeatures(self.labs, lookback_days=lookback_days, tz=timezone.get_current_timezone()),
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

    - a false positive is left out: a row a radiologist rejected, and every row of a
      lesion whose rejection holds for the whole identity (finding state ``rejected``);
    - a lesion confirmed gone (``resolved``) or merged into another (measured as part of
      it) keeps its row there, with volume and diameters 0;
    - a lesion not found at a study keeps its row with volume and diameters NaN (not
      known: never 0, which would read as gone); one a radiologist says is too small to
      measure has diameters 5 mm (RECIST 1.1 section 4.3.2) and no volume; one measured
      by hand without a volume has its diameters and no volume;
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
        .values_list(
            "patient__patient_id", "loinc_code", "value", "unit", "observed_at", "comparator"
        ),
        columns=(*LAB_COLUMNS, *LAB_EXTRA_COLUMNS),
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


#: The measurements the features read: the export's columns, then the finding state (an
#: export extra column), since a lesion whose size is not assessable is still there.
FEATURE_MEASUREMENT_COLUMNS = (*MEASUREMENT_COLUMNS, "finding_state")
#: Read beside `MEASUREMENT_COLUMNS` to place the values (`_measurement_sizes`).
_STATE_COLUMNS = ("finding_state", "too_small")
_SIZES = ["volume_ml", "longest_diameter_mm", "short_axis_mm"]
#: Finding states whose sizes are not known: not found, and seen but cut by the edge of
#: what was imaged (its numbers only a lower bound), which the features read alike.
_SIZE_UNKNOWN_STATES = [
    LesionMeasurement.FindingState.NOT_FOUND,
    LesionMeasurement.FindingState.NOT_ASSESSABLE,
]


def _measurements_load(within: QuerySet) -> pd.DataFrame:
    """One row per lesion per dated study, values in force, what is not known NaN
    (`feature_inputs_load`)."""
    measurements = rows_frame(
        rows=LesionMeasurement.objects.filter(
            study__patient__in=within, study__study_date__isnull=False
        )
        .exclude(review_state=LesionMeasurement.Review.REJECTED)
        .exclude(finding_state=LesionMeasurement.FindingState.REJECTED)
        # An equivocal finding (new, or back after it was gone) counts nowhere until it
        # is confirmed, as in the response rules: not in the burden, not as a new lesion.
        .exclude(finding_state=LesionMeasurement.FindingState.EQUIVOCAL)
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
            *_STATE_COLUMNS,
        ),
        columns=(*MEASUREMENT_COLUMNS, *_STATE_COLUMNS),
    )
    return _measurement_sizes(measurements).loc[:, list(FEATURE_MEASUREMENT_COLUMNS)]


def _measurement_sizes(measurements: pd.DataFrame) -> pd.DataFrame:
    """Sizes as the features read them: 0 where the lesion is gone or part of another,
    NaN where they are not known (not found, or seen but cut by the edge of what was
    imaged, whose numbers are only a lower bound: read as not found), 5 mm without a
    volume where it is too small to measure."""
    measurements = measurements.astype({name: float for name in _SIZES})
    if measurements.empty:
        return measurements
    status = measurements["status"]
    gone = status.isin([LesionMeasurement.Status.RESOLVED, LesionMeasurement.Status.MERGED])
    not_found = (status == LesionMeasurement.Status.NOT_FOUND) | measurements["finding_state"].isin(
        _SIZE_UNKNOWN_STATES
    )
    small = measurements["too_small"].astype(bool) & ~gone & ~not_found
    measurements.loc[gone, _SIZES] = 0.0
    measurements.loc[not_found & ~gone, _SIZES] = np.nan
    measurements.loc[small, "volume_ml"] = np.nan
    measurements.loc[small, ["longest_diameter_mm", "short_axis_mm"]] = TOO_SMALL_MM
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


def dates_by_patient(frame: pd.DataFrame, column: str) -> dict[str, list[dt.date]]:
    """Each patient's distinct dates of ``column``, ascending.

    A tz-aware time counts on its date in the current time zone, the one "today"
    (`timezone.localdate`) and the lab features' landmark cutoff are taken in: a lab
    at 20:30 in New York is on that day there, though it is the next day in UTC.
    """
    if frame.empty:
        return {}
    dates = pd.to_datetime(frame[column])
    if getattr(dates.dt, "tz", None) is not None:
        dates = dates.dt.tz_convert(timezone.get_current_timezone()).dt.tz_localize(None)
    # Duplicates go before the (slow) conversion to date objects: labs share their dates.
    days = (
        pd.DataFrame(
            {
                "patient_id": frame["patient_id"].astype(str).to_numpy(),
                "day": dates.dt.normalize().to_numpy(),
            }
        )
        .dropna()
        .drop_duplicates()
        .sort_values(["patient_id", "day"], kind="stable")
    )
    out: dict[str, list[dt.date]] = {}
    for pid, day in zip(days["patient_id"].tolist(), days["day"].dt.date.tolist(), strict=True):
        out.setdefault(pid, []).append(day)
    return out
