"""The patient page's charts and empty states against what the rules and the tables say:
NE sums out of the nadir and drawn apart, thresholds from the row marked baseline,
baseline lesions not called new when the first study failed, provisional links and
finding states marked, lab times at the page's wall clock, a gap where a lesion was not
found, and why a patient has no lesion."""

import dataclasses
import datetime as dt
import math
from zoneinfo import ZoneInfo

import pytest
from django.urls import reverse

from analytics.dashboard import figures
from analytics.dashboard.patient import LabSeries, LesionTrack, PatientTimeline, patient_timeline
from analytics.lesions.core.assess import recist_assess
from analytics.lesions.core.readings import LesionReading, StudyReading
from analytics.lesions.core.recist import PD_ABSOLUTE_MM, PD_INCREASE_PCT
from analytics.lesions.selectors import ResponseRow
from analytics.models import ResponseAssessment
from imaging.models import ProcessingRun, Series
from patients.models import LabResult
from tests.analytics.test_figures import point, response, study, valid
from tests.imaging.factories import (
    LesionFactory,
    LesionMeasurementFactory,
    SeriesFactory,
    StudyFactory,
)
from tests.patients.factories import PatientFactory, UserFactory

D0, D1, D2, D3 = dt.date(2024, 1, 5), dt.date(2024, 2, 1), dt.date(2024, 5, 1), dt.date(2024, 8, 1)
PD_NAME = f"PD threshold (+{PD_INCREASE_PCT:.0f}% and +{PD_ABSOLUTE_MM:.0f} mm from nadir)"


def timeline_of(*, studies=(), lesions=(), responses=(), labs=()) -> PatientTimeline:
    return PatientTimeline(
        1, "MRN-1", "Doe^Jane", "Doe, Jane", None, "F", "Female", tuple(studies),
        lesions=tuple(lesions), responses=tuple(responses), labs=tuple(labs),
    )  # fmt: skip


def track(*points, label="Liver 1", pk=1) -> LesionTrack:
    return LesionTrack(pk, label, "liver", "Liver", f"2.25.{100 + pk}", tuple(points))


def ne(study_pk, day, sum_mm=None, note="not evaluable: processing failed") -> ResponseRow:
    return ResponseRow(
        study_pk, day, False, sum_mm, None, None, None, "NE", "NE", False, (),
        response_note=note, needs_attention=True,
    )  # fmt: skip


def by_name(figure):
    return {t["name"]: t for t in figure["data"]}


# -- 2. the PD threshold leaves NE sums out of the nadir; NE sums drawn apart ------------
def _reading(day: dt.date, size_mm: float, **kwargs) -> StudyReading:
    lesion = LesionReading("L1", "liver", size_mm, volume_ml=5.0, is_target=True, label="Liver 1")
    return StudyReading(study_uid=f"s{day}", study_date=day, lesions=(lesion,), **kwargs)


PROVISIONAL = {"not_evaluable": ("links provisional",)}


@pytest.mark.parametrize(
    "course",
    [
        # (size in mm, NE for a study-level reason?) per study, baseline first
        [(50.0, False), (30.0, True), (38.0, False)],
        [(50.0, False), (30.0, False), (20.0, True), (37.0, False)],
        [(50.0, False), (60.0, True), (58.0, False), (40.0, True), (59.0, False)],
    ],
)
def test_pd_ticks_are_the_rules_thresholds_with_ne_sums_out_of_the_nadir(course):
    days = [dt.date(2024, 1 + 2 * k, 1) for k in range(len(course))]
    rows = recist_assess(
        timeline=[
            _reading(day, size, **(PROVISIONAL if is_ne else {}))
            for day, (size, is_ne) in zip(days, course, strict=True)
        ]
    )
    # stored as `analytics.lesions.responses._values` stores them: an NE row for a
    # study-level reason keeps its full sum (no target is missing)
    responses = [
        ResponseRow(
            k,
            r.study_date,
            r.is_baseline,
            r.sum_diameters_mm,
            None,
            None,
            None,
            r.category or "",
            "",
            False,
            (),
        )  # fmt: skip
        for k, r in enumerate(rows)
    ]
    assert [r.category for r in rows[1:]].count("NE") == sum(is_ne for _, is_ne in course)

    figure = figures.response_timeline_figure(timeline=timeline_of(responses=responses))
    valid(figure)

    expected = [None] + [
        max(r.nadir_sum_mm * (1 + PD_INCREASE_PCT / 100), r.nadir_sum_mm + PD_ABSOLUTE_MM)
        for r in rows[1:]
    ]
    assert by_name(figure)[PD_NAME]["y"] == pytest.approx(expected)


