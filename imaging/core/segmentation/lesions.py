"""The processing service's one call: a CT study in HU to measured lesions, every step recorded.

`lesions_segment` runs the segmenter (`network.segment_volume`), the post-processing
(`postprocess.postprocess_run`), the contrast filter on the study's own voxels
(`contrast.candidates_contrast_filter`), simple liver cysts told from lesions
(`cysts.simple_cysts_filter`), lung candidates that are pieces of vessels or airway
walls told from nodules by their shape (`blobness.tubular_candidates_filter`), lung
candidates that hold a nodule and the vessel tree it touches cut back to the nodule
(`vessel_split.vessel_trees_split`), lung candidates that are stretches of a vessel or
airway wall told by the thickness of the tube leaving them (`tube_exits.tube_exits_filter`),
lung candidates that are stretches of an enhanced vessel, blood-pool HU running on out of
them (`enhanced_vessels.enhanced_vessels_filter`),
the liver's and the lungs' second readers with the same filters
on what they propose (`liver_reader`, `lung_reader`) and the measurements
(`measure.lesions_measure`, each lesion with the edges of the scan it reaches).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from imaging.core.geometry.preprocess import StepRecord
from imaging.core.geometry.triples import vec3
from imaging.core.geometry.volume import Volume
from imaging.core.registration.transforms import volume_onto_grid
from imaging.core.segmentation.airways import airway_walls_filter
from imaging.core.segmentation.blobness import BlobSettings, tubular_candidates_filter
from imaging.core.segmentation.contrast import candidates_contrast_filter
from imaging.core.segmentation.cysts import simple_cysts_filter
from imaging.core.segmentation.enhanced_vessels import enhanced_vessels_filter
from imaging.core.segmentation.liver_reader import (
    LiverReaderSettings,
    liver_hypodense_candidates,
)
from imaging.core.segmentation.lung_reader import LungReaderSettings, lung_faint_candidates
from imaging.core.segmentation.measure import LesionMeasurement, lesions_measure
from imaging.core.segmentation.network import (
    SegmentationOutput,
    VolumeSegmenter,
    segmenter_load,
)
from imaging.core.segmentation.nodule_extent import nodule_extents
from imaging.core.segmentation.partial_volume import PARTIAL_VOLUME_RULES
from imaging.core.segmentation.postprocess import (
    LesionCandidate,
    PostprocessResult,
    PostprocessSettings,
    candidates_keep,
    postprocess_run,
)
from imaging.core.segmentation.reader_regions import reader_outline_probability
from imaging.core.segmentation.tube_exits import tube_exits_filter
from imaging.core.segmentation.two_level import TWO_LEVEL_RULES
from imaging.core.segmentation.vessel_split import vessel_trees_split


@dataclass(frozen=True, eq=False)
class LesionSegmentation:
    """Lesions of one study, measured, with the maps that show them and how they were made.

    ``lesions`` are `measure.LesionMeasurement` s (centroids in the study's LPS mm);
    ``image`` is the study in HU on the model grid (LPS, 1.5 mm); ``candidate_mask``
    (label, model grid) holds each lesion's ``label_value``;
    ``lesion_probability`` (float32, model grid) is the map to store for display;
    ``label`` the network's argmax (organs and lesions); ``records`` one
    `preprocess.StepRecord` per step (reorient, resample, inference, each
    post-processing step, measurement) for the ``ProcessingRun``.
    """

    lesions: tuple[LesionMeasurement, ...]
    image: Volume
    candidate_mask: Volume
    lesion_probability: Volume
    uncertainty: Volume
    label: Volume
    model_version: str
    model_sha256: str
    device: str
    timings: dict[str, float]
    records: tuple[StepRecord, ...]


def _measure_record(n_lesions: int, seconds: float) -> StepRecord:
    return StepRecord(
        name="measure_lesions",
        parameters={
            "fine_spacing_mm": 0.5,
            "isosurface": "volume-matched level in 0.3..0.7 of the trilinear lesion probability",
            "region_dilation_voxels": 2,
            "axial": "planes of constant LPS z",
            "hu_statistics": "study voxels inside the fine mask",
            "volume": PARTIAL_VOLUME_RULES,
            "volume_two_level": TWO_LEVEL_RULES,
            "volume_fallback": "the isosurface's volume when partial volume is not possible",
            "edges": "a lesion voxel overlapping the scan's outermost voxel layer (first or "
            "last slice, in-plane edge) or touching a padded pixel reaches that edge",
        },
        versions={"numpy": np.__version__},
        seconds=seconds,
        details={"lesions": n_lesions},
    )


def study_around(*, study: Volume, mask: Volume, margin_mm: float = 12.0) -> Volume:
    """The part of ``study`` (its own grid and voxels) around the labelled voxels of
    ``mask`` (any grid), plus ``margin_mm``: what the contrast filter and partial-volume
    volumetry read, so they resample candidates onto that box rather than onto the
    whole study (three whole-study resamplings of a 512 x 512 x 300 grid before)."""
    kji = np.argwhere(mask.array > 0)
    if not len(kji):
        return study
    lo, hi = kji.min(axis=0), kji.max(axis=0)
    corners = np.array([[i, j, k] for i in (lo[2], hi[2]) for j in (lo[1], hi[1]) for k in (lo[0], hi[0])],
                       dtype=float)  # fmt: skip
    ijk = study.lps_to_index(mask.index_to_lps(corners))
    # At least five voxels either side: the contrast ring reaches three, volumetry four.
    margin = np.maximum(margin_mm / np.asarray(study.spacing_mm), 5.0)
    start = np.maximum(np.floor(ijk.min(axis=0) - margin).astype(int), 0)
    stop = np.minimum(
        np.ceil(ijk.max(axis=0) + margin).astype(int) + 1, np.asarray(study.shape_ijk)
    )
    if np.any(stop <= start):
        return study
    box = (slice(start[2], stop[2]), slice(start[1], stop[1]), slice(start[0], stop[0]))
    return Volume(
        array=study.array[box],
        spacing_mm=study.spacing_mm,
        origin_mm=vec3(study.index_to_lps(start.astype(float))),
        direction=study.direction,
        frame_of_reference_uid=study.frame_of_reference_uid,
        kind=study.kind,
        padding=study.padding[box] if study.padding is not None else None,
    )


def _candidates_filtered(
    output: SegmentationOutput, post: PostprocessResult, around: Volume, blobs: bool = True
) -> tuple[Volume, tuple[LesionCandidate, ...], tuple[StepRecord, ...]]:
    """The post-processed candidates through the filters on the study's own voxels
    (``around``: contrast, simple cysts, airway walls) and on the network's grid (blobs,
    vessel trees, tube exits, enhanced vessels), with one record per filter. ``blobs``:
    judge the lung candidates' shape by their blob response (`blobness`); off for regions
    a reader found by their shape already (`lung_reader`: a ground-glass nodule of 2.6 ml, as round as a ball,
    reads 34 HU of blob response on 238 of contrast, under the filter's share)."""
    # The candidates on the study's own grid, resampled once for the filters there.
    on_study = volume_onto_grid(moving=post.mask, reference=around).array
    candidate_mask, candidates, contrast_record = candidates_contrast_filter(
        study=around, candidate_mask=post.mask, candidates=post.candidates, on_study=on_study
    )
    candidate_mask, candidates, cysts_record = simple_cysts_filter(
        study=around, candidate_mask=candidate_mask, candidates=candidates, on_study=on_study,
        organ_label=output.label, probabilities=output.probabilities,
    )  # fmt: skip
    candidate_mask, candidates, tubular_record = tubular_candidates_filter(
        image=output.image, candidate_mask=candidate_mask, candidates=candidates,
        settings=None if blobs else BlobSettings(organs=()),
    )  # fmt: skip
    candidate_mask, candidates, airway_record = airway_walls_filter(
        study=around, candidate_mask=candidate_mask, candidates=candidates, on_study=on_study
    )
    candidate_mask, candidates, split_record = vessel_trees_split(
        image=output.image,
        candidate_mask=candidate_mask,
        candidates=candidates,
        lesion_probability=output.lesion_probability,
    )
    candidate_mask, candidates, exits_record = tube_exits_filter(
        image=output.image, candidate_mask=candidate_mask, candidates=candidates
    )
    candidate_mask, candidates, enhanced_record = enhanced_vessels_filter(
        image=output.image, candidate_mask=candidate_mask, candidates=candidates
    )
    records = (
        contrast_record, cysts_record, tubular_record, airway_record, split_record, exits_record,
        enhanced_record,
    )  # fmt: skip
    return candidate_mask, candidates, records


@dataclass(frozen=True)
class _Reader:
    """A classical second reader: its call (turned on or off) and whether the blob filter
    judges what it proposes (not where the reader judges its regions' shape itself)."""

    read: Callable[..., tuple[PostprocessResult, StepRecord]]
    blobs: bool


#: Each classical second reader by the name its findings carry (``found_by``).
SECOND_READERS = {
    "liver_second_reader": _Reader(
        lambda on, **kw: liver_hypodense_candidates(settings=LiverReaderSettings(enabled=on), **kw),
        blobs=True,
    ),
    "lung_second_reader": _Reader(
        lambda on, **kw: lung_faint_candidates(settings=LungReaderSettings(enabled=on), **kw),
        blobs=False,
    ),
}


def _second_read(
    output: SegmentationOutput, volume: Volume, candidate_mask: Volume,
    candidates: tuple[LesionCandidate, ...], reader: str, on: bool, first_label: int,
) -> tuple[Volume, tuple[LesionCandidate, ...], StepRecord]:  # fmt: skip
    """A second reader (`SECOND_READERS`: the liver's, the lungs') on what the filters
    kept of the network's candidates: the regions it adds go through the same filters
    on their own (their verdicts in its record, under ``filters``) and join the kept
    ones."""
    kept = PostprocessResult(mask=candidate_mask, candidates=candidates)
    read, record = SECOND_READERS[reader].read(
        on, post=kept, probabilities=output.probabilities, image=output.image,
        first_label=first_label,
    )  # fmt: skip
    added = set(record.details["added_labels"])
    own = tuple(c for c in read.candidates if c.label_value in added)
    details = {**record.details, "kept_labels": [], "filters": {}}
    if own:
        own_mask = candidates_keep(read.mask, own)
        around = study_around(study=volume, mask=own_mask)
        own_mask, own, records = _candidates_filtered(
            output, PostprocessResult(mask=own_mask, candidates=own), around,
            blobs=SECOND_READERS[reader].blobs,
        )  # fmt: skip
        details["kept_labels"] = [c.label_value for c in own]
        details["filters"] = {r.name: r.details for r in records}
        merged = np.where(own_mask.array > 0, own_mask.array, candidate_mask.array)
        candidate_mask = candidate_mask.with_array(merged.astype(read.mask.array.dtype))
        candidates = (*candidates, *own)
    return candidate_mask, candidates, replace(record, details=details)


def _second_reads(
    output: SegmentationOutput, volume: Volume, candidate_mask: Volume,
    candidates: tuple[LesionCandidate, ...], on: bool, first_label: int,
) -> tuple[Volume, tuple[LesionCandidate, ...], list[StepRecord], dict[int, str]]:  # fmt: skip
    """Every second reader in turn (`_second_read`), each one's label values above the
    last one's; also which reader found each kept label value."""
    records: list[StepRecord] = []
    found_by: dict[int, str] = {}
    for reader in SECOND_READERS:
        candidate_mask, candidates, record = _second_read(
            output, volume, candidate_mask, candidates, reader, on, first_label
        )
        records.append(record)
        found_by |= dict.fromkeys(record.details["kept_labels"], reader)
        first_label = max([first_label - 1, *record.details["added_labels"]]) + 1
    return candidate_mask, candidates, records, found_by


def lesions_segment(
    *,
    volume: Volume,
    model: VolumeSegmenter | None = None,
    device: str | torch.device | None = None,
    tta: bool = True,
    postprocess_settings: PostprocessSettings | None = None,
    second_reader: bool = True,
) -> LesionSegmentation:
    """The one call for the processing service: CT study in HU -> measured lesions.

    Loads the shipped weights when ``model`` is None (SHA-256 checked); any loaded model
    format answers (`network.VolumeSegmenter`: the shipped network, or a registered
    nnU-Net, MONAI bundle or ONNX model). ``volume`` is
    the study as `dicom.volume.series_volume` gives it (any orientation; after
    registration or not: centroids come back in the volume's own patient coordinates).
    ``second_reader``: also run the second readers (`liver_reader`, `lung_reader`; off where the
    network alone is judged: model validation, hard-negative mining).
    """
    if model is None:
        model = segmenter_load(device=device or "auto")
    started = time.perf_counter()
    output = model.segment(volume=volume, device=device, tta=tta)
    t = time.perf_counter()
    post = postprocess_run(probabilities=output.probabilities, image=output.image,
                           settings=postprocess_settings)  # fmt: skip
    around = study_around(study=volume, mask=post.mask)
    candidate_mask, candidates, filter_records = _candidates_filtered(output, post, around)
    candidate_mask, candidates, reader_records, found_by = _second_reads(
        output, volume, candidate_mask, candidates, second_reader,
        first_label=int(post.mask.array.max()) + 1,
    )  # fmt: skip
    candidate_mask, candidates, grown, extent_record = nodule_extents(
        image=output.image, candidate_mask=candidate_mask, candidates=candidates
    )
    around = study_around(study=volume, mask=candidate_mask)
    seconds_post = time.perf_counter() - t
    t = time.perf_counter()
    outlined = reader_outline_probability(
        output.lesion_probability, candidate_mask, [*found_by, *grown]
    )
    lesions = lesions_measure(
        lesion_probability=outlined,
        candidate_mask=candidate_mask,
        candidates=candidates,
        study=around,
        uncertainty=output.uncertainty,
        scanned=volume,
    )
    lesions = [replace(m, found_by=found_by[m.label_value]) if m.label_value in found_by else m
               for m in lesions]  # fmt: skip
    seconds_measure = time.perf_counter() - t
    measure_record = _measure_record(len(lesions), seconds_measure)
    timings = {
        **output.timings,
        "postprocess": seconds_post,
        "measure": seconds_measure,
        "total": time.perf_counter() - started,
    }
    return LesionSegmentation(
        lesions=tuple(lesions),
        image=output.image,
        candidate_mask=candidate_mask,
        lesion_probability=output.lesion_probability,
        uncertainty=output.uncertainty,
        label=output.label,
        model_version=output.model_version,
        model_sha256=output.model_sha256,
        device=output.device,
        timings=timings,
        records=(
            *output.records,
            *post.records,
            *filter_records,
            *reader_records,
            extent_record,
            measure_record,
        ),
    )
