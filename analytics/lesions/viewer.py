"""Reads for the side-by-side viewer: one patient's baseline and follow-up, their lesions
placed in the baseline frame, and the image files NiiVue loads.

The viewer shows both studies on the baseline's grid (the "registered grid"): the
follow-up volume, lesion mask and probability map are resampled through the stored
registration's full transform (baseline LPS -> follow-up LPS, its B-spline included when
registration kept one: `analytics.lesions.tracking.transforms`), as are the follow-up's
lesion positions, so one slice index is the same anatomy on both sides and a lesion
sits where tracking put it. Where only the registration's 4x4 matrix can be used (no
transform file stored, or it cannot be read), ``Viewer.registration_note`` says so: a
lung or liver lesion can then be a centimetre off. Resampled files are derived data,
kept under ``DATA_DIR/viewer/`` and named after the runs and registration they come
from and whether the full transform made them, so a new run or registration gives a
new file.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from django.utils import timezone
from django.utils.text import Truncator

from analytics.lesions.selectors import (
    ReviewHistoryRow,
    review_history,
    size_not_assessable_note,
    volume_layer_note,
)
from analytics.lesions.tracking.transforms import BaselineMapping, registration_mapping
from analytics.models import ResponseAssessment
from imaging.core.geometry.nifti import volume_read_nifti, volume_write_nifti
from imaging.core.registration.transforms import volume_warp
from imaging.models import (
    Lesion,
    LesionMeasurement,
    ProcessingRun,
    Registration,
    Segmentation,
    Series,
    Study,
    study_order,
)
from imaging.store import data_dir, derived_local
from patients.models import Patient

FileKind = Literal["volume", "mask", "probability"]


FILE_KINDS: tuple[str, ...] = ("volume", "mask", "probability")


class ViewerFileMissing(LookupError):
    """The study has no such image file (not processed yet, or no probability map)."""


@dataclass(frozen=True)
class StudyImages:
    """One study's analysed series as the viewer needs it: ``run``, the latest run that
    succeeded and stored a volume (what is shown), and ``latest_run``, the series' latest
    run whatever its outcome (a reprocessing that failed or has not finished)."""

    study: Study
    run: ProcessingRun
    segmentation: Segmentation | None
    latest_run: ProcessingRun | None = None

    @property
    def run_notice(self) -> str:
        """What to say when the series' latest run is not the one shown, else ""."""
        latest = self.latest_run
        if latest is None or latest.pk == self.run.pk or _shows_images(latest):
            return ""
        if latest.status == ProcessingRun.Status.FAILED:
            what = f"failed: {_short(latest.error) or 'no reason recorded'}"
        elif latest.status == ProcessingRun.Status.QUEUED:
            what = "is queued and has not started"
        elif latest.status == ProcessingRun.Status.RUNNING:
            what = "has not finished"
        else:
            what = "stored no volume"
        finished = self.run.finished_at
        when = f", finished {timezone.localtime(finished):%Y-%m-%d %H:%M}" if finished else ""
        return (
            f"The latest processing of this study (run {latest.pk}) {what}. The images and "
            f"lesions shown come from an earlier run (run {self.run.pk}{when}), not from "
            "the latest processing."
        )

    @property
    def has_mask(self) -> bool:
        return self.segmentation is not None and bool(self.segmentation.mask_path)

    @property
    def has_probability(self) -> bool:
        return self.segmentation is not None and bool(self.segmentation.probability_path)


@dataclass(frozen=True)
class LesionRow:
    """A lesion at one study, with where to jump to: RAS mm of the baseline frame
    (NiiVue's world frame: LPS with x and y negated)."""

    measurement: LesionMeasurement
    jump_ras_mm: tuple[float, float, float] | None
    #: how the automated volume was read when with the lesion's outer layer
    #: (`selectors.volume_layer_note`), "" otherwise
    volume_note: str = ""

    @property
    def size_note(self) -> str:
        """Shown instead of the sizes of a lesion seen but cut by the edge of what was
        imaged, whose numbers are only a lower bound; "" when its sizes are shown."""
        return size_not_assessable_note(self.measurement)


@dataclass(frozen=True)
class StudyChoice:
    """A study in the viewer's list of studies: shown when it has a stored volume
    (``images``), else listed but not selectable, with why (``reason``)."""

    study: Study
    images: StudyImages | None
    reason: str = ""

    @property
    def selectable(self) -> bool:
        return self.images is not None


