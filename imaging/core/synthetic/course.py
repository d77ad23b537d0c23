"""A synthetic patient's disease course: hidden aggressiveness, lesion kinetics, events, labs.

Everything observable derives from a hidden *aggressiveness* ``a ~ N(0, 1)``. Tumour
kinetics follow a response-then-regrowth model: each lesion shrinks (volume
``exp(-d t)``, ``d`` smaller when ``a`` is larger) until the patient's progression onset,
then regrows (doubling time shorter when ``a`` is larger); a lesion that falls below a
floor resolves for good; after progression onset, new lesions appear at a rate that
grows with ``a``. Progression onset and death are drawn from Weibull hazards with
relative hazard ``exp(true_risk)``, ``true_risk = 1.2 a``; death follows progression.
Labs (CEA, LDH, CRP, albumin, haemoglobin) depend on ``a``, tumour burden and closeness
to death.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace

import numpy as np

from imaging.core.dicom.write import synthetic_uid
from imaging.core.geometry.triples import vec3
from imaging.core.synthetic.acquisition import study_days_schedule
from imaging.core.synthetic.anatomy import BodyAnatomy
from imaging.core.synthetic.anatomy_structures import anatomy_balls_within, anatomy_label
from imaging.core.synthetic.lesion_shape import (
    LesionShape,
    lesion_shape_sample,
    volume_for_diameter_ml,
)
from imaging.core.synthetic.simulated import (
    LAB_TESTS,
    EventRecord,
    LabRecord,
    Organ,
    SimulatedLesion,
    date_of_day,
)

RISK_COEFFICIENT = 1.2


@dataclass(frozen=True)
class DiseaseCourse:
    """A patient's hidden driver and what it sets: event times, study days, kinetics (days)."""

    aggressiveness: float
    true_risk: float
    progression_day: float
    death_day: float
    study_days: list[int]
    censor_day: float
    shrink_rate_per_day: float  # the patient's; each lesion varies about it
    growth_rate_per_day: float

    @property
    def end_day(self) -> float:
        """Death or last follow-up, whichever comes first."""
        return self.death_day if self.death_day <= self.censor_day else self.censor_day


def _weibull_time(rng: np.random.Generator, scale: float, shape: float, risk: float) -> float:
    """A time (days) from a Weibull hazard with relative hazard ``exp(risk)``."""
    return float(scale * (rng.exponential() / np.exp(risk)) ** (1.0 / shape))


def course_sample(
    rng: np.random.Generator, rng_study: np.random.Generator, *, n_timepoints: int
) -> DiseaseCourse:
    """Draw the course from ``rng``; the study days (from ``rng_study``) stop before death."""
    a = float(rng.normal())
    risk = RISK_COEFFICIENT * a
    progression_day = _weibull_time(rng, 240.0, 1.5, risk)
    death_day = progression_day + _weibull_time(rng, 300.0, 1.5, risk)
    study_days = study_days_schedule(rng_study, n_timepoints=n_timepoints, death_day=death_day)
    censor_day = study_days[-1] + float(rng.uniform(60.0, 540.0))
    # Tumour kinetics, per patient here and per lesion in `lesions_simulate`.
    shrink = 0.010 * np.exp(-0.4 * a + rng.normal(0.0, 0.5)) - 0.002
    growth = np.log(2.0) / (60.0 * np.exp(-0.5 * a + rng.normal(0.0, 0.3)))
    return DiseaseCourse(
        aggressiveness=a,
        true_risk=risk,
        progression_day=progression_day,
        death_day=death_day,
        study_days=study_days,
        censor_day=censor_day,
        shrink_rate_per_day=shrink,
        growth_rate_per_day=growth,
    )


