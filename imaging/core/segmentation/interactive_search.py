"""Following a lesion to another study: around a point (a click's lesion mapped there
through the registration to the baseline), the blobs on the lesion's side of its
half-contrast level, nearest first, each segmented from its deepest voxel as a click
would be (`interactive.click_segment`); the first that looks like the lesion (same
organ, same polarity, its contrast within what partial volume allows, its volume
within ``look_volume_ratio``) is it. None is "not found", with the reason."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy import ndimage

from imaging.core.geometry.volume import Volume
from imaging.core.segmentation.interactive import (
    ClickSegmentation,
    LesionLook,
    as_point,
    click_segment,
)
from imaging.core.segmentation.interactive_region import (
    FACES,
    ClickRefused,
    ClickSettings,
    around_click,
)


@dataclass(frozen=True)
class SearchOutcome:
    """`lesion_search`'s answer: the lesion found (``found``) or why not (``reason``)."""

    found: ClickSegmentation | None
    reason: str
    tried: int = 0
    details: dict[str, Any] = field(default_factory=dict)


def _blob_seeds(
    study: Volume, centre: np.ndarray, look: LesionLook, settings: ClickSettings
) -> list[np.ndarray]:
    """Seeds (LPS mm) of the blobs on the lesion's side of its level within
    ``search_mm`` of ``centre``: each blob's deepest voxel, nearest blob first."""
    around = around_click(study, centre, None, replace(settings, reach_mm=settings.search_mm))
    level = 0.5 * (look.lesion_hu + look.background_hu)
    sm = ndimage.gaussian_filter(
        around.hu, settings.smooth_sigma_mm / around.spacing_kji, mode="nearest"
    )
    side = (sm > level) if look.brighter else (sm < level)
    labels, n = ndimage.label(side, structure=FACES)
    if n == 0:
        return []
    depth = ndimage.distance_transform_edt(side, sampling=around.spacing_kji)
    inside = around.allowed & (labels > 0)
    found: list[tuple[float, np.ndarray]] = []
    for number in np.unique(labels[inside]):
        voxels = inside & (labels == number)
        deepest = np.unravel_index(np.argmax(np.where(voxels, depth, -1.0)), side.shape)
        if depth[deepest] < 0.5 * float(min(around.spacing_kji)):
            continue
        point = around.study.index_to_lps(np.array(deepest[::-1], dtype=float))
        found.append((float(np.linalg.norm(point - centre)), point))
    return [p for _, p in sorted(found, key=lambda pair: pair[0])]


def _looks_alike(found: ClickSegmentation, look: LesionLook, settings: ClickSettings) -> str:
    """ "" when ``found`` can be the lesion ``look`` describes, else why not."""
    if found.look.brighter != look.brighter:
        return "the blob there is of the opposite contrast"
    if look.organ in ("lung", "liver") and found.look.organ != look.organ:
        return f"the blob there is in the {found.look.organ}, not the {look.organ}"
    # A lesion shows less of its contrast the smaller it is against the voxels (partial
    # volume), at either study: from a quarter to one and a half times the lesion's
    # contrast, plus the tolerance.
    contrast = abs(look.lesion_hu - look.background_hu)
    seen = abs(found.look.lesion_hu - look.background_hu)
    if not (0.25 * contrast <= seen <= 1.5 * contrast + settings.look_hu_tolerance):
        return (
            f"the blob there is {found.look.lesion_hu:.0f} HU, the lesion "
            f"{look.lesion_hu:.0f} HU in {look.background_hu:.0f} HU"
        )
    ratio = max(found.measurement.volume_ml, 1e-6) / max(look.volume_ml, 1e-6)
    if not (1.0 / settings.look_volume_ratio <= ratio <= settings.look_volume_ratio):
        return f"the blob there is {ratio:.3g} times the lesion's volume"
    return ""


def lesion_search(
    *,
    study: Volume,
    centre_lps_mm: Any,
    look: LesionLook,
    settings: ClickSettings | None = None,
    scanned: Volume | None = None,
) -> SearchOutcome:
    """The lesion described by ``look`` near ``centre_lps_mm`` (LPS mm, ``study``'s own
    frame: a click mapped from another study), segmented as `click_segment` does
    (module docs), or why it was not found. ``study`` must hold ``search_mm`` plus
    ``reach_mm`` around the centre; ``scanned``: the whole study when ``study`` is a box
    read from it (`click_segment`)."""
    settings = settings or ClickSettings()
    centre = as_point(centre_lps_mm, "centre_lps_mm")
    try:
        seeds = _blob_seeds(study, centre, look, settings)
    except ClickRefused as refused:
        return SearchOutcome(None, f"the mapped point is outside the study's images ({refused})")
    if not seeds:
        return SearchOutcome(
            None,
            f"nothing of the lesion's contrast within {settings.search_mm:g} mm of the mapped point",
        )
    reasons = []
    for tried, seed in enumerate(seeds[: settings.search_tries], start=1):
        try:
            found = click_segment(study=study, seed_lps_mm=seed, settings=settings, scanned=scanned)
        except ClickRefused as refused:
            reasons.append(str(refused).removeprefix("seed_lps_mm: "))
            continue
        why = _looks_alike(found, look, settings)
        if not why:
            moved = float(np.linalg.norm(np.asarray(found.measurement.centroid_lps_mm) - centre))
            return SearchOutcome(found, "", tried, {"distance_mm": round(moved, 2)})
        reasons.append(why)
    return SearchOutcome(
        None,
        f"no blob within {settings.search_mm:g} mm of the mapped point looks like the "
        f"lesion ({'; '.join(dict.fromkeys(reasons))})",
        min(len(seeds), settings.search_tries),
    )
