"""A model run over validation cases: each study through `lesions.lesions_segment` (what
``process`` runs, without the second readers: the report judges the model, and a
classical reader that finds what a worse network misses would hide the regression),
scored against its truth, timed, and its input and output statistics kept (they become
the model's reference for drift)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from imaging.core.modelhub.drift import (
    TESTED,
    flat_statistics,
    input_statistics,
    output_statistics,
    protocol_key,
)
from imaging.core.modelhub.scoring import (
    CandidateRow,
    LesionRow,
    report_metrics,
    study_score,
)
from imaging.core.modelhub.validation_set import ValidationCase
from imaging.core.segmentation.lesions import lesions_segment
from imaging.core.segmentation.network import VolumeSegmenter


def case_protocol(case: ValidationCase) -> str:
    acq = case.acquisition
    scanner = acq.get("scanner") or ("synthetic_eval" if case.source == "generated" else "")
    return protocol_key(scanner=scanner, kernel=str(acq.get("kernel", "")),
                        slice_thickness_mm=acq.get("slice_thickness_mm"))  # fmt: skip


def cases_validate(
    *,
    model: VolumeSegmenter,
    cases: Sequence[ValidationCase],
    device: str | None = None,
    on_case: Callable[[str, float], None] | None = None,
) -> dict[str, Any]:
    """``{"metrics", "per_study"}`` of ``model`` on ``cases`` (see `scoring.report_metrics`)."""
    all_lesions: list[LesionRow] = []
    all_candidates: list[CandidateRow] = []
    seconds: list[float] = []
    per_study = []
    for case in cases:
        started = time.perf_counter()
        seg = lesions_segment(volume=case.volume, model=model, device=device, second_reader=False)
        elapsed = time.perf_counter() - started
        rows, candidates = study_score(
            case=case, lesions=seg.lesions, candidate_mask=seg.candidate_mask
        )
        inputs = input_statistics(
            hu=seg.image.array, organ=seg.label.array, spacing_mm=seg.image.spacing_mm
        )
        outputs = output_statistics(confidences=[m.confidence for m in seg.lesions])
        all_lesions += rows
        all_candidates += candidates
        seconds.append(elapsed)
        per_study.append({
            "case_id": case.case_id, "source": case.source, "acquisition": case.acquisition,
            "protocol": case_protocol(case), "digest": case.digest, "seconds": round(elapsed, 2),
            "lesions_true": len(rows), "detected": sum(r.detected for r in rows),
            "false_positives": sum(not c.true_lesion for c in candidates),
            "lesions": [r.as_json() for r in rows], "candidates": [c.as_json() for c in candidates],
            "inputs": inputs, "outputs": outputs,
        })  # fmt: skip
        if on_case:
            on_case(case.case_id, elapsed)
    return {
        "metrics": report_metrics(lesions=all_lesions, candidates=all_candidates, seconds=seconds),
        "per_study": per_study,
    }


def reference_statistics(
    *, per_study: Sequence[dict[str, Any]], training: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    """The model's drift reference: each tested statistic's values on its validation
    studies (and its training cases' inputs, ``training``: input statistics), and the
    protocols they came from."""
    values: dict[str, list[float]] = {key: [] for key in TESTED}
    for study in per_study:
        for key, value in flat_statistics(study["inputs"], study["outputs"]).items():
            if value is not None:
                values[key].append(float(value))
    for inputs in training:
        for key, value in flat_statistics(inputs, {}).items():
            if value is not None:
                values[key].append(float(value))
    return {
        "values": {k: v for k, v in values.items() if v},
        "protocols": sorted({s["protocol"] for s in per_study}),
        "validation_studies": len(per_study),
        "training_cases": len(training),
    }
