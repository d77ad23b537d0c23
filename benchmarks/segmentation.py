"""Lesions found and measured on two independent generated sets, row by row.

    .venv/bin/python benchmarks/segmentation.py                      # both sets
    .venv/bin/python benchmarks/segmentation.py --generator eval --studies 8
    .venv/bin/python benchmarks/segmentation.py --process            # also time `process`
    .venv/bin/python benchmarks/segmentation.py --size medium --threads 1 \
        --weights var/segtrain-v3/lesionseg-1.1.0.pt     # a candidate, 256 matrix, one core

Two sets, each scored against its generator's exact truth:

- ``eval``: the evaluation generator (`imaging.core.synthetic_eval`), written apart
  from the training generator: its own anatomy, lesion shapes (lobulated, spiculated,
  part-solid, ground-glass, cavitating, calcified nodules; hypodense, rim-enhancing and
  cystic liver metastases), simple liver cysts as negatives, scanner (0.6-5 mm slices,
  0.55-1 mm pixels, kernels, ramp-like noise, beam hardening, table) and every patient
  position. Full size (512 x 512). Nothing of it was used to train or tune the model.
- ``training``: the cohort generator the segmenter was developed with
  (`imaging.core.synthetic.cohort`), at a seed never used for training (the script
  refuses a training seed), at full size.

Each study goes through `segmentation.lesions_segment`, what ``process`` runs. A true
lesion is detected when a candidate's region (dilated by two voxels) holds its centre,
or a candidate's centroid lies within its equivalent radius + 3 mm; a candidate matching
no lesion is a false positive, and one matching a simple cyst is counted apart too.
Each false positive is listed in results.json with its place and size, and on the
evaluation set with the structures its voxels sit on as the generator drew them
(bronchus wall, vessel, gallbladder, ...), counted in a table after the rows.
Volume error: |measured - true| / true for detected lesions of 0.5 ml or more.

Rows: organ and side, size band, slice thickness, patient position and lesion kind, so
a blind spot (a side, a kind, a thickness) shows up as a row. Targets (eval set):
sensitivity >= 95 % for lesions >= 0.5 ml in every organ and side, <= 0.5 false
positives per study, median volume error <= 10 %; with ``--process``, a full-size
study through DICOM reading, orientation check, registration, segmentation and
measurement within 20 s (issue 21; 60 s before) on 2 CPU cores.

Rendered studies are cached under ``--cache`` (default ``var/benchmarks/segmentation-eval``);
results go to ``--out``/results.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from imaging.core.dicom.volume import series_volume  # noqa: E402
from imaging.core.geometry.volume import Volume, volume_as_stored  # noqa: E402
from imaging.core.registration.register import register  # noqa: E402
from imaging.core.segmentation.lesions import lesions_segment  # noqa: E402
from imaging.core.segmentation.measure import lesion_regions  # noqa: E402
from imaging.core.segmentation.network import (  # noqa: E402
    LESION_CLASSES,
    ORGAN_CLASSES,
    manifest_read,
    segmenter_load,
)
from imaging.core.synthetic import cohort as cohort_mod  # noqa: E402
from imaging.core.synthetic.lesion_shape import equivalent_diameter_mm  # noqa: E402
from imaging.core.synthetic_eval.anatomy import parts_build  # noqa: E402
from imaging.core.synthetic_eval.cohort import patient_draw, study_render  # noqa: E402
from imaging.core.synthetic_eval.lesions import visible_at  # noqa: E402

TARGETS = {"sensitivity_05ml": 0.95, "fp_per_study": 0.5, "volume_error": 0.10, "process_s": 20.0}
EVAL_SEED = 7373
THICK_BANDS = (0.7, 1.3, 2.6, 5.0)
ML_BANDS = (0.5, 2.0, 10.0)


def _band(value: float, edges: tuple[float, ...], unit: str) -> str:
    low = 0.0
    for edge in edges:
        if value < edge or (edge == edges[-1] and value <= edge):
            return f"{low:g}-{edge:g} {unit}"
        low = edge
    return f">= {edges[-1]:g} {unit}"


# --------------------------------------------------------------------------- the sets
def _eval_studies(n: int, cache: Path, size: str = "full", seed: int = EVAL_SEED,
                  structures: dict | None = None):  # fmt: skip
    """(label, volume, truths) of ``n`` evaluation studies (every position, thickness);
    ``size``: the generator's matrix preset (full 512, medium 256, small 128).
    ``structures``, when given, gets each study's `_structures_at` under its label."""
    positions = ("HFS", "FFS", "HFP", "FFP")
    thicknesses = (0.625, 1.25, 2.5, 5.0, 1.0, 3.0, 2.0)
    for index in range(n):
        patient = patient_draw(seed=seed, index=index, n_studies=1, size=size,
                               positions=(positions[index % 4],),
                               thicknesses=(thicknesses[index % len(thicknesses)],),
                               lesion_counts=(4, 3, 1))  # fmt: skip
        study = patient.studies[0]
        if structures is not None:
            structures[patient.patient_id] = _structures_at(patient, study)
        path = cache / f"eval-{patient.patient_id}{'' if size == 'full' else '-' + size}.npz"
        if path.exists():
            with np.load(path, allow_pickle=False) as data:
                volume = Volume(array=data["hu"].astype(np.float32), spacing_mm=tuple(data["spacing"]),
                                origin_mm=tuple(data["origin"]), direction=data["direction"])  # fmt: skip
                truths = json.loads(str(data["truth"]))
        else:
            rendered = study_render(patient, study, seed=seed)
            volume = rendered.volume
            truths = [vars(t) | {"diameter_mm": t.diameter_mm} for t in rendered.lesions]
            # Judged as stored (whole HU, as a scanner writes them), so that the run that
            # renders a study and every later run from the cache give the same figures.
            stored, volume = volume_as_stored(volume)
            cache.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(path, hu=stored, spacing=volume.spacing_mm, origin=volume.origin_mm,
                                direction=volume.direction, truth=json.dumps(truths))  # fmt: skip
        acq = study.acquisition
        info = {"position": acq.position, "thickness_mm": acq.slice_thickness_mm,
                "pixel_mm": acq.pixel_mm, "kernel": acq.kernel, "noise_hu": acq.noise_hu,
                "contrast": study.state.contrast}  # fmt: skip
        yield patient.patient_id, volume, truths, info


