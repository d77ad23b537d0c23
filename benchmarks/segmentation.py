"""Lesion segmentation and measurement on an unseen generated cohort: the U-Net beside the
classical baseline, scored against the phantom's exact truth.

    .venv/bin/python benchmarks/segmentation.py                     # 12 full-size studies
    .venv/bin/python benchmarks/segmentation.py --studies 4 --skip-process   # a quick look

The cohort's seed (default 4242) must not be one the shipped weights were trained or
validated on (the manifest lists them; the script refuses otherwise). Studies are
chosen from a simulated pool so that every patient position (HFS, FFS, HFP, FFP), thick
(5 mm) slices and high noise (>= 20 HU) are covered, then filled up in cohort order.
Each study is rendered in memory at its full size (512 x 512, 150-300 slices) and goes
through `segmentation.lesions_segment` (the processing service's entry point: reorient,
resample, U-Net with flip TTA, post-processing, measurement) and through the classical
baseline (`classical.classical_segment` on the same 1.5 mm grid, then the same
post-processing and measurement).

Scoring, per present lesion of the truth (same cohort simulation, so the exact shapes):

- detected: a candidate whose region holds the lesion's centre, or whose centroid lies
  within the lesion's equivalent radius + 3 mm; candidates matching no lesion are false
  positives. Sensitivity and false positives per study by size band (equivalent diameter).
- Dice (lesions >= 10 mm): on a 0.5 mm LPS grid around the lesion, the exact shape
  against the measured isosurface of the matched candidates' probability.
- volume error (lesions >= 0.5 ml): |measured - truth.json volume| / truth volume.
- diameter error: |measured - exact| longest axial diameter, the exact one measured on
  the analytic shape sampled at 0.3 mm (for a spherical lesion it is truth.json's
  equivalent diameter, also reported).
- seconds per study: `lesions_segment` on this machine's CPU (torch threads: 2), and on
  CUDA when torch sees a GPU. With ``--process`` (default on) two follow-up studies are
  also written as DICOM and timed end to end like ``manage.py process``: DICOM to
  volume, registration to the baseline (SimpleITK rigid + affine), segmentation and
  measurement, against the 60 s target.

Results also go to ``var/benchmarks/segmentation/results.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from imaging.core.dicom.volume import series_volume
from imaging.core.registration.register import register

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from scipy import ndimage  # noqa: E402

from imaging.core.geometry.volume import Volume  # noqa: E402
from imaging.core.segmentation.classical import classical_segment  # noqa: E402
from imaging.core.segmentation.lesions import lesions_segment  # noqa: E402
from imaging.core.segmentation.measure import lesion_regions, lesions_measure, probability_measure  # noqa: E402
from imaging.core.segmentation.network import manifest_read, segmenter_load  # noqa: E402
from imaging.core.segmentation.postprocess import postprocess_run  # noqa: E402
from imaging.core.segmentation.training.validation import size_band  # noqa: E402
from imaging.core.synthetic import cohort as cohort_mod  # noqa: E402
from imaging.core.synthetic.lesion_shape import equivalent_diameter_mm  # noqa: E402

BANDS = ("<5", "5-10", "10-20", ">=20")
TARGETS = {
    "sensitivity_5mm": 0.95,
    "fp_per_study": 0.5,
    "dice_10mm": 0.85,
    "volume_error_05ml": 0.05,
    "diameter_error_mm": 1.5,
    "process_seconds": 60.0,
}


# --------------------------------------------------------------------------- selection
def studies_select(cohort, n: int) -> list[tuple]:
    pairs = [(p, s) for p in cohort.patients for s in p.studies]
    chosen: list[tuple] = []

    def take(pred) -> None:
        if len(chosen) >= n:
            return
        for pair in pairs:
            if pair not in chosen and pred(pair[1].scanner):
                chosen.append(pair)
                return

    for position in ("FFS", "HFP", "FFP", "HFS"):
        take(lambda sc, position=position: sc.patient_position == position)
    take(lambda sc: sc.slice_thickness_mm >= 5.0)
    take(lambda sc: sc.noise_hu >= 20.0)
    take(lambda sc: sc.slice_thickness_mm >= 5.0 and sc.noise_hu >= 20.0)
    for pair in pairs:
        if len(chosen) >= n:
            break
        if pair not in chosen:
            chosen.append(pair)
    return chosen


# --------------------------------------------------------------------------- truth
def _lps_grid(centre: np.ndarray, half_mm: float, step: float):
    n = int(np.ceil(2 * half_mm / step))
    axis = (np.arange(n) + 0.5) * step - half_mm
    lo = centre - half_mm
    return lo, step, n, axis


def truth_mask(lesion, study, centre, half_mm, step) -> tuple[np.ndarray, np.ndarray]:
    """Exact shape sampled at voxel centres of an LPS-aligned grid: (mask [z, y, x], lo)."""
    lo, step, n, axis = _lps_grid(centre, half_mm, step)
    body_from_lps = np.linalg.inv(study.pose_body_to_lps)
    mask = np.zeros((n, n, n), bool)
    gy, gx = np.meshgrid(axis + centre[1], axis + centre[0], indexing="ij")
    for k, z in enumerate(axis + centre[2]):
        lps = np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, z)], axis=1)
        body = lps @ body_from_lps[:3, :3].T + body_from_lps[:3, 3]
        mask[k] = lesion.shape.contains(body, lesion.volume_ml).reshape(gx.shape)
    return mask, lo


def truth_axial_diameter(lesion, study, centre) -> tuple[float, float]:
    radius = lesion.shape.bounding_radius_mm(lesion.volume_ml) + 1.0
    step = 0.3 if radius < 15 else 0.45
    mask, lo = truth_mask(lesion, study, centre, radius, step)
    volume = Volume(mask.astype(np.float32), (step,) * 3, tuple(lo + step / 2))
    m = probability_measure(probability=volume, level=0.5, fine_spacing_mm=step)
    return (m.longest_axial_diameter_mm, m.max_3d_diameter_mm) if m else (0.0, 0.0)


def lesion_dice(lesion, study, centre, probability: Volume, region: np.ndarray, levels) -> float:
    """Dice on a 0.5 mm LPS grid: exact shape vs the candidates' probability isosurfaces."""
    half = lesion.shape.bounding_radius_mm(lesion.volume_ml) + 3.0
    step = 0.5
    truth, lo = truth_mask(lesion, study, centre, half, step)
    n = truth.shape[0]
    axis = lo[0] + (np.arange(n) + 0.5) * step
    ys = lo[1] + (np.arange(n) + 0.5) * step
    zs = lo[2] + (np.arange(n) + 0.5) * step
    predicted = np.zeros_like(truth)
    gy, gx = np.meshgrid(ys, axis, indexing="ij")
    for value, level in levels:
        p = np.where(region == value, probability.array, 0.0).astype(np.float32)
        for k, z in enumerate(zs):
            lps = np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, z)], axis=1)
            idx = probability.lps_to_index(lps)[:, ::-1].T
            sample = ndimage.map_coordinates(p, idx, order=1, mode="constant", cval=0.0)
            predicted[k] |= sample.reshape(gx.shape) >= level
    total = truth.sum() + predicted.sum()
    return float(2 * (truth & predicted).sum() / total) if total else float("nan")