def test_an_ne_sum_is_a_hollow_point_not_joined_by_the_line():
    responses = [
        response(1, D1, 50.0, baseline=True),
        ne(2, D2, 30.0, note="not evaluable: links provisional"),
        response(3, D3, 38.0, "SD"),
    ]
    figure = figures.response_timeline_figure(timeline=timeline_of(responses=responses))
    valid(figure)
    traces = by_name(figure)
    line = traces["Sum of target diameters"]
    assert line["x"] == ["2024-02-01", "2024-08-01"] and line["y"] == [50.0, 38.0]
    apart = traces["Sum at a study not evaluable (NE)"]
    assert apart["mode"] == "markers+text"  # no line through it
    assert apart["x"] == ["2024-05-01"] and apart["y"] == [30.0] and apart["text"] == ["NE"]
    assert apart["marker"]["symbol"] == "circle-open"
    assert "does not count toward the nadir" in apart["hovertemplate"]


# -- 3. thresholds start at the row marked baseline -------------------------------------
def test_thresholds_start_at_the_baseline_row_after_an_earlier_ne_study():
    responses = [
        ne(1, D0),  # the study before the baseline could not be analysed
        response(2, D1, 50.0, baseline=True),
        response(3, D2, 30.0, "PR"),
        response(4, D3, 37.0, "PD"),
    ]
    figure = figures.response_timeline_figure(timeline=timeline_of(responses=responses))
    valid(figure)
    traces = by_name(figure)
    pr = traces["PR threshold (-30% from baseline)"]
    assert pr["x"] == ["2024-02-01", "2024-08-01"] and pr["y"] == [35.0, 35.0]
    assert traces[PD_NAME]["y"] == [None, None, 60.0, 36.0]


def test_no_threshold_without_a_baseline_row():
    responses = [response(1, D1, 50.0, "SD"), response(2, D2, 55.0, "SD")]
    figure = figures.response_timeline_figure(timeline=timeline_of(responses=responses))
    names = set(by_name(figure))
    assert "Sum of target diameters" in names
    assert PD_NAME not in names and "PR threshold (-30% from baseline)" not in names


# -- 4. new lesions counted from the response baseline ----------------------------------
def test_baseline_lesions_are_not_new_when_the_first_study_was_not_analysed():
    studies = (study(1, D0), study(2, D1), study(3, D2))  # the first one failed
    responses = (response(2, D1, 30.0, baseline=True), response(3, D2, 31.0, "PD"))
    liver = track(point(1, 2, D1, 4.0, status="new"), point(2, 3, D2, 4.1))
    lung = track(point(3, 3, D2, 1.0, status="new"), label="Lung 1", pk=2)
    figure = figures.lesion_volume_figure(
        timeline=timeline_of(studies=studies, lesions=(liver, lung), responses=responses)
    )
    liver_trace, lung_trace = figure["data"]
    assert liver_trace["marker"]["symbol"] == ["circle", "circle"]
    assert liver_trace["customdata"][0].startswith("seen at baseline")
    assert lung_trace["marker"]["symbol"] == ["triangle-up"]
    assert lung_trace["customdata"][0].startswith("new lesion")


@pytest.mark.django_db
def test_baseline_lesions_are_not_new_on_the_page_when_the_first_study_failed():
    patient = PatientFactory(patient_id="MEND-NEW")
    failed = StudyFactory(patient=patient, study_date=D0)
    SeriesFactory(study=failed, state=Series.State.FAILED)
    base = StudyFactory(patient=patient, study_date=D1)
    follow = StudyFactory(patient=patient, study_date=D2)
    ResponseAssessment.objects.create(
        patient=patient, study=base, is_baseline=True, sum_diameters_mm=30.0
    )
    ResponseAssessment.objects.create(
        patient=patient, study=follow, recist_response="SD", sum_diameters_mm=31.0
    )
    lesion = LesionFactory(patient=patient, label="Liver 1")
    LesionMeasurementFactory(lesion=lesion, study=base, status="new", longest_diameter_mm=30.0)
    LesionMeasurementFactory(lesion=lesion, study=follow, longest_diameter_mm=31.0)
    (trace,) = figures.lesion_volume_figure(timeline=patient_timeline(pk=patient.pk))["data"]
    assert [note.split(";")[0] for note in trace["customdata"]] == ["seen at baseline", "tracked"]


