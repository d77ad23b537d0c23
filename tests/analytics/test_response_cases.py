"""The response rules' own case table (no database): the guideline's Tables 1, 2 and 3 and
the cases an independent check of RECIST 1.1 found wrong, each a whole timeline run
through the finding states (`analytics.lesions.core.findings`) and the assessment
(`analytics.lesions.core.assess`), as the tracking does.

Sources: Eisenhauer EA et al., Eur J Cancer 2009;45:228-247 (RECIST 1.1, by section);
Schwartz LH et al., Eur J Cancer 2016;62:132-137 (the RECIST committee's clarifications).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import pytest

from analytics.lesions.core.assess import recist_assess
from analytics.lesions.core.bor import BestResponseSettings, best_overall_response
from analytics.lesions.core.findings import Sighting, finding_states
from analytics.lesions.core.readings import LesionReading, StudyReading
from analytics.lesions.core.recist import overall_response

NAN = math.nan
START = dt.date(2024, 1, 1)


@dataclass(frozen=True)
class Seen:
    """A lesion as a study shows it (test shorthand): ``ld`` mm (None: not found there)."""

    ld: float | None
    organ: str = "liver"
    sa: float = NAN
    confidence: float = 0.95
    review: str = "pending"
    gone: bool = False
    too_small: bool = False
    merged_into: str = ""
    target: bool | None = None
    outside: bool = False


def run(*studies: tuple[int, dict[str, Seen]], slice_mm: float | None = None, verdicts=None):
    """Each study (day, {uid: Seen}) -> finding states -> readings -> RECIST 1.1."""
    sightings = []
    for index, (day, lesions) in enumerate(studies):
        for uid, s in lesions.items():
            sightings.append(
                Sighting(
                    lesion_uid=uid,
                    label=uid,
                    study_index=index,
                    study_date=START + dt.timedelta(days=day),
                    organ=s.organ,
                    found=s.ld is not None and not s.gone and not s.merged_into,
                    gone_confirmed=s.gone,
                    merged_into_label=s.merged_into,
                    too_small=s.too_small,
                    outside_range=s.outside,
                    longest_diameter_mm=NAN if s.ld is None else s.ld,
                    short_axis_mm=s.sa if not math.isnan(s.sa) else (s.ld or NAN) * 0.8,
                    confidence=s.confidence,
                    review_state=s.review,
                    reviewed_at=dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(days=index)
                    if s.review != "pending"
                    else None,
                    slice_thickness_mm=slice_mm,
                )
            )
    states = finding_states(sightings=sightings)
    timeline = []
    for index, (day, lesions) in enumerate(studies):
        readings = []
        for uid, s in lesions.items():
            state = states[(uid, index)]
            if state.state == "rejected":
                continue
            gone = s.gone or bool(s.merged_into)
            readings.append(
                LesionReading(
                    lesion_uid=uid,
                    organ=s.organ,
                    longest_diameter_mm=0.0 if gone else (NAN if s.ld is None else s.ld),
                    volume_ml=0.0 if gone else NAN,
                    short_axis_mm=0.0 if gone else s.sa,
                    is_target=s.target if index == 0 else None,
                    state=state.state,
                    note=state.reason,
                    too_small=s.too_small,
                    merged_into=s.merged_into,
                    label=uid,
                )
            )
        verdict = (verdicts or {}).get(index)
        timeline.append(
            StudyReading(
                f"S{index}",
                START + dt.timedelta(days=day),
                tuple(readings),
                non_target_unequivocal_progression=verdict,
                slice_thickness_mm=slice_mm,
            )
        )
    return recist_assess(timeline=timeline), states


def categories(rows):
    return [r.category for r in rows[1:]]


# --------------------------------------------------------------------------- Tables 1, 2
TABLE_1 = [
    ("CR", "CR", False, "CR"),
    ("CR", "non-CR/non-PD", False, "PR"),
    ("CR", "NE", False, "PR"),
    ("PR", "non-CR/non-PD", False, "PR"),
    ("PR", "NE", False, "PR"),
    ("PR", "CR", False, "PR"),
    ("SD", "non-CR/non-PD", False, "SD"),
    ("SD", "NE", False, "SD"),
    ("SD", "CR", False, "SD"),
    ("NE", "non-CR/non-PD", False, "NE"),
    ("NE", "CR", False, "NE"),
    *[("PD", nt, new, "PD") for nt in ("CR", "non-CR/non-PD", "NE", "PD") for new in (False, True)],
    *[(t, "PD", new, "PD") for t in ("CR", "PR", "SD", "NE") for new in (False, True)],
    *[
        (t, nt, True, "PD")
        for t in ("CR", "PR", "SD", "NE")
        for nt in ("CR", "non-CR/non-PD", "NE")
    ],
    ("CR", None, False, "CR"),  # no non-target disease at all
]
TABLE_2 = [
    ("CR", False, "CR"),
    ("non-CR/non-PD", False, "non-CR/non-PD"),
    ("NE", False, "NE"),
    ("PD", False, "PD"),
    ("PD", True, "PD"),
    ("CR", True, "PD"),
    ("non-CR/non-PD", True, "PD"),
    ("NE", True, "PD"),
]


@pytest.mark.parametrize(("target", "non_target", "new", "expected"), TABLE_1)
def test_table_1_time_point_response_with_target_disease(target, non_target, new, expected):
    assert overall_response(target=target, non_target=non_target, new_lesions=new) == expected


@pytest.mark.parametrize(("non_target", "new", "expected"), TABLE_2)
def test_table_2_time_point_response_with_non_target_disease_only(non_target, new, expected):
    assert overall_response(target=None, non_target=non_target, new_lesions=new) == expected


# --------------------------------------------------------------------------- equivocal
BASE = {"t1": Seen(30), "t2": Seen(20, organ="lung")}


def test_a_4_mm_false_detection_seen_once_is_never_progression():
    rows, states = run(
        (0, BASE),
        (60, {"t1": Seen(29), "t2": Seen(19, organ="lung"), "fp": Seen(4)}),
        (120, {"t1": Seen(29), "t2": Seen(19, organ="lung"), "fp": Seen(None)}),
    )
    assert categories(rows) == ["SD", "SD"]
    assert states[("fp", 1)].state == "equivocal" and "small" in states[("fp", 1)].reason
    assert "PD pending confirmation of one equivocal new lesion: fp (4.0 mm)" in rows[1].notes[-1]
    assert rows[1].pending and rows[1].attention and not rows[1].new_lesions
    assert states[("fp", 2)].state == "not_found"  # an equivocal finding not seen again


def test_an_equivocal_new_lesion_confirmed_later_is_pd_from_its_first_sighting():
    rows, states = run(
        (0, BASE),
        (60, {"t1": Seen(29), "t2": Seen(19, organ="lung"), "n": Seen(8)}),  # small: equivocal
        (
            120,
            {"t1": Seen(29), "t2": Seen(19, organ="lung"), "n": Seen(14)},
        ),  # measurable: confirms
    )
    assert categories(rows) == ["PD", "PD"]
    assert rows[1].progression_dated_from == START + dt.timedelta(days=60)
    assert rows[2].progression_dated_from == START + dt.timedelta(days=60)
    assert (
        states[("n", 1)].state == "confirmed"
        and "seen again on 2024-04-30" in states[("n", 1)].reason
    )


def test_a_small_new_lesion_seen_again_still_small_stays_equivocal():
    rows, _ = run(
        (0, BASE),
        (60, {"t1": Seen(29), "t2": Seen(19, organ="lung"), "n": Seen(5)}),
        (120, {"t1": Seen(29), "t2": Seen(19, organ="lung"), "n": Seen(6)}),
    )
    assert categories(rows) == ["SD", "SD"]
    assert "first seen on 2024-03-01" in rows[2].notes[-1]


def test_an_equivocal_new_lesion_accepted_by_a_radiologist_counts_at_once():
    rows, _ = run(
        (0, BASE),
        (60, {"t1": Seen(29), "t2": Seen(19, organ="lung"), "n": Seen(6, review="accepted")}),
    )
    assert categories(rows) == ["PD"] and rows[1].new_lesions


def test_a_large_confident_new_lesion_seen_once_is_still_pending():
    rows, states = run(
        (0, BASE), (60, {"t1": Seen(29), "t2": Seen(19, organ="lung"), "n": Seen(25)})
    )
    assert categories(rows) == ["SD"] and "seen once" in states[("n", 1)].reason


def test_a_lesion_registered_16_mm_off_is_ne_not_pd():
    # The tracker sees the target as not found plus a new lesion where it really is.
    rows, _ = run(
        (0, BASE),
        (60, {"t1": Seen(None), "t2": Seen(19, organ="lung"), "t1b": Seen(29)}),
    )
    assert categories(rows) == ["NE"]
    assert any("target t1 not evaluated: not found at this study" in n for n in rows[1].notes)
    assert rows[1].pending and not rows[1].new_lesions


def test_a_split_fragment_apart_from_its_parent_and_a_changed_organ_are_not_pd():
    rows, _ = run(
        (0, BASE),
        (60, {"t1": Seen(15), "t2": Seen(19, organ="lung"), "frag": Seen(9)}),
        (120, {"t1": Seen(15), "t2": Seen(None, organ="lung"), "t2liver": Seen(18)}),
    )
    assert categories(rows) == ["PR", "NE"]  # -32% at 60 days; the lung target not found
    assert rows[1].pending and rows[2].pending


def test_a_rejection_holds_for_the_lesion_at_every_study():
    rows, states = run(
        (0, {**BASE, "fp": Seen(14, review="rejected")}),
        (60, {"t1": Seen(29), "t2": Seen(19, organ="lung"), "fp": Seen(14)}),
    )
    assert states[("fp", 1)].state == "rejected"
    assert "fp" not in rows[0].target_uids + rows[0].non_target_uids
    assert categories(rows) == ["SD"] and not rows[1].pending


def test_a_rejection_is_lifted_by_a_later_acceptance():
    _, states = run(
        (0, {**BASE, "x": Seen(14, review="rejected")}),
        (60, {"t1": Seen(29), "t2": Seen(19, organ="lung"), "x": Seen(14, review="accepted")}),
    )
    assert states[("x", 0)].state == "confirmed" and states[("x", 1)].state == "confirmed"


# --------------------------------------------------------------------------- not found
def test_a_target_not_found_is_ne_and_never_0_mm():
    rows, states = run((0, BASE), (60, {"t1": Seen(None), "t2": Seen(None, organ="lung")}))
    assert categories(rows) == ["NE"]  # an empty follow-up is not a complete response
    assert states[("t1", 1)].state == "not_found"
    assert math.isnan(rows[1].pct_change_baseline)


def test_a_target_outside_the_scanned_range_says_so():
    rows, _ = run((0, BASE), (60, {"t1": Seen(29), "t2": Seen(None, organ="lung", outside=True)}))
    assert categories(rows) == ["NE"]
    assert any("outside the scanned range" in n for n in rows[1].notes)


def test_targets_confirmed_gone_make_a_complete_response():
    rows, _ = run(
        (0, BASE), (60, {"t1": Seen(None, gone=True), "t2": Seen(None, organ="lung", gone=True)})
    )
    assert categories(rows) == ["CR"] and rows[1].sum_diameters_mm == 0.0


def test_too_small_to_measure_counts_5_mm_not_0():
    rows, _ = run(
        (0, BASE),
        (60, {"t1": Seen(None, too_small=True), "t2": Seen(None, organ="lung", gone=True)}),
    )
    assert rows[1].sum_diameters_mm == 5.0 and categories(rows) == ["PR"]
    # A measurement below 5 mm is kept as measured (the 2016 clarifications).
    rows, _ = run((0, BASE), (60, {"t1": Seen(3), "t2": Seen(None, organ="lung", gone=True)}))
    assert rows[1].sum_diameters_mm == 3.0


# --------------------------------------------------------------------------- reappearance
def test_a_target_back_after_a_complete_response_is_pd_once_confirmed():
    gone = {"t1": Seen(None, gone=True), "t2": Seen(None, organ="lung", gone=True)}
    rows, _ = run((0, BASE), (60, gone), (120, {**gone, "t1": Seen(4, review="accepted")}))
    assert categories(rows) == ["CR", "PD"] and rows[2].reappearance
    assert any("reappeared after the complete response" in n for n in rows[2].notes)


def test_an_automated_finding_back_after_a_complete_response_is_pending_not_pd():
    # One doubtful 4 mm finding linked to a lesion a radiologist confirmed gone: held to
    # the new-lesion rule (RECIST 1.1 section 4.3.5), so the CR stands, flagged, until a
    # radiologist accepts it or a later study sees it again unequivocally.
    gone = {"t1": Seen(None, gone=True), "t2": Seen(None, organ="lung", gone=True)}
    rows, states = run((0, BASE), (60, gone), (120, {**gone, "t1": Seen(4, confidence=0.55)}))
    assert categories(rows) == ["CR", "CR"] and not rows[2].reappearance
    assert rows[2].attention and [p.lesion_uid for p in rows[2].pending] == ["t1"]
    assert rows[2].sum_diameters_mm == 0.0
    assert (
        "PD pending confirmation of one equivocal lesion back after it was confirmed gone: "
        "t1 (4.0 mm), first seen again on 2024-04-30" in rows[2].notes[-1]
    )
    assert states[("t1", 2)].state == "equivocal"
    assert "back after it was confirmed gone on 2024-03-01" in states[("t1", 2)].reason
    assert "low confidence (0.55)" in states[("t1", 2)].reason
    # Seen again, measurable and confident: confirmed, and PD from its first return.
    rows, states = run(
        (0, BASE),
        (60, gone),
        (120, {**gone, "t1": Seen(4, confidence=0.55)}),
        (180, {**gone, "t1": Seen(12)}),
    )
    assert categories(rows) == ["CR", "PD", "PD"] and rows[2].reappearance
    assert states[("t1", 2)].state == "confirmed"
    assert "confirmed: seen again on 2024-06-29 (12.0 mm)" in states[("t1", 2)].reason
    # Gone again at the next study: the doubtful finding never counted.
    rows, _ = run(
        (0, BASE),
        (60, gone),
        (120, {**gone, "t1": Seen(4, confidence=0.55)}),
        (180, gone),
    )
    assert categories(rows) == ["CR", "CR", "CR"]


def test_a_non_target_back_after_a_complete_response_is_pd():
    base = {**BASE, "nt": Seen(6)}
    gone = {
        "t1": Seen(None, gone=True),
        "t2": Seen(None, organ="lung", gone=True),
        "nt": Seen(None, gone=True),
    }
    rows, _ = run((0, base), (60, gone), (120, {**gone, "nt": Seen(5, review="accepted")}))
    assert categories(rows) == ["CR", "PD"]
    rows, _ = run((0, base), (60, gone), (120, {**gone, "nt": Seen(5)}))
    assert categories(rows) == ["CR", "CR"] and rows[2].pending


def test_a_lesion_back_after_a_partial_response_re_enters_the_sum_once_confirmed():
    partial = {"t1": Seen(18), "t2": Seen(None, organ="lung", gone=True)}
    rows, _ = run((0, BASE), (60, partial), (120, {"t1": Seen(18), "t2": Seen(4, organ="lung")}))
    assert categories(rows) == ["PR", "PR"] and rows[2].sum_diameters_mm == 18.0
    assert rows[2].pending and rows[2].attention
    rows, _ = run(
        (0, BASE),
        (60, partial),
        (120, {"t1": Seen(18), "t2": Seen(4, organ="lung", review="accepted")}),
    )
    assert categories(rows) == ["PR", "PR"] and rows[2].sum_diameters_mm == 22.0


# --------------------------------------------------------------------------- coalescence
def test_a_target_absorbed_by_a_non_target_carries_the_coalesced_diameter():
    base = {"t1": Seen(20), "nt": Seen(8)}
    rows, _ = run((0, base), (60, {"t1": Seen(None, merged_into="nt"), "nt": Seen(26)}))
    assert rows[1].sum_diameters_mm == 26.0 and categories(rows) == ["PD"]  # +30%, +6 mm
    assert any("coalesced" in n for n in rows[1].notes)


def test_two_targets_coalescing_count_the_coalesced_diameter_once():
    base = {"a": Seen(20), "b": Seen(15, organ="lung")}
    rows, _ = run((0, base), (60, {"a": Seen(30), "b": Seen(None, organ="lung", merged_into="a")}))
    assert rows[1].sum_diameters_mm == 30.0 and categories(rows) == ["SD"]


# --------------------------------------------------------------------------- non-targets
def test_non_target_growth_with_measurable_disease_is_for_review():
    base = {"t1": Seen(30), "nt": Seen(8)}
    rows, _ = run((0, base), (60, {"t1": Seen(30), "nt": Seen(14)}))
    assert categories(rows) == ["SD"] and rows[1].possible_non_target_progression
    rows, _ = run((0, base), (60, {"t1": Seen(30), "nt": Seen(14)}), verdicts={1: True})
    assert categories(rows) == ["PD"]


def test_non_target_growth_without_measurable_disease_is_pd_by_the_yardstick():
    rows, _ = run((0, {"nt": Seen(8)}), (60, {"nt": Seen(14)}))
    assert categories(rows) == ["PD"]


# --------------------------------------------------------------------------- measurability
def test_measurability_uses_the_slice_thickness():
    base = {"a": Seen(11), "b": Seen(30, organ="lung")}
    rows, _ = run((0, base), (60, base), slice_mm=6.0)
    assert rows[0].target_uids == ("b",) and rows[0].non_target_uids == ("a",)  # 11 < 12
    rows, _ = run((0, base), (60, base), slice_mm=5.0)
    assert set(rows[0].target_uids) == {"a", "b"}


def test_a_hand_chosen_target_that_is_not_measurable_is_followed_as_a_non_target():
    base = {"a": Seen(11, target=True), "b": Seen(30, organ="lung", target=True)}
    rows, _ = run((0, base), (60, base), slice_mm=6.0)
    assert rows[0].target_uids == ("b",) and rows[0].non_target_uids == ("a",)
    assert any("a was chosen as a target but measures 11.0 mm" in n for n in rows[0].notes)


# --------------------------------------------------------------------------- lymph nodes
NODE = "lymph_node"


def test_lymph_nodes_by_their_short_axis():
    base = {
        "n_target": Seen(25, organ=NODE, sa=16),  # >= 15: measurable, a target
        "n_path": Seen(20, organ=NODE, sa=12),  # 10 to 15: pathological, a non-target
        "n_normal": Seen(12, organ=NODE, sa=8),  # < 10: normal, not recorded
        "liver": Seen(30),
    }
    rows, _ = run((0, base), (60, base))
    assert set(rows[0].target_uids) == {"n_target", "liver"}
    assert rows[0].non_target_uids == ("n_path",)
    assert rows[0].sum_diameters_mm == 16 + 30  # the short axis in the sum
    assert any("n_normal" in n and "normal" in n for n in rows[0].notes)


def test_a_complete_response_allows_nodes_under_10_mm():
    base = {
        "node": Seen(25, organ=NODE, sa=16),
        "liver": Seen(30),
        "nt_node": Seen(18, organ=NODE, sa=12),
    }
    after = {
        "node": Seen(12, organ=NODE, sa=8),
        "liver": Seen(None, gone=True),
        "nt_node": Seen(11, organ=NODE, sa=9),
    }
    rows, _ = run((0, base), (60, after))
    assert rows[1].target_response == "CR" and rows[1].non_target_response == "CR"
    assert categories(rows) == ["CR"] and rows[1].sum_diameters_mm == 8.0


def test_new_lymph_nodes_under_10_mm_are_not_lesions_and_10_to_15_mm_are_equivocal():
    rows, states = run(
        (0, BASE),
        (60, {"t1": Seen(29), "t2": Seen(19, organ="lung"), "small": Seen(9, organ=NODE, sa=8)}),
    )
    assert categories(rows) == ["SD"] and not rows[1].pending
    assert "normal-sized lymph node" in states[("small", 1)].reason
    rows, _ = run(
        (0, BASE),
        (60, {"t1": Seen(29), "t2": Seen(19, organ="lung"), "mid": Seen(15, organ=NODE, sa=12)}),
        (120, {"t1": Seen(29), "t2": Seen(19, organ="lung"), "mid": Seen(20, organ=NODE, sa=16)}),
    )
    assert categories(rows) == ["PD", "PD"]  # confirmed at 16 mm, dated from day 60


# --------------------------------------------------------------------------- Table 3
def bor(*categories_by_day, confirmation=True, baseline=START):
    points = [(START + dt.timedelta(days=d), c) for d, c in categories_by_day]
    return best_overall_response(
        timepoints=points,
        baseline_date=baseline,
        settings=BestResponseSettings(require_confirmation=confirmation),
    )


@pytest.mark.parametrize(
    ("first", "second", "days_apart", "expected"),
    [
        ("CR", "CR", 28, "CR"),
        ("CR", "PR", 28, "PR"),  # the original CR changed to PR (Table 3's footnote)
        ("CR", "SD", 28, "SD"),
        ("CR", "PD", 28, "SD"),
        ("CR", "NE", 28, "SD"),
        ("PR", "CR", 28, "PR"),
        ("PR", "PR", 28, "PR"),
        ("PR", "SD", 28, "SD"),
        ("PR", "PD", 28, "SD"),
        ("PR", "NE", 28, "SD"),
        ("NE", "NE", 28, "NE"),
    ],
)
def test_table_3_with_stable_disease_long_enough(first, second, days_apart, expected):
    # First assessment at 56 days: past the 42-day minimum for SD.
    assert bor((56, first), (56 + days_apart, second)).category == expected


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        (
            "CR",
            "SD",
            "PD",
        ),  # Table 3: SD "provided minimum criteria for SD duration met, otherwise PD"
        ("CR", "PD", "PD"),
        ("CR", "NE", "NE"),
        ("PR", "PD", "PD"),
        ("PR", "NE", "NE"),
    ],
)
def test_table_3_when_stable_disease_came_too_early(first, second, expected):
    assert bor((28, first), (41, second)).category == expected


def test_confirmation_needs_4_weeks_and_stable_disease_its_minimum():
    assert bor((56, "PR"), (83, "PR")).category == "SD"  # 27 days: not confirmed
    assert bor((56, "PR"), (84, "PR")).category == "PR"
    assert bor((41, "SD")).category == "NE"  # under 42 days
    assert bor((42, "SD")).category == "SD"
    assert bor((41, "SD"), (60, "PD")).category == "PD"


def test_progression_ends_the_course_and_confirmation_can_be_switched_off():
    assert bor((42, "PD"), (100, "CR"), (140, "CR")).category == "PD"
    assert bor((56, "PR"), confirmation=False).category == "PR"
    assert bor((56, "non-CR/non-PD")).category == "non-CR/non-PD"
    best = bor((56, "PR"), (90, "PR"))
    assert best.date == START + dt.timedelta(days=56)
    assert best.confirmed_on == START + dt.timedelta(days=90)
