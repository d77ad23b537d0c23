"""What a run leaves behind: its files under the data folder (one folder per run) and
its rows (`Registration`, `Segmentation`), written when the run succeeds."""

from __future__ import annotations

from typing import Any

from imaging.core.geometry.nifti import volume_read_nifti
from imaging.core.geometry.volume import Volume
from imaging.models import ProcessingRun, Registration, Segmentation, Series
from imaging.store import derived_local
from radtrack.provenance import json_safe


def run_relative_path(series: Series, run: ProcessingRun, name: str) -> str:
    """Where a run's file goes, relative to the data folder: one folder per run."""
    return f"volumes/{series.series_instance_uid}/run-{run.pk}/{name}"


def run_volume_read(run: ProcessingRun) -> Volume:
    """The volume a succeeded run stored (NIfTI, LPS geometry restored)."""
    return volume_read_nifti(path=derived_local(run.volume_path))


def registration_store(
    *, run: ProcessingRun, moving: Series, fixed: Series, registration: Any, transform_path: str
) -> Registration:
    """The `Registration` row of a moving series to the fixed one (failed ones too)."""
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


def registration_failure_store(
    *, run: ProcessingRun, moving: Series, fixed: Series, backend: str, device: str, reason: str
) -> Registration:
    """The `Registration` row of a registration that raised instead of answering: failed,
    with the reason and an identity matrix that nothing uses (a failed registration is
    never used), so that the follow-up shows why it was not registered and is not
    registered again on every refresh."""
    return Registration.objects.create(
        moving_series=moving,
        fixed_series=fixed,
        processing_run=run,
        backend=backend,
        device=device,
        matrix_fixed_to_moving=[[float(i == j) for j in range(4)] for i in range(4)],
        quality={},
        failed=True,
        failure_reason=reason,
    )


def segmentation_store(
    *, run: ProcessingRun, series: Series, segmentation: Any, mask_path: str, probability_path: str
) -> Segmentation:
    """The `Segmentation` row: files, model name, version and checksum, post-processing
    records and every measured candidate."""
    return Segmentation.objects.create(
        series=series,
        processing_run=run,
        mask_path=mask_path,
        probability_path=probability_path,
        # name-version: registry names hold no hyphen, versions may ("1.0.0-ft1").
        model_name=segmentation.model_version.split("-", 1)[0],
        model_version=segmentation.model_version.split("-", 1)[-1],
        model_sha256=segmentation.model_sha256,
        steps=json_safe([r.as_dict() for r in segmentation.records]),
        lesions=json_safe([candidate_entry(m) for m in segmentation.lesions]),
    )


def candidate_entry(measurement: Any) -> dict[str, Any]:
    """A measured candidate as `Segmentation.lesions` holds it (study LPS, mm, ml).

    ``edges_reached``: the edges of what was imaged that the lesion reaches
    (`imaging.core.segmentation.edges.lesion_edges`); its sizes are then lower bounds."""
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
        "volume_layer": getattr(measurement, "volume_layer", None),
        "volume_core_ml": getattr(measurement, "volume_core_ml", None),
        "core_hu": measurement.core_hu,
        "background_hu": measurement.background_hu,
        "edges_reached": list(measurement.edges_reached),
        "found_by": getattr(measurement, "found_by", "network"),
    }