# -- 5. provisional links and finding states --------------------------------------------
def test_a_provisional_link_is_dashed_hollow_and_said_in_the_hover():
    provisional = dataclasses.replace(point(2, 2, D2, 3.0), link_provisional=True)
    equivocal = dataclasses.replace(
        point(3, 3, D3, 2.0, status="new", target=False),
        finding_state="equivocal",
        finding_label="Equivocal, awaiting confirmation",
    )
    liver = track(point(1, 1, D1, 4.0, status="new"), provisional, point(4, 3, D3, 5.0))
    lung = track(equivocal, label="Lung 1", pk=2)
    timeline = timeline_of(
        studies=(study(1, D1), study(2, D2), study(3, D3)),
        lesions=(liver, lung),
        responses=(response(1, D1, 40.0, baseline=True),),
    )
    figure = figures.lesion_volume_figure(timeline=timeline)
    valid(figure)
    traces = by_name(figure)
    main = traces["Liver 1 (target)"]
    # no solid line reaches the provisional point: the line is broken on both sides
    assert main["x"] == ["2024-02-01", "2024-05-01", "2024-08-01"]
    assert main["y"] == [4.0, None, 5.0] and main["connectgaps"] is False
    dashed = traces["Liver 1: provisional link"]
    assert dashed["line"]["dash"] == "dash" and dashed["legendgroup"] == main["legendgroup"]
    assert dashed["x"] == main["x"] and dashed["y"] == [4.0, 3.0, 5.0]
    assert dashed["marker"]["symbol"][1] == "circle-open"
    assert dashed["marker"]["size"] == [0, 8, 0]  # the ends are marked by the main line
    assert "provisional link" in dashed["customdata"][1]
    assert "provisional" not in dashed["customdata"][0]
    assert "equivocal, awaiting confirmation" in traces["Lung 1"]["customdata"][0]


def test_runs_of_provisional_links_are_drawn_apart():
    def prov(pk, day, volume):
        return dataclasses.replace(point(pk, pk, day, volume), link_provisional=True)

    days = [dt.date(2024, m, 1) for m in (1, 3, 5, 7, 9)]
    liver = track(
        point(1, 1, days[0], 4.0, status="new"),
        prov(2, days[1], 4.5),
        point(3, 3, days[2], 5.0),
        point(4, 4, days[3], 5.5),
        prov(5, days[4], 6.0),
    )
    figure = figures.lesion_volume_figure(timeline=timeline_of(lesions=(liver,)))
    valid(figure)
    dashed = by_name(figure)["Liver 1: provisional link"]
    assert dashed["y"] == [4.0, 4.5, 5.0, None, 5.5, 6.0]
    assert by_name(figure)["Liver 1 (target)"]["y"] == [4.0, None, 5.0, 5.5, None]


# -- 8. lab times at the page's wall clock ----------------------------------------------
def test_lab_points_are_local_wall_clock_times(settings):
    settings.TIME_ZONE = "America/New_York"
    evening = dt.datetime(2024, 5, 1, 23, 30, tzinfo=ZoneInfo("America/New_York"))
    cea = LabSeries("2039-6", "cea", "CEA", "ng/mL", (evening.astimezone(dt.UTC),), (5.0,))
    ((_, (trace,)),) = figures._lab_rows([cea])
    assert trace["x"] == ["2024-05-01T23:30:00"]
    assert figures._day(evening.astimezone(dt.UTC)) == "2024-05-01"


@pytest.mark.django_db
def test_the_chart_draws_a_lab_on_the_day_the_lab_table_says(client, settings):
    settings.TIME_ZONE = "America/New_York"
    client.force_login(UserFactory(groups=["clinician"]))
    patient = PatientFactory(patient_id="MEND-TZ")
    StudyFactory(patient=patient, study_date=dt.date(2024, 5, 2))
    at = dt.datetime(2024, 5, 1, 23, 30, tzinfo=ZoneInfo("America/New_York"))
    LabResult.objects.create(
        patient=patient, loinc_code="2039-6", value=5.0, unit="ng/mL", observed_at=at
    )
    response = client.get(reverse("patients:detail", args=[patient.pk]))
    assert "2024-05-01 23:30" in response.content.decode()  # the lab table
    cea = by_name(response.context["figures"]["fig-timeline"])["CEA"]
    assert cea["x"] == ["2024-05-01T23:30:00"]