@dataclass
class Viewer:
    """``studies``: every study of the patient, oldest first, each said shown or not and
    why; ``requested``: the study asked for, when it cannot be shown; ``*_empty``: why a
    shown study has no lesion row (no segmentation, tracking pending, none found);
    ``registration_note``: why the follow-up is placed by its registration's 4x4 matrix
    alone (a deformable stage, if any, not applied), "" when its full transform is used."""

    patient: Patient
    studies: list[StudyChoice]
    baseline: StudyImages | None
    follow_up: StudyImages | None
    registration: Registration | None
    baseline_rows: list[LesionRow] = field(default_factory=list)
    follow_up_rows: list[LesionRow] = field(default_factory=list)
    baseline_empty: str = ""
    follow_up_empty: str = ""
    requested: StudyChoice | None = None
    responses: list[ResponseAssessment] = field(default_factory=list)
    lesions: list[Lesion] = field(default_factory=list)
    history: list[ReviewHistoryRow] = field(default_factory=list)
    registration_note: str = ""

    @property
    def registered(self) -> bool:
        return self.follow_up is not None and self.registration is not None

    @property
    def follow_up_is_baseline(self) -> bool:
        return (
            self.follow_up is not None
            and self.baseline is not None
            and self.follow_up.study.pk == self.baseline.study.pk
        )

    @property
    def not_viewable(self) -> list[StudyChoice]:
        """The studies that cannot be shown (failed, not processed yet, not analysed)."""
        return [c for c in self.studies if not c.selectable]


def _short(text: str, length: int = 300) -> str:
    return Truncator(" ".join(text.split())).chars(length)


def _shows_images(run: ProcessingRun) -> bool:
    return run.status == ProcessingRun.Status.SUCCEEDED and bool(run.volume_path)


def _latest_run(study: Study) -> ProcessingRun | None:
    """The latest run of the study's analysed series that succeeded and stored a volume."""
    if study.chosen_series_id is None:
        return None
    return (
        ProcessingRun.objects.filter(
            series_id=study.chosen_series_id, status=ProcessingRun.Status.SUCCEEDED
        )
        .exclude(volume_path="")
        .order_by("-finished_at", "-pk")
        .first()
    )


def _newest_run(study: Study) -> ProcessingRun | None:
    """The latest run of the study's analysed series, whatever its outcome."""
    if study.chosen_series_id is None:
        return None
    return (
        ProcessingRun.objects.filter(series_id=study.chosen_series_id)
        .order_by("-created_at", "-pk")
        .first()
    )


def study_images(*, study: Study) -> StudyImages | None:
    """The study's latest stored volume and the latest segmentation of its series."""
    run = _latest_run(study)
    if run is None:
        return None
    segmentation = (
        Segmentation.objects.filter(series_id=study.chosen_series_id)
        .order_by("-created_at", "-pk")
        .first()
    )
    return StudyImages(
        study=study, run=run, segmentation=segmentation, latest_run=_newest_run(study)
    )


_SERIES_PENDING = {
    Series.State.RECEIVING,
    Series.State.STORED,
    Series.State.QUEUED,
    Series.State.PROCESSING,
}


def _not_viewable_reason(study: Study) -> str:
    """Why a study with no stored volume from a run that succeeded cannot be shown: its
    analysed series' latest run, else the state of its series."""
    run = _newest_run(study)
    if run is not None:
        if run.status == ProcessingRun.Status.FAILED:
            return f"processing failed: {_short(run.error) or 'no reason recorded'}"
        if run.status == ProcessingRun.Status.QUEUED:
            return "queued for processing"
        if run.status == ProcessingRun.Status.RUNNING:
            return "being processed"
        return "its processing stored no volume"
    series = list(study.series.all())
    chosen = [s for s in series if s.pk == study.chosen_series_id] or series
    if not chosen:
        return "no images"
    failed = [s for s in chosen if s.state == Series.State.FAILED]
    if failed:
        detail = next((s.state_detail for s in failed if s.state_detail), "")
        return "processing failed" + (f": {_short(detail)}" if detail else "")
    if any(s.state in _SERIES_PENDING for s in chosen):
        return "not processed yet"
    if all(s.state == Series.State.NOT_ANALYSED for s in chosen):
        detail = next((s.state_detail for s in chosen if s.state_detail), "")
        return "not analysed" + (f": {_short(detail)}" if detail else "")
    return "no stored volume"


