"""Response categories an audit of `analytics.lesions.core` found wrong (no database):
a volumetric nadir taken from a study not evaluable, a new lesion not evaluated read as
gone, iRECIST ignoring a lesion back after a complete response, and an iCPD confirmed
from a partial targets' sum. Each case fails without its mend.

Sources: RECIST 1.1 (Eisenhauer EA et al., Eur J Cancer 2009;45:228-247), iRECIST
(Seymour L et al., Lancet Oncol 2017;18:e143-e152).
"""

from __future__ import annotations

import datetime as dt
import math

import pytest

from analytics.lesions.core.patient import patient_responses_assess
from analytics.lesions.core.readings import LesionReading, StudyReading
from tests.analytics.test_response_cases import BASE, START, Seen, categories, run

NAN = math.nan
LUNG = "lung"


def day(n: int) -> dt.date:
    return START + dt.timedelta(days=n)


def lesion(uid: str, organ: str, ld: float, ml: float = NAN, **kw) -> LesionReading:
    return LesionReading(uid, organ, ld, volume_ml=ml, **kw)


def outside(uid: str, organ: str) -> LesionReading:
    """A lesion the study did not cover, as the finding states mark it."""
    return LesionReading(
        uid,
        organ,
        NAN,
        state="not_found",
        note="outside the scanned range of this study: not assessed here",
    )


def study(n: int, *lesions: LesionReading, **kw) -> StudyReading:
    return StudyReading(f"S{n}", day(n), tuple(lesions), **kw)


def assess(*studies: StudyReading):
    result = patient_responses_assess(timeline=list(studies), irecist=True)
    return (
        [r.category for r in result.recist[1:]],
        [i.category for i in result.irecist[1:]],
        result,
    )


# --------------------------------------------------------------------------- volumetric
def test_a_study_not_evaluable_never_becomes_the_volumetric_nadir():
    result = patient_responses_assess(
        timeline=[
            study(0, lesion("t1", "liver", 40, 30.0, is_target=True)),
            # Implausible CT numbers: 2 ml is not a volume to measure growth from.
            study(60, lesion("t1", "liver", 20, 2.0), not_evaluable=("CT numbers implausible",)),
            study(120, lesion("t1", "liver", 36, 24.0)),  # -20% from 30 ml: SD, not PD
        ]
    )
    v = result.volumetric
    assert [r.category for r in v[1:]] == ["NE", "SD"]
    assert v[2].nadir_volume_ml == 30.0 and v[2].burden_response == "SD"
    assert v[2].lesions[0].nadir_ml == 30.0  # the lesion's own nadir leaves it out too


# --------------------------------------------------------------------------- new lesions
ACCEPTED_NEW = {"t1": Seen(29), "t2": Seen(19, organ=LUNG), "n": Seen(14, review="accepted")}


@pytest.mark.parametrize(
    ("later", "why"),
    [
        pytest.param(Seen(None, outside=True), "outside the scanned range", id="outside"),
        pytest.param(Seen(None), "not found at this study", id="not found, not confirmed gone"),
    ],
)
def test_a_new_lesion_counted_before_and_not_evaluated_is_ne_not_sd(later, why):
    rows, _ = run((0, BASE), (60, ACCEPTED_NEW), (120, {**ACCEPTED_NEW, "n": later}))
    assert categories(rows) == ["PD", "NE"]
    row = rows[2]
    assert row.new_lesions_not_evaluated == ("n",) and row.attention
    assert any(
        n.startswith(f"new lesion n (first seen on {day(60)}) not evaluated: {why}")
        for n in row.notes
    )
    assert any("not known to be gone: the time point is NE" in n for n in row.notes)


def test_a_new_lesion_confirmed_gone_no_longer_counts():
    rows, _ = run(
        (0, BASE), (60, ACCEPTED_NEW), (120, {**ACCEPTED_NEW, "n": Seen(None, gone=True)})
    )
    assert categories(rows) == ["PD", "SD"] and not rows[2].new_lesions_not_evaluated


def test_a_new_lesion_not_evaluated_leaves_pd_standing_on_other_grounds():
    rows, _ = run(
        (0, BASE),
        (60, ACCEPTED_NEW),
        (120, {**ACCEPTED_NEW, "n": Seen(None, outside=True), "m": Seen(16, review="accepted")}),
    )
    assert categories(rows) == ["PD", "PD"]
    assert any(n.startswith("new lesion n (first seen") for n in rows[2].notes)
    assert not any("the time point is NE" in n for n in rows[2].notes)


