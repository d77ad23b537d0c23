"""What the viewer needs to correct lesions: where a click on either pane lands in that
study's own coordinates (or, for a follow-up shown through a deformable registration,
which registration the server carries the click through), the API routes it calls (the same services as the REST API:
`analytics.lesions.corrections_api`), and one lesion's mask at one study as a drawing
NiiVue can edit (0/1 on the study's own grid, derived from the segmentation's label map
and kept under ``DATA_DIR/viewer/`` named after the version and candidates it shows)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from django.urls import reverse

from analytics.lesions.review.versions import label_map_read, study_segmentation
from analytics.lesions.tracking.transforms import registration_mapping
from analytics.lesions.viewer import Viewer, ViewerFileMissing
from imaging.core.geometry.nifti import volume_write_nifti
from imaging.models import LesionMeasurement, Registration
from imaging.store import data_dir


def lesion_mask_path(*, measurement: LesionMeasurement) -> Path:
    """The lesion's voxels at its study (NIfTI, 0/1, the study's own grid)."""
    m = measurement
    if m.segmentation_id is None or m.component_label is None or not m.is_found:
        raise ViewerFileMissing(f"measurement {m.pk}: the lesion has no mask at this study")
    images = study_segmentation(study=m.study)
    if images is None or images.segmentation.pk != m.segmentation_id:
        raise ViewerFileMissing(
            f"measurement {m.pk}: its segmentation was replaced; reload the viewer"
        )
    labels = sorted({int(c) for c in (m.component_labels or [m.component_label])})
    name = f"lesionmask-{m.segmentation_id}-{'-'.join(map(str, labels))}.nii.gz"
    target = data_dir() / "viewer" / name
    if target.is_file():
        return target
    try:
        label_map = label_map_read(images)
    except (FileNotFoundError, RuntimeError) as error:
        raise ViewerFileMissing(f"measurement {m.pk}: its label map cannot be read") from error
    drawing = np.isin(label_map.array, labels).astype(np.uint8)
    partial = target.with_name(f".{target.name}.partial.nii.gz")
    volume_write_nifti(volume=label_map.with_array(drawing, kind="label"), path=partial)
    partial.replace(target)  # readers never see a half-written file
    return target


def _to_own_lps(registration: Registration | None) -> tuple[list[list[float]], str]:
    """The 4x4 matrix from a pane's world LPS to the shown study's own LPS, and "" or why
    it is not exact. The follow-up pane shows the baseline grid when registered,
    resampled through the registration's full transform (baseline LPS -> follow-up LPS,
    `registration_mapping`); else every pane shows its study's own grid (the identity).
    A transform with a deformable (B-spline) stage is no matrix: its affine part is given,
    off by up to the B-spline's displacement (a centimetre where lungs and liver moved),
    so the page sends a click there in the baseline's LPS with the registration, and
    the server carries it (`corrections_api`); the note says so."""
    if registration is None:
        return np.eye(4).tolist(), ""
    mapping = registration_mapping(registration)
    note = ""
    if mapping.deformable:
        note = (
            "this pane shows the follow-up through a deformable registration, which no "
            "matrix holds: a point clicked here is sent in the baseline's coordinates and "
            "carried to the follow-up through the registration's full transform"
        )
    return mapping.transform.matrix.tolist(), note


def _shown_through(viewer: Viewer, side: str) -> Registration | None:
    """The registration a pane's study is resampled through onto the baseline's grid (a
    registered follow-up), or None: the pane shows its study's own grid."""
    if side == "follow_up" and viewer.registered:
        return viewer.registration
    return None


def correction_context(*, viewer: Viewer) -> dict[str, Any]:
    """The viewer's correction settings (JSON for the page's script), by pane."""
    sides: dict[str, Any] = {}
    for side, images in (("baseline", viewer.baseline), ("follow_up", viewer.follow_up)):
        if images is None:
            continue
        registration = _shown_through(viewer, side)
        to_own_lps, inexact = _to_own_lps(registration)
        sides[side] = {
            "study": images.study.pk,
            "add_url": reverse(
                "api-study-lesion-add",
                kwargs={"study_instance_uid": images.study.study_instance_uid},
            ),
            "to_own_lps": to_own_lps,
            # The matrix is not the whole mapping (deformable registration): a click is
            # sent in the pane's frame (the baseline's LPS) with the registration instead.
            "to_own_lps_exact": not inexact,
            "to_own_lps_note": inexact,
            "own_grid": registration is None,
            "registration": registration.pk if registration is not None else None,
            "own_volume": reverse("lesions:viewer-file", args=[images.study.pk, "volume"]),
        }
    return {
        "sides": sides,
        "mask_api": reverse("api-measurement-mask", kwargs={"pk": 0}).replace("/0/", "/{id}/"),
        "drawing": reverse("lesions:measurement-mask", args=[0]).replace("/0/", "/{id}/"),
    }