def _study_choice(study: Study) -> StudyChoice:
    images = study_images(study=study)
    if images is not None:
        return StudyChoice(study=study, images=images)
    return StudyChoice(study=study, images=None, reason=_not_viewable_reason(study))


def _no_rows_reason(images: StudyImages, *, lesions_before: bool) -> str:
    """Why a shown study has no lesion row: no segmentation (its lesions are not
    followed), a segmentation tracking has not taken in yet (it has candidates, or
    lesions seen before would have a row here, found or not), or none found."""
    segmentation = images.segmentation
    if segmentation is None:
        return "This study has no segmentation: its lesions are not followed."
    if segmentation.lesions or lesions_before:
        return (
            "Lesion tracking has not yet taken in the segmentation of this study: its lesions "
            "are not measured yet."
        )
    return "The segmentation found no lesion at this study."


def registration_to_baseline(*, follow_up: Study, baseline: Study) -> Registration | None:
    """The newest usable registration of the follow-up's series to the baseline's."""
    if follow_up.pk == baseline.pk:
        return None
    return (
        Registration.objects.filter(
            moving_series_id=follow_up.chosen_series_id,
            fixed_series_id=baseline.chosen_series_id,
            failed=False,
        )
        .order_by("-created_at", "-pk")
        .first()
    )


def _to_baseline_ras(
    m: LesionMeasurement, mapping: BaselineMapping | None, *, own: bool
) -> tuple[float, float, float] | None:
    """Where to jump to for ``m``: its centroid in the baseline's RAS mm, a follow-up's
    through the full registration (``mapping``; None: not registered, no position)."""
    if m.centroid_x_mm is None or m.centroid_y_mm is None or m.centroid_z_mm is None:
        return None
    point = np.array([m.centroid_x_mm, m.centroid_y_mm, m.centroid_z_mm], dtype=float)
    if not own:
        if mapping is None:
            return None
        point = mapping.to_baseline(point)
    return (float(-point[0]), float(-point[1]), float(point[2]))


def _rows(study: Study, mapping: BaselineMapping | None, *, own: bool) -> list[LesionRow]:
    measurements = list(
        LesionMeasurement.objects.filter(study=study)
        .select_related("lesion", "study", "reviewed_by")
        .order_by("lesion__organ", "lesion__label")
    )
    entries = _candidate_entries(measurements)
    return [
        LesionRow(
            m,
            _to_baseline_ras(m, mapping, own=own),
            volume_layer_note(m, entries.get((m.segmentation_id, m.component_label))),
        )
        for m in measurements
    ]


def _candidate_entries(measurements: list[LesionMeasurement]) -> dict[tuple[int, int], dict]:
    """Each row's candidate as its segmentation stored it, by (segmentation, label)."""
    ids = {m.segmentation_id for m in measurements if m.segmentation_id is not None}
    out: dict[tuple[int, int], dict] = {}
    for pk, lesions in Segmentation.objects.filter(pk__in=ids).values_list("pk", "lesions"):
        for entry in lesions or []:
            if isinstance(entry, dict) and entry.get("component_label") is not None:
                out[(pk, int(entry["component_label"]))] = entry
    return out


def viewer_build(*, patient: Patient, follow_up_pk: int | None = None) -> Viewer:
    """The viewer of ``patient``: the baseline (first study with a stored volume) and a
    follow-up (``follow_up_pk``, default the latest study with a stored volume).

    Every study is listed; one that cannot be shown (processing failed, not finished,
    not analysed) says why, and when ``follow_up_pk`` names one, the latest shown study
    is shown instead and ``requested`` says so.

    Raises `Study.DoesNotExist` when ``follow_up_pk`` is not one of the patient's studies.
    """
    studies = list(Study.objects.filter(patient=patient).chronological().prefetch_related("series"))
    if follow_up_pk is not None and follow_up_pk not in {s.pk for s in studies}:
        raise Study.DoesNotExist(f"study {follow_up_pk} is not one of this patient's studies")
    choices = [_study_choice(s) for s in studies]
    viewer = Viewer(
        patient=patient,
        studies=choices,
        baseline=None,
        follow_up=None,
        registration=None,
    )
    shown = [c.images for c in choices if c.images is not None]
    requested = next((c for c in choices if c.study.pk == follow_up_pk), None)
    if requested is not None and not requested.selectable:
        viewer.requested = requested
    if shown:
        viewer.baseline = shown[0]
        viewer.follow_up = (
            requested.images if requested is not None and requested.selectable else shown[-1]
        )
        viewer.registration = registration_to_baseline(
            follow_up=viewer.follow_up.study, baseline=viewer.baseline.study
        )
        mapping = (
            registration_mapping(viewer.registration) if viewer.registration is not None else None
        )
        viewer.registration_note = mapping.note if mapping is not None else ""
        viewer.baseline_rows = _rows(viewer.baseline.study, None, own=True)
        if not viewer.baseline_rows:
            viewer.baseline_empty = _no_rows_reason(viewer.baseline, lesions_before=False)
        if not viewer.follow_up_is_baseline:
            viewer.follow_up_rows = _rows(viewer.follow_up.study, mapping, own=False)
            if not viewer.follow_up_rows:
                earlier = [s.pk for s in studies[: studies.index(viewer.follow_up.study)]]
                viewer.follow_up_empty = _no_rows_reason(
                    viewer.follow_up,
                    lesions_before=LesionMeasurement.objects.filter(study_id__in=earlier).exists(),
                )
    viewer.responses = list(
        ResponseAssessment.objects.filter(patient=patient)
        .select_related("study")
        .order_by(*study_order("study__"))
    )
    viewer.lesions = list(Lesion.objects.filter(patient=patient).order_by("organ", "label"))
    viewer.history = review_history(patient=patient)
    return viewer


