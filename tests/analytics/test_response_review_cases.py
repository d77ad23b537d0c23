"""A second, independent case table for the response rules (no database): each case
hand-computed from RECIST 1.1 (Eisenhauer EA et al., Eur J Cancer 2009;45:228-247,
by section and table), the RECIST working group's questions and clarifications
(recist.eortc.org) and iRECIST (Seymour L et al., Lancet Oncol 2017;18:e143-e152), with
the arithmetic in the comments. Timelines go through the finding states and the
assessment as the tracking does (`tests.analytics.test_response_cases.run`).
"""

from __future__ import annotations

import datetime as dt

import pytest

from analytics.lesions.core.bor import BestResponseSettings, best_overall_response
from analytics.lesions.core.patient import patient_responses_assess
from analytics.lesions.core.readings import LesionReading, StudyReading
from analytics.lesions.core.volumetric import volumetric_assess
from tests.analytics.test_response_cases import BASE, NODE, START, Seen, categories, run

LUNG = "lung"


def day(n: int) -> dt.date:
    return START + dt.timedelta(days=n)


# --------------------------------------------------------------------------- lymph nodes
def test_target_nodes_under_10_mm_stay_cr_though_their_sum_grows_20_percent_and_5_mm():
    base = {"n1": Seen(25, organ=NODE, sa=16), "n2": Seen(25, organ=NODE, sa=17)}  # sum 33
    rows, _ = run(
        (0, base),
        (60, {"n1": Seen(6, organ=NODE, sa=4), "n2": Seen(6, organ=NODE, sa=4)}),  # 8: all < 10
        # 18 mm: +125% and +10 mm from the nadir of 8, but both nodes still normal (< 10 mm):
        # a target node has "reappeared" only at 10 mm or more (working group, abnormal
        # lymph node), so the targets are still a complete response, sum not 0.
        (120, {"n1": Seen(12, organ=NODE, sa=9), "n2": Seen(12, organ=NODE, sa=9)}),
        (180, {"n1": Seen(14, organ=NODE, sa=11), "n2": Seen(12, organ=NODE, sa=9)}),  # back
    )
    assert [r.sum_diameters_mm for r in rows] == [33.0, 8.0, 18.0, 20.0]
    assert categories(rows) == ["CR", "CR", "PD"]
    assert rows[3].reappearance and "n1 reappeared after the complete response" in rows[3].notes[0]


def test_a_non_target_node_back_at_10_mm_after_cr_is_for_review_not_pd():
    base = {"t1": Seen(30), "nn": Seen(15, organ=NODE, sa=12)}
    complete = {"t1": Seen(None, gone=True), "nn": Seen(10, organ=NODE, sa=8)}  # node normal
    back = {"t1": Seen(None, gone=True), "nn": Seen(13, organ=NODE, sa=11)}
    rows, _ = run((0, base), (60, complete), (120, back))
    # Target CR + non-target non-CR/non-PD (a node of 11 mm) = PR (Table 1); a non-target
    # node reappears only when it progressed unequivocally: a radiologist's call.
    assert categories(rows) == ["CR", "PR"]
    assert rows[2].possible_non_target_progression and rows[2].attention
    assert "lymph node nn is 10 mm or more again" in rows[2].notes[0]
    rows, _ = run((0, base), (60, complete), (120, back), verdicts={2: True})
    assert categories(rows) == ["CR", "PD"]


def test_a_node_normal_at_baseline_that_grows_is_a_new_lesion_only_once_confirmed():
    grown = {"t1": Seen(29), "t2": Seen(19, organ=LUNG), "node": Seen(14, organ=NODE, sa=12)}
    base = {**BASE, "node": Seen(10, organ=NODE, sa=8)}  # 8 mm: normal, not recorded
    rows, states = run((0, base), (60, grown))
    # 8 -> 12 mm "may not represent true disease" (working group, new lymph node lesions):
    # equivocal, dated from the study where it first reached 10 mm, not from baseline.
    assert categories(rows) == ["SD"] and not rows[1].new_lesions
    assert states[("node", 0)].state == "confirmed" and states[("node", 1)].state == "equivocal"
    assert rows[1].pending[0].first_seen == day(60)
    assert (
        "PD pending confirmation of one equivocal new lesion: node (12.0 mm)" in rows[1].notes[-1]
    )
    confirmed = {**grown, "node": Seen(20, organ=NODE, sa=16)}  # 16 mm: measurable, confirms
    rows, _ = run((0, base), (60, grown), (120, confirmed))
    assert categories(rows) == ["PD", "PD"]
    assert rows[1].progression_dated_from == rows[2].progression_dated_from == day(60)