def _structures_at(patient, study):
    """What the evaluation generator drew at LPS points (N, 3) of ``study``: the name of
    each point's structure ("lung_bronchus_wall", "lung_vessel", "gallbladder", "lesion",
    "simple_cyst", ...). Used to say what each false positive sits on; the pipeline never
    sees it."""
    parts = parts_build(patient.anatomy, study.state)
    for lesion in study.lesions:
        parts += lesion.parts(study.state, patient.anatomy.liver_hu)
    cysts = {f"lesion:{lesion.lesion_id}" for lesion in study.lesions if lesion.negative}
    mapping = patient.mapping(study)

    def names(points_lps: np.ndarray) -> np.ndarray:
        x, y, z = (points_lps[:, i] for i in range(3))
        drawn = visible_at(parts, np.stack(mapping.to_reference(x, y, z), axis=1))[0]
        return np.array([("simple_cyst" if n in cysts else "lesion") if str(n).startswith("lesion:")
                         else str(n) for n in drawn])  # fmt: skip

    return names


def _false_positive(m, mask: Volume, label: str, names, on_cyst: bool, rng) -> dict:
    """One unmatched candidate: where it is, its size, and (evaluation set) the structures
    under its voxels, shares of up to 400 of them."""
    record = {"study": label, "organ": m.organ, "volume_ml": m.volume_ml,
              "centroid_lps_mm": [round(float(c), 1) for c in m.centroid_lps_mm],
              "on_cyst": on_cyst, "structure": "", "structures": {}}  # fmt: skip
    if names is None:
        return record
    kji = np.argwhere(mask.array == m.label_value)
    if len(kji) > 400:
        kji = kji[rng.choice(len(kji), 400, replace=False)]
    if len(kji) == 0:
        return record
    found = names(mask.index_to_lps(kji[:, ::-1].astype(float)))
    kinds, counts = np.unique(found, return_counts=True)
    order = np.argsort(-counts)
    record["structures"] = {str(kinds[i]): round(float(counts[i]) / len(found), 2) for i in order}
    record["structure"] = str(kinds[order[0]])
    return record


