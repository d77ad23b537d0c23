"""The chain of studies a rebuild follows: each study's newest segmentation of its
analysed series with how it is placed in the baseline frame, read as `lesions_match`
inputs; and the studies that cannot be followed (no segmentation), with the reason.

Segmentation and measurement never wait for a registration: a follow-up without a usable
registration to the baseline is still followed, placed by anatomical landmarks
(`analytics.lesions.core.landmarks`), and its links are marked provisional with the
reason, for a radiologist to confirm.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from analytics.lesions.core.identities import LesionObservation, MatchResult
from analytics.lesions.core.landmarks import landmark_placement
from analytics.lesions.tracking.summary import TrackingSummary
from imaging.core.registration.transforms import point_map, transform_read
from imaging.models import (
    ANALYSED_MODALITIES,
    ProcessingRun,
    Registration,
    Segmentation,
    Series,
    Study,
)
from imaging.store import derived_local
from patients.models import Patient

logger = logging.getLogger(__name__)

#: Series states after which nothing more happens without someone acting.
_SETTLED = (Series.State.PROCESSED, Series.State.FAILED, Series.State.NOT_ANALYSED)


@dataclass(frozen=True)
class StudyInput:
    """One study of the chain: the segmentation tracked for it, its LPS -> baseline LPS
    matrix (the identity at the baseline), and, when that matrix is not a registration,
    why its links are provisional (``provisional``, one sentence). ``point_map``: when
    the registration kept a deformable (B-spline) stage, its stored transform carrying
    this study's LPS points to the baseline's, which matching uses for lesion positions
    (``to_baseline`` is then its affine part). ``unreliable``: why its measurements
    cannot be trusted (its CT numbers do not read as HU), which makes it not evaluable
    whatever its links."""

    study: Study
    segmentation: Segmentation
    to_baseline: np.ndarray
    provisional: str = ""
    geometry: dict[str, Any] | None = None
    slice_thickness_mm: float | None = None
    point_map: Callable[[np.ndarray], np.ndarray] | None = None
    unreliable: str = ""

    @property
    def positions_to_baseline(self) -> np.ndarray | Callable[[np.ndarray], np.ndarray]:
        """What matching maps this study's lesion positions with."""
        return self.point_map if self.point_map is not None else self.to_baseline


@dataclass(frozen=True)
class StudyGap:
    """A study whose lesions cannot be followed (no segmentation), and why."""

    study: Study
    reason: str


#: Each study of the chain with what matching (and the radiologist's links) made of it.
Chain = list[tuple[StudyInput, MatchResult]]


def study_inputs(*, patient: Patient, summary: TrackingSummary) -> list[StudyInput]:
    """Studies with a segmentation of their analysed series, in date order; a follow-up
    without a usable registration to the baseline is placed by landmarks, its links
    provisional (``StudyInput.provisional`` says why). Studies with analysable images
    but no segmentation go to ``summary.gaps``."""
    inputs: list[StudyInput] = []
    studies = Study.objects.filter(patient=patient).select_related("chosen_series").chronological()
    baseline: StudyInput | None = None
    for study in studies:
        series = study.chosen_series
        segmentation = (
            Segmentation.objects.filter(series=series)
            .select_related("processing_run")
            .order_by("-created_at", "-pk")
            .first()
            if series is not None
            else None
        )
        if segmentation is None:
            gap = _gap(study)
            if gap is not None:
                summary.gaps.append(gap)
            continue
        run = segmentation.processing_run
        implausible = (run.flags or {}).get("hu_implausible") if run is not None else None
        geometry = _geometry(segmentation)
        entry = StudyInput(
            study,
            segmentation,
            np.eye(4),
            geometry=geometry,
            slice_thickness_mm=_sampling_mm(series.slice_thickness_mm, geometry),
            unreliable=f"its CT numbers are implausible ({implausible})" if implausible else "",
        )
        if baseline is None:
            # Its own orientation matters as much: mirrored, every lesion of it sits at its
            # mirror image, and every later study is linked to those positions.
            entry = baseline = _orientation_checked(entry, is_baseline=True)
        else:
            entry = _orientation_checked(_placed(entry, baseline), is_baseline=False)
        inputs.append(entry)
    return inputs


