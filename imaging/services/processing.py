"""Processing of a stored series: queueing, and the pipeline run with its record.

A run records each step's name, parameters, library versions, timing and outcome in
`ProcessingRun.steps`, so every number shown later can be traced to what made it. A
failed step marks the run and the series failed with a readable reason and leaves
earlier results (earlier runs, their files) as they were; running again is safe.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from imaging.models import ProcessingRun, Series
from imaging.store import data_dir, object_path

logger = logging.getLogger(__name__)


def series_queue(*, series: Series, device: str | None = None) -> ProcessingRun:
    """Mark ``series`` queued and send it to the workers once the transaction commits."""
    from imaging.tasks import series_process_task

    run = ProcessingRun.objects.create(
        series=series, status=ProcessingRun.Status.QUEUED, device=device or ""
    )
    series.state = Series.State.QUEUED
    series.state_detail = ""
    series.save(update_fields=["state", "state_detail", "updated_at"])
    transaction.on_commit(lambda: series_process_task.delay(series.pk, device or ""))
    return run


class StepFailed(Exception):
    """A pipeline step could not complete; the message is shown to users."""


@dataclass
class RunRecorder:
    """Collects step records for a `ProcessingRun` as the pipeline goes."""

    run: ProcessingRun
    steps: list[dict[str, Any]] = field(default_factory=list)

    @contextmanager
    def step(self, name: str, **parameters: Any):
        entry: dict[str, Any] = {"name": name, "parameters": parameters, "status": "running"}
        self.steps.append(entry)
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
            self.run.steps = self.steps
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


def volume_relative_path(series: Series, run: ProcessingRun) -> str:
    return f"volumes/{series.series_instance_uid}/run-{run.pk}/volume.nii.gz"


def series_process(*, series: Series, device: str | None = None) -> ProcessingRun:
    """Run the pipeline over ``series`` and return the finished run record."""
    from imaging.core.dicom_volume import SeriesVolumeError, series_volume
    from imaging.core.nifti import volume_write_nifti

    run = series.processing_runs.filter(status=ProcessingRun.Status.QUEUED).order_by(
        "created_at"
    ).last() or ProcessingRun.objects.create(series=series)
    run.status = ProcessingRun.Status.RUNNING
    run.started_at = timezone.now()
    run.error = ""
    run.versions = _versions()
    run.save(update_fields=["status", "started_at", "error", "versions"])
    Series.objects.filter(pk=series.pk).update(
        state=Series.State.PROCESSING, state_detail="", updated_at=timezone.now()
    )
    recorder = RunRecorder(run)
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
        relative = volume_relative_path(series, run)
        with recorder.step("store_volume", format="NIfTI-1, gzip") as entry:
            target = data_dir() / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            volume_write_nifti(volume=result.volume, path=target)
            entry["result"] = {"path": relative}
        _finish(
            run,
            series,
            status=ProcessingRun.Status.SUCCEEDED,
            volume_path=relative,
            geometry={
                k: record[k]
                for k in (
                    "shape_ijk",
                    "spacing_mm",
                    "origin_mm",
                    "direction",
                    "frame_of_reference_uid",
                    "resampled",
                    "gantry_tilt_deg",
                )
            },
        )
    except StepFailed as exc:
        _finish(run, series, status=ProcessingRun.Status.FAILED, error=str(exc))
    except Exception as exc:
        logger.exception("processing run %s failed unexpectedly", run.pk)
        _finish(
            run,
            series,
            status=ProcessingRun.Status.FAILED,
            error=f"unexpected error in step {recorder.steps[-1]['name'] if recorder.steps else 'start'}: {type(exc).__name__}: {exc}",
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
) -> None:
    with transaction.atomic():
        run.status = status
        run.error = error
        run.finished_at = timezone.now()
        fields = ["status", "error", "finished_at", "device"]
        if volume_path:
            run.volume_path = volume_path
            run.volume_geometry = geometry
            fields += ["volume_path", "volume_geometry"]
        run.save(update_fields=fields)
        failed = status == ProcessingRun.Status.FAILED
        Series.objects.filter(pk=series.pk).update(
            state=Series.State.FAILED if failed else Series.State.PROCESSED,
            state_detail=error,
            updated_at=timezone.now(),
        )


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {}
    for name in ("radtrack", "pydicom", "SimpleITK", "numpy", "torch", "monai"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def series_select(
    *, patient_id: str | None = None, study_uid: str | None = None, force: bool = False
):
    """Analysable series in the scope; without ``force`` only those not yet processed."""
    qs = Series.objects.filter(modality__in=["CT", "MR"]).select_related("study__patient")
    if patient_id:
        qs = qs.filter(study__patient__patient_id=patient_id)
    if study_uid:
        qs = qs.filter(study__study_instance_uid=study_uid)
    if not force:
        qs = qs.exclude(state=Series.State.PROCESSED)
    return qs.order_by("study__patient__patient_id", "study__study_date", "pk")


def series_process_many(
    *,
    series_list,
    device: str | None = None,
    on_done: Callable[[ProcessingRun], None] | None = None,
) -> list[ProcessingRun]:
    runs = []
    for series in series_list:
        run = series_process(series=series, device=device)
        runs.append(run)
        if on_done:
            on_done(run)
    return runs