# --------------------------------------------------------------------------------------
# Lesions
# --------------------------------------------------------------------------------------
def _lesion_place(
    rng: np.random.Generator,
    anatomy: BodyAnatomy,
    organ: Organ,
    shape: LesionShape,
    max_volume_ml: float,
    placed: list[tuple[np.ndarray, float]],
) -> tuple[LesionShape, float] | None:
    """Find a centre where the lesion at its largest stays inside its organ and apart.

    Returns the placed shape and the (possibly reduced) maximum volume, or None.
    """
    z_lo, z_hi = anatomy.scan_range_z_mm
    if organ == "liver":
        targets = [(anatomy.liver, "liver")]
    else:
        targets = [(anatomy.right_lung, "right_lung"), (anatomy.left_lung, "left_lung")]
        if rng.random() < 0.5:
            targets.reverse()
    for _ in range(6):
        reach = shape.bounding_radius_mm(max_volume_ml)
        for target, label in targets:
            semi = np.asarray(target.semi_axes_mm) - reach
            if np.any(semi <= 1.0):
                continue
            # Candidates uniform in the organ's ellipsoid shrunk by the lesion's reach.
            direction = rng.normal(size=(40, 3))
            direction /= np.linalg.norm(direction, axis=1, keepdims=True)
            radius = rng.random(40)[:, None] ** (1 / 3)
            points = np.asarray(target.centre_mm) + semi * direction * radius
            # Stay clear of the scan's ends whatever the pose (rotation lifts the ends).
            keep = (points[:, 2] > z_lo + reach + 35.0) & (points[:, 2] < z_hi - reach - 35.0)
            for centre, r in placed:
                keep &= np.linalg.norm(points - centre, axis=1) >= reach + r + 4.0
            points = points[keep]
            points = points[anatomy_label(anatomy, points) == label] if len(points) else points
            for start in range(0, len(points), 3):  # a few balls per call: less overhead
                batch = points[start : start + 3]
                inside = np.nonzero(anatomy_balls_within(anatomy, batch, reach + 3.0, label))[0]
                if len(inside):
                    centre_mm = vec3(batch[inside[0]])
                    return replace(shape, centre_body_mm=centre_mm), max_volume_ml
        max_volume_ml *= 0.6
    return None


@dataclass
class _LesionsDrawn:
    """The lesions drawn so far for one patient, and the balls they keep clear."""

    rng: np.random.Generator
    seed: int
    patient_id: str
    anatomy: BodyAnatomy
    course: DiseaseCourse
    lesions: list[SimulatedLesion] = field(default_factory=list)
    placed: list[tuple[np.ndarray, float]] = field(default_factory=list)

    def add(self, organ: Organ, onset_day: float, onset_diameter_mm: float) -> None:
        """Draw a shape and place it; a lesion with no room is left out."""
        rng, anatomy = self.rng, self.anatomy
        irregular = rng.random() < (0.5 if organ == "liver" else 0.3)
        hu = (
            rng.uniform(20.0, 45.0)
            if organ == "lung"
            else anatomy.liver_hu - rng.uniform(25.0, 45.0)
        )
        shape = lesion_shape_sample(rng, centre_body_mm=np.zeros(3), hu=hu, irregular=irregular)
        max_diameter = 30.0 if organ == "lung" else 50.0
        found = _lesion_place(
            rng, anatomy, organ, shape, volume_for_diameter_ml(max_diameter), self.placed
        )
        if found is None:
            return
        shape, max_volume = found
        onset_volume = min(volume_for_diameter_ml(onset_diameter_mm), 0.8 * max_volume)
        lesion_id = f"{self.patient_id}-L{len(self.lesions) + 1:02d}"
        self.lesions.append(
            SimulatedLesion(
                lesion_id=lesion_id,
                tracking_uid=str(
                    synthetic_uid(["radtrack-cohort-lesion", str(self.seed), lesion_id])
                ),
                organ=organ,
                shape=shape,
                onset_day=onset_day,
                onset_volume_ml=onset_volume,
                shrink_rate_per_day=float(
                    self.course.shrink_rate_per_day * np.exp(rng.normal(0.0, 0.25))
                ),
                growth_rate_per_day=float(
                    self.course.growth_rate_per_day * np.exp(rng.normal(0.0, 0.25))
                ),
                progression_day=self.course.progression_day,
                max_volume_ml=max_volume,
                floor_volume_ml=volume_for_diameter_ml(3.0 if organ == "lung" else 5.0),
            )
        )
        self.placed.append((np.asarray(shape.centre_body_mm), shape.bounding_radius_mm(max_volume)))


def _baseline_lesions_add(drawn: _LesionsDrawn) -> None:
    """One to six lesions at baseline, more when aggressive; one small one if none found room."""
    rng = drawn.rng
    n_baseline = int(min(1 + rng.poisson(1.2 + 0.5 * max(drawn.course.aggressiveness, 0.0)), 6))
    for _ in range(n_baseline):
        organ: Organ = "liver" if rng.random() < 0.55 else "lung"
        low, high = (10.0, 35.0) if organ == "liver" else (5.0, 22.0)
        drawn.add(organ, 0.0, float(np.exp(rng.uniform(np.log(low), np.log(high)))))
    if not drawn.lesions:  # the anatomy had no room: fall back to one small liver lesion
        drawn.add("liver", 0.0, 10.0)