def _training_studies(n: int, seed: int, size: str = "full"):
    """(label, volume, truths) of ``n`` studies of the training generator's cohort
    (its ``small`` preset for ``small``, else ``full``: it has no medium one)."""
    cohort = cohort_mod.cohort_simulate(
        n_patients=max(8, n), n_timepoints=2, seed=seed, size="small" if size == "small" else "full"
    )
    pairs = [(p, s) for p in cohort.patients for s in p.studies]
    chosen = []
    for position in ("HFS", "FFS", "HFP", "FFP"):
        chosen += [ps for ps in pairs if ps[1].scanner.patient_position == position][:1]
    chosen += [ps for ps in pairs if ps not in chosen][: max(0, n - len(chosen))]
    for patient, study in chosen[:n]:
        volume = cohort_mod.study_render(cohort, patient, study).volume
        truths = []
        for sim, lesion in zip(patient.lesions, patient.lesions_at(study), strict=True):
            if lesion.volume_ml <= 0:
                continue
            truths.append({
                "lesion_id": lesion.lesion_id, "organ": sim.organ,
                "side": "left" if sim.shape.centre_body_mm[0] > 0 else "right",
                "kind": "lobulated" if sim.shape.is_irregular else "round", "place": "",
                "negative": False, "volume_ml": lesion.volume_ml,
                "centre_lps_mm": list(study.to_lps(sim.shape.centre_body_mm)),
                "diameter_mm": equivalent_diameter_mm(lesion.volume_ml),
            })  # fmt: skip
        sc = study.scanner
        info = {"position": sc.patient_position, "thickness_mm": sc.slice_thickness_mm,
                "pixel_mm": sc.pixel_spacing_mm, "kernel": sc.kernel, "noise_hu": sc.noise_hu}  # fmt: skip
        yield f"{patient.patient_id}/t{study.index}", volume, truths, info


# --------------------------------------------------------------------------- scoring
def score(
    truths: list[dict], measurements, mask: Volume, network: tuple[Volume, Volume] | None = None
) -> tuple[list[dict], list, set[int]]:
    """Rows per true lesion (negatives included), the candidates matching no lesion (false
    positives), and the label values of those on simple cysts. ``network``: its lesion
    probability and labels (`LesionSegmentation`), read at each missed lesion
    (`_network_at`)."""
    regions = lesion_regions(mask.array, dilation_voxels=2)
    claimed: set[int] = set()
    on_negatives: set[int] = set()
    rows = []
    for t in truths:
        centre = np.asarray(t["centre_lps_mm"])
        idx = np.round(mask.lps_to_index(centre)).astype(int)
        inside_grid = np.all(idx >= 0) and np.all(idx < np.asarray(mask.shape_ijk))
        inside = int(regions[idx[2], idx[1], idx[0]]) if inside_grid else 0
        matched = [m for m in measurements if m.label_value == inside
                   or np.linalg.norm(np.asarray(m.centroid_lps_mm) - centre) <= t["diameter_mm"] / 2 + 3.0]  # fmt: skip
        row = dict(t, detected=bool(matched))
        row.pop("centre_lps_mm", None)
        if t["negative"]:
            on_negatives |= {m.label_value for m in matched}
        else:
            claimed |= {m.label_value for m in matched}
        if matched and not t["negative"]:
            row["volume_ml_measured"] = sum(m.volume_ml for m in matched)
            row["volume_error"] = abs(row["volume_ml_measured"] - t["volume_ml"]) / t["volume_ml"]
            row["organ_found"] = max(matched, key=lambda m: m.volume_ml).organ
        if not matched and not t["negative"] and network is not None:
            row.update(_network_at(network, centre, t["diameter_mm"] / 2, t["organ"]))
        rows.append(row)
    unmatched = [m for m in measurements if m.label_value not in claimed]
    return rows, unmatched, on_negatives