# --------------------------------------------------------------------------- sizes
def test_too_small_to_measure_counts_5_mm_and_the_absolute_floor_keeps_it_pr():
    # Sum 50 at baseline; 3 mm measured (kept as measured) + the lung target gone = 3;
    # then "too small to measure" = 5 mm: +67% from the nadir of 3 but only +2 mm, so not
    # PD (section 4.3.1 needs +5 mm too), and -90% from baseline: PR; then gone: CR.
    gone_lung = Seen(None, organ=LUNG, gone=True)
    rows, _ = run(
        (0, BASE),
        (60, {"t1": Seen(3), "t2": gone_lung}),
        (120, {"t1": Seen(None, too_small=True), "t2": gone_lung}),
        (180, {"t1": Seen(None, gone=True), "t2": gone_lung}),
    )
    assert [r.sum_diameters_mm for r in rows[1:]] == [3.0, 5.0, 0.0]
    assert categories(rows) == ["PR", "PR", "CR"]


def test_a_target_not_found_with_the_others_already_progressing_is_pd_not_ne():
    # Section 4.4.2: the measured target alone, 65 mm, is +30% and +15 mm over the nadir
    # of 50, so the missing one cannot change the answer.
    rows, _ = run((0, BASE), (60, {"t1": Seen(None), "t2": Seen(65, organ=LUNG)}))
    assert categories(rows) == ["PD"]
    rows, _ = run((0, BASE), (60, {"t1": Seen(None), "t2": Seen(22, organ=LUNG)}))
    assert categories(rows) == ["NE"]


def test_two_targets_absorbed_by_one_non_target_carry_its_diameter_once():
    # Targets a 20 + b 15 = 35; both coalesce into the non-target (30 mm). The first target
    # carries 30, the other 0 (section 4.3.2): 30 is -14%, SD; reading both as gone
    # would have made a false CR.
    base = {"a": Seen(20), "b": Seen(15, organ=LUNG), "nt": Seen(8)}
    merged = {
        "a": Seen(None, merged_into="nt"),
        "b": Seen(None, organ=LUNG, merged_into="nt"),
        "nt": Seen(30),
    }
    rows, _ = run((0, base), (60, merged))
    assert rows[0].target_uids == ("a", "b") and rows[1].sum_diameters_mm == 30.0
    assert categories(rows) == ["SD"]


# --------------------------------------------------------------------------- continuing PR
TWO = {"a": Seen(60), "b": Seen(40, organ=LUNG)}  # sum 100


def sums(a: float, b: float) -> dict[str, Seen]:
    return {"a": Seen(a), "b": Seen(b, organ=LUNG)}


def test_a_confirmed_pr_continues_until_pd_from_the_nadir():
    # The working group's example: sums 100, 70, 70, 80, 80. 70 is -30% (PR), confirmed
    # 56 days later; 80 is -20% from baseline (short of PR) but +14% from the nadir of 70
    # (not PD): a continuing PR. 84 is +20% and +14 mm from 70: PD.
    rows, _ = run(
        (0, TWO),
        (56, sums(42, 28)),
        (112, sums(42, 28)),
        (168, sums(48, 32)),
        (224, sums(48, 32)),
        (280, sums(50.4, 33.6)),
    )
    assert categories(rows) == ["PR", "PR", "PR", "PR", "PD"]
    assert rows[3].continuing_response_since == day(112)
    assert any(n.startswith("continuing PR: the targets' sum is -20%") for n in rows[3].notes)
    assert rows[2].continuing_response_since is None  # a PR on its own numbers