# --------------------------------------------------------------------------- scoring
def score(truths, measurements, mask: Volume, probability: Volume, study) -> tuple[list, int]:
    regions = lesion_regions(mask.array, dilation_voxels=2)
    claimed: set[int] = set()
    rows = []
    for t in truths:
        centre = t["centre_lps_mm"]
        radius = t["diameter_mm"] / 2
        idx = np.round(mask.lps_to_index(centre)).astype(int)
        inside = (
            int(regions[idx[2], idx[1], idx[0]])
            if np.all(idx >= 0) and np.all(idx < np.asarray(mask.shape_ijk))
            else 0
        )
        matched = [
            m for m in measurements
            if m.label_value == inside
            or np.linalg.norm(np.asarray(m.centroid_lps_mm) - centre) <= radius + 3.0
        ]  # fmt: skip
        claimed |= {m.label_value for m in matched}
        row = {k: v for k, v in t.items() if k not in ("lesion", "centre_lps_mm")}
        row["detected"] = bool(matched)
        if matched:
            main = max(matched, key=lambda m: m.volume_ml)
            row["volume_ml_measured"] = sum(m.volume_ml for m in matched)
            row["volume_error"] = abs(row["volume_ml_measured"] - t["volume_ml"]) / t["volume_ml"]
            row["diameter_mm_measured"] = main.longest_axial_diameter_mm
            row["diameter_error_mm"] = abs(main.longest_axial_diameter_mm - t["axial_diameter_mm"])
            row["diameter_error_vs_equivalent_mm"] = abs(
                main.longest_axial_diameter_mm - t["diameter_mm"]
            )
            row["centroid_error_mm"] = float(
                np.linalg.norm(np.asarray(main.centroid_lps_mm) - centre)
            )
            row["organ_correct"] = main.organ == t["organ"]
            if t["diameter_mm"] >= 10.0:
                row["dice"] = lesion_dice(
                    t["lesion"], study, centre, probability, regions,
                    [(m.label_value, m.level) for m in matched],
                )  # fmt: skip
        rows.append(row)
    false_positives = len([m for m in measurements if m.label_value not in claimed])
    return rows, false_positives