def _network_at(network: tuple[Volume, Volume], centre, radius_mm: float, organ: str) -> dict:
    """What the network showed within a missed lesion (a ball of its radius on the
    model grid): its highest lesion probability, and the share of the ball it labelled
    the lesion's organ or that organ's lesion class. Tells a miss of the network (no
    probability) from one of what comes after it (a candidate there was removed, or the
    network outlined a piece of the lesion and left the rest out of its organ)."""
    probability, label = network
    spacing = np.asarray(probability.spacing_mm[::-1], dtype=float)
    kji = np.round(probability.lps_to_index(centre)[::-1]).astype(int)
    reach = np.maximum(np.ceil(radius_mm / spacing), 0).astype(int)
    box = tuple(slice(min(n, max(0, c - r)), min(n, max(0, c + r + 1)))
                for c, r, n in zip(kji, reach, probability.array.shape, strict=True))  # fmt: skip
    grid = np.stack(np.meshgrid(*(np.arange(s.start, s.stop) for s in box), indexing="ij"), -1)
    ball = (((grid - kji) * spacing) ** 2).sum(-1) <= max(radius_mm, spacing.max()) ** 2
    p, lab = probability.array[box][ball], label.array[box][ball]
    if p.size == 0:
        return {"network_max_probability": None, "network_organ_share": None}
    codes = [ORGAN_CLASSES[organ], next(k for k, v in LESION_CLASSES.items() if v == organ)]
    return {
        "network_max_probability": round(float(p.max()), 3),
        "network_organ_share": round(float(np.isin(lab, codes).mean()), 3),
    }


def _summary(rows: list[dict], studies: int, fps: int, fp_cysts: int) -> dict:
    lesions = [r for r in rows if not r["negative"]]
    big = [r for r in lesions if r["volume_ml"] >= 0.5]
    errors = [r["volume_error"] for r in big if r["detected"]]
    return {
        "studies": studies,
        "lesions": len(lesions),
        "lesions_05ml": len(big),
        "detected_05ml": sum(r["detected"] for r in big),
        "sensitivity_05ml": sum(r["detected"] for r in big) / len(big) if big else None,
        "sensitivity_all": sum(r["detected"] for r in lesions) / len(lesions) if lesions else None,
        "fp_per_study": fps / max(studies, 1),
        "fp_on_cysts": fp_cysts,
        "volume_error_median": float(np.median(errors)) if errors else None,
    }