def test_irecist_iupd_is_never_reset_by_a_new_lesion_not_evaluated():
    base = lesion("t1", "liver", 40, 30.0, is_target=True)
    recist, i, result = assess(
        study(0, base),
        study(60, lesion("t1", "liver", 38), lesion("n1", LUNG, 15)),  # new: PD, iUPD
        study(100, lesion("t1", "liver", 39), outside("n1", LUNG)),  # n1 not covered
        study(130, lesion("t1", "liver", 39), lesion("n1", LUNG, 22)),  # +7 mm: iCPD
    )
    assert recist == ["PD", "NE", "PD"]
    assert i == ["iUPD", "NE", "iCPD"]
    assert f"the iUPD of {day(60)} still awaits confirmation" in result.irecist[2].notes
    assert "new target lesions grew a further 7.0 mm" in result.irecist[3].notes[0]


# --------------------------------------------------------------------------- reappearance
def after_complete_response(back: LesionReading, *later: StudyReading):
    gone = (lesion("t1", "liver", 0, 0.0), lesion("nt", "liver", 0, 0.0))
    return assess(
        study(0, lesion("t1", "liver", 20, 4.0, is_target=True), lesion("nt", "liver", 12, 1.0)),
        study(60, *gone),
        study(91, *gone),
        study(152, *(r for r in gone if r.lesion_uid != back.lesion_uid), back),
        *later,
    )


@pytest.mark.parametrize(
    ("back", "category"),
    [
        pytest.param(lesion("nt", "liver", 11, 0.8), "non-target", id="non-target back"),
        pytest.param(lesion("t1", "liver", 3, 0.1), "target", id="target back at 3 mm"),
    ],
)
def test_irecist_reads_a_lesion_back_after_a_complete_response_as_iupd(back, category):
    recist, i, result = after_complete_response(back)
    assert recist == ["CR", "CR", "PD"] and result.recist[3].reappearance
    assert i == ["iCR", "iCR", "iUPD"]
    assert result.irecist[3].notes[0].startswith(f"unconfirmed progression ({category})")


def test_irecist_iupd_of_a_lesion_back_stays_while_it_is_there_and_resets_once_gone():
    still = study(194, lesion("t1", "liver", 0, 0.0), lesion("nt", "liver", 11, 0.8))
    _, i, _ = after_complete_response(lesion("nt", "liver", 11, 0.8), still)
    assert i == ["iCR", "iCR", "iUPD", "iUPD"]
    gone = study(194, lesion("t1", "liver", 0, 0.0), lesion("nt", "liver", 0, 0.0))
    _, i, result = after_complete_response(lesion("nt", "liver", 11, 0.8), gone)
    assert i == ["iCR", "iCR", "iUPD", "iCR"] and "the bar is reset" in result.irecist[4].notes[0]


# --------------------------------------------------------------------------- partial sums
TWO_TARGETS = (
    lesion("t1", "liver", 20, 4.0, is_target=True),
    lesion("t2", LUNG, 50, 60.0, is_target=True),
)  # sum 70


def test_icpd_is_never_confirmed_from_a_partial_targets_sum_at_the_iupd():
    recist, i, result = assess(
        study(0, *TWO_TARGETS),
        study(60, lesion("t1", "liver", 15), lesion("t2", LUNG, 30)),  # 45: PR, the nadir
        # t1 alone is 60 mm, PD from the nadir 45 (section 4.4.2); t2 not evaluated.
        study(121, lesion("t1", "liver", 60), lesion("t2", LUNG, NAN, state="not_found")),
        # Complete again: 88 mm. Against the partial 60 that would be +28 mm, but t2 was
        # simply missing from it: t1 did not grow at all.
        study(161, lesion("t1", "liver", 60), lesion("t2", LUNG, 28)),
    )
    assert recist == ["PR", "PD", "PD"]
    assert i == ["iPR", "iUPD", "iUPD"]
    assert any("partial (a target not evaluated)" in n for n in result.irecist[2].notes)
    notes = result.irecist[3].notes
    assert notes[0] == f"the iUPD of {day(121)} is neither confirmed nor resolved"
    assert any(f"sum at the iUPD of {day(121)} is partial" in n for n in notes)


def test_a_partial_targets_sum_never_resets_an_iupd_as_shrinking():
    base = (lesion("a", "liver", 40, is_target=True), lesion("b", LUNG, 20, is_target=True))
    _, i, result = assess(
        study(0, *base),
        study(56, *base, lesion("n1", "liver", 15)),  # a new lesion: iUPD, sum 60
        # b not evaluated: 30 is not a shrinking sum (scenario B needs a complete one).
        study(98, lesion("a", "liver", 30), outside("b", LUNG), lesion("n1", "liver", 15)),
    )
    assert i == ["iUPD", "iUPD"]
    assert "neither confirmed nor resolved" in result.irecist[2].notes[0]