def _inside_data_dir(relative: str) -> Path:
    root = data_dir().resolve()
    path = (root / relative).resolve()
    if root not in path.parents:
        raise ViewerFileMissing(f"{relative}: not inside the data folder")
    if not path.is_file():  # written by another machine: fetched from the image store
        with contextlib.suppress(FileNotFoundError):
            path = derived_local(relative)
    if not path.is_file():
        raise ViewerFileMissing(f"{relative}: the file is missing from the data folder")
    return path


def viewer_file_path(*, study: Study, kind: FileKind, on_baseline_grid: bool) -> Path:
    """The NIfTI file of ``kind`` for ``study``, resampled onto the baseline's grid when
    asked and the study is a registered follow-up (else the study's own file)."""
    if kind not in FILE_KINDS:
        raise ViewerFileMissing(f"kind: one of {', '.join(FILE_KINDS)}, not {kind!r}")
    images = study_images(study=study)
    if images is None:
        raise ViewerFileMissing(f"study {study.pk}: no stored volume (not processed yet)")
    if kind == "volume":
        relative = images.run.volume_path
    elif kind == "mask" and images.has_mask:
        relative = images.segmentation.mask_path
    elif kind == "probability" and images.has_probability:
        relative = images.segmentation.probability_path
    else:
        raise ViewerFileMissing(f"study {study.pk}: no {kind} file (no segmentation with one)")
    source = _inside_data_dir(relative)
    if not on_baseline_grid:
        return source
    first = next(
        (
            i
            for s in Study.objects.filter(patient_id=study.patient_id).chronological()
            if (i := study_images(study=s)) is not None
        ),
        None,
    )
    if first is None or first.study.pk == study.pk:
        return source
    registration = registration_to_baseline(follow_up=study, baseline=first.study)
    if registration is None:
        return source
    return _resampled(source, kind, images, first, registration)


def _resampled(
    source: Path, kind: str, images: StudyImages, first: StudyImages, registration: Registration
) -> Path:
    """``source`` on the baseline's grid through the registration's full transform
    (`registration_mapping`), made once: the file is named after the runs, segmentation
    and registration it comes from, and ``-affine`` when only the registration's matrix
    could be used, so that a transform file readable later gives a new, full one."""
    mapping = registration_mapping(registration)
    owner = images.run.pk if kind == "volume" else images.segmentation.pk
    how = "affine" if mapping.note else "full"
    name = f"{kind}-{owner}-on-run{first.run.pk}-reg{registration.pk}-{how}.nii.gz"
    target = data_dir() / "viewer" / name
    if target.is_file():
        return target
    reference = volume_read_nifti(path=_inside_data_dir(first.run.volume_path))
    moving = volume_read_nifti(path=source, kind="label" if kind == "mask" else "scalar")
    warped = volume_warp(
        moving=moving,
        reference=reference,
        transform=mapping.for_resampling(reference),
        default_value=0.0 if kind == "probability" else None,
    )
    partial = target.with_name(f".{target.name}.partial.nii.gz")
    volume_write_nifti(volume=warped, path=partial)
    partial.replace(target)  # readers never see a half-written file
    return target
