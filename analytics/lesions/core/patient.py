"""One patient's responses together: RECIST 1.1 and volumetric at every study, iRECIST
when it applies, and the best overall response of each (`analytics.lesions.core.bor`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from analytics.lesions.core.assess import RecistAssessment, recist_assess
from analytics.lesions.core.bor import (
    BestResponse,
    BestResponseSettings,
    best_overall_response,
    irecist_best_overall_response,
)
from analytics.lesions.core.irecist import IrecistAssessment, irecist_assess
from analytics.lesions.core.readings import StudyReading
from analytics.lesions.core.recist import NE
from analytics.lesions.core.volumetric import VolumetricAssessment, volumetric_assess

__all__ = ["PatientResponses", "patient_responses_assess"]


@dataclass(frozen=True)
class PatientResponses:
    """Per study (baseline first) RECIST 1.1, volumetric and, with ``irecist``, iRECIST
    assessments; the best overall responses over them."""

    recist: tuple[RecistAssessment, ...]
    volumetric: tuple[VolumetricAssessment, ...]
    irecist: tuple[IrecistAssessment, ...] | None
    best: BestResponse | None
    best_irecist: BestResponse | None


def patient_responses_assess(
    *,
    timeline: Sequence[StudyReading],
    irecist: bool = False,
    settings: BestResponseSettings | None = None,
    slice_thickness_mm: float | None = None,
) -> PatientResponses:
    """Every assessment of one patient's ``timeline`` (see each module for its rules)."""
    studies = sorted(timeline, key=lambda s: s.study_date)
    recist = recist_assess(
        timeline=studies, slice_thickness_mm=slice_thickness_mm, settings=settings
    )
    volumetric = volumetric_assess(timeline=studies)
    if not recist:
        return PatientResponses((), (), None, None, None)
    baseline_date = recist[0].study_date
    best = best_overall_response(
        timepoints=[(r.study_date, r.category or NE) for r in recist[1:]],
        baseline_date=baseline_date,
        settings=settings,
    )
    i_rows = irecist_assess(timeline=studies, recist=recist) if irecist else None
    best_i = None
    if i_rows is not None:
        best_i = irecist_best_overall_response(
            timepoints=[(r.study_date, r.category or NE) for r in i_rows[1:]],
            baseline_date=baseline_date,
            settings=settings,
        )
    return PatientResponses(recist, volumetric, i_rows, best, best_i)
