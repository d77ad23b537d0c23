"""The pipeline run over one study's analysed series.

Its steps: device, DICOM to volume, orientation check against the anatomy and the
patient's baseline, storage as NIfTI, registration to the baseline, U-Net segmentation
with post-processing and measurement. Each records itself on the run
(`imaging.pipeline.record`). Rows (registration, segmentation) are written together when
the run succeeds; a failed step marks the run and the series failed with a readable
reason and leaves earlier results as they were, so running again is safe. A run that
succeeded then announces the patient's new results (`imaging.pipeline.signals`), and
analytics links the lesions across studies.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from imaging.core.dicom.series_choice import NoEligibleSeriesError
from imaging.core.dicom.slices import SeriesVolumeError
from imaging.core.dicom.volume import hu_implausible, series_volume
from imaging.core.geometry.nifti import volume_write_nifti
from imaging.core.geometry.volume import Volume
from imaging.core.registration.anatomy import anatomy_landmarks
from imaging.core.registration.orientation import orientation_standardise
from imaging.core.registration.register import register
from imaging.core.registration.transforms import transform_write, volume_onto_grid
from imaging.models import ANALYSED_MODALITIES, ProcessingRun, Series, Study
from imaging.pipeline.choice import study_series_choose
from imaging.pipeline.device import device_resolve
from imaging.pipeline.protocol import contrast_difference, protocol_differences
from imaging.pipeline.queue import study_queue
from imaging.pipeline.record import RunRecorder, StepFailed, run_claim, tracking_unfinished
from imaging.pipeline.selectors import baseline_series_of, latest_volume_run
from imaging.pipeline.signals import patient_results_announce
from imaging.pipeline.storage import (
    registration_failure_store,
    registration_store,
    run_relative_path,
    run_volume_read,
    segmentation_store,
)
from imaging.signals import patient_imaging_announce
from imaging.store import data_dir, derived_publish, object_local
from radtrack.celery import NEVER_SWALLOWED, TERMINATING_ERRORS, TRANSIENT_ERRORS
from radtrack.provenance import json_safe, library_versions

logger = logging.getLogger(__name__)

#: Whose versions go on every run record.
PIPELINE_LIBRARIES = ("radtrack", "pydicom", "SimpleITK", "numpy", "torch", "monai")


def _segmenter(device: str) -> Any:
    """The registry's active model (the shipped weights until another version is promoted,
    `imaging.modelhub`), loaded once per worker process, device and version, its files
    checked against their SHA-256."""
    from imaging.modelhub.services import active_segmenter

    return active_segmenter(device=device)


# --------------------------------------------------------------------------- a study
def study_process(
    *,
    study: Study,
    device: str | None = None,
    force: bool = False,
    on_step: Callable[[str], None] | None = None,
) -> ProcessingRun | None:
    """Choose ``study``'s series and run the pipeline on it; None when nothing was run
    (nothing eligible: the reason goes on the series; or already processed)."""
    try:
        chosen = study_series_choose(study=study)
    except NoEligibleSeriesError as exc:
        reason = str(exc)
        with transaction.atomic():
            study.chosen_series = None
            study.series_choice = {"error": reason}
            study.save(update_fields=["chosen_series", "series_choice"])
            study.series.filter(modality__in=ANALYSED_MODALITIES).exclude(
                state=Series.State.FAILED  # unreadable: the chooser said why
            ).update(
                state=Series.State.NOT_ANALYSED, state_detail=reason, updated_at=timezone.now()
            )
        return None
    if chosen.state == Series.State.PROCESSED and not force:
        return tracking_resume(series=chosen)
    return series_process(series=chosen, device=device, on_step=on_step)


# --------------------------------------------------------------------------- a series
@dataclass
class _RunState:
    """What the steps of one run hand to each other; rows are written at the end."""

    run: ProcessingRun
    series: Series
    recorder: RunRecorder
    volume: Volume | None = None
    volume_path: str = ""
    volume_record: dict[str, Any] = field(default_factory=dict)
    baseline_series: Series | None = None
    baseline_volume: Volume | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    #: The series' instances the volume was read from: (how many, the highest pk).
    instances_read: tuple[int, int] | None = None

    def path(self, name: str) -> str:
        return run_relative_path(self.series, self.run, name)

    def flag(self, **flags: Any) -> None:
        self.run.flags = {**self.run.flags, **flags}


def series_process(
    *,
    series: Series,
    device: str | None = None,
    on_step: Callable[[str], None] | None = None,
) -> ProcessingRun:
    """Run the pipeline over ``series`` and return the finished run record."""
    run = _run_start(series)
    state = _RunState(run=run, series=series, recorder=RunRecorder(run, on_step=on_step))
    try:
        _step_device(state, device)
        _step_volume(state)
        _step_orientation(state)
        differences = protocol_differences(state.series, state.baseline_series)
        if differences:
            state.flag(protocol_differs=differences)
        _step_store_volume(state)
        _step_register_never_blocking(state)
        _step_segment(state)
        _step_statistics(state)
        _finish(
            run,
            series,
            status=ProcessingRun.Status.SUCCEEDED,
            volume_path=state.volume_path,
            geometry=_geometry(state),
            outputs=state.outputs,
        )
    except StepFailed as exc:
        _finish(run, series, status=ProcessingRun.Status.FAILED, error=str(exc))
        _requeue_if_instances_arrived(state)
        return run
    except TRANSIENT_ERRORS:
        # The database or the broker went away for a moment: the run stays claimed and
        # the task's retry takes it over (imaging.pipeline.record.run_claim).
        raise
    except TERMINATING_ERRORS:
        step = state.recorder.steps[-1]["name"] if state.recorder.steps else "start"
        _finish(run, series, status=ProcessingRun.Status.FAILED, error=_time_limit_error(step))
        _requeue_if_instances_arrived(state)
        return run
    except Exception as exc:
        logger.exception("processing run %s failed unexpectedly", run.pk)
        step = state.recorder.steps[-1]["name"] if state.recorder.steps else "start"
        error = f"unexpected error in step {step}: {type(exc).__name__}: {exc}"
        _finish(run, series, status=ProcessingRun.Status.FAILED, error=error)
        _requeue_if_instances_arrived(state)
        return run
    _step_announce(state)
    _drift_check(state)
    _requeue_if_instances_arrived(state)
    return run


def _time_limit_error(step: str) -> str:
    """The reason a run stopped by the task's soft time limit fails with."""
    limit = settings.RADTRACK_TASK_TIME_LIMIT_S
    return f"stopped at the time limit ({limit} s, RADTRACK_TASK_TIME_LIMIT_S) in step {step}"


