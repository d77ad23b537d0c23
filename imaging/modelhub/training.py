"""Learning from corrections: reviewed studies as training examples with their provenance,
and ``finetune_segmenter --from-reviews``.

`training_examples_sync` keeps one `TrainingExample` per reviewed study's latest
segmentation: included when every candidate has a decision, excluded with the reason
otherwise (a study of the locked validation set is never trained on, nor one that left
it, nor the same data under another name: the same patient, instances, files or voxels,
`content.same_data`; a candidate still pending; a lesion added by hand without a drawn
mask). `finetune_from_reviews`
fine-tunes the active model (RadTrack weights: transfer learning from its weights) on
the included examples mixed with cases of its original training data (against
forgetting), registers the result as a candidate with the examples it learnt from,
validates it beside the active model, and retires it at once when it regresses beyond
the margins (it never becomes active then); ``promote`` promotes it when it passes.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.db.models import Q

from imaging.core.geometry.nifti import volume_read_nifti
from imaging.core.modelhub.corrections import Correction, reviewed_case
from imaging.core.segmentation.network import Segmenter
from imaging.core.segmentation.training.cases import CohortSource, TrainingCase, cases_load
from imaging.core.segmentation.training.mining import train_with_mining
from imaging.core.segmentation.training.settings import TrainingSettings
from imaging.core.segmentation.training.shipping import weights_ship
from imaging.modelhub.locked_set import set_entries
from imaging.modelhub.models import (
    SegmentationModel,
    TrainingExample,
    ValidationReport,
    ValidationSetStudy,
)
from imaging.modelhub.selectors import REVIEWED, StudyReview, study_review
from imaging.modelhub.services import (
    RegistryError,
    active_model,
    cohort_training_sources,
    model_loaded,
    model_promote,
    model_register,
    model_retire,
)
from imaging.modelhub.validation import model_validate, set_study_content_matches
from imaging.models import LesionMeasurement, Study
from imaging.store import data_dir, derived_local

logger = logging.getLogger(__name__)


def _example_state(
    review: StudyReview, in_validation_set: bool, set_reason: str = ""
) -> tuple[str, str]:
    if not review.decisions:
        return TrainingExample.Status.EXCLUDED, "no review decision on its newest segmentation"
    if in_validation_set:
        return TrainingExample.Status.EXCLUDED, "in the locked validation set: never trained on"
    if set_reason:
        return TrainingExample.Status.EXCLUDED, set_reason
    if review.pending:
        return TrainingExample.Status.EXCLUDED, f"candidate(s) {review.pending} await review"
    unmasked = [m for m in review.manual if not m["mask_path"]]
    if unmasked:
        return TrainingExample.Status.EXCLUDED, (
            f"{len(unmasked)} lesion(s) added by hand have no drawn mask: training on the study "
            "would teach the model that they are background"
        )
    return TrainingExample.Status.INCLUDED, ""


def training_examples_sync() -> list[TrainingExample]:
    """One example per study with a reviewed decision on its latest segmentation."""
    decided = LesionMeasurement.objects.filter(
        Q(review_state__in=REVIEWED) | Q(origin=LesionMeasurement.Origin.ADDED)
    ).values("study_id")
    # Studies that were examples before stay in: their state may have changed since.
    studies = Study.objects.filter(
        Q(pk__in=decided) | Q(pk__in=TrainingExample.objects.values("study_id"))
    ).select_related("chosen_series")
    studies = list(studies.order_by("pk"))
    in_set = set(set_entries().values_list("study_id", flat=True))
    left_set = {e.study_id: e for e in ValidationSetStudy.objects.filter(removed_at__isnull=False)}
    same_data = set_study_content_matches({s.pk for s in studies})
    examples = []
    for study in studies:
        review = study_review(study)
        if review.segmentation is None:
            continue
        seg = review.segmentation
        set_reason = same_data.get(study.pk, "")
        if study.pk in left_set:
            entry = left_set[study.pk]
            set_reason = (f"removed from the locked validation set on {entry.removed_at:%Y-%m-%d} "
                          "by " + (entry.removed_by_name or "someone") + ": it was judged on, so "
                          "never trained on")  # fmt: skip
        status, reason = _example_state(review, study.pk in in_set, set_reason)
        corrections = [dict(d) for d in review.decisions]
        corrections += [{"kind": "added", **m} for m in review.manual]
        reviewers = sorted({d["reviewed_by"] for d in review.decisions if d["reviewed_by"]})
        example, _ = TrainingExample.objects.update_or_create(
            segmentation=seg,
            defaults={
                "study": study, "status": status, "reason": reason, "corrections": corrections,
                "provenance": {
                    "study_instance_uid": study.study_instance_uid,
                    "series_instance_uid": study.chosen_series.series_instance_uid,
                    "model": f"{seg.model_name}-{seg.model_version}", "model_sha256": seg.model_sha256,
                    "run": review.run.pk if review.run else None, "segmentation": seg.pk,
                    "review_events": sorted(review.review_events), "reviewers": reviewers,
                },
            },
        )  # fmt: skip
        examples.append(example)
    return examples


def _corrections(example: TrainingExample) -> list[Correction]:
    out = []
    for c in example.corrections:
        mask = (
            volume_read_nifti(path=derived_local(c["mask_path"]), kind="label")
            if c.get("mask_path")
            else None
        )
        out.append(Correction(kind=c["kind"], organ=c["organ"], component_label=c.get("component_label"),
                              mask=mask))  # fmt: skip
    return out


def example_case(*, example: TrainingExample, base: Segmenter, device: str) -> TrainingCase:
    """The example as a training case: its organs are what ``base`` labels in the study."""
    review = study_review(example.study)
    if review.segmentation is None or review.segmentation.pk != example.segmentation_id:
        raise RegistryError(
            f"study {example.study.study_instance_uid} was processed again since review"
        )
    image = review.volume()
    organs = base.segment(volume=image, device=device, tta=False).label
    return reviewed_case(case_id=f"review-{example.study.study_instance_uid}", image=image,
                         candidate_mask=review.candidate_mask(), organ_label=organs,
                         corrections=_corrections(example), spec=base.spec)  # fmt: skip


def _original_sources(model: SegmentationModel, count: int) -> list[CohortSource]:
    """Cases of the original training data: the shipped weights' training cohort (small)."""
    sources = cohort_training_sources(model)
    small = [s for s in sources if s.get("size") == "small"] or sources
    if not small or count < 1:
        return []
    s = small[0]
    return [CohortSource(seed=s["seed"], size=s["size"], patients=tuple(range(count)), timepoints=1,
                         lesion_resize=bool(s.get("lesion_resize", False)))]  # fmt: skip


