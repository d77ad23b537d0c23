"""The dashboard's Plotly figures: valid for plotly itself, and drawing what the rules say."""

import datetime as dt

import plotly.graph_objects as go
import pytest

from analytics.dashboard import figures
from analytics.dashboard.cohort import CohortSurvival, KMCurve
from analytics.dashboard.patient import (
    LabSeries,
    LesionPoint,
    LesionTrack,
    PatientTimeline,
    RiskContribution,
    RiskSummary,
    StudySummary,
)
from analytics.lesions.selectors import ResponseRow

D1, D2, D3 = dt.date(2024, 1, 10), dt.date(2024, 4, 10), dt.date(2024, 7, 10)


def study(pk, day):
    return StudySummary(pk, f"2.25.{pk}", day, None, "", "CT", ())


def point(pk, study_pk, day, volume, *, status="tracked", review="accepted", target=True):
    return LesionPoint(
        measurement_pk=pk,
        study_pk=study_pk,
        study_date=day,
        status=status,
        status_label=status.capitalize(),
        volume_ml=volume,
        longest_diameter_mm=10 * volume,
        short_axis_mm=5 * volume,
        confidence=0.9,
        is_target=target,
        review_state=review,
        review_label=review.capitalize(),
        is_overridden=False,
    )


def response(study_pk, day, sum_mm, recist="", *, baseline=False):
    return ResponseRow(
        study_pk, day, baseline, sum_mm, sum_mm / 10, None, None, recist, "", False, ()
    )


def risk(contributions):
    return RiskSummary(
        score=0.8,
        tier="high",
        tier_label="High",
        landmark_date=D3,
        computed_at=dt.datetime(2024, 7, 11, tzinfo=dt.UTC),
        model_version_pk=1,
        model_name="cox-pfs",
        model_kind="cox",
        model_kind_label="Cox",
        model_created_at=dt.datetime(2024, 7, 1, tzinfo=dt.UTC),
        scale="log hazard ratio",
        reference_score=0.0,
        contributions=tuple(RiskContribution(f, v, c) for f, v, c in contributions),
        notes=(),
    )


@pytest.fixture
def timeline():
    liver = LesionTrack(
        1,
        "Liver 1",
        "liver",
        "Liver",
        "2.25.100",
        (
            point(1, 1, D1, 4.0, status="new"),
            point(2, 2, D2, 3.0),
            point(3, 3, D3, 0.0, status="resolved"),
        ),
    )
    lung = LesionTrack(
        2, "Lung 1", "lung", "Lung", "2.25.101", (point(4, 3, D3, 2.5, status="new", target=False),)
    )
    ghost = LesionTrack(
        3,
        "Liver 2",
        "liver",
        "Liver",
        "2.25.102",
        (point(5, 2, D2, 9.0, status="new", review="rejected"),),
    )
    return PatientTimeline(
        pk=1,
        patient_id="MRN-1",
        name="Doe^Jane",
        display_name="Doe, Jane",
        birth_date=None,
        sex="F",
        sex_label="Female",
        studies=(study(1, D1), study(2, D2), study(3, D3)),
        lesions=(liver, lung, ghost),
        responses=(
            response(1, D1, 50.0, baseline=True),
            response(2, D2, 30.0, "PR"),
            response(3, D3, 40.0, "PD"),
        ),
        labs=(
            LabSeries(
                "2039-6", "cea", "CEA", "ng/mL", (dt.datetime(2024, 1, 9, tzinfo=dt.UTC),), (4.0,)
            ),
            LabSeries(
                "1751-7",
                "albumin",
                "Albumin",
                "g/dL",
                (dt.datetime(2024, 1, 9, tzinfo=dt.UTC),),
                (3.9,),
            ),
        ),
        risk=risk(
            [("cea_latest", 6.0, 0.4), ("age_years", 70.0, -0.1), ("total_burden_ml", None, 0.9)]
        ),
    )


def valid(figure):
    """plotly's own schema check: an unknown property or a bad value raises."""
    return go.Figure(figure)


def test_lesion_volume_figure_one_line_per_lesion_with_new_and_resolved_marked(timeline):
    figure = figures.lesion_volume_figure(timeline=timeline)
    valid(figure)
    names = [t["name"] for t in figure["data"]]
    assert names == ["Liver 1 (target)", "Lung 1"]  # the rejected Liver 2 is not drawn
    liver, lung = figure["data"]
    assert liver["x"] == ["2024-01-10", "2024-04-10", "2024-07-10"]
    assert liver["y"] == [4.0, 3.0, 0.0]
    # at baseline every lesion is "new": only a later first sighting is a new lesion
    assert liver["marker"]["symbol"] == ["circle", "circle", "x"]
    assert lung["marker"]["symbol"] == ["triangle-up"]
    assert "new lesion" in lung["customdata"][0]


def test_pd_threshold_follows_the_nadir_and_the_5_mm_floor():
    # nadir 50 -> max(60, 55); nadir 30 -> max(36, 35); nadir 30 -> 36; nadir 10 -> max(12, 15)
    assert figures._pd_thresholds([50.0, 30.0, 40.0, None]) == [None, 60.0, 36.0, 36.0]
    assert figures._pd_thresholds([10.0, 12.0]) == [None, 15.0]