def tracking_resume(*, series: Series) -> ProcessingRun | None:
    """Track the lesions of ``series``' latest run again when it succeeded but its
    tracking never finished (`tracking_unfinished`: its worker was lost after `_finish`
    committed the results, and the task came again); None when nothing was left to do.
    Tracking rebuilds the patient's links, so running it again is safe."""
    run = series.processing_runs.order_by("-created_at", "-pk").first()
    if run is None or not tracking_unfinished(run=run):
        return None
    lost = {"status": "interrupted", "error": "its worker was lost; tracking ran again"}
    steps = [{**s, **lost} if s.get("status") == "running" else s for s in run.steps]
    state = _RunState(run=run, series=series, recorder=RunRecorder(run, steps=steps))
    logger.info("run %s: lesion tracking did not finish; tracking again", run.pk)
    _step_announce(state)
    _drift_check(state)
    return run


def _instances_mark(series: Series) -> tuple[int, int]:
    """(how many instances, the highest pk): it changes whenever an instance is added."""
    pks = list(series.instances.values_list("pk", flat=True))
    return len(pks), max(pks, default=0)


def _requeue_if_instances_arrived(state: _RunState) -> None:
    """Queue the series again when instances arrived after its volume was read.

    An import that ends while this run works queues the study, but this run then marks
    the series processed (or failed) from the instances it read, and the queued task
    would skip it as done: the new images would never be analysed. So the run says so on
    its flags, and the series goes back to the queue, whose next run reads them all.
    """
    if state.instances_read is None:
        return
    now = _instances_mark(state.series)
    if now == state.instances_read:
        return
    added = now[0] - state.instances_read[0]
    with transaction.atomic():
        state.flag(instances_arrived_during_run=added)
        state.run.save(update_fields=["flags"])
        study_queue(study=state.series.study, series=[state.series], device=state.run.device)
    logger.info(
        "series %s got %s instances during run %s: queued again",
        state.series.pk,
        added,
        state.run.pk,
    )


def _run_start(series: Series) -> ProcessingRun:
    """The run of ``series`` this attempt claims (`run_claim`: the interrupted or queued
    one, or a new one), marked running; the series too."""
    run = run_claim(series=series)
    run.status = ProcessingRun.Status.RUNNING
    run.started_at = timezone.now()
    run.error = ""
    run.versions = library_versions(*PIPELINE_LIBRARIES)
    run.flags = {}
    run.save(update_fields=["status", "started_at", "error", "versions", "flags"])
    Series.objects.filter(pk=series.pk).update(
        state=Series.State.PROCESSING, state_detail="", updated_at=timezone.now()
    )
    return run


