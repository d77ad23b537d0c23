"""A radiologist's choice of the RECIST 1.1 target lesions at baseline (an empty choice
returns to the rules), kept as ``target_by_hand`` on the baseline rows, which
re-tracking carries by their segmentation candidates."""

from __future__ import annotations

from collections.abc import Sequence

from django.db import transaction

from analytics.lesions.core.recist import MAX_TARGETS_PER_ORGAN, MAX_TARGETS_TOTAL, is_measurable
from analytics.lesions.review.common import (
    Reviewer,
    ReviewError,
    patient_lock,
    patient_recompute,
    reason_clean,
    responses_state,
    review_event_write,
    reviewer_require,
    targets_state,
)
from imaging.models import Lesion, LesionMeasurement, ReviewEvent, study_order
from patients.models import Patient


def targets_set(
    *, user: Reviewer, patient: Patient, lesions: Sequence[Lesion], reason: str
) -> ReviewEvent:
    """Choose the RECIST 1.1 target lesions by hand (an empty choice returns to the rules).

    Each target must be found at baseline, not rejected, and measurable (longest
    diameter in force >= 10 mm, or twice the slice thickness above 5 mm; a lymph node
    by its short axis, 15 mm: RECIST 1.1 section 3.1.1); at most 5 in all and 2 per
    organ (section 4.2).
    """
    reviewer_require(user)
    reason = reason_clean(reason, required=True, action="change the target lesions")
    with transaction.atomic():
        patient = patient_lock(patient.pk)
        rows = list(
            LesionMeasurement.objects.filter(lesion__patient=patient)
            .select_related("study__chosen_series", "lesion")
            .order_by(*study_order("study__"))
        )
        if not rows:
            raise ReviewError("lesions: this patient has no tracked lesions")
        at_baseline = _baseline_rows(rows)
        baseline = _speaking_rows(at_baseline)
        wanted = {lesion.pk for lesion in lesions}
        _targets_check(wanted, baseline, rows)
        before = {"responses": responses_state(patient), "targets": targets_state(patient)}
        for row in at_baseline:
            row.is_target = row.lesion_id in wanted
            row.target_by_hand = bool(wanted)
        LesionMeasurement.objects.bulk_update(at_baseline, ["is_target", "target_by_hand"])
        summary, scored = patient_recompute(patient)
        return review_event_write(
            patient=patient,
            user=user,
            action="targets" if wanted else "targets_automatic",
            reason=reason,
            before=before,
            after={"chosen_by_hand": bool(wanted)},
            measurement=None,
            summary=summary,
            scored=scored,
            subject={
                "lesion_uids": sorted(
                    baseline[pk].lesion.tracking_uid for pk in wanted if pk in baseline
                ),
                "lesion_labels": sorted(
                    baseline[pk].lesion.label for pk in wanted if pk in baseline
                ),
                "study_instance_uid": rows[0].study.study_instance_uid,
                "baseline_studies": sorted({r.study.study_instance_uid for r in at_baseline}),
            },
        )


def _baseline_rows(rows: Sequence[LesionMeasurement]) -> list[LesionMeasurement]:
    """The rows of the baseline time point: every study of the first study's date (a
    chest CT and an abdomen CT the same day are one time point; an undated first study
    stands alone). ``rows`` in study order."""
    first = rows[0].study
    if first.study_date is None:
        return [r for r in rows if r.study_id == first.pk]
    return [r for r in rows if r.study.study_date == first.study_date]


def _speaking_rows(rows: Sequence[LesionMeasurement]) -> dict[int, LesionMeasurement]:
    """Each lesion's row that speaks for the baseline date (lesion pk -> row): one that
    found it, the larger where two did (as `analytics.lesions.core.timepoints` reads a
    time point)."""
    best: dict[int, LesionMeasurement] = {}
    for row in rows:
        held = best.get(row.lesion_id)
        if held is None or _standing(row) > _standing(held):
            best[row.lesion_id] = row
    return best


def _standing(row: LesionMeasurement) -> tuple[bool, float]:
    size = row.effective_longest_diameter_mm if row.is_found else None
    return row.is_found, size if size is not None and size == size else -1.0


def _targets_check(
    wanted: set[int],
    baseline: dict[int, LesionMeasurement],
    rows: Sequence[LesionMeasurement],
) -> None:
    """A `ReviewError` unless every wanted lesion (by pk) may be a target and the choice
    keeps RECIST 1.1's limits."""
    per_organ: dict[str, int] = {}
    for pk in sorted(wanted):
        row = baseline.get(pk)
        _target_check(row, pk, rows)
        per_organ[row.lesion.organ] = per_organ.get(row.lesion.organ, 0) + 1
    if len(wanted) > MAX_TARGETS_TOTAL:
        raise ReviewError(
            f"lesions: at most {MAX_TARGETS_TOTAL} targets (RECIST 1.1 section 4.2), "
            f"not {len(wanted)}"
        )
    crowded = [organ for organ, n in per_organ.items() if n > MAX_TARGETS_PER_ORGAN]
    if crowded:
        raise ReviewError(
            f"lesions: at most {MAX_TARGETS_PER_ORGAN} targets per organ (RECIST 1.1 "
            f"section 4.2); {', '.join(crowded)} has more"
        )


def _target_check(
    row: LesionMeasurement | None, pk: int, rows: Sequence[LesionMeasurement]
) -> None:
    """One lesion's baseline row may be a target: found, not rejected, measurable
    (RECIST 1.1 section 3.1.1: 10 mm, or twice a slice thickness over 5 mm; a lymph
    node 15 mm in short axis)."""
    if row is None or not row.is_found:
        raise ReviewError(
            f"lesions: a target must be found at baseline; {_lesion_name(pk, rows)} is not"
        )
    if (
        row.review_state == LesionMeasurement.Review.REJECTED
        or row.finding_state == LesionMeasurement.FindingState.REJECTED
    ):
        raise ReviewError(
            f"lesions: {row.lesion.label} was rejected as a false positive at baseline"
        )
    node = row.lesion.organ == Lesion.Organ.LYMPH_NODE
    thickness = row.study.chosen_series.slice_thickness_mm if row.study.chosen_series else None
    if not is_measurable(
        longest_diameter_mm=row.effective_longest_diameter_mm,
        slice_thickness_mm=thickness,
        short_axis_mm=row.effective_short_axis_mm,
        is_node=node,
    ):
        size = (
            f"{row.effective_short_axis_mm:.1f} mm in short axis (a node needs 15 mm)"
            if node
            else f"{row.effective_longest_diameter_mm:.1f} mm"
            + (f" with {thickness:g} mm slices" if thickness and thickness > 5 else "")
        )
        raise ReviewError(
            f"lesions: {row.lesion.label} measures {size} at baseline; a target must be "
            "measurable (at least 10 mm, or twice the slice thickness above 5 mm; RECIST "
            "1.1 section 3.1.1)"
        )


def _lesion_name(pk: int, rows: Sequence[LesionMeasurement]) -> str:
    for row in rows:
        if row.lesion_id == pk:
            return row.lesion.label
    return f"lesion {pk}"