def baseline_time_point(inputs: Sequence[StudyInput]) -> list[StudyInput]:
    """The studies of the baseline's date, the baseline first: one time point (a chest
    CT and an abdomen CT the same day, `analytics.lesions.core.timepoints`). ``inputs``
    in date order (`study_inputs`); an undated baseline is a time point of its own."""
    if not inputs:
        return []
    first = inputs[0]
    if first.study.study_date is None:
        return [first]
    return [e for e in inputs if e.study.study_date == first.study.study_date]


def _gap(study: Study) -> StudyGap | None:
    """Why a study with images to analyse has no segmentation; None while it is still
    on its way (queued, processing) or when it has nothing to analyse."""
    series = study.chosen_series
    if series is None:
        analysable = study.series.filter(modality__in=ANALYSED_MODALITIES)
        if not analysable.exists() or analysable.exclude(state__in=_SETTLED).exists():
            return None
        error = (study.series_choice or {}).get("error") or "no series could be chosen"
        return StudyGap(study, f"no series of this study could be analysed: {error}")
    if series.state not in _SETTLED:
        return None
    if series.state == Series.State.FAILED:
        return StudyGap(study, f"processing failed: {series.state_detail or 'no reason recorded'}")
    if series.state == Series.State.NOT_ANALYSED:
        return StudyGap(study, f"its series was not analysed: {series.state_detail}")
    return StudyGap(study, "its segmentation is missing")


def _sampling_mm(thickness_mm: float | None, geometry: dict[str, Any] | None) -> float | None:
    """How finely the study samples the body along the slice direction, for RECIST 1.1's
    measurability (section 3.1.1, twice the slice thickness over 5 mm): the slice
    thickness, or the spacing of the analysed volume when that is larger (thin slices
    far apart: what lies between them was not imaged)."""
    spacing = (geometry or {}).get("spacing_mm")
    values = [v for v in (thickness_mm, spacing[2] if spacing else None) if v]
    return max(values) if values else None


def _geometry(segmentation: Segmentation) -> dict[str, Any] | None:
    run = segmentation.processing_run
    return run.volume_geometry if run is not None else None


def _placed(entry: StudyInput, baseline: StudyInput) -> StudyInput:
    """The follow-up placed by its registration to the baseline, or, without a usable
    one, by landmarks and marked provisional."""
    registration = (
        Registration.objects.filter(
            moving_series=entry.segmentation.series_id,
            fixed_series=baseline.segmentation.series_id,
        )
        .order_by("-created_at", "-pk")
        .first()
    )
    if registration is not None and not registration.failed:
        fixed_to_moving = np.asarray(registration.matrix_fixed_to_moving, dtype=float)
        deformable, unreadable = _deformable_to_baseline(registration)
        return _with(
            entry,
            to_baseline=np.linalg.inv(fixed_to_moving),
            point_map=deformable,
            # Lungs and liver move between studies: placed by the affine part alone, a
            # lesion can be linked to its neighbour. Said, and left for a radiologist.
            provisional=(
                f"its registration's deformable transform could not be read ({unreadable}): "
                "lesions placed by its affine part only; the links are provisional until "
                "a radiologist confirms them"
                if unreadable
                else ""
            ),
        )
    if registration is None:
        why = "there is no registration to the baseline"
    else:
        why = f"its registration to the baseline failed ({registration.failure_reason or 'no reason recorded'})"
    placement = landmark_placement(
        baseline=landmarks_of(baseline.segmentation), follow_up=landmarks_of(entry.segmentation)
    )
    if placement is not None:
        how = f"lesions linked by anatomical landmarks ({placement.basis})"
        matrix = placement.to_baseline
    else:
        how = "no anatomical landmark both studies share: lesions linked by scanner coordinates"
        matrix = np.eye(4)
    reason = f"{why}; {how}: the links are provisional until a radiologist confirms them"
    return _with(entry, to_baseline=matrix, provisional=reason)


