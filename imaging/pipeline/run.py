"""Processing of stored studies: the series chosen, the pipeline run, and its record.

For each study one series is analysed (`study_series_choose`: the rules, or a user's
recorded override). Its run goes: device, DICOM to volume, orientation check against
the anatomy and the patient's baseline, storage as NIfTI, registration to the baseline,
U-Net segmentation with post-processing and measurement, and then the patient's lesion
tracking and response assessment. Each step's name, parameters, library versions,
timing and outcome go to `ProcessingRun.steps`, so every number shown later can be
traced to what made it. Rows (volume, registration, segmentation) are written together
when the run succeeds; a failed step marks the run and the series failed with a
readable reason and leaves earlier results as they were, so running again is safe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from imaging.core.dicom.series_choice import NoEligibleSeriesError
from imaging.core.dicom.volume import SeriesVolumeError, series_volume
from imaging.core.geometry.nifti import volume_read_nifti, volume_write_nifti
from imaging.core.registration.orientation import orientation_standardise
from imaging.core.registration.register import register, transform_write, volume_onto_grid
from imaging.models import (
    ANALYSED_MODALITIES,
    ProcessingRun,
    Registration,
    Segmentation,
    Series,
    Study,
)
from imaging.pipeline.choice import study_series_choose
from imaging.pipeline.selectors import _baseline_series, latest_volume_run
from imaging.pipeline.signals import patient_results_announce
from imaging.store import data_dir, object_path
from radtrack.provenance import json_safe, library_versions

logger = logging.getLogger(__name__)

#: Whose versions go on every run record.
PIPELINE_LIBRARIES = ("radtrack", "pydicom", "SimpleITK", "numpy", "torch", "monai")


# --------------------------------------------------------------------------- the run record
class StepFailed(Exception):
    """A pipeline step could not complete; the message is shown to users."""


@dataclass
class RunRecorder:
    """Collects step records for a `ProcessingRun` as the pipeline goes."""

    run: ProcessingRun
    steps: list[dict[str, Any]] = field(default_factory=list)
    on_step: Callable[[str], None] | None = None

    @contextmanager
    def step(self, name: str, **parameters: Any):
        entry: dict[str, Any] = {"name": name, "parameters": parameters, "status": "running"}
        self.steps.append(entry)
        self._save()
        if self.on_step:
            self.on_step(name)
        started = time.perf_counter()
        try:
            yield entry
        except Exception as exc:
            entry["status"] = "failed"
            entry["error"] = str(exc)
            raise
        else:
            entry["status"] = "succeeded"
        finally:
            entry["seconds"] = round(time.perf_counter() - started, 4)
            self._save()

    def records(self, records, *, group: str) -> None:
        """Add the core library's own step records (name, parameters, versions, timing)."""
        for record in records:
            entry = record.as_dict() if hasattr(record, "as_dict") else dict(record)
            entry = {"name": entry.pop("name"), "group": group, "status": "succeeded", **entry}
            self.steps.append(entry)
        self._save()

    def _save(self) -> None:
        self.run.steps = json_safe(self.steps)
        self.run.save(update_fields=["steps"])


def device_resolve(requested: str | None) -> str:
    """``auto`` picks CUDA when torch sees a GPU, else the CPU; ``cuda`` without one fails."""
    requested = (requested or settings.RADTRACK_DEVICE or "auto").lower()
    if requested not in {"auto", "cpu", "cuda"}:
        raise ValueError(f"device must be auto, cpu or cuda; got {requested!r}")
    if requested == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if requested == "cuda":
        raise StepFailed("--device cuda was asked for but torch sees no CUDA GPU")
    return "cpu"


def _run_relative_path(series: Series, run: ProcessingRun, name: str) -> str:
    """Where a run's file goes, relative to the data folder: one folder per run."""
    return f"volumes/{series.series_instance_uid}/run-{run.pk}/{name}"


_segmenters: dict[str, Any] = {}


_segmenters_lock = threading.Lock()


def _segmenter(device: str):
    """The shipped segmenter, loaded once per worker process and device (SHA-256 checked)."""
    from imaging.core.segmentation.network import segmenter_load

    with _segmenters_lock:
        if device not in _segmenters:
            _segmenters[device] = segmenter_load(device=device)
        return _segmenters[device]


def _read_volume(run: ProcessingRun):

    return volume_read_nifti(path=data_dir() / run.volume_path)


# --------------------------------------------------------------------------- the pipeline
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
            study.series.filter(modality__in=ANALYSED_MODALITIES).update(
                state=Series.State.NOT_ANALYSED, state_detail=reason, updated_at=timezone.now()
            )
        return None
    if chosen.state == Series.State.PROCESSED and not force:
        return None
    return series_process(series=chosen, device=device, on_step=on_step)