def test_an_unconfirmed_pr_does_not_continue():
    # 70 (PR), then 80 only 14 days later: the PR is unconfirmed, so 80 (-20% from
    # baseline, +14% from the nadir) is SD (Table 3: PR then SD is SD).
    rows, _ = run((0, TWO), (56, sums(42, 28)), (70, sums(48, 32)))
    assert categories(rows) == ["PR", "SD"]
    # Without confirmation (a randomised trial, section 4.6.1) the PR continues at once.
    result = patient_responses_assess(
        timeline=_plain((0, 60, 40), (56, 42, 28), (70, 48, 32)),
        settings=BestResponseSettings(require_confirmation=False),
    )
    assert [r.category for r in result.recist[1:]] == ["PR", "PR"]


def _plain(*points: tuple[int, float, float]) -> list[StudyReading]:
    return [
        StudyReading(
            f"S{d}",
            day(d),
            (LesionReading("a", "liver", a), LesionReading("b", LUNG, b)),
        )
        for d, a, b in points
    ]


# --------------------------------------------------------------------------- reappearance
def test_disease_back_after_cr_is_pd_even_with_an_ne_study_between():
    gone = {"t1": Seen(None, gone=True), "t2": Seen(None, organ=LUNG, gone=True)}
    rows, _ = run(
        (0, BASE),
        (60, gone),
        (120, {"t1": Seen(None), "t2": Seen(None, organ=LUNG, gone=True)}),  # t1 not found
        # 4 mm, accepted by a radiologist: back after the CR of day 60
        (180, {**gone, "t1": Seen(4, review="accepted")}),
    )
    assert categories(rows) == ["CR", "NE", "PD"]
    assert f"complete response of {day(60)}" in rows[3].notes[0]


def test_an_equivocal_lesion_accepted_at_a_later_study_dates_pd_from_its_first_sighting():
    early = {"t1": Seen(29), "t2": Seen(19, organ=LUNG), "n": Seen(6)}
    later = {"t1": Seen(29), "t2": Seen(19, organ=LUNG), "n": Seen(7, review="accepted")}
    rows, states = run((0, BASE), (60, early), (120, later))
    assert categories(rows) == ["PD", "PD"]
    assert rows[1].progression_dated_from == day(60) and rows[1].new_lesions_first_seen == 1
    assert "accepted by a radiologist at the study of" in states[("n", 1)].reason


# --------------------------------------------------------------------------- Table 3
def best(*points: tuple[int, str], **options) -> str:
    return best_overall_response(
        timepoints=[(day(d), c) for d, c in points],
        baseline_date=START,
        settings=BestResponseSettings(**options),
    ).category


@pytest.mark.parametrize(
    ("points", "options", "expected"),
    [
        # CR needs a CR at least 28 days later: 27 days is a PR at best -> SD (56 >= 42).
        pytest.param([(56, "CR"), (83, "CR")], {}, "SD", id="CR-CR 27 days: SD"),
        pytest.param([(56, "CR"), (84, "CR")], {}, "CR", id="CR-CR 28 days: CR"),
        pytest.param([(56, "PR"), (70, "NE"), (84, "PR")], {}, "PR", id="PR-NE-PR: confirmed"),
        # PD is terminal: the PR of day 56 is unconfirmed, so SD (it is >= 42 days);
        # the later PRs are never considered.
        pytest.param(
            [(56, "PR"), (84, "PD"), (112, "PR"), (140, "PR")], {}, "SD", id="PR-PD-PR-PR"
        ),
        pytest.param([(20, "SD"), (30, "PD"), (90, "CR"), (120, "CR")], {}, "PD", id="SD early"),
        pytest.param([(35, "SD"), (63, "SD")], {}, "SD", id="SD counted at day 63"),
        pytest.param([(35, "SD"), (40, "NE")], {}, "NE", id="SD too early, then NE"),
        # A protocol's 8 weeks (56 days) instead of the default 6: day 49 is too early.
        pytest.param([(49, "SD"), (60, "PD")], {"min_sd_days": 56}, "PD", id="8-week minimum"),
        pytest.param([(49, "SD"), (60, "PD")], {}, "SD", id="6-week minimum"),
    ],
)
def test_best_overall_response_cases(points, options, expected):
    assert best(*points, **options) == expected


# --------------------------------------------------------------------------- iRECIST
def irecist(*studies: StudyReading):
    result = patient_responses_assess(timeline=list(studies), irecist=True)
    return [r.category for r in result.recist[1:]], [i.category for i in result.irecist[1:]]