@dataclass
class FinetuneOutcome:
    model: SegmentationModel
    report: ValidationReport | None
    promoted: bool
    retired_reason: str
    examples: int
    original_cases: int
    seconds: float


def _next_version(base: SegmentationModel) -> str:
    n = 1
    while SegmentationModel.objects.filter(
        name=base.name, version=f"{base.version}-ft{n}"
    ).exists():
        n += 1
    return f"{base.version}-ft{n}"


def _train(*, base_row, base, cases, settings, device, on_step, work) -> tuple[Path, int]:
    state = {k: v.detach().cpu().float() for k, v in base.network.state_dict().items()}
    return train_with_mining(
        out_dir=work, cases=cases, spec=base.spec, settings=settings, initial_state=state,
        device=device, on_step=on_step,
        data_description={"from_reviews": True, "base": base_row.label},
    )  # fmt: skip


def finetune_from_reviews(
    *,
    settings: TrainingSettings,
    version: str | None = None,
    original_cases: int = 4,
    device: str = "cpu",
    username: str = "",
    validate: bool = True,
    promote: bool = False,
    on_step: Callable[[int, float], None] | None = None,
) -> FinetuneOutcome:
    """Fine-tune the active model on the reviewed examples (see the module docs)."""
    started = time.perf_counter()
    base_row = active_model()
    if base_row.format != SegmentationModel.Format.RADTRACK:
        raise RegistryError(f"the active model {base_row.label} is {base_row.format}: fine-tuning "
                            "starts from RadTrack weights; fine-tune it with its own tools")  # fmt: skip
    examples = [e for e in training_examples_sync() if e.status == TrainingExample.Status.INCLUDED]
    if not examples:
        raise RegistryError(
            "no fully reviewed study to learn from (see the training examples' reasons)"
        )
    version = version or _next_version(base_row)
    base = model_loaded(model=base_row, device=device)
    cases = [example_case(example=e, base=base, device=device) for e in examples]
    sources = _original_sources(base_row, original_cases)
    originals = cases_load(
        sources=sources, spec=base.spec, cache_dir=data_dir() / "modelhub" / "training-cases"
    )
    work = data_dir() / "modelhub" / "finetune" / f"{base_row.name}-{version}"
    shutil.rmtree(work, ignore_errors=True)
    checkpoint, mined = _train(base_row=base_row, base=base, cases=[*cases, *originals],
                               settings=settings, device=device, on_step=on_step, work=work)  # fmt: skip
    data = {"base": base_row.label, "base_sha256": base_row.sha256,
            "examples": [e.pk for e in examples], "studies": [e.provenance["study_instance_uid"] for e in examples],
            "original_cases": [c.case_id for c in originals], "mined_false_candidates": mined}  # fmt: skip
    weights_ship(checkpoint_path=checkpoint, out_dir=work / "ship", version=version, data=data,
                 title="Lesion segmenter (fine-tuned on reviewed studies)")  # fmt: skip
    row = model_register(
        source=work / "ship", fmt="radtrack", name=base_row.name, version=version, username=username,
        parent=base_row, training={**data, "settings": settings.as_dict(),
                                   "manifest_training": base_row.training.get("manifest_training", {})},
        notes=f"fine-tuned from {base_row.label} on {len(examples)} reviewed studies",
    )  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    report, promoted, retired = None, False, ""
    if validate:
        report = model_validate(model=row, device=device, username=username)
        if not report.passed:
            retired = "; ".join(report.failures)
            model_retire(model=row, username=username, reason=f"its report did not pass: {retired}")
        elif promote:
            model_promote(
                model=row, username=username, reason="fine-tuned from reviews; report passed"
            )
            promoted = True
    return FinetuneOutcome(model=row, report=report, promoted=promoted, retired_reason=retired,
                           examples=len(examples), original_cases=len(originals),
                           seconds=time.perf_counter() - started)  # fmt: skip


def examples_summary() -> list[dict[str, Any]]:
    """The examples for a listing: study, status, reason, decisions."""
    return [{"study": e.provenance.get("study_instance_uid"), "status": e.status, "reason": e.reason,
             "corrections": len(e.corrections)} for e in TrainingExample.objects.order_by("study_id")]  # fmt: skip
