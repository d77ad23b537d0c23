"""The chain of studies a rebuild follows: each study's newest segmentation of its
analysed series with its registration to the baseline, read as `lesions_match` inputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from analytics.lesions.core.identities import LesionObservation, MatchResult
from analytics.lesions.tracking.summary import TrackingSummary
from imaging.models import Registration, Segmentation, Study
from patients.models import Patient


@dataclass(frozen=True)
class StudyInput:
    """One study of the chain: the segmentation tracked for it and its LPS -> baseline LPS
    matrix (the identity at the baseline)."""

    study: Study
    segmentation: Segmentation
    to_baseline: np.ndarray


#: Each study of the chain with what matching (and the radiologist's links) made of it.
Chain = list[tuple[StudyInput, MatchResult]]


def study_inputs(*, patient: Patient, summary: TrackingSummary) -> list[StudyInput]:
    """Studies with a segmentation of their analysed series, in date order, up to the
    first follow-up that has no usable registration to the baseline (listed in
    ``summary.waiting``)."""
    inputs: list[StudyInput] = []
    studies = Study.objects.filter(patient=patient).select_related("chosen_series").chronological()
    baseline_series = None
    for study in studies:
        series = study.chosen_series
        segmentation = (
            Segmentation.objects.filter(series=series).order_by("-created_at", "-pk").first()
            if series is not None
            else None
        )
        if segmentation is None:
            continue
        if baseline_series is None:
            baseline_series = series
            inputs.append(StudyInput(study, segmentation, np.eye(4)))
            continue
        registration = (
            Registration.objects.filter(moving_series=series, fixed_series=baseline_series)
            .order_by("-created_at")
            .first()
        )
        if registration is None or registration.failed:
            why = "failed" if registration is not None else "is missing"
            summary.waiting.append(
                f"study of {study.study_date}: its registration to the baseline {why}; "
                "lesions are not linked from here on until it is redone or reviewed"
            )
            break
        fixed_to_moving = np.asarray(registration.matrix_fixed_to_moving, dtype=float)
        inputs.append(StudyInput(study, segmentation, np.linalg.inv(fixed_to_moving)))
    return inputs


def candidate_observation(candidate: dict[str, Any]) -> LesionObservation:
    """One lesion candidate (a `Segmentation.lesions` entry) as matching reads it, keyed
    by its component label."""
    return LesionObservation(
        key=str(candidate["component_label"]),
        organ=candidate["organ"],
        centroid_lps_mm=tuple(candidate["centroid_lps_mm"]),
        volume_ml=candidate["volume_ml"],
        longest_diameter_mm=candidate["longest_diameter_mm"],
        short_axis_mm=candidate["short_axis_mm"],
    )


def observations(segmentation: Segmentation) -> list[LesionObservation]:
    """Every lesion candidate of a segmentation, as matching reads them."""
    return [candidate_observation(c) for c in segmentation.lesions]
