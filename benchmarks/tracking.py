"""Lesion tracking and response: identities, new/resolved lesions and categories against truth.

Two sources of measurements, one evaluation:

1. Simulated (default): a synthetic cohort (`imaging.core.synthetic.cohort.cohort_simulate`, seed
   424242 by default, a seed no model is trained on; or ``--truth truth.json`` of a
   generated cohort) gives every lesion's exact centre and volume at every study.
   Each present lesion is "measured" with realistic noise (centroid error per axis,
   repeat-scan volume variability growing for small lesions, longest diameter from the
   measured volume), the observations are linked study after study by
   `analytics.lesions.core.matching.lesions_match` with the true poses as the registration, and
   written as ``export_measurements`` rows.
2. ``--measurements export.csv --truth truth.json``: the rows ``manage.py
   export_measurements --format csv`` wrote after the real pipeline (segmentation,
   registration, tracking) processed that cohort's DICOM.

Evaluation, per patient and study (matched to truth by StudyInstanceUID): measured
lesions (volume > 0) are paired with the truth lesions present at that study by an
optimal assignment on centroid distance (same organ, within max(10 mm, the truth
lesion's radius + 5 mm)), both in that study's own LPS coordinates. Then:

- pairs linked: a truth lesion measured at a follow-up and at an earlier study carries
  the lesion_uid it had at its latest earlier measurement (target >= 98%);
- new lesions recognised: a lesion absent at baseline, measured for the first time,
  has a lesion_uid not measured at any earlier study;
- resolved recognised: a lesion present at the previous study and resolved now has no
  row with volume > 0 under its previous lesion_uid;
- RECIST 1.1 and volumetric categories per follow-up (`analytics.lesions.core.recist`,
  `analytics.lesions.core.volumetric`) from the measurements agree with those from truth.json
  (target >= 95%). truth.json has no longest diameter, so the truth side uses each
  lesion's equivalent-sphere diameter (as does the simulated measurement).

    .venv/bin/python benchmarks/tracking.py [--patients 200] [--timepoints 5] [--seed 424242]
    .venv/bin/python benchmarks/tracking.py --truth OUT/truth.json --measurements export.csv
    .venv/bin/python benchmarks/tracking.py --write-measurements var/benchmarks/tracking.csv
    .venv/bin/python benchmarks/tracking.py --truth OUT/truth.json --measurements m.csv \
        --responses r.csv --compare-before HEAD

``--compare-before REF`` (with ``--responses``, an ``export_responses`` CSV of the same
run) measures what the response rules changed: the categories the pipeline stored now
against those RadTrack's rules at git revision REF give for the same measurements, read
as that revision's tracking wrote them (a lesion not found written "resolved" at 0 mm,
every finding counted, no study followed past a failed registration). Each follow-up
whose category changed is counted with why (`change_reasons`).

Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analytics.lesions.core.assess import recist_assess  # noqa: E402
from analytics.lesions.core.identities import (  # noqa: E402
    LesionObservation,
    TrackedLesion,
    fragments_combine,
)
from analytics.lesions.core.matching import lesions_match  # noqa: E402
from analytics.lesions.core.readings import (  # noqa: E402
    LesionReading,
    StudyReading,
    timeline_from_measurements,
)
from analytics.lesions.core.recist import targets_select  # noqa: E402
from analytics.lesions.core.volumetric import volumetric_assess  # noqa: E402
from imaging.core.dicom.write import synthetic_uid  # noqa: E402
from imaging.core.synthetic.cohort import cohort_simulate  # noqa: E402
from imaging.core.synthetic.truth import truth_build  # noqa: E402

LINK_TARGET = 0.98
CATEGORY_TARGET = 0.95
DEFAULT_SEED = 424242  # not a training seed: the demo uses 7, tests small ones
MEASUREMENT_COLUMNS = [
    "patient_id", "study_instance_uid", "study_date", "lesion_uid", "lesion_label", "organ",
    "status", "volume_ml", "longest_diameter_mm", "short_axis_mm", "centroid_x_mm",
    "centroid_y_mm", "centroid_z_mm", "is_target", "review_state",
]  # fmt: skip


def sphere_diameter_mm(volume_ml: float) -> float:
    return float(np.cbrt(6.0 * max(volume_ml, 0.0) * 1000.0 / np.pi))


# --------------------------------------------------------------------------- simulation
@dataclass(frozen=True)
class Noise:
    """Measurement noise of a segmentation: see `observe`."""

    centroid_mm: float = 1.0
    volume_cv: float = 0.09
    boundary_mm: float = 0.25
    diameter_cv: float = 0.03


def observe(
    lesion: dict, rng: np.random.Generator, noise: Noise
) -> tuple[np.ndarray, float, float]:
    """A noisy (centroid LPS mm, volume ml, longest diameter mm) of one truth lesion.

    Volume: log-normal with sigma sqrt(cv^2 + (3 b / d)^2): a scan-to-scan part (0.09:
    two scans' 95% limits of agreement about +-25%) and a boundary part (b mm of
    boundary error on a lesion of diameter d changes its volume by about 3 b / d).
    Diameter: the measured volume's sphere diameter with a further 3% jitter.
    """
    d = max(lesion["equivalent_diameter_mm"], 1.0)
    sigma = math.hypot(noise.volume_cv, 3.0 * noise.boundary_mm / d)
    volume = lesion["volume_ml"] * float(np.exp(rng.normal(0.0, sigma)))
    diameter = sphere_diameter_mm(volume) * float(np.exp(rng.normal(0.0, noise.diameter_cv)))
    centre = np.asarray(lesion["centre_lps_mm"]) + rng.normal(0.0, noise.centroid_mm, 3)
    return centre, volume, diameter


def measurements_simulate(truth: dict, *, noise: Noise, seed: int) -> tuple[pd.DataFrame, Counter]:
    """``export_measurements`` rows from noisy truth, linked by `lesions_match`."""
    rows, events = [], Counter()
    for p_index, patient in enumerate(truth["patients"]):
        rng = np.random.default_rng([seed, p_index])
        pid = patient["patient_id"]
        counter = iter(range(1, 10_000))

        def uid_factory(pid=pid, counter=counter) -> str:
            return str(synthetic_uid(["bench-tracking", pid, str(next(counter))]))

        studies = patient["studies"]
        base_pose = np.asarray(studies[0]["pose_body_to_lps"])
        identities: list[TrackedLesion] = []
        targets: set[str] = set()
        for index, study in enumerate(studies):
            pose = np.asarray(study["pose_body_to_lps"])
            to_baseline = base_pose @ np.linalg.inv(pose)
            present = [les for les in study["lesions"] if les["status"] == "present"]
            order = rng.permutation(len(present))
            observations = []
            for n, k in enumerate(order):
                centre, volume, diameter = observe(present[k], rng, noise)
                observations.append(
                    LesionObservation(
                        key=f"seg{n}",
                        organ=present[k]["organ"],
                        centroid_lps_mm=centre,
                        volume_ml=volume,
                        longest_diameter_mm=diameter,
                        short_axis_mm=0.8 * diameter,
                    )
                )
            result = lesions_match(
                previous=identities,
                current=observations,
                to_baseline=None if index == 0 else to_baseline,
                uid_factory=uid_factory,
            )
            events["merges"] += len(result.merges)
            events["splits"] += len(result.splits)
            by_key = {o.key: o for o in observations}
            from_baseline = np.linalg.inv(to_baseline)
            study_rows = []
            for a in result.assignments:
                identity = next(i for i in result.identities if i.lesion_uid == a.lesion_uid)
                if a.observation_keys:
                    o = fragments_combine([by_key[k] for k in a.observation_keys])
                    centre, volume, ld, sa = (
                        o.centroid_lps_mm,
                        o.volume_ml,
                        o.longest_diameter_mm,
                        o.short_axis_mm,
                    )
                    status = a.status
                else:  # resolved or merged: a row with volume 0 where it was last seen
                    centre = (
                        from_baseline[:3, :3] @ identity.centroid_baseline_mm + from_baseline[:3, 3]
                    )
                    volume = ld = sa = 0.0
                    status = "resolved"
                study_rows.append(
                    [pid, study["study_instance_uid"], study["study_date"], a.lesion_uid, a.label,
                     a.organ, status, volume, ld, sa, *(float(c) for c in centre), False, ""]
                )  # fmt: skip
            if index == 0:
                readings = [
                    LesionReading(r[3], r[5], longest_diameter_mm=r[8], volume_ml=r[7])
                    for r in study_rows
                ]
                targets = set(targets_select(lesions=readings))
            for r in study_rows:
                r[13] = r[3] in targets
            rows += study_rows
            identities = list(result.identities)
    return pd.DataFrame(rows, columns=MEASUREMENT_COLUMNS), events


# --------------------------------------------------------------------------- evaluation
@dataclass
class Tally:
    hits: int = 0
    total: int = 0
    misses: list = field(default_factory=list)

    def add(self, ok: bool, what=None) -> None:
        self.total += 1
        self.hits += bool(ok)
        if not ok and what is not None:
            self.misses.append(what)

    @property
    def share(self) -> float:
        return self.hits / self.total if self.total else math.nan


def _pair(truth_lesions: list[dict], rows: pd.DataFrame) -> dict[str, str]:
    """truth lesion_id -> measured lesion_uid at one study (see the module docstring)."""
    if not truth_lesions or rows.empty:
        return {}
    centres = rows[["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]].to_numpy(float)
    organs = rows["organ"].str.lower().to_numpy()
    cost = np.full((len(truth_lesions), len(rows)), 1e6)
    for i, les in enumerate(truth_lesions):
        d = np.linalg.norm(centres - np.asarray(les["centre_lps_mm"]), axis=1)
        gate = max(10.0, les["equivalent_diameter_mm"] / 2.0 + 5.0)
        ok = (organs == les["organ"]) & (d <= gate)
        cost[i, ok] = d[ok]
    r, c = linear_sum_assignment(cost)
    uids = rows["lesion_uid"].to_numpy()
    return {
        truth_lesions[i]["lesion_id"]: str(uids[j])
        for i, j in zip(r, c, strict=True)
        if cost[i, j] < 1e6
    }


def truth_timeline(patient: dict) -> list[StudyReading]:
    out = []
    for study in patient["studies"]:
        readings = []
        for les in study["lesions"]:
            if les["status"] == "not_yet_present":
                continue
            gone = les["status"] == "resolved"
            readings.append(
                LesionReading(
                    les["lesion_id"],
                    les["organ"],
                    longest_diameter_mm=0.0 if gone else les["equivalent_diameter_mm"],
                    volume_ml=0.0 if gone else les["volume_ml"],
                )
            )
        out.append(
            StudyReading(
                study["study_instance_uid"],
                pd.Timestamp(study["study_date"]).date(),
                tuple(readings),
            )
        )
    return out


@dataclass
class Evaluation:
    links: Tally = field(default_factory=Tally)
    new: Tally = field(default_factory=Tally)
    resolved: Tally = field(default_factory=Tally)
    recist: Tally = field(default_factory=Tally)
    volumetric: Tally = field(default_factory=Tally)
    missed: int = 0
    false_positive: int = 0
    recist_pairs: Counter = field(default_factory=Counter)
    volumetric_pairs: Counter = field(default_factory=Counter)


def evaluate(truth: dict, measurements: pd.DataFrame) -> Evaluation:
    ev = Evaluation()
    frame = measurements.copy()
    frame["organ"] = frame["organ"].astype(str).str.lower()
    if "review_state" in frame:
        frame = frame[frame["review_state"].astype(str).str.lower() != "rejected"]
    timelines = timeline_from_measurements(frame)
    for patient in truth["patients"]:
        pid = patient["patient_id"]
        mine = frame[frame["patient_id"].astype(str) == pid]
        if mine.empty:
            continue
        last_uid: dict[str, str] = {}  # truth lesion -> uid at its latest measurement
        seen_uids: set[str] = set()
        previous_present: dict[str, str] = {}
        for index, study in enumerate(patient["studies"]):
            rows = mine[mine["study_instance_uid"].astype(str) == study["study_instance_uid"]]
            rows_present = rows[rows["volume_ml"].astype(float) > 0]
            if "status" in rows_present:
                rows_present = rows_present[rows_present["status"].astype(str) != "resolved"]
            present = [les for les in study["lesions"] if les["status"] == "present"]
            pairs = _pair(present, rows_present)
            ev.missed += len(present) - len(pairs)
            ev.false_positive += len(rows_present) - len(pairs)
            where = (pid, study["index"])
            for les in present:
                lid = les["lesion_id"]
                if lid not in pairs:
                    continue
                if lid in last_uid:
                    ev.links.add(pairs[lid] == last_uid[lid], (*where, lid))
                elif index > 0:
                    ev.new.add(pairs[lid] not in seen_uids, (*where, lid))
            if index > 0:
                uids_now = set(rows_present["lesion_uid"].astype(str))
                for les in study["lesions"]:
                    lid = les["lesion_id"]
                    if les["status"] == "resolved" and lid in previous_present:
                        ev.resolved.add(previous_present[lid] not in uids_now, (*where, lid))
            last_uid.update(pairs)
            seen_uids |= set(rows_present["lesion_uid"].astype(str))
            previous_present = dict(pairs)

        measured = timelines.get(pid, ())
        expected = truth_timeline(patient)
        for kind, assess, tally, confusion in (
            ("recist", recist_assess, ev.recist, ev.recist_pairs),
            ("volumetric", volumetric_assess, ev.volumetric, ev.volumetric_pairs),
        ):
            got = {a.study_uid: a.category for a in assess(timeline=measured)}
            for a in assess(timeline=expected)[1:]:
                category = got.get(a.study_uid, "missing")
                tally.add(category == a.category, (pid, a.study_uid, kind, a.category, category))
                confusion[(a.category, category)] += 1
    return ev


# --------------------------------------------------------------------------- report
def _pct(x: float) -> str:
    return "  n/a" if math.isnan(x) else f"{100 * x:5.1f}%"


def report(ev: Evaluation, *, source: str, seconds: float, events: Counter) -> bool:
    print()
    print(f"source: {source}; {seconds:.1f} s")
    print(
        f"lesions missed (truth present, no measurement): {ev.missed}; "
        f"unpaired measurements: {ev.false_positive}; merges {events.get('merges', 0)}, "
        f"splits {events.get('splits', 0)}"
    )
    print()
    print(f"{'measurement':<44} {'value':>6} {'n':>6} {'target':>8} {'met':>5}")
    rows = [
        ("lesion pairs linked to the right identity", ev.links, LINK_TARGET),
        ("new lesions recognised", ev.new, None),
        ("resolved lesions recognised", ev.resolved, None),
        ("RECIST 1.1 category agrees with truth", ev.recist, CATEGORY_TARGET),
        ("volumetric category agrees with truth", ev.volumetric, CATEGORY_TARGET),
    ]
    all_met = True
    for name, tally, target in rows:
        met = "" if target is None else ("yes" if tally.share >= target else "NO")
        all_met &= met != "NO"
        target_text = "" if target is None else f">= {100 * target:.0f}%"
        print(f"{name:<44} {_pct(tally.share):>6} {tally.total:>6} {target_text:>8} {met:>5}")
    for name, confusion in (("RECIST", ev.recist_pairs), ("volumetric", ev.volumetric_pairs)):
        off = {k: v for k, v in confusion.items() if k[0] != k[1]}
        if off:
            text = ", ".join(f"{t}->{m}: {n}" for (t, m), n in sorted(off.items(), key=str))
            print(f"{name} disagreements (truth->measured): {text}")
    return all_met


# --------------------------------------------------------------------------- before / after
def rules_before(ref: str, into: Path):
    """The response rules (readings, recist, volumetric) as they were at git ``ref``,
    imported from ``into`` as the package ``rules_before`` (read with ``git show``)."""
    import importlib
    import subprocess

    package = into / "rules_before"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    for name in ("readings", "recist", "volumetric"):
        text = subprocess.run(
            ["git", "show", f"{ref}:analytics/lesions/core/{name}.py"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        text = text.replace("analytics.lesions.core.", "rules_before.")
        (package / f"{name}.py").write_text(text)
    sys.path.insert(0, str(into))
    return importlib.import_module("rules_before.volumetric")


def table_as_before(measurements: pd.DataFrame, responses: pd.DataFrame) -> pd.DataFrame:
    """The export as the earlier tracking wrote it: a lesion not found, or merged, was a
    "resolved" row at 0; finding states did not exist; a patient's studies were not
    followed from the first follow-up whose registration failed."""
    frame = measurements.copy()
    absent = frame["status"].isin(["not_found", "merged"])
    frame.loc[absent, "status"] = "resolved"
    frame.loc[absent, ["volume_ml", "longest_diameter_mm", "short_axis_mm"]] = 0.0
    provisional = responses[
        responses["response_note"].fillna("").str.contains("registration to the baseline")
    ]
    for pid, rows in provisional.groupby("patient_id"):
        first = pd.to_datetime(rows["study_date"]).min()
        later = (frame["patient_id"] == pid) & (pd.to_datetime(frame["study_date"]) >= first)
        frame = frame[~later]
    return frame[[c for c in MEASUREMENT_COLUMNS if c in frame]]


def change_reasons(study: pd.DataFrame, response: pd.Series, kind: str) -> list[str]:
    """Why a follow-up's category differs from the earlier rules' (module docstring)."""
    note = str(response.get("response_note") or "")
    reasons = []
    if "registration to the baseline" in note:
        reasons.append("registration failed: followed now (links provisional, NE), not before")
    if note.startswith("not evaluable: ") and "registration" not in note:
        reasons.append("no segmentation: an NE row with the reason now, none before")
    if (study["status"] == "not_found").any():
        reasons.append("a lesion not found: not evaluated now, read as gone (0 mm) before")
    if float(response.get("pending_new_lesions") or 0) > 0:
        reasons.append("an equivocal new lesion pending confirmation: not PD yet")
    dated = response.get("progression_dated_from")
    if isinstance(dated, str) and dated and dated < str(response["study_date"]):
        reasons.append("PD dated from a new lesion's first sighting, confirmed later")
    if str(response.get("possible_non_target_progression")) == "True":
        reasons.append("non-target volume growth with targets: for review, not PD")
    if kind == "volumetric" and not reasons:
        reasons.append(
            "volumetric lines exact (+72.8%, -65.7%), the 5 mm floor, or NE without a baseline burden"
        )
    return reasons or ["other (see the response note)"]


def truth_categories(truth: dict) -> dict[tuple[str, str, str], str]:
    """(patient, study UID, "recist"/"volumetric") -> the category truth.json gives."""
    out = {}
    for patient in truth["patients"]:
        timeline = truth_timeline(patient)
        for kind, assess in (("recist", recist_assess), ("volumetric", volumetric_assess)):
            for a in assess(timeline=timeline)[1:]:
                out[(patient["patient_id"], a.study_uid, kind)] = a.category
    return out


def _against_truth(pairs: list[tuple[str, str]]) -> str:
    """How many categories agree with truth, are NE (shown as not assessable), or are
    wrong (shown as assessed, and not truth's)."""
    agree = sum(1 for shown, true in pairs if shown == true)
    unassessed = sum(1 for shown, _ in pairs if shown in ("NE", "not assessed"))
    wrong = len(pairs) - agree - unassessed
    return f"{agree} agree with truth, {unassessed} NE or not assessed, {wrong} wrong"


def compare_before(
    *,
    ref: str,
    measurements: pd.DataFrame,
    responses: pd.DataFrame,
    scratch: Path,
    truth: dict,
) -> None:
    """Print the share of follow-ups whose RECIST 1.1 and volumetric categories changed
    from the rules at ``ref`` to those stored now, why, and how each agrees with truth."""
    before = rules_before(ref, scratch).responses_table_build(
        measurements=table_as_before(measurements, responses)
    )
    old = {(str(r.patient_id), str(r.study_instance_uid)): r for r in before.itertuples()}
    expected = truth_categories(truth)
    follow_ups = responses[responses["recist_response"].fillna("") != ""]
    for kind, column in (("RECIST 1.1", "recist_response"), ("volumetric", "volumetric_response")):
        changed, why, then_now = 0, Counter(), []
        for _, response in follow_ups.iterrows():
            key = (str(response["patient_id"]), str(response["study_instance_uid"]))
            was = getattr(old[key], column) if key in old else None
            was = was if isinstance(was, str) and was else "not assessed"
            now = response[column]
            true = expected.get((*key, "volumetric" if column.startswith("vol") else "recist"))
            then_now.append(((was, true), (now, true)))
            if was == now:
                continue
            changed += 1
            study = measurements[measurements["study_instance_uid"].astype(str) == key[1]]
            for reason in change_reasons(
                study, response, "volumetric" if column.startswith("vol") else "recist"
            ):
                why[f"{was} -> {now}: {reason}"] += 1
        total = len(follow_ups)
        share = _pct(changed / total if total else math.nan)
        print(f"\n{kind}: {changed} of {total} follow-ups changed category ({share}) since {ref}")
        for text, n in sorted(why.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"  {n:3d}  {text}")
        print(f"  before: {_against_truth([b for b, _ in then_now])}")
        print(f"  now:    {_against_truth([a for _, a in then_now])}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--timepoints", type=int, default=5)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="cohort seed")
    parser.add_argument("--truth", type=Path, help="truth.json of a generated cohort")
    parser.add_argument("--measurements", type=Path, help="export_measurements CSV to evaluate")
    parser.add_argument("--write-measurements", type=Path, help="write the simulated rows here")
    parser.add_argument("--responses", type=Path, help="export_responses CSV of the same run")
    parser.add_argument(
        "--compare-before", metavar="REF", help="git revision whose response rules to compare with"
    )
    parser.add_argument("--noise-seed", type=int, default=1)
    parser.add_argument("--centroid-noise-mm", type=float, default=Noise.centroid_mm)
    parser.add_argument("--volume-cv", type=float, default=Noise.volume_cv)
    parser.add_argument("--boundary-mm", type=float, default=Noise.boundary_mm)
    args = parser.parse_args(argv)
    if args.measurements and not args.truth:
        parser.error("--measurements needs --truth (the truth.json of the same cohort)")
    if args.compare_before and not (args.measurements and args.responses):
        parser.error("--compare-before needs --measurements and --responses of one run")
    if args.patients < 1 or args.timepoints < 2:
        parser.error("--patients must be at least 1 and --timepoints at least 2")

    started = time.perf_counter()
    if args.truth:
        truth = json.loads(args.truth.read_text())
        cohort = f"{args.truth} ({truth['n_patients']} patients, seed {truth['seed']})"
    else:
        truth = truth_build(
            cohort_simulate(n_patients=args.patients, n_timepoints=args.timepoints, seed=args.seed)
        )
        cohort = f"simulated cohort ({args.patients} patients x {args.timepoints} studies, seed {args.seed})"
    events: Counter = Counter()
    if args.measurements:
        measurements = pd.read_csv(
            args.measurements, dtype={"study_instance_uid": str, "lesion_uid": str}
        )
        source = f"{args.measurements} against {cohort}"
    else:
        noise = Noise(
            centroid_mm=args.centroid_noise_mm,
            volume_cv=args.volume_cv,
            boundary_mm=args.boundary_mm,
        )
        measurements, events = measurements_simulate(truth, noise=noise, seed=args.noise_seed)
        source = (
            f"{cohort}, truth + noise (centroid {noise.centroid_mm} mm/axis, volume cv "
            f"{noise.volume_cv} + {noise.boundary_mm} mm boundary), true poses as registration"
        )
        if args.write_measurements:
            args.write_measurements.parent.mkdir(parents=True, exist_ok=True)
            measurements.to_csv(args.write_measurements, index=False)
    ev = evaluate(truth, measurements)
    ok = report(ev, source=source, seconds=time.perf_counter() - started, events=events)
    if args.compare_before:
        import tempfile

        responses = pd.read_csv(
            args.responses, dtype={"study_instance_uid": str, "patient_id": str}
        )
        with tempfile.TemporaryDirectory() as scratch:
            compare_before(
                ref=args.compare_before,
                measurements=measurements,
                responses=responses,
                scratch=Path(scratch),
                truth=truth,
            )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