# -- 9. a gap where the lesion was not found --------------------------------------------
def test_a_study_where_the_lesion_was_not_found_leaves_a_gap():
    missing = dataclasses.replace(
        point(2, 2, D2, math.nan, status="not_found"), finding_state="not_found"
    )
    liver = track(point(1, 1, D1, 4.0, status="new"), missing, point(3, 3, D3, 9.0))
    gone = track(dataclasses.replace(missing, measurement_pk=9), label="Liver 2", pk=2)
    timeline = timeline_of(lesions=(liver, gone), responses=(response(1, D1, 40.0, baseline=True),))
    figure = figures.lesion_volume_figure(timeline=timeline)
    valid(figure)
    (trace,) = figure["data"]  # Liver 2, never measured, draws nothing
    assert trace["x"] == ["2024-02-01", "2024-05-01", "2024-08-01"]
    assert trace["y"] == [4.0, None, 9.0] and trace["connectgaps"] is False
    only_missing = timeline_of(lesions=(gone,))
    assert "fig-lesions" not in figures.patient_figures(timeline=only_missing)


@pytest.mark.django_db
def test_the_timeline_keeps_the_not_found_study_for_the_chart():
    patient = PatientFactory(patient_id="MEND-GAP")
    studies = [StudyFactory(patient=patient, study_date=d) for d in (D1, D2, D3)]
    lesion = LesionFactory(patient=patient, label="Liver 1")
    LesionMeasurementFactory(lesion=lesion, study=studies[0], status="new", volume_ml=4.0)
    LesionMeasurementFactory(
        lesion=lesion, study=studies[1], status="not_found", finding_state="not_found",
        volume_ml=0.0, longest_diameter_mm=0.0,
    )  # fmt: skip
    LesionMeasurementFactory(lesion=lesion, study=studies[2], volume_ml=9.0)
    (trace,) = figures.lesion_volume_figure(timeline=patient_timeline(pk=patient.pk))["data"]
    assert trace["x"] == ["2024-02-01", "2024-05-01", "2024-08-01"]
    assert trace["y"] == [4.0, None, 9.0]  # never the stored 0.0


# -- 7. why a patient has no lesion -----------------------------------------------------
def _study_in_state(patient, day, state, run_status=None, error=""):
    study_row = StudyFactory(patient=patient, study_date=day)
    series = SeriesFactory(study=study_row, state=state)
    study_row.chosen_series = series
    study_row.save()
    if run_status:
        ProcessingRun.objects.create(series=series, status=run_status, error=error)
    return study_row


def _no_lesions_text(client, patient) -> str:
    page = client.get(reverse("patients:detail", args=[patient.pk])).content.decode()
    section = page.split('id="lesions-title"')[1].split("</section>")[0]
    return section


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ([Series.State.FAILED], "No study has been segmented (1 failed)."),
        (
            [Series.State.FAILED, Series.State.QUEUED, Series.State.NOT_ANALYSED],
            "No study has been segmented (1 failed, 1 awaiting processing, 1 not analysed).",
        ),
        ([Series.State.PROCESSED], "Segmentation found no lesion (1 segmented study)."),
        (
            [Series.State.PROCESSED, Series.State.PROCESSED],
            "Segmentation found no lesion (2 segmented studies).",
        ),
        (
            [Series.State.PROCESSED, Series.State.FAILED, Series.State.PROCESSING],
            "Segmentation found no lesion in 1 of 3 studies; not segmented: 1 failed, "
            "1 awaiting processing.",
        ),
    ],
)
def test_no_lesion_text_says_whether_anything_was_segmented(client, states, expected):
    client.force_login(UserFactory(groups=["clinician"]))
    patient = PatientFactory()
    for k, state in enumerate(states):
        _study_in_state(patient, dt.date(2024, 1 + k, 1), state)
    section = _no_lesions_text(client, patient)
    assert expected in section
    assert "No lesions found" not in section
    warned = 'class="notice notice--warning"' in section
    assert warned == (Series.State.PROCESSED not in states or len(set(states)) > 1)


@pytest.mark.django_db
def test_a_patient_whose_only_study_failed_does_not_read_as_no_lesion_found(client):
    client.force_login(UserFactory(groups=["clinician"]))
    patient = PatientFactory(patient_id="MEND-EMPTY")
    _study_in_state(
        patient, D1, Series.State.FAILED, run_status=ProcessingRun.Status.FAILED, error="boom"
    )
    section = _no_lesions_text(client, patient)
    assert "No study has been segmented (1 failed)." in section
    assert "found no lesion" not in section.lower() and "No lesions found" not in section