def series_process(
    *,
    series: Series,
    device: str | None = None,
    on_step: Callable[[str], None] | None = None,
) -> ProcessingRun:
    """Run the pipeline over ``series`` and return the finished run record."""
    # torch and MONAI load when a run starts, so processes that only queue work (web,
    # ingest) never import them.
    from imaging.core.segmentation.network import SegmenterError, lesions_segment

    run = series.processing_runs.filter(status=ProcessingRun.Status.QUEUED).order_by(
        "created_at"
    ).last() or ProcessingRun.objects.create(series=series)
    run.status = ProcessingRun.Status.RUNNING
    run.started_at = timezone.now()
    run.error = ""
    run.versions = library_versions(*PIPELINE_LIBRARIES)
    run.flags = {}
    run.save(update_fields=["status", "started_at", "error", "versions", "flags"])
    Series.objects.filter(pk=series.pk).update(
        state=Series.State.PROCESSING, state_detail="", updated_at=timezone.now()
    )
    study = series.study
    recorder = RunRecorder(run, on_step=on_step)
    outputs: dict[str, Any] = {}
    try:
        with recorder.step("device", requested=device or settings.RADTRACK_DEVICE) as entry:
            run.device = device_resolve(device)
            entry["result"] = run.device
        paths = [
            object_path(p)
            for p in series.instances.order_by("pk").values_list("stored_path", flat=True)
        ]
        with recorder.step("series_to_volume", n_files=len(paths)) as entry:
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
        volume = result.volume

        baseline_series = _baseline_series(study)
        baseline_volume = None
        if baseline_series is not None:
            baseline_volume = _read_volume(latest_volume_run(baseline_series))
        with recorder.step(
            "orientation_standardise",
            baseline_series_instance_uid=baseline_series.series_instance_uid
            if baseline_series
            else None,
        ) as entry:
            standard = orientation_standardise(volume=volume, baseline=baseline_volume)
            volume = standard.volume
            entry["result"] = standard.record.details
            entry["versions"] = standard.record.versions
            if standard.needs_review:
                run.flags = {
                    **run.flags,
                    "orientation_review": standard.check.finding,
                    "orientation_corrected": standard.check.flipped,
                }

        relative = _run_relative_path(series, run, "volume.nii.gz")
        with recorder.step("store_volume", format="NIfTI-1, gzip") as entry:
            target = data_dir() / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            volume_write_nifti(volume=volume, path=target)
            entry["result"] = {"path": relative}

        if baseline_volume is not None:
            backend = settings.RADTRACK_REGISTRATION_BACKEND
            with recorder.step(
                "register_to_baseline",
                backend=backend,
                fixed_series_instance_uid=baseline_series.series_instance_uid,
            ) as entry:
                registration = register(
                    fixed=baseline_volume, moving=volume, backend=backend, device=run.device
                )
                transform_relative = _run_relative_path(series, run, "to_baseline.tfm")
                transform_write(
                    transform=registration.transform, path=data_dir() / transform_relative
                )
                entry["result"] = {
                    "failed": registration.failed,
                    "reason": registration.reason,
                    "quality": registration.quality.as_dict(),
                }
                entry["versions"] = dict(registration.versions)
                outputs["registration"] = (registration, transform_relative, baseline_series)
                if registration.failed:
                    run.flags = {**run.flags, "registration_failed": registration.reason}

        with recorder.step("segment", model="shipped", tta=True) as entry:
            try:
                model = _segmenter(run.device)
                segmentation = lesions_segment(volume=volume, model=model, device=run.device)
            except SegmenterError as exc:
                raise StepFailed(str(exc)) from exc
            entry["result"] = {
                "model": segmentation.model_version,
                "sha256": segmentation.model_sha256,
                "lesions": len(segmentation.lesions),
                "timings_s": {k: round(v, 3) for k, v in segmentation.timings.items()},
            }
        recorder.records(segmentation.records, group="segment")

        with recorder.step("store_segmentation", grid="the stored volume's") as entry:
            mask = volume_onto_grid(moving=segmentation.candidate_mask, reference=volume)
            probability = volume_onto_grid(
                moving=segmentation.lesion_probability, reference=volume, default_value=0.0
            )
            mask_relative = _run_relative_path(series, run, "lesions.nii.gz")
            probability_relative = _run_relative_path(series, run, "lesion_probability.nii.gz")
            volume_write_nifti(volume=mask, path=data_dir() / mask_relative)
            volume_write_nifti(volume=probability, path=data_dir() / probability_relative)
            entry["result"] = {"mask": mask_relative, "probability": probability_relative}
            outputs["segmentation"] = (segmentation, mask_relative, probability_relative)

        _finish(
            run,
            series,
            status=ProcessingRun.Status.SUCCEEDED,
            volume_path=relative,
            geometry={
                **{
                    k: record[k] for k in ("frame_of_reference_uid", "resampled", "gantry_tilt_deg")
                },
                "shape_ijk": list(volume.shape_ijk),
                "spacing_mm": list(map(float, volume.spacing_mm)),
                "origin_mm": list(map(float, volume.origin_mm)),
                "direction": volume.direction.round(8).tolist(),
            },
            outputs=outputs,
        )
    except StepFailed as exc:
        _finish(run, series, status=ProcessingRun.Status.FAILED, error=str(exc))
        return run
    except Exception as exc:
        logger.exception("processing run %s failed unexpectedly", run.pk)
        step = recorder.steps[-1]["name"] if recorder.steps else "start"
        _finish(
            run,
            series,
            status=ProcessingRun.Status.FAILED,
            error=f"unexpected error in step {step}: {type(exc).__name__}: {exc}",
        )
        return run

    try:
        with recorder.step("track_lesions") as entry:
            entry["result"] = patient_results_announce(patient=study.patient, device=run.device)
        if entry["result"].get("stale_links"):
            run.flags = {**run.flags, "stale_review_decisions": entry["result"]["stale_links"]}
            run.save(update_fields=["flags"])
    except Exception as exc:
        logger.exception("lesion tracking after run %s failed", run.pk)
        with transaction.atomic():
            run.status = ProcessingRun.Status.FAILED
            run.error = f"lesion tracking failed: {type(exc).__name__}: {exc}"
            run.save(update_fields=["status", "error"])
            Series.objects.filter(pk=series.pk).update(
                state=Series.State.FAILED, state_detail=run.error, updated_at=timezone.now()
            )
    return run


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
            _registration_store(
                run=run,
                moving=series,
                fixed=fixed_series,
                registration=registration,
                transform_path=transform_path,
            )
        if "segmentation" in outputs:
            segmentation, mask_path, probability_path = outputs["segmentation"]
            Segmentation.objects.create(
                series=series,
                processing_run=run,
                mask_path=mask_path,
                probability_path=probability_path,
                model_name=segmentation.model_version.rsplit("-", 1)[0],
                model_version=segmentation.model_version.rsplit("-", 1)[-1],
                model_sha256=segmentation.model_sha256,
                steps=json_safe([r.as_dict() for r in segmentation.records]),
                lesions=json_safe([_candidate_entry(m) for m in segmentation.lesions]),
            )
        failed = status == ProcessingRun.Status.FAILED
        Series.objects.filter(pk=series.pk).update(
            state=Series.State.FAILED if failed else Series.State.PROCESSED,
            state_detail=error,
            updated_at=timezone.now(),
        )


