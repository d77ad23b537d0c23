"""Click-guided correction on a generated cohort: one click at the true centre of each
lesion, with the automated result hidden, and the lesion followed to the patient's
other studies by propagation.

    .venv/bin/python benchmarks/correction.py                        # 6 patients x 3 studies
    .venv/bin/python benchmarks/correction.py --patients 3 --timepoints 2   # a quick look

The cohort is the one `manage.py generate_cohort` writes (`imaging.core.synthetic`), at
full size (512 x 512, 0.6-1 mm pixels, 1.25-5 mm slices, every patient position),
rendered with each lesion's exact partial-volume occupancy, which is the truth: its
volume (ml), its mask (occupancy >= 0.5) and its centre (the occupancy's centroid).

- Click: `interactive.click_segment` at the true centre of every lesion at every study
  where it exists (volume > 0), on the rendered study; the segmenter's output is never
  computed, so nothing of it can help. Segmented: not refused, and the mask overlaps
  the truth. Volume error |measured - true| / true; Dice of the mask against the truth
  mask on the study's grid. Seconds: the call's wall time (box, smoothing, growing,
  measurement), on ``--threads`` threads.
- Propagation: each lesion clicked at its first study is looked for at every other study
  of the patient (`interactive_search.lesion_search`) around its centroid mapped through the
  follow-up's registration to the baseline (SimpleITK, as ``process`` registers:
  `imaging.core.registration.register`, its affine matrix, as tracking uses it). Found:
  the search's lesion overlaps the truth there (Dice >= 0.2 or centroid within the true
  radius + 3 mm). A search that finds something where the lesion has gone (volume 0) is
  a false find.

Targets (issue 16): >= 95 % segmented, median volume error <= 10 %, >= 90 % of
follow-ups found by propagation, <= 3 s per click on 2 CPU cores. Rendered studies and
registrations are cached under ``--cache`` (default ``var/benchmarks/correction``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from imaging.core.geometry.volume import Volume  # noqa: E402
from imaging.core.registration.register import register  # noqa: E402
from imaging.core.segmentation.interactive import (  # noqa: E402
    ClickSegmentation,
    click_segment,
)
from imaging.core.segmentation.interactive_region import ClickRefused  # noqa: E402
from imaging.core.segmentation.interactive_search import lesion_search  # noqa: E402
from imaging.core.synthetic import cohort as cohort_mod  # noqa: E402
from imaging.core.synthetic.lesion_shape import equivalent_diameter_mm  # noqa: E402

TARGETS = {"segmented": 0.95, "volume_error": 0.10, "propagation": 0.90, "seconds": 3.0}
DEFAULT_SEED = 5151


@dataclass
class Truth:
    lesion_id: str
    organ: str
    volume_ml: float
    centre_lps_mm: np.ndarray
    mask: np.ndarray  # bool, the study's grid


@dataclass
class StudyData:
    label: str
    volume: Volume
    truths: dict[str, Truth]
    thickness_mm: float


# --------------------------------------------------------------------------- the cohort
def _render(cohort, patient, study, cache: Path) -> StudyData:
    path = cache / f"{patient.patient_id}-t{study.index}.npz"
    if not path.exists():
        rendered = cohort_mod.study_render(cohort, patient, study)
        volume = rendered.volume
        boxes = {}
        for lesion_id, frac in rendered.lesion_fractions.items():
            boxes[f"start_{lesion_id}"] = np.asarray(frac.start_kji)
            boxes[f"frac_{lesion_id}"] = frac.fraction.astype(np.float16)
        cache.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, hu=np.clip(np.round(volume.array), -1024, 3071).astype(np.int16),
                            spacing=volume.spacing_mm, origin=volume.origin_mm,
                            direction=volume.direction, **boxes)  # fmt: skip
    with np.load(path, allow_pickle=False) as data:
        volume = Volume(array=data["hu"].astype(np.float32), spacing_mm=tuple(data["spacing"]),
                        origin_mm=tuple(data["origin"]), direction=data["direction"])  # fmt: skip
        truths = {}
        for sim, lesion in zip(patient.lesions, patient.lesions_at(study), strict=True):
            key = f"frac_{lesion.lesion_id}"
            if lesion.volume_ml <= 0 or key not in data:
                continue
            mask, centre = _truth_mask(volume, data[f"start_{lesion.lesion_id}"], data[key])
            if mask is None:
                continue
            truths[lesion.lesion_id] = Truth(
                lesion.lesion_id, sim.organ, lesion.volume_ml, centre, mask
            )
    return StudyData(f"{patient.patient_id}/t{study.index}", volume, truths,
                     float(study.scanner.slice_thickness_mm))  # fmt: skip


def _truth_mask(volume: Volume, start, fraction) -> tuple[np.ndarray | None, np.ndarray]:
    fraction = fraction.astype(np.float32)
    mask = np.zeros(volume.array.shape, dtype=bool)
    k0, j0, i0 = (int(v) for v in start)
    nk, nj, ni = fraction.shape
    mask[k0 : k0 + nk, j0 : j0 + nj, i0 : i0 + ni] = fraction >= 0.5
    if fraction.sum() <= 0:
        return None, np.zeros(3)
    k, j, i = np.indices(fraction.shape)
    w = fraction / fraction.sum()
    centre_ijk = np.array([(i * w).sum() + i0, (j * w).sum() + j0, (k * w).sum() + k0])
    return mask, volume.index_to_lps(centre_ijk)


def _registration(fixed: StudyData, moving: StudyData, cache: Path) -> np.ndarray:
    """The baseline (fixed) LPS -> follow-up (moving) LPS matrix, as tracking stores it."""
    path = cache / f"reg-{moving.label.replace('/', '-')}.json"
    if path.exists():
        return np.asarray(json.loads(path.read_text()), dtype=float)
    result = register(fixed=fixed.volume, moving=moving.volume)
    matrix = np.asarray(result.transform.matrix, dtype=float)
    path.write_text(json.dumps(matrix.tolist()))
    return matrix


# --------------------------------------------------------------------------- scoring
def _placed(seg: ClickSegmentation, shape: tuple[int, ...], volume: Volume) -> np.ndarray:
    full = np.zeros(shape, dtype=bool)
    start = np.round(volume.lps_to_index(np.asarray(seg.mask.origin_mm))).astype(int)
    nk, nj, ni = seg.mask.array.shape
    full[start[2] : start[2] + nk, start[1] : start[1] + nj, start[0] : start[0] + ni] = (
        seg.mask.array > 0
    )
    return full


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else 0.0


def _matches(seg: ClickSegmentation, truth: Truth, volume: Volume) -> tuple[bool, float]:
    dice = _dice(_placed(seg, volume.array.shape, volume), truth.mask)
    distance = np.linalg.norm(np.asarray(seg.measurement.centroid_lps_mm) - truth.centre_lps_mm)
    near = distance <= equivalent_diameter_mm(truth.volume_ml) / 2 + 3.0
    return bool(dice >= 0.2 or near), dice


def _click_rows(study: StudyData) -> list[dict]:
    rows = []
    for truth in study.truths.values():
        row = {"study": study.label, "lesion": truth.lesion_id, "organ": truth.organ,
               "volume_ml": truth.volume_ml, "thickness_mm": study.thickness_mm}  # fmt: skip
        t = time.perf_counter()
        try:
            seg = click_segment(study=study.volume, seed_lps_mm=truth.centre_lps_mm)
        except ClickRefused as refused:
            row.update(segmented=False, seconds=time.perf_counter() - t, why=str(refused))
            rows.append(row)
            continue
        row["seconds"] = time.perf_counter() - t
        ok, dice = _matches(seg, truth, study.volume)
        row.update(segmented=ok, dice=dice, volume_ml_measured=seg.measurement.volume_ml,
                   volume_error=abs(seg.measurement.volume_ml - truth.volume_ml) / truth.volume_ml,
                   organ_found=seg.organ)  # fmt: skip
        rows.append(row)
    return rows


def _propagation_rows(studies: list[StudyData], to_follow_up: list[np.ndarray]) -> list[dict]:
    """Each lesion clicked at its first study, looked for at every other study."""
    rows = []
    first: dict[str, int] = {}
    for index, study in enumerate(studies):
        for lesion_id in study.truths:
            first.setdefault(lesion_id, index)
    for lesion_id, source_index in first.items():
        source = studies[source_index]
        truth = source.truths[lesion_id]
        try:
            seg = click_segment(study=source.volume, seed_lps_mm=truth.centre_lps_mm)
        except ClickRefused:
            continue
        centroid = np.append(np.asarray(seg.measurement.centroid_lps_mm), 1.0)
        to_baseline = np.linalg.inv(to_follow_up[source_index])
        for index, study in enumerate(studies):
            if index == source_index:
                continue
            mapped = (to_follow_up[index] @ to_baseline @ centroid)[:3]
            t = time.perf_counter()
            outcome = lesion_search(study=study.volume, centre_lps_mm=mapped, look=seg.look)
            seconds = time.perf_counter() - t
            present = study.truths.get(lesion_id)
            row = {"lesion": lesion_id, "organ": truth.organ, "from": source.label,
                   "to": study.label, "present": present is not None, "seconds": seconds,
                   "found_anything": outcome.found is not None, "why": outcome.reason}  # fmt: skip
            if present is not None:
                row["volume_ml"] = present.volume_ml
                if outcome.found is not None:
                    ok, dice = _matches(outcome.found, present, study.volume)
                    row.update(found=ok, dice=dice)
                else:
                    row["found"] = False
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- report
def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _summary(clicks: list[dict], propagation: list[dict]) -> dict:
    segmented = [r for r in clicks if r["segmented"]]
    errors = [r["volume_error"] for r in segmented]
    present = [r for r in propagation if r["present"]]
    gone = [r for r in propagation if not r["present"]]
    seconds = [r["seconds"] for r in clicks]
    return {
        "clicks": len(clicks),
        "segmented": len(segmented),
        "segmented_share": len(segmented) / len(clicks) if clicks else None,
        "volume_error_median": float(np.median(errors)) if errors else None,
        "dice_median": float(np.median([r["dice"] for r in segmented])) if segmented else None,
        "follow_ups": len(present),
        "propagated": sum(r["found"] for r in present),
        "propagation_share": sum(r["found"] for r in present) / len(present) if present else None,
        "wrong_blob": sum(r["found_anything"] and not r["found"] for r in present),
        "gone": len(gone),
        "false_finds_where_gone": sum(r["found_anything"] for r in gone),
        "seconds_median": float(np.median(seconds)) if seconds else None,
        "seconds_max": float(max(seconds)) if seconds else None,
        "search_seconds_median": float(np.median([r["seconds"] for r in propagation]))
        if propagation
        else None,
    }


def _table(s: dict) -> list[str]:
    def met(ok: bool) -> str:
        return "yes" if ok else "no"

    share, err, prop = s["segmented_share"], s["volume_error_median"], s["propagation_share"]
    return [
        "| measure | value | target | met |",
        "| --- | ---: | --- | --- |",
        f"| segmented | {s['segmented']}/{s['clicks']} ({_pct(share)}) | >= 95 % | "
        f"{met(share is not None and share >= TARGETS['segmented'])} |",
        f"| median volume error | {_pct(err)} | <= 10 % | "
        f"{met(err is not None and err <= TARGETS['volume_error'])} |",
        f"| median Dice against the truth mask | {s['dice_median']:.3f} | - | - |"
        if s["dice_median"] is not None
        else "| median Dice against the truth mask | - | - | - |",
        f"| follow-ups found by propagation | {s['propagated']}/{s['follow_ups']} "
        f"({_pct(prop)}) | >= 90 % | {met(prop is not None and prop >= TARGETS['propagation'])} |",
        f"| wrong blob taken where the lesion is | {s['wrong_blob']} | - | - |",
        f"| found where the lesion has gone | {s['false_finds_where_gone']}/{s['gone']} | - | - |",
        f"| seconds per click (median / max) | {s['seconds_median']:.2f} / "
        f"{s['seconds_max']:.2f} | <= 3 s | {met(s['seconds_max'] <= TARGETS['seconds'])} |",
        f"| seconds per propagated search (median) | {s['search_seconds_median'] or 0:.2f} | - | - |",
    ]


def _rows_by(clicks: list[dict]) -> list[str]:
    lines = ["| row | clicks | segmented | median volume error | median Dice |",
             "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip

    def band(v: float) -> str:
        return (
            "< 0.5 ml" if v < 0.5 else "0.5-2 ml" if v < 2 else "2-10 ml" if v < 10 else ">= 10 ml"
        )

    keys = (("organ", lambda r: r["organ"]), ("size", lambda r: band(r["volume_ml"])),
            ("slice thickness", lambda r: f"{r['thickness_mm']:g} mm"))  # fmt: skip
    for name, key in keys:
        for value in sorted({key(r) for r in clicks}):
            sel = [r for r in clicks if key(r) == value]
            ok = [r for r in sel if r["segmented"]]
            err = np.median([r["volume_error"] for r in ok]) if ok else None
            dice = np.median([r["dice"] for r in ok]) if ok else None
            lines.append(f"| {name}: {value} | {len(sel)} | {len(ok)} | {_pct(err)} | "
                         f"{'-' if dice is None else f'{dice:.3f}'} |")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=6)
    parser.add_argument("--timepoints", type=int, default=3)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--size", choices=["small", "full"], default="full")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=ROOT / "var" / "benchmarks" / "correction")
    parser.add_argument("--out", type=Path, help="write every row and the summary here (JSON)")
    args = parser.parse_args(argv)
    if args.patients < 1 or args.timepoints < 1:
        parser.error("--patients and --timepoints must be at least 1")
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    cohort = cohort_mod.cohort_simulate(
        n_patients=args.patients, n_timepoints=args.timepoints, seed=args.seed, size=args.size
    )
    cache = args.cache / f"{args.size}-{args.seed}"
    clicks: list[dict] = []
    propagation: list[dict] = []
    for patient in cohort.patients:
        studies = [_render(cohort, patient, study, cache) for study in patient.studies]
        matrices = [np.eye(4)] + [_registration(studies[0], s, cache) for s in studies[1:]]
        for study in studies:
            clicks += _click_rows(study)
        propagation += _propagation_rows(studies, matrices)
        mine = [r for r in clicks if r["study"].startswith(patient.patient_id)]
        found = [
            r for r in propagation if r["from"].startswith(patient.patient_id) and r["present"]
        ]
        print(f"{patient.patient_id}: {len(studies)} studies, {sum(r['segmented'] for r in mine)}/"
              f"{len(mine)} clicks segmented, {sum(r['found'] for r in found)}/{len(found)} "
              "follow-ups found", flush=True)  # fmt: skip
    summary = _summary(clicks, propagation)
    print(f"\n### {args.patients} patients x {args.timepoints} studies, seed {args.seed}, "
          f"{args.size} size, {args.threads} threads\n")  # fmt: skip
    print("\n".join(_table(summary)))
    print()
    print("\n".join(_rows_by(clicks)))
    for r in clicks:
        if not r["segmented"]:
            print(f"not segmented: {r['study']} {r['lesion']} ({r['organ']}, {r['volume_ml']:.2f} ml): "
                  f"{r.get('why', 'the mask misses the truth')}")  # fmt: skip
    for r in propagation:
        if r["present"] and not r["found"]:
            print(f"not propagated: {r['lesion']} {r['from']} -> {r['to']} "
                  f"({r['volume_ml']:.2f} ml there): {r['why'] or 'a wrong blob was taken'}")  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"summary": summary, "clicks": clicks,
                                        "propagation": propagation}, indent=1, default=float))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