def summarise(rows: list[dict], fps: list[int], seconds: list[float]) -> dict:
    by_band = {}
    for band in BANDS:
        sel = [r for r in rows if r["band"] == band]
        by_band[band] = {
            "lesions": len(sel),
            "detected": sum(r["detected"] for r in sel),
        }
    five = [r for r in rows if r["diameter_mm"] >= 5.0]
    dice = [r["dice"] for r in rows if "dice" in r]
    vol = [r["volume_error"] for r in rows if r["detected"] and r["volume_ml"] >= 0.5]
    diam = [r["diameter_error_mm"] for r in rows if r["detected"] and r["diameter_mm"] >= 5.0]
    diam_sph = [
        r["diameter_error_vs_equivalent_mm"]
        for r in rows
        if r["detected"] and r["diameter_mm"] >= 5.0 and not r["irregular"]
    ]
    organ = [r["organ_correct"] for r in rows if r["detected"]]
    return {
        "by_band": by_band,
        "sensitivity_5mm": sum(r["detected"] for r in five) / len(five) if five else None,
        "fp_per_study": float(np.mean(fps)) if fps else None,
        "dice_10mm_mean": float(np.mean(dice)) if dice else None,
        "dice_10mm_median": float(np.median(dice)) if dice else None,
        "n_dice": len(dice),
        "volume_error_05ml_median": float(np.median(vol)) if vol else None,
        "n_volume": len(vol),
        "diameter_error_mm_median": float(np.median(diam)) if diam else None,
        "diameter_error_spheres_vs_truth_json_mm_median": float(np.median(diam_sph))
        if diam_sph
        else None,
        "organ_correct": float(np.mean(organ)) if organ else None,
        "seconds_per_study_median": float(np.median(seconds)) if seconds else None,
        "seconds_per_study_max": float(np.max(seconds)) if seconds else None,
    }


# --------------------------------------------------------------------------- process timing
def process_time(cohort, patient, study, model, device, workdir: Path) -> dict:
    """DICOM -> volume -> registration to baseline -> segmentation + measurement, timed."""

    baseline = patient.studies[0]
    fixed = cohort_mod.study_render(cohort, patient, baseline).volume
    rendered = cohort_mod.study_render(cohort, patient, study)
    paths = cohort_mod.study_dicom_write(patient, study, rendered, workdir)
    del rendered
    times = {}
    started = time.perf_counter()
    t = time.perf_counter()
    volume = series_volume(sources=paths).volume
    times["dicom_to_volume"] = time.perf_counter() - t
    t = time.perf_counter()
    registration = register(fixed=fixed, moving=volume)
    times["registration"] = time.perf_counter() - t
    t = time.perf_counter()
    result = lesions_segment(volume=volume, model=model, device=device, tta=True)
    times["segmentation_and_measurement"] = time.perf_counter() - t
    times.update({f"  {k}": v for k, v in result.timings.items() if k != "total"})
    times["total"] = time.perf_counter() - started
    times["n_slices"] = len(paths)
    times["registration_failed"] = registration.failed
    return times


