"""A radiologist's word where the rules cannot decide alone: a lesion not found is gone or
too small to measure, a lesion (a lymph node) measured by hand, proposed links
confirmed, non-target progression decided, iRECIST applied. Each decision is kept,
survives re-tracking and moves the responses."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from django.core.exceptions import PermissionDenied
from django.urls import reverse

from analytics.lesions.review.common import ReviewError
from analytics.lesions.review.findings import (
    lesion_add,
    measurement_gone,
    measurement_too_small,
    non_target_progression_decide,
    study_links_confirm,
)
from analytics.lesions.review.irecist import irecist_set
from analytics.lesions.tracking.track import patient_track
from analytics.models import BestOverallResponse, ResponseAssessment
from imaging.models import (
    Lesion,
    LesionMeasurement,
    ManualFinding,
    Registration,
    ReviewEvent,
    Segmentation,
)
from tests.imaging.factories import SeriesFactory, StudyFactory
from tests.imaging.test_review import (
    BASELINE_DATE,
    LIVER,
    LUNG,
    SHIFT,
    SMALL,
    candidate,
    patient_with_studies,
    responses,
)
from tests.patients.factories import UserFactory

pytestmark = pytest.mark.django_db

# The lung target is not found at the third study; nothing new there.
PLAN = [
    [(1, "liver", LIVER, 14.0, 32.0), (2, "lung", LUNG, 1.8, 16.0)],
    [(1, "liver", LIVER, 9.0, 27.0), (2, "lung", LUNG, 1.2, 14.0)],
    [(1, "liver", LIVER, 4.0, 21.0)],
]


@pytest.fixture
def patient():
    return patient_with_studies("FIND-1", PLAN)


@pytest.fixture
def radiologist():
    return UserFactory(groups=["radiologist"])


def lung_at(index):
    rows = LesionMeasurement.objects.filter(lesion__label="Left lung 1").order_by(
        "study__study_date"
    )
    return list(rows)[index]


def test_a_lesion_not_found_is_ne_until_a_radiologist_confirms_it_gone(patient, radiologist):
    assert [r.recist_response for r in responses(patient)] == ["", "SD", "NE"]
    missing = lung_at(2)
    assert missing.status == "not_found" and missing.finding_state == "not_found"

    event = measurement_gone(
        user=radiologist, measurement=missing, reason="no nodule on lung window"
    )

    gone = lung_at(2)
    assert gone.status == "resolved" and gone.finding_state == "confirmed"
    assert gone.review_reason == "no nodule on lung window" and gone.reviewed_by == radiologist
    last = responses(patient)[2]
    assert last.recist_response == "PR" and last.sum_diameters_mm == pytest.approx(21.0)
    assert event.action == "gone" and event.after["measurement"]["status"] == "resolved"
    assert (
        last.revisions[0]["from"] == "NE"
        and "review: gone Left lung 1" in last.revisions[0]["reason"]
    )
    patient_track(patient=patient)  # a rebuild keeps the decision
    assert lung_at(2).status == "resolved"


def test_too_small_to_measure_counts_5_mm(patient, radiologist):
    measurement_too_small(user=radiologist, measurement=lung_at(2), reason="faint, 2-3 mm")
    row = lung_at(2)
    assert row.too_small and row.status == "tracked" and row.finding_state == "confirmed"
    assert responses(patient)[2].sum_diameters_mm == pytest.approx(21.0 + 5.0)
    patient_track(patient=patient)
    assert lung_at(2).too_small


def test_absence_decisions_need_a_lesion_not_found_a_reason_and_a_reviewer(patient, radiologist):
    with pytest.raises(ReviewError, match="this decision is for a lesion not found there"):
        measurement_gone(user=radiologist, measurement=lung_at(1), reason="x")
    with pytest.raises(ReviewError, match="reason: give a reason"):
        measurement_gone(user=radiologist, measurement=lung_at(2), reason=" ")
    with pytest.raises(PermissionDenied):
        measurement_gone(user=UserFactory(groups=["clinician"]), measurement=lung_at(2), reason="x")
    assert not ReviewEvent.objects.exists() and lung_at(2).status == "not_found"


def test_a_lymph_node_measured_by_hand_is_a_target_by_its_short_axis(patient, radiologist):
    baseline, first, last = sorted(patient.studies.all(), key=lambda s: s.study_date)

    event = lesion_add(
        user=radiologist,
        study=baseline,
        organ="lymph_node",
        longest_diameter_mm="24",
        short_axis_mm="17",
        reason="subcarinal node",
    )

    node = Lesion.objects.get(organ="lymph_node")
    assert node.label == "Lymph node 1" and event.action == "add"
    rows = list(node.measurements.order_by("study__study_date"))
    assert [m.status for m in rows] == ["new", "not_found", "not_found"]
    assert rows[0].is_target and rows[0].manual_finding is not None
    assert responses(patient)[0].sum_diameters_mm == pytest.approx(32 + 16 + 17)  # short axis
    assert responses(patient)[1].recist_response == "NE"  # the node is not measured yet

    lesion_add(
        user=radiologist,
        study=first,
        organ="lymph_node",
        longest_diameter_mm=15,
        short_axis_mm=9,
        lesion=node,
        reason="follow-up measurement",
    )
    assert responses(patient)[1].sum_diameters_mm == pytest.approx(27 + 14 + 9)
    assert responses(patient)[1].recist_response == "SD"
    patient_track(patient=patient)  # measurements by hand survive every rebuild
    assert ManualFinding.objects.count() == 2
    assert node.measurements.get(study=first).effective_short_axis_mm == 9


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"organ": "spleen"}, "organ: one of"),
        ({"short_axis_mm": 30}, "short_axis_mm: 30 mm is longer than the longest diameter"),
        ({"longest_diameter_mm": ""}, "longest_diameter_mm: give it in mm"),
        ({"short_axis_mm": "-1"}, "short_axis_mm: must be a positive number"),
    ],
)
def test_a_lesion_by_hand_is_refused_with_the_field_and_the_reason(
    patient, radiologist, values, message
):
    study = patient.studies.order_by("study_date").first()
    arguments = {"organ": "lymph_node", "longest_diameter_mm": 20, "short_axis_mm": 12, **values}
    with pytest.raises(ReviewError, match=message):
        lesion_add(user=radiologist, study=study, reason="node", **arguments)
    assert not ManualFinding.objects.exists()


def test_a_lesion_found_by_the_segmentation_is_overridden_not_added(patient, radiologist):
    liver = Lesion.objects.get(label="Liver 1")
    study = patient.studies.order_by("study_date").first()
    with pytest.raises(ReviewError, match="found at this study already"):
        lesion_add(
            user=radiologist,
            study=study,
            organ="liver",
            longest_diameter_mm=30,
            short_axis_mm=20,
            lesion=liver,
            reason="x",
        )


def test_confirming_proposed_links_makes_a_study_assessable(radiologist):
    patient = patient_with_studies("FIND-2", PLAN)
    last = Registration.objects.filter(moving_series__study__patient=patient).order_by("pk").last()
    last.failed, last.failure_reason = True, "lung Dice 0.56"
    last.save()
    patient_track(patient=patient)
    study = last.moving_series.study
    assert ResponseAssessment.objects.get(study=study).recist_response == "NE"

    event = study_links_confirm(user=radiologist, study=study, reason="checked side by side")

    assert not LesionMeasurement.objects.filter(study=study, link_provisional=True).exists()
    assessed = ResponseAssessment.objects.get(study=study)
    note = assessed.response_note
    assert "provisional" not in note and "Left lung 1 not evaluated" in note
    # The targets measured there do not make the sum of the targets.
    assert assessed.sum_diameters_mm is None and assessed.pct_change_baseline is None
    assert "sum of diameters unknown: 1 of 2 targets not evaluated (the 1 measured" in note
    assert event.action == "links_confirm" and event.after["confirmed"] == ["Liver 1"]
    with pytest.raises(ReviewError, match="no link of this study is waiting"):
        study_links_confirm(user=radiologist, study=study, reason="again")


def test_possible_non_target_progression_is_decided_by_a_radiologist(radiologist):
    grown = SMALL + np.array([0.0, 0.0, 0.0])
    plan = [
        [(1, "liver", LIVER, 14.0, 32.0), (3, "liver", grown, 0.3, 8.0)],
        [(1, "liver", LIVER, 14.0, 32.0), (3, "liver", grown, 1.4, 14.0)],  # +367%, +5.5 mm
    ]
    patient = patient_with_studies("FIND-3", plan)
    follow = responses(patient)[1]
    assert follow.recist_response == "SD" and follow.possible_non_target_progression
    assert follow.needs_attention and "possible non-target progression" in follow.response_note

    non_target_progression_decide(
        user=radiologist, study=follow.study, progression=True, reason="unequivocal"
    )
    assert responses(patient)[1].recist_response == "PD"
    non_target_progression_decide(
        user=radiologist, study=follow.study, progression=None, reason="withdrawn"
    )
    assert responses(patient)[1].recist_response == "SD"


def test_irecist_is_applied_by_a_clinician_choice_and_shown_beside_recist(patient, radiologist):
    with pytest.raises(PermissionDenied):  # an account without a clinical group may not
        irecist_set(user=UserFactory(groups=[]), patient=patient, enabled=True, reason="x")
    clinician = UserFactory(groups=["clinician"])
    irecist_set(user=clinician, patient=patient, enabled=True, reason="on pembrolizumab")
    assert [r.irecist_response for r in responses(patient)] == ["", "iSD", "NE"]
    best = BestOverallResponse.objects.get(patient=patient)
    assert best.recist == "SD" and best.irecist == "iSD"
    irecist_set(user=radiologist, patient=patient, enabled=False, reason="stopped")
    assert [r.irecist_response for r in responses(patient)] == ["", "", ""]


def test_the_review_pages_post_to_the_services(patient, radiologist, client):
    client.force_login(radiologist)
    missing = lung_at(2)
    response = client.post(
        reverse("lesions:measurement-review", args=[missing.pk]),
        {"action": "gone", "reason": "gone on the lung window", "next": "/"},
    )
    assert response.status_code == 302 and lung_at(2).status == "resolved"
    study = patient.studies.order_by("study_date").first()
    response = client.post(
        reverse("lesions:lesion-add", args=[patient.pk]),
        {
            "study": study.pk,
            "organ": "lymph_node",
            "longest_diameter_mm": "22",
            "short_axis_mm": "16",
            "reason": "node",
            "next": "/",
        },
    )
    assert response.status_code == 302 and Lesion.objects.filter(organ="lymph_node").exists()
    page = client.get(reverse("patients:detail", args=[patient.pk])).content.decode()
    assert 'data-testid="best-response"' in page and "Lymph node 1" in page


def test_a_lesion_added_by_hand_keeps_its_label_from_later_automated_lesions(radiologist):
    patient = patient_with_studies("FIND-4", PLAN[:2])
    baseline = patient.studies.order_by("study_date").first()
    lesion_add(
        user=radiologist,
        study=baseline,
        organ="liver",
        longest_diameter_mm=18,
        short_axis_mm=12,
        reason="missed by the segmentation",
    )
    by_hand = Lesion.objects.get(patient=patient, measurements__manual_finding__isnull=False)
    assert by_hand.label == "Liver 2"
    # A third study arrives with a new liver lesion the segmentation finds.
    far = np.array([-40.0, -30.0, -200.0])
    study = StudyFactory(patient=patient, study_date=BASELINE_DATE + dt.timedelta(days=182))
    series = SeriesFactory(study=study, state="processed")
    study.chosen_series = series
    study.save()
    Segmentation.objects.create(
        series=series,
        mask_path="masks/FIND-4-2.nii.gz",
        model_name="test",
        model_version="1",
        lesions=[
            candidate(k, o, c + SHIFT, v, d)
            for k, o, c, v, d in [*PLAN[2], (6, "liver", far, 0.9, 11.0)]
        ],
    )
    matrix = np.eye(4)
    matrix[:3, 3] = SHIFT
    Registration.objects.create(
        moving_series=series,
        fixed_series=baseline.chosen_series,
        backend="test",
        matrix_fixed_to_moving=matrix.tolist(),
    )

    patient_track(patient=patient)

    assert Lesion.objects.get(pk=by_hand.pk).label == "Liver 2"
    labels = set(Lesion.objects.filter(patient=patient).values_list("label", flat=True))
    assert labels == {"Liver 1", "Liver 2", "Liver 3", "Left lung 1"}


def test_targets_by_hand_are_checked_with_the_slice_thickness_and_nodes_by_short_axis(radiologist):
    from analytics.lesions.review.targets import targets_set

    plan = [[(1, "liver", LIVER, 1.2, 11.0), (2, "lung", LUNG, 14.0, 30.0)], PLAN[1]]
    patient = patient_with_studies("FIND-6", plan)
    baseline = patient.studies.order_by("study_date").first()
    baseline.chosen_series.slice_thickness_mm = 6.0
    baseline.chosen_series.save()
    liver = Lesion.objects.get(patient=patient, label="Liver 1")
    with pytest.raises(ReviewError, match="11.0 mm with 6 mm slices at baseline"):
        targets_set(user=radiologist, patient=patient, lesions=[liver], reason="x")
    lesion_add(
        user=radiologist,
        study=baseline,
        organ="lymph_node",
        longest_diameter_mm=20,
        short_axis_mm=14,
        reason="node",
    )
    node = Lesion.objects.get(patient=patient, organ="lymph_node")
    with pytest.raises(ReviewError, match="14.0 mm in short axis"):
        targets_set(user=radiologist, patient=patient, lesions=[node], reason="x")
    # By the rules, the 11 mm lesion is not a target either once the thickness is known.
    patient_track(patient=patient)
    targets = set(
        LesionMeasurement.objects.filter(lesion__patient=patient, is_target=True).values_list(
            "lesion__label", flat=True
        )
    )
    assert targets == {"Left lung 1"}


def test_a_hand_chosen_target_no_longer_measurable_is_no_target_anywhere(radiologist):
    # Chosen at 11 mm; the baseline's 6 mm slices make it not measurable (12 mm needed):
    # the exports, FHIR and HL7 read is_target, so it must not say "target" any more.
    from analytics.lesions.review.targets import targets_set

    plan = [[(1, "liver", LIVER, 1.2, 11.0), (2, "lung", LUNG, 14.0, 30.0)], PLAN[1]]
    patient = patient_with_studies("FIND-6B", plan)
    liver = Lesion.objects.get(patient=patient, label="Liver 1")
    lung = Lesion.objects.get(patient=patient, label="Left lung 1")
    targets_set(user=radiologist, patient=patient, lesions=[liver, lung], reason="chosen")
    baseline = patient.studies.order_by("study_date").first()
    baseline.chosen_series.slice_thickness_mm = 6.0
    baseline.chosen_series.save()

    summary = patient_track(patient=patient)

    targets = set(
        LesionMeasurement.objects.filter(lesion__patient=patient, is_target=True).values_list(
            "lesion__label", flat=True
        )
    )
    assert targets == {"Left lung 1"}
    (stale,) = summary.stale_targets
    assert "Liver 1, chosen by hand as a target" in stale["message"]
    assert "not measurable at baseline" in stale["message"]
    assert responses(patient)[0].sum_diameters_mm == pytest.approx(30.0)


def test_an_equivocal_new_lesion_confirmed_later_revises_the_earlier_study_to_pd(radiologist):
    far = np.array([-40.0, -30.0, -200.0])
    plan = [
        PLAN[0],
        [*PLAN[1], (6, "liver", far, 0.9, 12.0)],  # new at the second study: equivocal
    ]
    patient = patient_with_studies("FIND-7", plan)
    first = responses(patient)[1]
    assert first.recist_response == "SD" and first.pending_new_lesions == 1
    study = StudyFactory(patient=patient, study_date=BASELINE_DATE + dt.timedelta(days=182))
    series = SeriesFactory(study=study, state="processed")
    study.chosen_series = series
    study.save()
    Segmentation.objects.create(
        series=series,
        mask_path="masks/FIND-7-2.nii.gz",
        model_name="test",
        model_version="1",
        lesions=[
            candidate(k, o, c + SHIFT, v, d)
            for k, o, c, v, d in [*PLAN[1], (6, "liver", far, 1.6, 15.0)]  # seen again
        ],
    )
    matrix = np.eye(4)
    matrix[:3, 3] = SHIFT
    baseline = patient.studies.order_by("study_date").first()
    Registration.objects.create(
        moving_series=series,
        fixed_series=baseline.chosen_series,
        backend="test",
        matrix_fixed_to_moving=matrix.tolist(),
    )

    patient_track(patient=patient, trigger="the study of 2024-07-10 was processed")

    first = responses(patient)[1]
    assert first.recist_response == "PD" and first.new_lesions
    assert first.progression_dated_from == first.study.study_date
    (revision,) = [r for r in first.revisions if r["field"] == "recist_response"]
    assert (revision["from"], revision["to"]) == ("SD", "PD")
    assert revision["reason"].startswith("the study of 2024-07-10 was processed; now: new lesion")
    assert responses(patient)[2].recist_response == "PD"