def _orientation_checked(entry: StudyInput, *, is_baseline: bool) -> StudyInput:
    """A study whose left/right cannot be taken as read waits for a radiologist: its run
    flagged its orientation for review (the header and the anatomy disagree, or it was
    flipped, to match the baseline or on the anatomy alone, as a first study of a
    patient with situs inversus would be), or its orientation could not be compared
    with the baseline's, so that the anatomy alone decided it (which cannot tell a
    mirrored header from a mirrored patient). A wrong left/right links each lesion to
    its mirror image; at the baseline, it places every lesion there, and every later
    study is linked to those positions."""
    run = entry.segmentation.processing_run
    flags = (run.flags or {}) if run is not None else {}
    why = []
    if flags.get("orientation_review"):
        why.append(f"its orientation was flagged for review ({flags['orientation_review']})")
    if flags.get("orientation_baseline_unchecked"):
        why.append(
            "its left/right was decided by its anatomy alone, which cannot tell a mirrored "
            f"header from a mirrored patient ({flags['orientation_baseline_unchecked']})"
        )
    if not why:
        return entry
    harm = (
        "a wrong left/right would place its lesions at their mirror images, and later "
        "studies are linked to those positions"
        if is_baseline
        else "a wrong left/right would link lesions to their mirror images"
    )
    reason = (
        f"{'; '.join(why)}: {harm}; the links are provisional until a radiologist confirms them"
    )
    return _with(
        entry, provisional=f"{entry.provisional}; {reason}" if entry.provisional else reason
    )


def _deformable_to_baseline(
    registration: Registration,
) -> tuple[Callable[[np.ndarray], np.ndarray] | None, str]:
    """Follow-up LPS -> baseline LPS through the registration's stored transform when it
    is deformable (the B-spline inverted point by point), and why the file could not be
    read (""); no map for an affine one, nor when the file cannot be read (the stored
    matrix, its affine part, places it then, and the links are provisional)."""
    if not registration.transform_path:
        return None, ""
    why = ""
    try:
        path = derived_local(registration.transform_path)
        if path.is_file():
            transform = transform_read(path=path)
        else:
            why = "the file is missing"
    except (OSError, RuntimeError, ValueError) as exc:
        why = f"{type(exc).__name__}: the file is damaged or unreachable"
    if why:
        logger.warning("registration %s: transform unreadable, its matrix used", registration.pk)
        return None, why
    if transform.is_affine:
        return None, ""
    return (lambda points: point_map(transform, points, inverse=True)), ""


def _with(entry: StudyInput, **changes: Any) -> StudyInput:
    return StudyInput(**{**entry.__dict__, **changes})


def landmarks_of(segmentation: Segmentation) -> dict[str, Any] | None:
    """The anatomical landmarks of the volume a segmentation was made on: recorded by its
    run's orientation step, else measured now from the stored volume (runs recorded
    before landmarks were)."""
    run = segmentation.processing_run
    if run is None:
        return None
    for step in run.steps or []:
        if isinstance(step, dict) and step.get("name") == "orientation_standardise":
            landmarks = (step.get("result") or {}).get("landmarks")
            if landmarks:
                return landmarks
    return _landmarks_measured(run)


def _landmarks_measured(run: ProcessingRun) -> dict[str, Any] | None:
    if not run.volume_path:
        return None
    from imaging.core.registration.anatomy import anatomy_landmarks
    from imaging.pipeline.storage import run_volume_read

    try:
        return anatomy_landmarks(volume=run_volume_read(run)).as_dict()
    except (OSError, ValueError) as exc:
        logger.warning("landmarks of run %s could not be measured: %s", run.pk, exc)
        return None


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