# --------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--pool", type=int, default=30, help="patients simulated to choose from")
    parser.add_argument("--timepoints", type=int, default=3)
    parser.add_argument("--studies", type=int, default=12)
    parser.add_argument("--size", choices=["full", "small"], default="full")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-classical", action="store_true")
    parser.add_argument("--skip-process", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "benchmarks" / "segmentation")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    manifest = manifest_read()
    used = set(manifest.get("training", {}).get("data", {}).get("cohort_seeds", []))
    if args.seed in used:
        print(f"seed {args.seed} was used to train or validate {manifest['name']}-"
              f"{manifest['version']}; choose another", file=sys.stderr)  # fmt: skip
        return 2
    model = segmenter_load(device=args.device)
    cohort = cohort_mod.cohort_simulate(
        n_patients=args.pool, n_timepoints=args.timepoints, seed=args.seed, size=args.size
    )
    chosen = studies_select(cohort, args.studies)
    print(f"model {model.version} ({model.device}), cohort seed {args.seed} ({args.size}), "
          f"{len(chosen)} studies, torch threads {torch.get_num_threads()}")  # fmt: skip
    results: dict[str, dict] = {"unet": {"rows": [], "fps": [], "seconds": []},
                                "classical": {"rows": [], "fps": [], "seconds": []}}  # fmt: skip
    studies_info = []
    for number, (patient, study) in enumerate(chosen, start=1):
        sc = study.scanner
        t = time.perf_counter()
        rendered = cohort_mod.study_render(cohort, patient, study)
        render_s = time.perf_counter() - t
        volume = rendered.volume
        del rendered
        truths = []
        for sim, lesion in zip(patient.lesions, patient.lesions_at(study), strict=True):
            if lesion.volume_ml <= 0:
                continue
            centre = study.to_lps(sim.shape.centre_body_mm)
            diameter = equivalent_diameter_mm(lesion.volume_ml)
            axial, max3d = truth_axial_diameter(lesion, study, centre)
            truths.append({
                "study": study.study_instance_uid[-12:], "lesion_id": lesion.lesion_id,
                "organ": sim.organ, "irregular": sim.shape.is_irregular,
                "volume_ml": lesion.volume_ml, "diameter_mm": diameter,
                "axial_diameter_mm": axial, "max_3d_diameter_mm": max3d,
                "band": size_band(diameter), "centre_lps_mm": centre, "lesion": lesion,
            })  # fmt: skip
        t = time.perf_counter()
        seg = lesions_segment(volume=volume, model=model, tta=True)
        unet_s = time.perf_counter() - t
        rows, fp = score(truths, seg.lesions, seg.candidate_mask, seg.lesion_probability, study)
        results["unet"]["rows"] += rows
        results["unet"]["fps"].append(fp)
        results["unet"]["seconds"].append(unet_s)
        line = (f"[{number}/{len(chosen)}] {patient.patient_id} t{study.index} {sc.patient_position} "
                f"{sc.columns}x{sc.rows}x{sc.n_slices} {sc.pixel_spacing_mm:.2f}/{sc.slice_thickness_mm:g} mm "
                f"noise {sc.noise_hu:.0f} HU: {len(truths)} lesions; U-Net found "
                f"{sum(r['detected'] for r in rows)}, FP {fp}, {unet_s:.1f} s")  # fmt: skip
        if not args.skip_classical:
            t = time.perf_counter()
            out = classical_segment(image=seg.image)
            post = postprocess_run(probabilities=out.probabilities, image=seg.image)
            prob = seg.image.with_array(
                (out.probabilities[3].astype(np.float32) + out.probabilities[4]).clip(0, 1)
            )
            measured = lesions_measure(
                lesion_probability=prob, candidate_mask=post.mask, candidates=post.candidates,
                study=volume,
            )  # fmt: skip
            classical_s = time.perf_counter() - t
            rows_c, fp_c = score(truths, measured, post.mask, prob, study)
            results["classical"]["rows"] += rows_c
            results["classical"]["fps"].append(fp_c)
            results["classical"]["seconds"].append(classical_s)
            line += (f"; classical found {sum(r['detected'] for r in rows_c)}, FP {fp_c}, "
                     f"{classical_s:.1f} s")  # fmt: skip
        print(line + f" (render {render_s:.0f} s)", flush=True)
        studies_info.append({"patient_id": patient.patient_id, "study": study.index,
                             "position": sc.patient_position, "thickness_mm": sc.slice_thickness_mm,
                             "noise_hu": sc.noise_hu, "slices": sc.n_slices,
                             "unet_timings": seg.timings})  # fmt: skip
        del volume, seg

    summary = {
        k: summarise(v["rows"], v["fps"], v["seconds"]) for k, v in results.items() if v["rows"]
    }
    process = []
    if not args.skip_process:
        follow_ups = [(p, s) for p in cohort.patients for s in p.studies[1:]][:2]
        with tempfile.TemporaryDirectory() as tmp:
            for patient, study in follow_ups:
                times = process_time(cohort, patient, study, model, args.device, Path(tmp))
                process.append(times)
                print(f"process {patient.patient_id} t{study.index} ({times['n_slices']} slices): " +
                      ", ".join(f"{k.strip()} {v:.1f} s" for k, v in times.items()
                                if isinstance(v, float)), flush=True)  # fmt: skip

    _print_table(summary, process, model)
    args.out.mkdir(parents=True, exist_ok=True)
    for v in results.values():
        for row in v["rows"]:
            row.pop("lesion", None)
    (args.out / "results.json").write_text(json.dumps(
        {"model": model.version, "seed": args.seed, "studies": studies_info, "summary": summary,
         "process": process, "lesions": {k: v["rows"] for k, v in results.items()}},
        indent=1, default=float))  # fmt: skip
    return 0