def _step_device(state: _RunState, device: str | None) -> None:
    with state.recorder.step("device", requested=device or settings.RADTRACK_DEVICE) as entry:
        state.run.device = device_resolve(device)
        entry["result"] = state.run.device


def _step_volume(state: _RunState) -> None:
    """DICOM to a geometry-true volume: slices ordered along the normal, gaps and tilt
    found and recorded (`imaging.core.dicom.volume`)."""
    read = list(state.series.instances.order_by("pk").values_list("pk", "stored_path"))
    state.instances_read = (len(read), max((pk for pk, _ in read), default=0))
    paths = [object_local(p) for _, p in read]
    with state.recorder.step("series_to_volume", n_files=len(paths)) as entry:
        try:
            result = series_volume(sources=paths)
        except SeriesVolumeError as exc:
            raise StepFailed(str(exc)) from exc
        record = result.as_record()
        entry["result"] = {
            "resampled": record["resampled"],
            "findings": record["findings"],
            "dropped": record["dropped_sop_instance_uids"],
        }
        entry["versions"] = record["versions"]
    # Slices filled in by interpolation, a tilt resampled, images left out, gaps between
    # thin slices: the run says so ("succeeded with warnings"), never a plain success.
    warnings = [f["message"] for f in record["findings"] if f["severity"] == "warning"]
    if warnings:
        state.flag(volume_warnings=warnings)
    implausible = hu_implausible(result.volume.array)
    if implausible:
        state.flag(hu_implausible=implausible)
    state.volume, state.volume_record = result.volume, record


def _step_orientation(state: _RunState) -> None:
    """Check the header's orientation against the anatomy and the baseline; a
    contradiction is corrected and flagged for review, never used silently."""
    state.baseline_series = baseline_series_of(state.series.study)
    if state.baseline_series is not None:
        state.baseline_volume = run_volume_read(latest_volume_run(state.baseline_series))
    uid = state.baseline_series.series_instance_uid if state.baseline_series else None
    with state.recorder.step("orientation_standardise", baseline_series_instance_uid=uid) as entry:
        standard = _orientation_standardise(state)
        state.volume = standard.volume
        entry["result"] = {
            **standard.record.details,
            # Where the anatomy is in the corrected volume: lesions are placed by it when
            # a follow-up cannot be registered (analytics.lesions.core.landmarks).
            "landmarks": (
                anatomy_landmarks(volume=standard.volume)
                if standard.check.flipped
                else standard.check.landmarks
            ).as_dict(),
        }
        entry["versions"] = standard.record.versions
        if standard.needs_review:
            state.flag(
                orientation_review=standard.check.finding,
                orientation_corrected=standard.check.flipped,
            )


def _orientation_standardise(state: _RunState):
    """`orientation_standardise` against the baseline; when comparing with the baseline
    is impossible (the studies share no anatomy, so aligning them raises), the anatomy
    alone decides, and the run says so: the study is still segmented and measured."""
    try:
        return orientation_standardise(volume=state.volume, baseline=state.baseline_volume)
    except NEVER_SWALLOWED:
        raise
    except Exception as exc:
        if state.baseline_volume is None:
            raise
        logger.warning("run %s: orientation not compared with the baseline: %s", state.run.pk, exc)
        state.flag(
            orientation_baseline_unchecked=f"not compared with the baseline "
            f"({type(exc).__name__}: {str(exc).strip().splitlines()[-1][:200]}); anatomy alone"
        )
        return orientation_standardise(volume=state.volume, baseline=None)


def _step_store_volume(state: _RunState) -> None:
    state.volume_path = state.path("volume.nii.gz")
    with state.recorder.step("store_volume", format="NIfTI-1, gzip") as entry:
        target = data_dir() / state.volume_path
        target.parent.mkdir(parents=True, exist_ok=True)
        volume_write_nifti(volume=state.volume, path=target)
        derived_publish(state.volume_path)  # readable by every machine (imaging.store)
        entry["result"] = {"path": state.volume_path}