def test_response_timeline_has_thresholds_burden_and_each_lab_on_its_own_axis(timeline):
    figure = figures.response_timeline_figure(timeline=timeline)
    valid(figure)
    by_name = {t["name"]: t for t in figure["data"]}
    pr = by_name["PR threshold (-30% from baseline)"]
    assert pr["y"] == [35.0, 35.0] and pr["x"] == ["2024-01-10", "2024-07-10"]
    pd_line = by_name["PD threshold (+20% and +5 mm from nadir)"]
    assert pd_line["y"] == [None, 60.0, 36.0] and pd_line["mode"] == "markers"
    assert by_name["Sum of target diameters"]["text"] == ["baseline", "PR", "PD"]
    layout = figure["layout"]
    titles = [layout[k]["title"]["text"] for k in ("yaxis", "yaxis2", "yaxis3", "yaxis4")]
    assert titles == [
        "Sum of diameters (mm)",
        "Tumour burden (ml)",
        "CEA (ng/mL)",
        "Albumin (g/dL)",
    ]
    assert {t["xaxis"] for t in figure["data"]} == {"x"}  # one shared time axis
    assert by_name["CEA"]["yaxis"] == "y3" and by_name["Albumin"]["yaxis"] == "y4"
    assert layout["xaxis"]["anchor"] == "y4"  # dates under the lowest panel
    domains = [layout[k]["domain"] for k in ("yaxis", "yaxis2", "yaxis3", "yaxis4")]
    assert all(a[0] >= b[1] for a, b in zip(domains, domains[1:], strict=False))  # no overlap
    assert [s["x0"] for s in layout["shapes"]] == ["2024-01-10", "2024-04-10", "2024-07-10"]


def test_risk_explanation_largest_first_coloured_by_direction(timeline):
    figure = figures.risk_explanation_figure(risk=timeline.risk, top=2)
    valid(figure)
    (bars,) = figure["data"]
    assert bars["y"] == ["cea_latest = 6", "total_burden_ml (missing)"]  # largest at the top
    assert bars["x"] == [0.4, 0.9]
    assert bars["marker"]["color"] == [figures.TIER_COLOURS["high"]] * 2
    down = figures.risk_explanation_figure(risk=risk([("albumin", 4.1, -0.2)]))
    assert down["data"][0]["marker"]["color"] == [figures.TIER_COLOURS["low"]]


def test_patient_figures_leave_out_what_has_nothing_to_draw(timeline):
    assert set(figures.patient_figures(timeline=timeline)) == {
        "fig-lesions",
        "fig-timeline",
        "fig-risk",
    }
    bare = PatientTimeline(1, "MRN-1", "", "(no name)", None, "", "Unknown", ())
    assert figures.patient_figures(timeline=bare) == {}


def test_km_figure_steps_bands_and_censor_ticks():
    curve = KMCurve(
        tier="high",
        tier_label="High",
        n=3,
        events=2,
        times_days=(0.0, 10.0, 20.0),
        survival=(1.0, 0.667, 0.333),
        lower=(1.0, 0.2, 0.05),
        upper=(1.0, 0.9, 0.7),
        censored_days=(15.0,),
        censored_survival=(0.667,),
        median_days=20.0,
    )
    survival = CohortSurvival(1, "pfs", "Progression-free survival", (curve,), 3, {}, None)
    figure = figures.km_figure(survival=survival)
    valid(figure)
    band, line, ticks = figure["data"]
    assert line["line"]["shape"] == "hv" and line["y"] == [1.0, 0.667, 0.333]
    assert line["name"] == "High risk (n=3, 2 events)"
    assert band["fill"] == "toself" and len(band["x"]) == 6
    assert ticks["x"] == [15.0] and ticks["marker"]["symbol"] == "line-ns-open"


def test_calibration_figure_marks_groups_not_followed_to_the_horizon():
    rows = [
        {"group": 1, "n": 5, "mean_predicted": 0.1, "observed": 0.12, "followed_to_horizon": True},
        {"group": 2, "n": 5, "mean_predicted": 0.5, "observed": None, "followed_to_horizon": True},
        {"group": 3, "n": 5, "mean_predicted": 0.8, "observed": 0.7, "followed_to_horizon": False},
    ]
    figure = figures.calibration_figure(calibration=rows, horizon_days=365.0)
    valid(figure)
    diagonal, points = figure["data"]
    assert diagonal["x"] == [0, 1] and diagonal["y"] == [0, 1]
    assert points["x"] == [0.1, 0.5, 0.8] and points["y"] == [0.12, None, 0.7]
    assert points["marker"]["symbol"] == ["circle", "circle", "circle-open"]
    assert figure["layout"]["title"]["text"] == "Calibration by day 365"


def test_a_censored_lab_reads_as_its_bound_in_the_hover_text_and_marker():
    cea = LabSeries(
        "2039-6", "cea", "CEA", "ng/mL",
        (dt.datetime(2024, 1, 9, tzinfo=dt.UTC), dt.datetime(2024, 2, 9, tzinfo=dt.UTC),
         dt.datetime(2024, 3, 9, tzinfo=dt.UTC)),
        (0.5, 0.6, 1000.0), ("<", "", ">"),
    )  # fmt: skip
    ((title, (trace,)),) = figures._lab_rows([cea])
    valid(go.Figure(data=[trace]).to_dict())
    assert trace["text"] == ["< 0.5 ng/mL", "0.6 ng/mL", "> 1000 ng/mL"]
    assert "%{text}" in trace["hovertemplate"] and "%{y" not in trace["hovertemplate"]
    assert trace["marker"]["symbol"] == ["triangle-down", "circle", "triangle-up"]
