"""What post-processing lets through when the network is perfect: the ceiling that the
post-processing and the contrast filter put on sensitivity, per lesion kind.

    .venv/bin/python benchmarks/postprocess_ceiling.py             # small and medium presets
    .venv/bin/python benchmarks/postprocess_ceiling.py --sizes medium --studies 4

1. Studies of the evaluation-only generator (`imaging.core.synthetic_eval`; the cohorts of
   benchmarks/finetune.py: ``--studies`` whose lung nodules are ground glass, seed 5502,
   and as many with every other kind, seed 5503) go through the shipped network only to
   get its grid and organ probabilities; the lesion channels are then replaced by the
   truth (probability 1 inside each true lesion, 0 elsewhere) and the result goes through
   `postprocess.postprocess_run` and `contrast.candidates_contrast_filter`, exactly as
   `lesions_segment` runs them. A true lesion that does not come out was removed by a rule,
   not missed by the network.
2. The other side of the filter: the shipped model's own candidates on thick (4.5-5 mm),
   noisy studies of the training generator's small preset (the demo's, seed 4242), each
   marked true when its centre is within 10 mm of a true lesion: how many false ones the
   filter removes and how many true ones it keeps.

Prints a table per set and kind (kept by post-processing, kept after the contrast filter)
and the filter's effect on the model's candidates; writes ``--out``/results.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.finetune import SEEDS, _case  # noqa: E402
from benchmarks.segmentation import _training_studies  # noqa: E402
from imaging.core.segmentation.contrast import candidates_contrast_filter  # noqa: E402
from imaging.core.segmentation.lesions import study_around  # noqa: E402
from imaging.core.segmentation.network import segmenter_load  # noqa: E402
from imaging.core.segmentation.postprocess import postprocess_run  # noqa: E402

LESION_CHANNEL = {"lung": 3, "liver": 4}


def _perfect(case, model) -> list[dict]:
    """One row per true lesion: kept by post-processing, and after the contrast filter."""
    output = model.segment(volume=case.volume, device="cpu", tta=False)
    labels = case.truth_labels(output.image)
    probabilities = output.probabilities.astype(np.float32)
    probabilities[3:] = 0.0
    for n, truth in enumerate(case.truths, start=1):
        if not truth.negative:
            probabilities[LESION_CHANNEL[truth.organ]][labels == n] = 1.0
    post = postprocess_run(probabilities=probabilities, image=output.image)
    around = study_around(study=case.volume, mask=post.mask)
    kept_mask, _, record = candidates_contrast_filter(
        study=around, candidate_mask=post.mask, candidates=post.candidates
    )
    rows = []
    for n, truth in enumerate(case.truths, start=1):
        if truth.negative:
            continue
        inside = labels == n
        values = sorted(set(np.unique(post.mask.array[inside]).tolist()) - {0})
        rows.append({
            "kind": truth.kind, "organ": truth.organ, "volume_ml": truth.volume_ml,
            "post": bool(values), "kept": bool(np.any(kept_mask.array[inside] > 0)),
            "z": [record.details["z"].get(str(v)) for v in values],
        })  # fmt: skip
    return rows


def _model_candidates(volume, truths, model) -> list[dict]:
    """The shipped model's candidates: true or not, and whether the filter keeps them."""
    output = model.segment(volume=volume, device="cpu", tta=True)
    post = postprocess_run(probabilities=output.probabilities, image=output.image)
    around = study_around(study=volume, mask=post.mask)
    _, kept, _ = candidates_contrast_filter(
        study=around, candidate_mask=post.mask, candidates=post.candidates
    )
    kept_values = {c.label_value for c in kept}
    centres = [np.asarray(t["centre_lps_mm"]) for t in truths]
    rows = []
    for c in post.candidates:
        middle = [[(a + b - 1) / 2 for a, b in c.bbox_kji[::-1]]]
        lps = post.mask.index_to_lps(np.asarray(middle, dtype=float))[0]
        true = any(np.linalg.norm(lps - centre) < 10.0 for centre in centres)
        rows.append({"true": true, "kept": c.label_value in kept_values, "organ": c.organ})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", nargs="+", choices=["small", "medium"], default=["small", "medium"]
    )
    parser.add_argument(
        "--studies", type=int, default=4, help="per cohort (ground glass, other kinds)"
    )
    parser.add_argument("--noisy", type=int, default=8, help="training-generator small studies")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--cache", type=Path, default=ROOT / "var" / "benchmarks" / "finetune" / "cache"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "var" / "benchmarks" / "postprocess_ceiling"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = segmenter_load(device="cpu")
    results: dict = {"perfect": {}, "model": []}
    for size in args.sizes:
        rows = []
        for seed, other in ((SEEDS["test"], False), (SEEDS["other"], True)):
            for index in range(args.studies):
                case = _case(seed, index, kind="ground_glass", other=other, size=size,
                             cache=args.cache)  # fmt: skip
                rows += _perfect(case, model)
                print(f"[{size}] {case.case_id}", flush=True)
        results["perfect"][size] = rows
    for label, volume, truths, _info in _training_studies(args.noisy, 4242, "small"):
        results["model"] += _model_candidates(volume, truths, model)
        print(f"[noisy] {label}", flush=True)

    print("\nA perfect network: true lesions kept by post-processing / after the contrast filter")
    print(f"{'preset':8s} {'kind':15s} {'lesions':>7s} {'post':>5s} {'filter':>6s}")
    for size, rows in results["perfect"].items():
        by_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        for row in rows:
            entry = by_kind[row["kind"]]
            entry[0], entry[1], entry[2] = (
                entry[0] + 1,
                entry[1] + row["post"],
                entry[2] + row["kept"],
            )
        for kind, (n, post, kept) in sorted(by_kind.items()):
            print(f"{size:8s} {kind:15s} {n:7d} {post:5d} {kept:6d}")
        total = [sum(r["post"] for r in rows), sum(r["kept"] for r in rows)]
        print(f"{size:8s} {'all':15s} {len(rows):7d} {total[0]:5d} {total[1]:6d}")
    model_rows = results["model"]
    false = [r for r in model_rows if not r["true"]]
    true = [r for r in model_rows if r["true"]]
    print(f"\nThe shipped model on {args.noisy} thick, noisy small studies: {len(false)} false "
          f"candidates, {sum(not r['kept'] for r in false)} removed by the filter; {len(true)} "
          f"true, {sum(r['kept'] for r in true)} kept")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