def _fmt(value, pct=False, digits=2) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f} %" if pct else f"{value:.{digits}f}"


def _print_table(summary: dict, process: list, model) -> None:
    methods = list(summary)
    print()
    print("| measure | target | " + " | ".join(methods) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in methods) + " |")
    for band in BANDS:
        cells = []
        for m in methods:
            b = summary[m]["by_band"][band]
            cells.append(f"{b['detected']}/{b['lesions']}")
        print(f"| detected, {band} mm | | " + " | ".join(cells) + " |")
    rows = [
        ("sensitivity >= 5 mm", ">= 95 %", "sensitivity_5mm", True, TARGETS["sensitivity_5mm"], "ge"),
        ("false positives / study", "<= 0.5", "fp_per_study", False, TARGETS["fp_per_study"], "le"),
        ("Dice >= 10 mm (mean)", ">= 0.85", "dice_10mm_mean", False, TARGETS["dice_10mm"], "ge"),
        ("Dice >= 10 mm (median)", "", "dice_10mm_median", False, None, ""),
        ("median volume error >= 0.5 ml", "<= 5 %", "volume_error_05ml_median", True, TARGETS["volume_error_05ml"], "le"),
        ("median axial diameter error (mm)", "<= 1.5", "diameter_error_mm_median", False, TARGETS["diameter_error_mm"], "le"),
        ("  spheres, vs truth.json diameter", "", "diameter_error_spheres_vs_truth_json_mm_median", False, None, ""),
        ("organ correct", "", "organ_correct", True, None, ""),
        ("seconds / study (median)", "", "seconds_per_study_median", False, None, ""),
        ("seconds / study (max)", "", "seconds_per_study_max", False, None, ""),
    ]  # fmt: skip
    for label, target, key, pct, goal, how in rows:
        cells = []
        for m in methods:
            value = summary[m][key]
            mark = ""
            if goal is not None and value is not None:
                ok = value >= goal if how == "ge" else value <= goal
                mark = " (met)" if ok else " (not met)"
            cells.append(_fmt(value, pct) + mark)
        print(f"| {label} | {target} | " + " | ".join(cells) + " |")
    import resource

    device = "CUDA" if torch.cuda.is_available() else "no GPU seen by torch"
    print(f"\nU-Net device: {model.device} ({device}); torch threads {torch.get_num_threads()}; "
          f"peak memory of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")  # fmt: skip
    for times in process:
        ok = times["total"] <= TARGETS["process_seconds"]
        print(f"whole process of one full-size study ({times['n_slices']} slices): "
              f"{times['total']:.1f} s, target <= 60 s: {'met' if ok else 'not met'}")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
