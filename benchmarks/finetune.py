"""Fine-tuning from reviewed corrections: a lesion kind the model was never trained on.

    .venv/bin/python benchmarks/finetune.py                     # the issue's size (20 reviewed)
    .venv/bin/python benchmarks/finetune.py --review 6 --test 4 --other 3 --steps 60   # small

The starting model is lesionseg-1.0.0 (`benchmarks/candidates/lesionseg-1.0.0/`, shipped
until 2026-12-07), trained on the training generator's cohort, which draws no
ground-glass nodules (only the generated-variation mode does, and 1.0.0 never used
it): a model trained without that lesion kind. Today's shipped model is half a fine-tune
on the variation generator, which has seen the kind, so it cannot start this benchmark
(``--base-weights`` names another). The benchmark:

1. ``--review`` studies of the evaluation generator (`imaging.core.synthetic_eval`, seed
   5501) whose lung nodules are all of ``--kind`` go through `lesions_segment` with the
   shipped model, as ``process`` runs them. Their review is what a radiologist who saw the
   generator's truth would do: every candidate on a true lesion accepted, every other one
   rejected, every missed lesion added with its outline drawn (the truth's mask). The
   corrections become training cases exactly as reviewed studies do in RadTrack
   (`imaging.core.modelhub.corrections.reviewed_case`: organs from the model, lesions
   from the review).
2. ``--original`` cases of the shipped model's own training cohort (seed 1001, small) are
   mixed in against forgetting, and the shipped weights are fine-tuned (transfer
   learning: `training.loop.segmenter_train` from them, small learning rate).
3. Before and after, on studies never trained on: ``--test`` studies of that kind (seed
   5502): sensitivity on the kind; ``--other`` studies with every other kind (seed 5503):
   sensitivity per organ and size band, false positives per study, volume error, and the
   promotion rule's regressions (`imaging.core.modelhub.compare`, default margins).

Targets (issue 17): a gain of at least 20 points on the kind, and no other organ or size
band worse by more than the margins. Results go to ``--out``/results.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from imaging.core.geometry.volume import Volume, volume_as_stored  # noqa: E402
from imaging.core.modelhub.compare import (  # noqa: E402
    Margins,
    paired_volume_errors,
    regressions,
)
from imaging.core.modelhub.corrections import Correction, reviewed_case  # noqa: E402
from imaging.core.modelhub.scoring import report_metrics, study_score  # noqa: E402
from imaging.core.modelhub.validation_set import (  # noqa: E402
    TruthLesion,
    ValidationCase,
    longest_axial_mm,
    size_band,
    truth_labels_renderer,
)
from imaging.core.segmentation.airways import AirwaySettings  # noqa: E402
from imaging.core.segmentation.blobness import BlobSettings  # noqa: E402
from imaging.core.segmentation.contrast import ContrastSettings  # noqa: E402
from imaging.core.segmentation.cysts import CystSettings  # noqa: E402
from imaging.core.segmentation.lesions import lesions_segment  # noqa: E402
from imaging.core.segmentation.network import segmenter_from_network, segmenter_load  # noqa: E402
from imaging.core.segmentation.postprocess import PostprocessSettings  # noqa: E402
from imaging.core.segmentation.training.cases import CohortSource, cases_load  # noqa: E402
from imaging.core.segmentation.training.interpolation import checkpoint_interpolate  # noqa: E402
from imaging.core.segmentation.training.loop import checkpoint_read  # noqa: E402
from imaging.core.segmentation.training.mining import train_with_mining  # noqa: E402
from imaging.core.segmentation.training.settings import TrainingSettings  # noqa: E402
from imaging.core.segmentation.vessel_split import SplitSettings  # noqa: E402
from imaging.core.synthetic_eval.cohort import patient_draw, study_render  # noqa: E402
from imaging.core.synthetic_eval.lesions import LIVER_KINDS, LUNG_KINDS  # noqa: E402

SEEDS = {"review": 5501, "test": 5502, "other": 5503}
BASE_WEIGHTS = ROOT / "benchmarks" / "candidates" / "lesionseg-1.0.0" / "lesionseg-1.0.0.pt"


def _case(
    seed: int, index: int, *, kind: str, other: bool, size: str, cache: Path
) -> ValidationCase:
    """One evaluation study: lung nodules all of ``kind``, or (``other``) of every other kind."""
    lung = [k for k in LUNG_KINDS if k != kind] if other else [kind]
    patient = patient_draw(seed=seed, index=index, n_studies=1, size=size, lesion_counts=(3, 2, 1),
                           lesion_kinds=(*lung, *LIVER_KINDS), lesion_diameters_mm=(8.0, 25.0),
                           thicknesses=(2.5 if size != "small" else 5.0,))  # fmt: skip
    study = patient.studies[0]
    path = cache / f"{seed}-{index}-{'not-' if other else ''}{kind}-{size}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as data:
            volume = Volume(array=data["hu"].astype(np.float32), spacing_mm=tuple(data["spacing"]),
                            origin_mm=tuple(data["origin"]), direction=data["direction"])  # fmt: skip
            truths = [TruthLesion(**{**t, "centre_lps_mm": tuple(t["centre_lps_mm"])})
                      for t in json.loads(str(data["truth"]))]  # fmt: skip
    else:
        rendered = study_render(patient, study, seed=seed)
        volume = rendered.volume
        truths = []
        for t in rendered.lesions:
            lesion = next(x for x in study.lesions if x.lesion_id == t.lesion_id)
            mapping = patient.mapping(study)
            longest = None if t.negative else longest_axial_mm(
                lambda x, y, z, lesion=lesion, mapping=mapping: lesion.field(*mapping.to_reference(x, y, z)) < 0,
                np.asarray(t.centre_lps_mm), lesion.reach_mm)  # fmt: skip
            truths.append(TruthLesion(t.lesion_id, t.organ, t.side, t.kind, t.negative, float(t.volume_ml),
                                      tuple(map(float, t.centre_lps_mm)), longest))  # fmt: skip
        # Judged as stored (whole HU), so that the run that renders a study and every later
        # run from the cache give the same figures.
        stored, volume = volume_as_stored(volume)
        cache.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, hu=stored, spacing=volume.spacing_mm, origin=volume.origin_mm,
                            direction=volume.direction, truth=json.dumps([t.as_json() for t in truths]))  # fmt: skip
    return ValidationCase(f"{seed}-{index}", "generated", volume, tuple(truths), {},
                          truth_labels=truth_labels_renderer(patient, study, truths))  # fmt: skip


def _review(case: ValidationCase, model, device: str):
    """The study as the model segments it, its simulated review, and the training case."""
    seg = lesions_segment(volume=case.volume, model=model, device=device, tta=False)
    rows, candidates = study_score(
        case=case, lesions=seg.lesions, candidate_mask=seg.candidate_mask
    )
    organs = {m.label_value: m.organ for m in seg.lesions}
    corrections = [Correction("accepted" if c.true_lesion else "rejected", organs[c.label_value], c.label_value)
                   for c in candidates]  # fmt: skip
    labels = case.truth_labels(case.volume)
    for n, truth in enumerate(case.truths, start=1):
        row = next((r for r in rows if r.lesion_id == truth.lesion_id), None)
        if truth.negative or row is None or row.detected:
            continue
        drawn = case.volume.with_array((labels == n).astype(np.uint8), kind="label")
        corrections.append(Correction("added", truth.organ, mask=drawn))
    training = reviewed_case(case_id=f"review-{case.case_id}", image=case.volume, candidate_mask=seg.candidate_mask,
                             organ_label=seg.label, corrections=corrections, spec=model.spec)  # fmt: skip
    kinds = {k: sum(c.kind == k for c in corrections) for k in ("accepted", "rejected", "added")}
    return training, kinds


def _reviewed_cached(case: ValidationCase, model, device: str, cache: Path):
    """`_review`, kept in ``cache`` (the shipped model's review of a study does not change)."""
    from imaging.core.segmentation.training.cases import TrainingCase

    path = cache / f"{case.case_id}.npz"
    if path.exists():
        training = TrainingCase.load(path)
        return training, training.meta["corrections"]
    training, kinds = _review(case, model, device)
    cache.mkdir(parents=True, exist_ok=True)
    training.save(path)
    return training, kinds


def _judge(cases, model, device: str, label: str) -> dict:
    lesions, candidates, seconds = [], [], []
    for case in cases:
        t = time.perf_counter()
        seg = lesions_segment(volume=case.volume, model=model, device=device, tta=False)
        seconds.append(time.perf_counter() - t)
        rows, cands = study_score(case=case, lesions=seg.lesions, candidate_mask=seg.candidate_mask)
        lesions += rows
        candidates += cands
        print(f"  [{label}] {case.case_id}: {sum(r.detected for r in rows)}/{len(rows)} found, "
              f"FP {sum(not c.true_lesion for c in cands)}, {seconds[-1]:.0f} s", flush=True)  # fmt: skip
    metrics = report_metrics(lesions=lesions, candidates=candidates, seconds=seconds)
    return {"metrics": metrics, "lesions": [r.as_json() for r in lesions],
            "candidates": [c.as_json() for c in candidates]}  # fmt: skip


def _kind_sensitivity(result: dict, kind: str) -> tuple[int, int]:
    rows = [r for r in result["lesions"] if r["kind"] == kind]
    return sum(r["detected"] for r in rows), len(rows)


def _band_rows(before: dict, after: dict) -> list[tuple[str, int, int, int]]:
    out = []
    keys = sorted({(r["organ"], size_band(r["diameter_mm"])) for r in before["lesions"]})
    for organ, band in keys:
        b = [
            r
            for r in before["lesions"]
            if (r["organ"], size_band(r["diameter_mm"])) == (organ, band)
        ]
        a = [
            r
            for r in after["lesions"]
            if (r["organ"], size_band(r["diameter_mm"])) == (organ, band)
        ]
        out.append(
            (
                f"{organ} {band} mm",
                len(b),
                sum(r["detected"] for r in b),
                sum(r["detected"] for r in a),
            )
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", default="ground_glass", choices=LUNG_KINDS)
    parser.add_argument("--review", type=int, default=20, help="reviewed studies of the kind")
    parser.add_argument("--test", type=int, default=8, help="held-out studies of the kind")
    parser.add_argument("--other", type=int, default=8, help="held-out studies of every other kind")
    parser.add_argument("--original", type=int, default=6, help="original training cases mixed in")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--patch-size", type=int, default=64)
    parser.add_argument("--freeze-encoder", action="store_true")
    parser.add_argument("--hard-negative-share", type=float, default=0.4,
                        help="of the patches not on a lesion, the share on a rejected candidate")  # fmt: skip
    parser.add_argument("--mining-steps", type=int, default=0,
                        help="then mine the fine-tuned network's false candidates on the training "
                             "cases as hard negatives and train this many steps more (0: no)")  # fmt: skip
    parser.add_argument("--distill-weight", type=float, default=0.0,
                        help="keep the shipped model's softmax where it agrees with the labels, "
                             "with this weight (learning without forgetting; 0: off)")  # fmt: skip
    parser.add_argument("--base-weights", type=Path, default=BASE_WEIGHTS,
                        help="the model to fine-tune, trained without --kind (manifest beside)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="training seed (patches, order)")
    parser.add_argument("--tuned-shares", type=_shares, default=(1.0,),
                        help="comma-separated shares of the fine-tuned weights to judge, the rest "
                             "the shipped model's (training.interpolation); 1: as tuned")  # fmt: skip
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="judge this earlier fine-tune's checkpoint (same data and settings) "
                             "instead of training again")  # fmt: skip
    parser.add_argument("--size", choices=["small", "medium"], default="small")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--cache", type=Path, default=ROOT / "var" / "benchmarks" / "finetune-cache"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "benchmarks" / "finetune")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = (
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    started = time.perf_counter()
    base = segmenter_load(weights_path=args.base_weights, device=device)
    print(f"base {base.version} on {device}; kind {args.kind}; review {args.review}, test {args.test}, "
          f"other {args.other}, original {args.original}, {args.steps} steps", flush=True)  # fmt: skip

    def cases(name: str, count: int, other: bool = False) -> list[ValidationCase]:
        return [_case(SEEDS[name], n, kind=args.kind, other=other, size=args.size, cache=args.cache)
                for n in range(count)]  # fmt: skip

    review, test, other = (
        cases("review", args.review),
        cases("test", args.test),
        cases("other", args.other, True),
    )
    print(f"studies ready in {time.perf_counter() - started:.0f} s", flush=True)

    t = time.perf_counter()
    training, reviewed = [], {"accepted": 0, "rejected": 0, "added": 0}
    # The cases' ids (seed-index) repeat across kinds and presets: the reviews' folder names both.
    reviews = args.cache / f"reviews-{args.kind}-{args.size}-{_postprocess_key()}{_model_key(base)}"
    for case in review:
        case_training, kinds = _reviewed_cached(case, base, device, reviews)
        training.append(case_training)
        reviewed = {k: reviewed[k] + kinds[k] for k in reviewed}
    print(f"reviews: {reviewed} in {time.perf_counter() - t:.0f} s", flush=True)
    originals = cases_load(sources=[CohortSource(seed=1001, size="small", patients=tuple(range(args.original)),
                                                 timepoints=1, lesion_resize=True)],
                           spec=base.spec, cache_dir=args.cache / "original")  # fmt: skip

    print("before:", flush=True)
    before_path = args.cache / (
        f"before-{args.kind}-{args.size}-{args.test}-{args.other}-{_postprocess_key()}"
        f"{_model_key(base)}.json"
    )
    if before_path.exists():  # the shipped model's results here change with post-processing only
        before = json.loads(before_path.read_text())
    else:
        before = {
            "test": _judge(test, base, device, "test"),
            "other": _judge(other, base, device, "other"),
        }
        before_path.write_text(json.dumps(before, default=float))
    settings = TrainingSettings(
        seed=args.seed, steps=args.steps, batch_size=args.batch_size, patch_size=args.patch_size,
        learning_rate=args.lr, warmup_steps=min(20, args.steps), lesion_bias=0.6,
        validate_every=args.steps, checkpoint_every=args.steps, threads=args.threads,
        freeze_encoder=args.freeze_encoder, hard_negative_share=args.hard_negative_share,
        mining_steps=args.mining_steps, distill_weight=args.distill_weight,
    )  # fmt: skip
    t = time.perf_counter()
    state = {k: v.detach().cpu().float() for k, v in base.network.state_dict().items()}
    cases_all = [*training, *originals]
    if args.checkpoint is not None:
        checkpoint = args.checkpoint
        print(f"fine-tune taken from {checkpoint} (not trained again)", flush=True)
    else:
        checkpoint, mined = train_with_mining(out_dir=args.out, cases=cases_all, spec=base.spec,
                                              settings=settings, initial_state=state, device=device)  # fmt: skip
        if args.mining_steps:
            data = checkpoint_read(checkpoint)["data"]
            print(f"mined {mined} false candidates on the training cases "
                  f"({data.get('mined_by_organ')})", flush=True)  # fmt: skip
    train_seconds = time.perf_counter() - t
    print(f"fine-tuned {args.steps} steps in {train_seconds:.0f} s", flush=True)
    found_b, n_kind = _kind_sensitivity(before["test"], args.kind)
    results = {}
    for share in args.tuned_shares:
        path = checkpoint if share == 1.0 else checkpoint_interpolate(
            checkpoint=checkpoint, base=state, share=share, cases=cases_all, spec=base.spec,
            settings=settings, device=device, out_dir=args.out / f"share-{share:g}")  # fmt: skip
        tuned = segmenter_from_network(network=_network(path), spec=base.spec, device=device)
        print(f"after (tuned share {share:g}):", flush=True)
        after = {
            "test": _judge(test, tuned, device, f"test {share:g}"),
            "other": _judge(other, tuned, device, f"other {share:g}"),
        }
        found_a, _ = _kind_sensitivity(after["test"], args.kind)
        gain = 100.0 * (found_a - found_b) / n_kind if n_kind else 0.0
        regressed = regressions(
            candidate=after["other"]["metrics"],
            active=before["other"]["metrics"],
            margins=Margins(),
            paired=paired_volume_errors(after["other"]["lesions"], before["other"]["lesions"]),
        )
        _print_summary(args, share, n_kind, found_b, found_a, gain, before, after, regressed, train_seconds,
                       reviewed, len(originals), time.perf_counter() - started)  # fmt: skip
        results[f"{share:g}"] = {
            "kind": {"lesions": n_kind, "before": found_b, "after": found_a, "gain_points": gain},
            "after": after, "regressions": regressed,
        }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({
        "settings": vars(args) | {"cache": str(args.cache), "out": str(args.out),
                                  "base_weights": str(args.base_weights),
                                  "checkpoint": str(args.checkpoint)},
        "reviewed": reviewed, "before": before, "by_tuned_share": results, "train_seconds": train_seconds,
    }, indent=1, default=float))  # fmt: skip
    return 0


def _postprocess_key() -> str:
    """A digest of every post-processing setting (the shipped model's cached results and
    reviews are kept apart per setting: a new filter must not be judged on old ones)."""
    settings = {
        "postprocess": asdict(PostprocessSettings()),
        "contrast": asdict(ContrastSettings()),
        "cysts": asdict(CystSettings()),
        "tubular": asdict(BlobSettings()),
        "vessel_split": asdict(SplitSettings()),
        "airways": asdict(AirwaySettings()),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def _model_key(model) -> str:
    """The starting weights' SHA-256 prefix: each model's reviews and results are its own."""
    return f"-{model.spec.sha256[:10]}"


def _shares(text: str) -> tuple[float, ...]:
    shares = tuple(float(x) for x in text.split(","))
    if not all(0.0 < x <= 1.0 for x in shares):
        raise argparse.ArgumentTypeError("each share must be in (0, 1]")
    return shares


def _network(checkpoint: Path):
    from imaging.core.segmentation.training.loop import network_from_checkpoint

    return network_from_checkpoint(checkpoint)[0]


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _print_summary(args, share, n_kind, found_b, found_a, gain, before, after, regressed, train_seconds, reviewed,
                   n_original, seconds):  # fmt: skip
    print(f"\n### Fine-tuning on {args.review} reviewed studies of {args.kind} nodules "
          f"({reviewed['accepted']} accepted, {reviewed['rejected']} rejected, {reviewed['added']} added), "
          f"{n_original} original cases, {args.steps} steps ({train_seconds:.0f} s), "
          f"tuned share {share:g}\n")  # fmt: skip
    print("| measure | before | after | target |\n| --- | ---: | ---: | --- |")
    print(f"| {args.kind} nodules detected ({args.test} held-out studies) | {found_b}/{n_kind} | {found_a}/{n_kind} | "
          f"gain >= 20 points: {gain:+.1f} ({'met' if gain >= 20 else 'not met'}) |")  # fmt: skip
    b, a = before["other"]["metrics"], after["other"]["metrics"]
    for group, label in (
        ("overall", "other kinds"),
        *((o, f"other kinds, {o}") for o in ("lung", "liver")),
    ):
        bm = b["overall"] if group == "overall" else b["by_organ"][group]
        am = a["overall"] if group == "overall" else a["by_organ"][group]
        print(
            f"| {label}: sensitivity | {_pct(bm['sensitivity'])} | {_pct(am['sensitivity'])} | >= -1 point |"
        )
        print(
            f"| {label}: false positives per study | {bm['fp_per_study']:.2f} | {am['fp_per_study']:.2f} | <= +0.2 |"
        )
        print(
            f"| {label}: median volume error | {_pct(bm['volume_error_median'])} | {_pct(am['volume_error_median'])} | <= +2 points |"
        )
    print(
        "\n| other kinds, organ and size band | lesions | detected before | detected after |\n| --- | ---: | ---: | ---: |"
    )
    for name, n, db, da in _band_rows(before["other"], after["other"]):
        print(f"| {name} | {n} | {db} | {da} |")
    verdict = "none" if not regressed else "; ".join(r["text"] for r in regressed)
    print(f"\nregressions beyond the margins: {verdict}\ntotal {seconds / 60:.1f} min")


if __name__ == "__main__":
    raise SystemExit(main())