def _registration_store(*, run, moving, fixed, registration, transform_path) -> Registration:
    return Registration.objects.create(
        moving_series=moving,
        fixed_series=fixed,
        processing_run=run,
        backend=registration.backend,
        device=registration.device,
        matrix_fixed_to_moving=registration.transform.matrix.tolist(),
        transform_path=transform_path,
        quality=json_safe(registration.quality.as_dict()),
        failed=registration.failed,
        failure_reason=registration.reason,
        seconds=registration.seconds,
    )


def _candidate_entry(measurement) -> dict[str, Any]:
    """A measured candidate as `Segmentation.lesions` holds it (study LPS, mm, ml)."""
    return {
        "component_label": measurement.label_value,
        "organ": measurement.organ,
        "volume_ml": measurement.volume_ml,
        "longest_diameter_mm": measurement.longest_axial_diameter_mm,
        "short_axis_mm": measurement.short_axis_mm,
        "max_3d_diameter_mm": measurement.max_3d_diameter_mm,
        "centroid_lps_mm": [float(v) for v in measurement.centroid_lps_mm],
        "mean_hu": measurement.mean_hu,
        "sd_hu": measurement.sd_hu,
        "sphericity": measurement.sphericity,
        "confidence": measurement.confidence,
        "uncertainty": measurement.uncertainty,
        "axial_slice_z_mm": measurement.axial_slice_z_mm,
        "volume_method": measurement.volume_method,
        "volume_isosurface_ml": measurement.volume_isosurface_ml,
        "core_hu": measurement.core_hu,
        "background_hu": measurement.background_hu,
    }