def _new_lesions_add(drawn: _LesionsDrawn) -> None:
    """Up to four new lesions after progression onset, at a rate growing with aggressiveness."""
    rng, course = drawn.rng, drawn.course
    t = course.progression_day
    rate = 0.004 * np.exp(0.7 * course.aggressiveness)
    for _ in range(4):
        t += float(rng.exponential(1.0 / rate))
        if t >= course.study_days[-1]:
            break
        organ: Organ = "liver" if rng.random() < 0.55 else "lung"
        drawn.add(organ, t, 5.0 if organ == "liver" else 3.5)


def lesions_simulate(
    rng: np.random.Generator,
    *,
    seed: int,
    patient_id: str,
    anatomy: BodyAnatomy,
    course: DiseaseCourse,
) -> tuple[SimulatedLesion, ...]:
    """The patient's lesions: those at baseline, then those new after progression onset."""
    drawn = _LesionsDrawn(rng, seed, patient_id, anatomy, course)
    _baseline_lesions_add(drawn)
    _new_lesions_add(drawn)
    return tuple(drawn.lesions)


# --------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------
def events_simulate(
    rng: np.random.Generator, *, patient_id: str, baseline_date: dt.date, course: DiseaseCourse
) -> tuple[EventRecord, ...]:
    """Progression is found at the first study 4+ weeks after onset, or clinically
    4-12 weeks after onset when no study comes; then death, or censoring at last follow-up."""
    progression_day, death_day, censor_day = (
        course.progression_day,
        course.death_day,
        course.censor_day,
    )
    end_day = min(death_day, censor_day)
    events = []
    found = [d for d in course.study_days if d >= progression_day + 28]
    detected = found[0] if found else progression_day + float(rng.uniform(28.0, 84.0))
    if detected < end_day:
        events.append(EventRecord(patient_id, "progression", date_of_day(baseline_date, detected)))
    if death_day <= censor_day:
        events.append(EventRecord(patient_id, "death", date_of_day(baseline_date, death_day)))
    else:
        events.append(EventRecord(patient_id, "censor", date_of_day(baseline_date, censor_day)))
    return tuple(events)


def _lab_days(rng: np.random.Generator, study_days: list[int]) -> list[int]:
    """0-3 days before each study, and halfway to the next."""
    days = []
    for n, day in enumerate(study_days):
        days.append(day - int(rng.integers(0, 4)))
        if n + 1 < len(study_days):
            days.append((day + study_days[n + 1]) // 2)
    return days


def labs_simulate(
    rng: np.random.Generator,
    *,
    patient_id: str,
    sex: str,
    baseline_date: dt.date,
    course: DiseaseCourse,
    lesions: tuple[SimulatedLesion, ...],
) -> tuple[LabRecord, ...]:
    """Labs drawn 0-3 days before each study and once between studies, until the end."""
    a, end_day, death_day = course.aggressiveness, course.end_day, course.death_day
    secretor = rng.normal(0.0, 0.6)
    hb_base = (13.2 if sex == "F" else 14.6) + rng.normal(0.0, 0.6)
    out = []
    for day in _lab_days(rng, course.study_days):
        if day >= end_day:
            continue
        burden = sum(lesion.volume_ml(day) for lesion in lesions)
        frail = float(np.exp(-(death_day - day) / 60.0))
        lb = np.log1p(burden / 30.0)
        values = {
            "cea": np.exp(np.log(2.0) + 0.35 * a + secretor + 0.9 * np.log1p(burden / 8.0) + rng.normal(0, 0.12)),
            "ldh": 170.0 * np.exp(0.06 * a + 0.18 * lb + rng.normal(0, 0.07)) * (1 + 0.5 * frail),
            "crp": np.exp(np.log(3.0) + 0.45 * a + 0.45 * np.log1p(burden / 15.0) + rng.normal(0, 0.35)) * (1 + 3 * frail),
            "albumin": np.clip(4.3 - 0.12 * a - 0.18 * lb - 0.8 * frail + rng.normal(0, 0.15), 1.8, 5.2),
            "hemoglobin": np.clip(hb_base - 0.35 * a - 0.35 * lb - 1.5 * frail + rng.normal(0, 0.4), 6.5, 17.5),
        }  # fmt: skip
        minutes = int(rng.integers(7 * 60 + 30, 10 * 60 + 30))
        observed_at = dt.datetime.combine(
            baseline_date + dt.timedelta(days=day),
            dt.time(minutes // 60, minutes % 60),
            tzinfo=dt.UTC,
        )
        for test in LAB_TESTS:
            value = round(float(values[test.key]), test.decimals)
            out.append(LabRecord(patient_id, test, value, observed_at))
    return tuple(out)
