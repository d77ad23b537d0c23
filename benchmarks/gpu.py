"""The GPU figures of issue 21: segmentation and registration on CUDA beside the CPU.

One short run for the lent GPU machine. On the same studies and pairs, first on the
CPU, then on CUDA (the network in float16, as `process` runs it there):

1. segmentation: full-size studies of the training generator through `lesions_segment`;
   seconds per study on each device, the Dice of the two candidate masks (they share
   the model grid) and the largest volume difference of a lesion found on both;
2. registration: baseline/follow-up pairs of the evaluation generator
   (`registration.py`'s design: every position, thickness and pose) through `register`
   with the torch backend on each device; seconds per pair, TRE median and 95th
   percentile on each, and the largest TRE difference;
3. the whole `process` of a full-size study (DICOM to volume, orientation, registration,
   segmentation and measurement) on CUDA: the <= 5 s goal.

    .venv/bin/python benchmarks/gpu.py                       # on the GPU machine
    .venv/bin/python benchmarks/gpu.py --studies 1 --pairs 1 --size small --allow-cpu
                                                             # the script itself, no GPU

Without CUDA it stops and says so, unless ``--allow-cpu`` (both columns on the CPU: a
check that the script runs, not a GPU figure). Results also go to ``--json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from imaging.core.registration.register import register  # noqa: E402
from imaging.core.registration.transforms import point_map  # noqa: E402
from imaging.core.segmentation.lesions import lesions_segment  # noqa: E402
from imaging.core.segmentation.network import segmenter_load  # noqa: E402
from imaging.core.synthetic_eval.cohort import landmarks_lps, patient_draw  # noqa: E402


def _benchmark(name: str):
    """A sibling benchmark script as a module (its study generators are reused)."""
    spec = importlib.util.spec_from_file_location(
        f"bench_{name}", ROOT / "benchmarks" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total


def _volume_difference(cpu, gpu) -> float | None:
    """Largest relative volume difference of a lesion found on both (centres within 5 mm)."""
    worst = None
    for m in cpu:
        near = [
            g
            for g in gpu
            if np.linalg.norm(np.subtract(g.centroid_lps_mm, m.centroid_lps_mm)) <= 5.0
        ]
        if near and m.volume_ml > 0:
            d = abs(near[0].volume_ml - m.volume_ml) / m.volume_ml
            worst = d if worst is None else max(worst, d)
    return worst


def _segmentation(args, devices) -> list[dict]:
    seg_bench = _benchmark("segmentation")
    models = {d: segmenter_load(device=d) for d in set(devices.values())}
    rows = []
    for label, volume, _truths, info in seg_bench._training_studies(
        args.studies, seed=4242, size=args.size
    ):
        out = {"study": label, "slices": volume.shape_ijk[2], **info}
        results = {}
        for column, device in devices.items():
            if args.warm:
                lesions_segment(volume=volume, model=models[device], device=device)
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            results[column] = lesions_segment(volume=volume, model=models[device], device=device)
            if device == "cuda":
                torch.cuda.synchronize()
            out[f"{column}_s"] = time.perf_counter() - t
        a = results["cpu"].candidate_mask.array > 0
        b = results["gpu"].candidate_mask.array > 0
        out["dice"] = _dice(a, b)
        out["lesions"] = (len(results["cpu"].lesions), len(results["gpu"].lesions))
        out["volume_difference"] = _volume_difference(
            results["cpu"].lesions, results["gpu"].lesions
        )
        rows.append(out)
        print(f"segmentation {label} ({out['slices']} slices): cpu {out['cpu_s']:.1f} s, "
              f"gpu {out['gpu_s']:.1f} s, Dice {out['dice']:.3f}, lesions {out['lesions']}", flush=True)  # fmt: skip
    return rows


def _registration(args, devices) -> list[dict]:
    reg = _benchmark("registration")
    rows = []
    for p in range(args.pairs):
        patient = reg._posed(
            patient_draw(seed=reg.SEED, index=p, n_studies=5, size=args.size, **reg._design(p)), p
        )
        baseline = patient.studies[0]
        fixed = reg._cached_volume(patient, baseline, args.size)
        study = patient.studies[1 + p % 4]
        moving = reg._cached_volume(patient, study, args.size)
        marks_b = landmarks_lps(patient, baseline)
        marks_f = landmarks_lps(patient, study, names=marks_b.keys())
        names = [n for n in marks_b if n in marks_f]
        at_b, at_f = np.array([marks_b[n] for n in names]), np.array([marks_f[n] for n in names])
        keep = reg._inside(fixed, at_b) & reg._inside(moving, at_f)
        out = {
            "pair": f"{patient.patient_id} s{study.index}",
            "position": study.acquisition.position,
        }
        errors = {}
        for column, device in devices.items():
            t = time.perf_counter()
            result = register(fixed=fixed, moving=moving, backend="torch", device=device)
            out[f"{column}_s"] = time.perf_counter() - t
            out[f"{column}_failed"] = result.failed
            errors[column] = np.linalg.norm(
                point_map(result.transform, at_b[keep]) - at_f[keep], axis=1
            )
            out[f"{column}_tre_median_mm"] = (
                float(np.median(errors[column])) if keep.any() else None
            )
            out[f"{column}_tre_p95_mm"] = (
                float(np.percentile(errors[column], 95)) if keep.any() else None
            )
        out["tre_difference_max_mm"] = (
            float(np.abs(errors["cpu"] - errors["gpu"]).max()) if keep.any() else None
        )
        rows.append(out)
        print(f"registration {out['pair']} {out['position']}: cpu {out['cpu_s']:.1f} s "
              f"(TRE median {out['cpu_tre_median_mm']:.2f} mm), gpu {out['gpu_s']:.1f} s "
              f"(TRE median {out['gpu_tre_median_mm']:.2f} mm), largest TRE difference "
              f"{out['tre_difference_max_mm']:.2f} mm", flush=True)  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=4, help="full-size segmentation studies")
    parser.add_argument("--pairs", type=int, default=4, help="registration pairs")
    parser.add_argument("--size", choices=["small", "full"], default="full")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch CPU threads for the CPU column"
    )
    parser.add_argument("--warm", action="store_true", help="one untimed run per device first")
    parser.add_argument(
        "--allow-cpu", action="store_true", help="run without CUDA (both columns CPU)"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print(
            "no CUDA device here: run this on the lent GPU machine (or --allow-cpu to check the script)"
        )
        return 2
    torch.set_num_threads(args.threads)
    devices = {"cpu": "cpu", "gpu": "cuda" if torch.cuda.is_available() else "cpu"}
    print(f"devices: {devices}; {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}; "
          f"torch {torch.__version__}, {args.threads} CPU threads", flush=True)  # fmt: skip
    segmentation = _segmentation(args, devices)
    registration = _registration(args, devices)
    with tempfile.TemporaryDirectory() as workdir:
        process = _benchmark("segmentation").process_time(
            segmenter_load(device=devices["gpu"]), devices["gpu"], Path(workdir), patients=2
        )
    print("process of one full-size study on " + devices["gpu"] + ": "
          + ", ".join(f"{k} {v:.1f} s" if isinstance(v, float) else f"{k} {v}" for k, v in process.items()))  # fmt: skip
    median = lambda rows, key: float(np.median([r[key] for r in rows])) if rows else float("nan")  # noqa: E731
    print(f"\nsegmentation: {median(segmentation, 'cpu_s'):.1f} s per study on the CPU, "
          f"{median(segmentation, 'gpu_s'):.1f} s on the GPU (median), Dice CPU/GPU min "
          f"{min((r['dice'] for r in segmentation), default=float('nan')):.3f}")  # fmt: skip
    print(f"registration: {median(registration, 'cpu_s'):.1f} s per pair on the CPU, "
          f"{median(registration, 'gpu_s'):.1f} s on the GPU (median), largest TRE difference "
          f"{max((r['tre_difference_max_mm'] or 0.0 for r in registration), default=float('nan')):.2f} mm")  # fmt: skip
    print(f"goal <= 5 s per full-size study end to end on the GPU: {process['total']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps({"segmentation": segmentation, "registration": registration,
                                         "process": process}, indent=1, default=float))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
