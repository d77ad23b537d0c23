"""Registration accuracy and speed on a generated cohort with known poses.

Each patient of a synthetic cohort (`imaging.core.synthetic.cohort`) has a baseline and follow-up
CT studies, each with its own rigid pose of the body in patient coordinates (up to 10
degrees and 20 mm), scanner grid, field of view, slice thickness, noise and patient
position, and lesions that grow or shrink about fixed centres. Every follow-up is
registered to its baseline with each backend; the target registration error (TRE) at a
lesion is the distance between the baseline lesion centre mapped through the found
transform and the lesion's true centre in the follow-up (both in LPS mm). Lesions
present at either study count (a centre is defined even while a lesion is absent).

Only the registration call is timed (coarse copies, masks, optimisation and the quality
check); rendering the studies, importing torch and MONAI and starting the device are
not. Targets: median TRE <= 1.5 mm, 95th percentile
<= 3 mm, <= 10 s per pair at full size (512x512, 150-300 slices) on 2 CPU cores.

    .venv/bin/python benchmarks/registration.py [--patients 4] [--timepoints 3]
        [--size small|full] [--backend both|simpleitk|torch] [--device auto|cpu|cuda]
        [--seed 7] [--torch-threads 2] [--json results.json]

The torch backend runs on CUDA with ``--device auto`` when torch sees a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imaging.core.registration.register import register  # noqa: E402
from imaging.core.registration.torch_backend import resolve_device  # noqa: E402
from imaging.core.registration.transforms import point_map  # noqa: E402
from imaging.core.synthetic.cohort import cohort_simulate, study_render  # noqa: E402 - path set above

TRE_MEDIAN_TARGET_MM = 1.5
TRE_P95_TARGET_MM = 3.0
SECONDS_TARGET = 10.0


@dataclass
class BackendRun:
    backend: str
    device: str
    tre_mm: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    pair_max_tre_mm: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        tre = np.asarray(self.tre_mm)
        seconds = np.asarray(self.seconds)
        return {
            "backend": self.backend,
            "device": self.device,
            "pairs": len(self.seconds),
            "lesions": int(tre.size),
            "tre_median_mm": float(np.median(tre)) if tre.size else None,
            "tre_p95_mm": float(np.percentile(tre, 95)) if tre.size else None,
            "tre_max_mm": float(tre.max()) if tre.size else None,
            "seconds_median": float(np.median(seconds)) if seconds.size else None,
            "seconds_max": float(seconds.max()) if seconds.size else None,
            "cpu_seconds_median": float(np.median(self.cpu_seconds)) if self.cpu_seconds else None,
            "flagged_failed": list(self.failed),
        }


def _progress(done: int, total: int, label: str) -> None:
    width = 30
    filled = int(width * done / max(total, 1))
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label:<40}")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=4)
    parser.add_argument("--timepoints", type=int, default=3)
    parser.add_argument("--size", choices=["small", "full"], default="small")
    parser.add_argument("--backend", choices=["both", "simpleitk", "torch"], default="both")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--torch-threads", type=int, default=2, help="torch CPU threads (default 2)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.patients < 1 or args.timepoints < 2:
        parser.error("need at least one patient and two timepoints (a baseline and a follow-up)")
    try:
        torch_device = resolve_device(args.device)
    except ValueError as error:
        parser.error(str(error))

    backends = ["simpleitk", "torch"] if args.backend == "both" else [args.backend]
    if "torch" in backends:
        _torch_warm_up(torch_device)
    runs = {b: BackendRun(b, torch_device if b == "torch" else "cpu") for b in backends}
    cohort = cohort_simulate(
        n_patients=args.patients, n_timepoints=args.timepoints, seed=args.seed, size=args.size
    )
    total = sum(len(p.studies) - 1 for p in cohort.patients) * len(backends)
    done = 0
    render_seconds = 0.0
    shapes = []
    for patient in cohort.patients:
        t0 = time.perf_counter()
        baseline_study = patient.studies[0]
        baseline = study_render(cohort, patient, baseline_study).volume
        render_seconds += time.perf_counter() - t0
        shapes.append(baseline.shape_ijk)
        for study in patient.studies[1:]:
            t0 = time.perf_counter()
            follow_up = study_render(cohort, patient, study).volume
            render_seconds += time.perf_counter() - t0
            lesions = [
                lesion
                for lesion in patient.lesions
                if "present" in (lesion.status(baseline_study.day), lesion.status(study.day))
            ]
            centres_body = np.array([lesion.shape.centre_body_mm for lesion in lesions]).reshape(
                -1, 3
            )
            at_baseline = np.array([baseline_study.to_lps(c) for c in centres_body]).reshape(-1, 3)
            at_follow_up = np.array([study.to_lps(c) for c in centres_body]).reshape(-1, 3)
            for backend in backends:
                _progress(done, total, f"{patient.patient_id} study {study.index} {backend}")
                options = {"threads": args.torch_threads} if backend == "torch" else {}
                cpu0 = time.process_time()
                wall0 = time.perf_counter()
                result = register(
                    fixed=baseline,
                    moving=follow_up,
                    backend=backend,
                    device=torch_device,
                    **options,
                )
                wall = time.perf_counter() - wall0
                cpu = time.process_time() - cpu0
                run = runs[backend]
                run.seconds.append(wall)
                run.cpu_seconds.append(cpu)
                if len(at_baseline):
                    errors = np.linalg.norm(
                        point_map(result.transform, at_baseline) - at_follow_up, axis=1
                    )
                    run.tre_mm.extend(float(e) for e in errors)
                    run.pair_max_tre_mm.append(float(errors.max()))
                if result.failed:
                    run.failed.append(f"{patient.patient_id}/{study.index}: {result.reason}")
                done += 1
    _progress(done, total, "done")
    sys.stderr.write("\n")

    summaries = [run.summary() for run in runs.values()]
    sizes = sorted({tuple(s) for s in shapes})
    print(
        f"cohort: {args.patients} patients x {args.timepoints} timepoints, size {args.size} "
        f"(baseline grids i x j x k: {', '.join('x'.join(map(str, s)) for s in sizes[:4])}"
        f"{'...' if len(sizes) > 4 else ''}), seed {args.seed}; rendering took "
        f"{render_seconds:.0f} s (not timed)"
    )
    header = (
        f"{'backend':<10} {'device':<6} {'pairs':>5} {'lesions':>7} {'TRE median':>11} "
        f"{'TRE p95':>8} {'TRE max':>8} {'s/pair med':>10} {'s/pair max':>10} "
        f"{'cpu s med':>9} {'failed':>6}"
    )
    print(header)
    print("-" * len(header))
    for s in summaries:
        print(
            f"{s['backend']:<10} {s['device']:<6} {s['pairs']:>5} {s['lesions']:>7} "
            f"{_mm(s['tre_median_mm']):>11} {_mm(s['tre_p95_mm']):>8} {_mm(s['tre_max_mm']):>8} "
            f"{s['seconds_median']:>10.2f} {s['seconds_max']:>10.2f} "
            f"{s['cpu_seconds_median']:>9.2f} {len(s['flagged_failed']):>6}"
        )
    print(
        f"{'target':<10} {'':<6} {'':>5} {'':>7} {'<= 1.50':>11} {'<= 3.00':>8} {'':>8} "
        f"{'<= 10 (full, 2 cores)':>21}"
    )
    verdicts = []
    for s in summaries:
        ok_tre = (
            s["tre_median_mm"] is not None
            and s["tre_median_mm"] <= TRE_MEDIAN_TARGET_MM
            and s["tre_p95_mm"] <= TRE_P95_TARGET_MM
        )
        ok_time = s["seconds_median"] <= SECONDS_TARGET
        time_note = "" if args.size == "full" else " (time target applies at --size full)"
        verdicts.append(
            f"{s['backend']}/{s['device']}: TRE {'meets' if ok_tre else 'MISSES'} target, "
            f"time {'meets' if ok_time else 'MISSES'} target{time_note}"
        )
        for line in s["flagged_failed"]:
            verdicts.append(f"  flagged failed: {line}")
    print("\n".join(verdicts))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "settings": vars(args) | {"json": str(args.json)},
                    "targets": {
                        "tre_median_mm": TRE_MEDIAN_TARGET_MM,
                        "tre_p95_mm": TRE_P95_TARGET_MM,
                        "seconds_per_pair": SECONDS_TARGET,
                    },
                    "results": summaries,
                },
                indent=2,
            )
        )
    return 0


def _torch_warm_up(device: str) -> None:
    """Import torch and MONAI and touch the device before timing (seconds, once per run)."""
    import torch
    from monai.losses import GlobalMutualInformationLoss

    x = torch.rand(1, 1, 1000, device=device, requires_grad=True)
    GlobalMutualInformationLoss(kernel_type="b-spline", num_bins=32).to(device)(
        x, x.detach()
    ).backward()


def _mm(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    raise SystemExit(main())