def _step_register(state: _RunState) -> None:
    """Register a follow-up to the patient's baseline; a failed registration is kept,
    flagged and never used (the baseline itself has nothing to register to)."""
    if state.baseline_volume is None:
        return
    backend = settings.RADTRACK_REGISTRATION_BACKEND
    with state.recorder.step(
        "register_to_baseline",
        backend=backend,
        fixed_series_instance_uid=state.baseline_series.series_instance_uid,
    ) as entry:
        registration = register(
            fixed=state.baseline_volume,
            moving=state.volume,
            backend=backend,
            device=state.run.device,
        )
        transform_relative = state.path("to_baseline.tfm")
        transform_write(transform=registration.transform, path=data_dir() / transform_relative)
        derived_publish(transform_relative)
        entry["result"] = {
            "failed": registration.failed,
            "reason": registration.reason,
            "quality": registration.quality.as_dict(),
        }
        entry["versions"] = dict(registration.versions)
        state.outputs["registration"] = (registration, transform_relative, state.baseline_series)
        if registration.failed:
            state.flag(registration_failed=registration.reason)


def _step_register_never_blocking(state: _RunState) -> None:
    """`_step_register`, whose failure (even an exception) is flagged and never stops
    the run: segmentation and measurement do not depend on registration, and the
    lesions of a study that cannot be registered are linked provisionally."""
    try:
        _step_register(state)
    except NEVER_SWALLOWED:  # "not now" is retried, the time limit fails the run
        raise
    except Exception as exc:
        logger.exception("registration in run %s raised", state.run.pk)
        reason = f"registration raised {type(exc).__name__}: {exc}"
        state.flag(registration_failed=reason)
        state.outputs["registration_error"] = (reason, state.baseline_series)


def _step_segment(state: _RunState) -> None:
    """Find, post-process and measure the lesions, then store the mask and the
    probability map on the stored volume's grid."""
    # torch and MONAI load when a run starts, so processes that only queue work (web,
    # ingest) never import them.
    from imaging.core.segmentation.lesions import lesions_segment
    from imaging.core.segmentation.network import SegmenterError

    device = state.run.device
    with state.recorder.step("segment", model="the registry's active version", tta=True) as entry:
        try:
            segmentation = lesions_segment(
                volume=state.volume, model=_segmenter(device), device=device
            )
        except SegmenterError as exc:
            raise StepFailed(str(exc)) from exc
        entry["result"] = {
            "model": segmentation.model_version,
            "sha256": segmentation.model_sha256,
            "lesions": len(segmentation.lesions),
            "timings_s": {k: round(v, 3) for k, v in segmentation.timings.items()},
        }
    state.recorder.records(segmentation.records, group="segment")

    with state.recorder.step("store_segmentation", grid="the stored volume's") as entry:
        mask = volume_onto_grid(moving=segmentation.candidate_mask, reference=state.volume)
        probability = volume_onto_grid(
            moving=segmentation.lesion_probability, reference=state.volume, default_value=0.0
        )
        mask_relative = state.path("lesions.nii.gz")
        probability_relative = state.path("lesion_probability.nii.gz")
        volume_write_nifti(volume=mask, path=data_dir() / mask_relative)
        volume_write_nifti(volume=probability, path=data_dir() / probability_relative)
        derived_publish(mask_relative)
        derived_publish(probability_relative)
        entry["result"] = {"mask": mask_relative, "probability": probability_relative}
        state.outputs["segmentation"] = (segmentation, mask_relative, probability_relative)


def _step_statistics(state: _RunState) -> None:
    """What the study looked like to the model and what it found, for the drift checks
    (`imaging.modelhub.drift`); a failure here is logged and never fails the run."""
    from imaging.modelhub.drift import study_statistics_build

    segmentation = state.outputs["segmentation"][0]
    try:
        with state.recorder.step("study_statistics") as entry:
            statistics = study_statistics_build(segmentation=segmentation)
            entry["result"] = {"noise_hu": statistics["inputs"]["noise_hu"],
                               "lesions": statistics["outputs"]["lesions"]}  # fmt: skip
        state.outputs["statistics"] = (statistics, segmentation.model_version)
        phase = contrast_difference(statistics["inputs"], state.series, state.baseline_series)
        if phase:
            state.flag(protocol_differs=[*state.run.flags.get("protocol_differs", []), phase])
    except NEVER_SWALLOWED:
        raise
    except Exception:
        logger.exception("study statistics of run %s failed", state.run.pk)