def _rows_table(rows: list[dict]) -> list[str]:
    lines = ["| row | lesions (>= 0.5 ml) | detected >= 0.5 ml | detected < 0.5 ml | "
             "median volume error |", "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip

    def line(label, sel):
        big = [r for r in sel if r["volume_ml"] >= 0.5]
        small = [r for r in sel if r["volume_ml"] < 0.5]
        err = [r["volume_error"] for r in big if r["detected"]]
        pct = f"{100 * sum(r['detected'] for r in big) / len(big):.0f} %" if big else "-"
        lines.append(f"| {label} | {len(sel)} ({len(big)}) | {sum(r['detected'] for r in big)}/{len(big)} ({pct}) | "
                     f"{sum(r['detected'] for r in small)}/{len(small)} | "
                     f"{f'{100 * np.median(err):.1f} %' if err else '-'} |")  # fmt: skip

    lesions = [r for r in rows if not r["negative"]]
    keys = (
        ("organ, side", lambda r: f"{r['organ']} {r['side']}"),
        ("size", lambda r: _band(r["volume_ml"], ML_BANDS, "ml")),
        ("slice thickness", lambda r: _band(r["thickness_mm"], THICK_BANDS, "mm")),
        ("position", lambda r: r["position"]),
        ("kind", lambda r: f"{r['organ']} {r['kind']}"),
    )
    for name, key in keys:
        for value in sorted({key(r) for r in lesions}):
            line(f"{name}: {value}", [r for r in lesions if key(r) == value])
    return lines


# --------------------------------------------------------------------------- process timing
def process_time(model, device: str, workdir: Path, patients: int = 4) -> dict:
    """DICOM -> volume -> orientation -> registration -> segmentation + measurement, of
    the follow-up with the most slices among ``patients`` generated patients."""
    from imaging.core.registration.orientation import orientation_standardise

    cohort = cohort_mod.cohort_simulate(n_patients=patients, n_timepoints=2, seed=4242, size="full")
    patient, study = max(((p, s) for p in cohort.patients for s in p.studies[1:]),
                         key=lambda ps: ps[1].scanner.n_slices)  # fmt: skip
    fixed = cohort_mod.study_render(cohort, patient, patient.studies[0]).volume
    paths = cohort_mod.study_dicom_write(
        patient, study, cohort_mod.study_render(cohort, patient, study), workdir
    )
    times: dict = {"n_slices": len(paths)}
    started = time.perf_counter()
    t = time.perf_counter()
    volume = series_volume(sources=paths).volume
    times["dicom_to_volume"] = time.perf_counter() - t
    t = time.perf_counter()
    volume = orientation_standardise(volume=volume, baseline=fixed).volume
    times["orientation"] = time.perf_counter() - t
    t = time.perf_counter()
    register(fixed=fixed, moving=volume)
    times["registration"] = time.perf_counter() - t
    t = time.perf_counter()
    lesions_segment(volume=volume, model=model, device=device)
    times["segmentation_and_measurement"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - started
    return times


# --------------------------------------------------------------------------- main
def _run_set(name, studies, model, device, structures=None):
    """(rows, summary, per-study records, false positives) of one set."""
    rows, per_study, false_positives = [], [], []
    fps = fp_cysts = 0
    rng = np.random.default_rng(0)
    for n, (label, volume, truths, info) in enumerate(studies, start=1):
        t, cpu = time.perf_counter(), time.process_time()
        seg = lesions_segment(volume=volume, model=model, device=device)
        seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
        found, unmatched, on_cysts = score(truths, seg.lesions, seg.candidate_mask,
                                           (seg.lesion_probability, seg.label))  # fmt: skip
        names = (structures or {}).get(label)
        false_positives += [
            _false_positive(m, seg.candidate_mask, label, names, m.label_value in on_cysts, rng)
            for m in unmatched
        ]
        fp, fp_c = len(unmatched), sum(m.label_value in on_cysts for m in unmatched)
        for r in found:
            r.update(position=info["position"], thickness_mm=info["thickness_mm"], study=label)
        rows += found
        fps += fp
        fp_cysts += fp_c
        per_study.append({"study": label, **info, "seconds": seconds, "cpu_seconds": cpu,
                          "false_positives": fp, "timings": seg.timings})  # fmt: skip
        real = [r for r in found if not r["negative"]]
        print(f"[{name} {n}] {label} {info['position']} {info['thickness_mm']:g} mm: "
              f"{sum(r['detected'] for r in real)}/{len(real)} found, FP {fp} ({fp_c} on cysts), "
              f"{seconds:.1f} s", flush=True)  # fmt: skip
    return rows, _summary(rows, len(per_study), fps, fp_cysts), per_study, false_positives


def _misses_table(rows: list[dict]) -> list[str]:
    """Missed lesions of 0.5 ml or more by organ and kind, split by what the network showed
    there (`_network_at`): nothing (highest lesion probability under 0.5), or a lesion
    that the steps after it did not keep, with how much of the lesion it labelled its
    organ or lesion class."""
    missed = [r for r in rows if not r["negative"] and not r["detected"] and r["volume_ml"] >= 0.5]
    lines = ["| missed (>= 0.5 ml) | lesions | network: probability < 0.5 | network >= 0.5, "
             "not kept after it | of those, under half of the lesion in the network's organ |",
             "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    groups: dict[str, list[dict]] = {}
    for r in missed:
        groups.setdefault(f"{r['organ']} {r['kind']}", []).append(r)
    for key in sorted(groups):
        sel = groups[key]
        seen = [r for r in sel if (r.get("network_max_probability") or 0.0) >= 0.5]
        outside = [r for r in seen if (r.get("network_organ_share") or 0.0) < 0.5]
        lines.append(
            f"| {key} | {len(sel)} | {len(sel) - len(seen)} | {len(seen)} | {len(outside)} |"
        )
    if not missed:
        lines.append("| none | 0 | 0 | 0 | 0 |")
    return lines


def _false_positives_table(false_positives: list[dict], studies: int) -> list[str]:
    """False positives counted by the organ they were measured in and the structure most
    of their voxels sit on (evaluation set: from its generator's anatomy)."""
    counts: dict[tuple[str, str], int] = {}
    for fp in false_positives:
        key = (fp["organ"] or "-", fp["structure"] or "-")
        counts[key] = counts.get(key, 0) + 1
    lines = ["| organ measured | structure under most of its voxels | false positives | per study |",
             "| --- | --- | ---: | ---: |"]  # fmt: skip
    for (organ, structure), count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"| {organ} | {structure} | {count} | {count / max(studies, 1):.2f} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", choices=["both", "eval", "training"], default="both")
    parser.add_argument("--studies", type=int, default=10, help="per set")
    parser.add_argument("--seed", type=int, default=4242, help="training-generator cohort seed")
    parser.add_argument(
        "--eval-seed",
        type=int,
        default=EVAL_SEED,
        help="evaluation-generator seed (9191: the set rules were checked on)",
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", choices=["small", "medium", "full"], default="full",
                        help="evaluation studies' matrix (512, 256, 128); the training set "
                             "is full size unless small")  # fmt: skip
    parser.add_argument("--process", action="store_true", help="also time a whole study end to end")
    parser.add_argument("--process-patients", type=int, default=4,
                        help="time the follow-up with the most slices among this many patients")  # fmt: skip
    parser.add_argument(
        "--cache", type=Path, default=ROOT / "var" / "benchmarks" / "segmentation-eval"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "benchmarks" / "segmentation")
    parser.add_argument("--weights", type=Path, default=None,
                        help="weights file with its manifest.json beside it (default: shipped)")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    manifest = manifest_read(args.weights.parent / "manifest.json" if args.weights else None)
    if args.seed in set(manifest.get("training", {}).get("data", {}).get("cohort_seeds", [])):
        print(
            f"seed {args.seed} was used to train or validate the model; choose another",
            file=sys.stderr,
        )
        return 2
    model = segmenter_load(weights_path=args.weights, device=args.device)
    print(f"model {model.version} on {model.device}, torch threads {torch.get_num_threads()}")
    results = {}
    structures: dict = {}
    sets = {"eval": lambda: _eval_studies(args.studies, args.cache, args.size, args.eval_seed,
                                          structures),
            "training": lambda: _training_studies(args.studies, args.seed, args.size)}  # fmt: skip
    for name in ["eval", "training"] if args.generator == "both" else [args.generator]:
        rows, summary, per_study, fps = _run_set(name, sets[name](), model, args.device, structures)
        results[name] = {"summary": summary, "lesions": rows, "studies": per_study,
                         "false_positives": fps}  # fmt: skip
    for name, result in results.items():
        s = result["summary"]
        print(f"\n### {name} set: {s['studies']} studies, {s['lesions']} lesions "
              f"({s['lesions_05ml']} of 0.5 ml or more)\n")  # fmt: skip
        print(f"sensitivity >= 0.5 ml {_pct(s['sensitivity_05ml'])} (target >= 95 % per organ and side), "
              f"all sizes {_pct(s['sensitivity_all'])}; false positives / study {s['fp_per_study']:.2f} "
              f"(target <= 0.5; {s['fp_on_cysts']} on simple cysts); median volume error "
              f"{_pct(s['volume_error_median'])} (target <= 10 %)\n")  # fmt: skip
        print("\n".join(_rows_table(result["lesions"])))
        if result["false_positives"]:
            print("\n" + "\n".join(_false_positives_table(result["false_positives"], s["studies"])))
        print("\n" + "\n".join(_misses_table(result["lesions"])))
        secs = [st["seconds"] for st in result["studies"]]
        print(
            f"\nseconds per study (lesions_segment): median {np.median(secs):.1f}, max {max(secs):.1f}"
        )
    if args.process:
        with tempfile.TemporaryDirectory() as tmp:
            times = process_time(model, args.device, Path(tmp), args.process_patients)
        results["process"] = times
        print("\nprocess of one full-size study (" + str(times["n_slices"]) + " slices): " +
              ", ".join(f"{k} {v:.1f} s" for k, v in times.items() if k != "n_slices") +
              f"; target <= {TARGETS['process_s']:g} s: {'met' if times['total'] <= TARGETS['process_s'] else 'not met'}")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"model": model.version, **results}, indent=1,
                                                      default=float))  # fmt: skip
    return 0


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


if __name__ == "__main__":
    raise SystemExit(main())