def study(d: int, *lesions: tuple[str, str, float], verdict: bool | None = None) -> StudyReading:
    readings = tuple(LesionReading(uid, organ, ld) for uid, organ, ld in lesions)
    return StudyReading(f"S{d}", day(d), readings, non_target_unequivocal_progression=verdict)


I_BASE = (("a", "liver", 40.0), ("b", LUNG, 20.0))  # sum 60


def test_irecist_further_increases_add_up_to_confirm():
    # 75 (+25%, +15 mm): iUPD. 35 days later 78: +3 mm from the iUPD, not enough: iUPD.
    # 77 days after the iUPD 81: +6 mm in all (increases add up, working group): iCPD,
    # with a note that the 4 to 8 weeks were missed.
    recist, i = irecist(
        study(0, *I_BASE),
        study(56, ("a", "liver", 50.0), ("b", LUNG, 25.0)),
        study(91, ("a", "liver", 53.0), ("b", LUNG, 25.0)),
        study(133, ("a", "liver", 56.0), ("b", LUNG, 25.0)),
    )
    assert recist == ["PD", "PD", "PD"] and i == ["iUPD", "iUPD", "iCPD"]


def test_irecist_a_new_lesion_that_goes_away_resets_the_bar():
    # A new 12 mm lesion: RECIST PD (terminal for the best response), iUPD; gone at the
    # next study with the targets unchanged: the bar is reset to iSD.
    recist, i = irecist(
        study(0, *I_BASE),
        study(56, *I_BASE, ("n1", "liver", 12.0)),
        study(98, *I_BASE, ("n1", "liver", 0.0)),
    )
    assert recist == ["PD", "SD"] and i == ["iUPD", "iSD"]


@pytest.mark.parametrize(
    ("verdict", "expected"),
    [
        (None, "iUPD"),  # nobody said: it stays unconfirmed, not silently reset
        (False, "iSD"),  # a radiologist: no longer progressing, the bar is reset
        (True, "iCPD"),  # a radiologist: increased further
    ],
)
def test_irecist_non_target_progression_is_confirmed_or_reset_by_a_radiologist(verdict, expected):
    base = (*I_BASE, ("nt", "liver", 8.0))
    _, i = irecist(
        study(0, *base), study(56, *base, verdict=True), study(98, *base, verdict=verdict)
    )
    assert i == ["iUPD", expected]


# --------------------------------------------------------------------------- volumetric
def volumes(*points: tuple[int, float]) -> list[str | None]:
    timeline = [
        StudyReading(f"S{d}", day(d), (LesionReading("x", "liver", float("nan"), volume_ml=v),))
        for d, v in points
    ]
    return [v.category for v in volumetric_assess(timeline=timeline)[1:]]


def test_volumetric_lines_and_the_absolute_floor_at_the_timeline():
    # 10 -> 17.28 ml: exactly +72.8% and a sphere 26.7 -> 32.1 mm (+5.3 mm): PD.
    assert volumes((0, 10.0), (60, 17.28)) == ["PD"]
    assert volumes((0, 10.0), (60, 17.27)) == ["SD"]
    # 10 -> 3.43 ml: exactly -65.7%: PR; then 5.93 ml: +72.9% from the nadir but the sphere
    # grows 18.7 -> 22.5 mm (+3.7 mm < 5): not PD, and -40.7% from baseline: SD.
    assert volumes((0, 10.0), (60, 3.43), (120, 5.93)) == ["PR", "SD"]
    assert volumes((0, 0.05), (60, 0.09)) == ["SD"]  # +80%, a 4.6 -> 5.6 mm sphere


def test_nothing_at_baseline_is_ne_and_a_confirmed_new_lesion_pd():
    empty = StudyReading("S0", day(0), ())
    nothing = StudyReading("S1", day(60), ())
    result = patient_responses_assess(timeline=[empty, nothing])
    assert result.recist[1].category == "NE" and result.volumetric[1].category == "NE"
    new = StudyReading("S1", day(60), (LesionReading("n", "liver", 14.0, volume_ml=2.0),))
    result = patient_responses_assess(timeline=[empty, new])
    assert result.recist[1].category == "PD" and result.volumetric[1].category == "PD"