def _drift_check(state: _RunState) -> None:
    """After tracking (equivocal findings are known then): the drift checks of the study's
    scanner/protocol; a failure is logged and never fails the run."""
    if state.run.status != ProcessingRun.Status.SUCCEEDED:
        return  # (without the run's statistics, `drift_after_run` has nothing to check)
    from imaging.modelhub.drift import drift_after_run

    try:
        drift_after_run(run=state.run)
    except NEVER_SWALLOWED:
        raise
    except Exception:
        logger.exception("drift checks after run %s failed", state.run.pk)


def _geometry(state: _RunState) -> dict[str, Any]:
    """The stored volume's grid, as `ProcessingRun.volume_geometry` keeps it."""
    volume, record = state.volume, state.volume_record
    return {
        **{k: record[k] for k in ("frame_of_reference_uid", "resampled", "gantry_tilt_deg")},
        "shape_ijk": list(volume.shape_ijk),
        "spacing_mm": list(map(float, volume.spacing_mm)),
        "origin_mm": list(map(float, volume.origin_mm)),
        "direction": volume.direction.round(8).tolist(),
    }


def _step_announce(state: _RunState) -> None:
    """Tell analytics the patient has new results (lesions linked across studies,
    responses, risk); a failure there fails the run with the reason, results kept."""
    run, series = state.run, state.series
    try:
        with state.recorder.step("track_lesions") as entry:
            entry["result"] = patient_results_announce(
                patient=series.study.patient, device=run.device
            )
        warnings = {
            "stale_review_decisions": entry["result"].get("stale_links"),
            "lesion_links_provisional": entry["result"].get("provisional"),
            "studies_not_followed": entry["result"].get("not_followed"),
            # a radiologist's corrections that could not go onto the new segmentation
            "corrections_not_carried": entry["result"].get("corrections_not_carried"),
        }
        if any(warnings.values()):
            with transaction.atomic():
                run.flags = {**run.flags, **{k: v for k, v in warnings.items() if v}}
                run.save(update_fields=["flags"])
                # the worklist's "needs attention" reads corrections left behind
                patient_imaging_announce(patient_pks=[series.study.patient_id], using=run._state.db)
    except Exception as exc:
        logger.exception("lesion tracking after run %s failed", run.pk)
        with transaction.atomic():
            run.status = ProcessingRun.Status.FAILED
            run.error = (
                _time_limit_error("track_lesions")
                if isinstance(exc, TERMINATING_ERRORS)
                else f"lesion tracking failed: {type(exc).__name__}: {exc}"
            )
            run.save(update_fields=["status", "error"])
            Series.objects.filter(pk=series.pk).update(
                state=Series.State.FAILED, state_detail=run.error, updated_at=timezone.now()
            )


def _finish(
    run: ProcessingRun,
    series: Series,
    *,
    status: str,
    error: str = "",
    volume_path: str = "",
    geometry: dict | None = None,
    outputs: dict[str, Any] | None = None,
) -> None:
    """Close the run and write its rows in one transaction, or none of them."""
    outputs = outputs or {}
    with transaction.atomic():
        run.status = status
        run.error = error
        run.finished_at = timezone.now()
        run.flags = json_safe(run.flags or {})
        fields = ["status", "error", "finished_at", "device", "flags"]
        if volume_path:
            run.volume_path = volume_path
            run.volume_geometry = json_safe(geometry)
            fields += ["volume_path", "volume_geometry"]
        run.save(update_fields=fields)
        if "registration" in outputs:
            registration, transform_path, fixed_series = outputs["registration"]
            registration_store(
                run=run,
                moving=series,
                fixed=fixed_series,
                registration=registration,
                transform_path=transform_path,
            )
        elif "registration_error" in outputs:
            reason, fixed_series = outputs["registration_error"]
            registration_failure_store(
                run=run,
                moving=series,
                fixed=fixed_series,
                backend=settings.RADTRACK_REGISTRATION_BACKEND,
                device=run.device,
                reason=reason,
            )
        if "segmentation" in outputs:
            segmentation, mask_path, probability_path = outputs["segmentation"]
            segmentation_store(
                run=run,
                series=series,
                segmentation=segmentation,
                mask_path=mask_path,
                probability_path=probability_path,
            )
        if "statistics" in outputs:
            from imaging.modelhub.drift import study_statistics_store

            statistics, model_label = outputs["statistics"]
            study_statistics_store(
                run=run, series=series, model_label=model_label, statistics=statistics
            )
        failed = status == ProcessingRun.Status.FAILED
        Series.objects.filter(pk=series.pk).update(
            state=Series.State.FAILED if failed else Series.State.PROCESSED,
            state_detail=error,
            updated_at=timezone.now(),
        )
