"""A radiologist's review: each decision is recorded, survives re-tracking, and moves the
responses, targets and risk score that depend on it."""

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from django.core.exceptions import PermissionDenied

from analytics.lesions.review.common import ReviewError
from analytics.lesions.review.identities import lesion_merge, lesion_relink, lesion_split
from analytics.lesions.review.measurements import (
    measurement_accept,
    measurement_override,
    measurement_reject,
)
from analytics.lesions.review.targets import targets_set
from analytics.lesions.tracking.track import patient_track
from analytics.models import ResponseAssessment, RiskModelVersion, RiskScore, models_dir
from analytics.risk.core.survival import risk_model_fit, risk_model_save
from imaging.models import (
    Lesion,
    LesionLink,
    LesionMeasurement,
    Registration,
    ReviewEvent,
    Segmentation,
)
from tests.imaging.factories import SeriesFactory, StudyFactory
from tests.patients.factories import PatientFactory, UserFactory

pytestmark = pytest.mark.django_db

SHIFT = np.array([12.0, -7.0, 20.0])  # baseline LPS -> follow-up LPS
LIVER = np.array([-90.0, 10.0, -160.0])
LUNG = np.array([70.0, 0.0, -60.0])
SMALL = np.array([-60.0, 40.0, -120.0])
# Where the small liver lesion seems to be at the first follow-up: 30 mm away, beyond
# the matching gate, so the automated tracking takes it for a new lesion.
SMALL_MOVED = SMALL + np.array([30.0, 0.0, 0.0])
FAR = np.array([-40.0, -30.0, -200.0])
BASELINE_DATE = dt.date(2024, 1, 10)  # in the past: risk scores are taken at the latest study


def candidate(label, organ, centre, volume_ml, diameter_mm):
    return {
        "component_label": label,
        "organ": organ,
        "centroid_lps_mm": [float(v) for v in centre],
        "volume_ml": volume_ml,
        "longest_diameter_mm": diameter_mm,
        "short_axis_mm": diameter_mm * 0.8,
        "max_3d_diameter_mm": diameter_mm * 1.05,
        "mean_hu": 45.0,
        "sd_hu": 9.0,
        "sphericity": 0.9,
        "confidence": 0.95,
        "uncertainty": 0.02,
    }


# study: (component label, organ, centre in the baseline frame, ml, longest mm)
PLAN = [
    [(1, "liver", LIVER, 14.0, 32.0), (2, "lung", LUNG, 1.8, 16.0), (3, "liver", SMALL, 1.2, 13.0)],
    [
        (1, "liver", LIVER, 9.0, 27.0),
        (2, "lung", LUNG, 1.2, 14.0),
        (5, "liver", SMALL_MOVED, 1.1, 12.5),
    ],
    [
        (1, "liver", LIVER, 4.0, 21.0),
        (5, "liver", SMALL_MOVED, 1.0, 12.0),
        (6, "liver", FAR, 0.9, 11.0),
    ],
]


def patient_with_studies(patient_id: str = "REVIEW-1", plan=PLAN):
    """A patient with three analysed studies (segmentations, registrations), tracked."""
    patient = PatientFactory(patient_id=patient_id)
    baseline_series = None
    for index, candidates in enumerate(plan):
        study = StudyFactory(
            patient=patient, study_date=BASELINE_DATE + dt.timedelta(days=91 * index)
        )
        series = SeriesFactory(study=study, state="processed")
        series.study.chosen_series = series
        series.study.save()
        shift = SHIFT if index else np.zeros(3)
        Segmentation.objects.create(
            series=series,
            mask_path=f"masks/{patient_id}-{index}.nii.gz",
            model_name="test",
            model_version="1",
            lesions=[candidate(k, o, c + shift, v, d) for k, o, c, v, d in candidates],
        )
        if baseline_series is None:
            baseline_series = series
        else:
            matrix = np.eye(4)
            matrix[:3, 3] = SHIFT
            Registration.objects.create(
                moving_series=series,
                fixed_series=baseline_series,
                backend="test",
                matrix_fixed_to_moving=matrix.tolist(),
            )
    patient_track(patient=patient)
    return patient


@pytest.fixture
def patient():
    return patient_with_studies()


@pytest.fixture
def radiologist():
    return UserFactory(groups=["radiologist"])


def responses(patient):
    return list(ResponseAssessment.objects.filter(patient=patient).order_by("study__study_date"))


def row(label, index):
    """The measurement of the lesion labelled ``label`` at the index-th study."""
    rows = LesionMeasurement.objects.filter(lesion__label=label).order_by("study__study_date")
    return [m for m in rows if m.study.study_date == _study_dates()[index]][0]


def _study_dates():
    return sorted(set(LesionMeasurement.objects.values_list("study__study_date", flat=True)))


def finding_at(index, component):
    study_date = _study_dates()[index]
    return LesionMeasurement.objects.get(study__study_date=study_date, component_label=component)


def test_the_automated_tracking_this_review_starts_from(patient):
    labels = {m.lesion.label for m in LesionMeasurement.objects.select_related("lesion")}
    assert labels == {"Liver 1", "Liver 2", "Liver 3", "Liver 4", "Left lung 1"}
    assert finding_at(1, 5).status == "new"  # the moved small lesion looks new
    assert [r.new_lesions for r in responses(patient)] == [False, True, True]


def test_reject_records_who_why_and_takes_the_finding_out_of_the_responses(patient, radiologist):
    far = finding_at(2, 6)
    before_new = responses(patient)[2].new_lesions

    event = measurement_reject(user=radiologist, measurement=far, reason="a vessel, not a lesion")

    again = finding_at(2, 6)
    assert again.review_state == "rejected" and again.reviewed_by == radiologist
    assert again.review_reason == "a vessel, not a lesion"
    assert again.volume_ml == 0.9 and again.longest_diameter_mm == 11.0  # automated kept
    assert event.user == radiologist and event.action == "reject"
    assert event.reason == "a vessel, not a lesion" and event.at is not None
    assert event.measurement == again
    assert event.before["measurement"]["review_state"] == "pending"
    assert event.after["measurement"]["review_state"] == "rejected"
    assert before_new and event.before["responses"][2]["new_lesions"] is True
    # Liver 3 (the moved small lesion) is still new at the last study; the far one no longer counts.
    assert event.after["responses"][2]["new_lesions"] is True
    assert ReviewEvent.objects.filter(patient=patient).count() == 1


def test_override_keeps_the_automated_value_and_moves_the_sum(patient, radiologist):
    baseline_liver = finding_at(0, 1)
    assert responses(patient)[0].sum_diameters_mm == pytest.approx(32.0 + 16.0 + 13.0)

    event = measurement_override(
        user=radiologist,
        measurement=baseline_liver,
        longest_diameter_mm="36.5",
        reason="measured on the portal venous phase",
    )

    m = finding_at(0, 1)
    assert m.review_state == "edited"
    assert m.longest_diameter_mm == 32.0 and m.override_longest_diameter_mm == 36.5
    assert m.effective_longest_diameter_mm == 36.5 and m.override_volume_ml is None
    assert responses(patient)[0].sum_diameters_mm == pytest.approx(36.5 + 16.0 + 13.0)
    assert event.before["measurement"]["override_longest_diameter_mm"] is None
    assert event.after["measurement"]["override_longest_diameter_mm"] == 36.5

    patient_track(patient=patient)  # a rebuild (a new study arriving) keeps the override
    assert finding_at(0, 1).override_longest_diameter_mm == 36.5


def test_accept_withdraws_an_override_and_needs_no_reason(patient, radiologist):
    m = finding_at(0, 1)
    measurement_override(user=radiologist, measurement=m, volume_ml=15, reason="recontoured")

    event = measurement_accept(user=radiologist, measurement=finding_at(0, 1))

    m = finding_at(0, 1)
    assert m.review_state == "accepted" and m.override_volume_ml is None
    assert event.before["measurement"]["override_volume_ml"] == 15.0
    assert event.reason == ""


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "give at least one value"),
        ({"longest_diameter_mm": "abc"}, "longest_diameter_mm: 'abc' is not a number"),
        ({"volume_ml": -2}, "volume_ml: must be a positive number"),
        ({"short_axis_mm": 40}, "short_axis_mm: 40 mm is longer than the longest diameter"),
    ],
)
def test_override_refuses_bad_values_naming_the_field(patient, radiologist, values, message):
    with pytest.raises(ReviewError, match=message):
        measurement_override(
            user=radiologist, measurement=finding_at(0, 1), reason="remeasured", **values
        )
    assert not ReviewEvent.objects.exists()
    assert finding_at(0, 1).review_state == "pending"


def test_a_reason_is_required_and_only_reviewers_may_review(patient, radiologist):
    with pytest.raises(ReviewError, match="reason: give a reason to reject"):
        measurement_reject(user=radiologist, measurement=finding_at(2, 6), reason="  ")
    clinician = UserFactory(groups=["clinician"])
    with pytest.raises(PermissionDenied, match="may not review"):
        measurement_accept(user=clinician, measurement=finding_at(2, 6))
    assert finding_at(2, 6).review_state == "pending"
    assert not ReviewEvent.objects.exists()


def test_relink_follows_the_lesion_into_later_studies_and_survives_rebuilds(patient, radiologist):
    small = Lesion.objects.get(label="Liver 2")
    assert finding_at(0, 3).lesion == small
    moved = finding_at(1, 5)

    event = lesion_relink(
        user=radiologist, measurement=moved, lesion=small, reason="same lesion, misregistered"
    )

    assert finding_at(1, 5).lesion == small and finding_at(1, 5).status == "tracked"
    # The next study's candidate at the same place now follows Liver 2 automatically.
    assert finding_at(2, 5).lesion == small
    assert (
        not Lesion.objects.filter(label="Liver 4", measurements__study__isnull=False)
        .filter(measurements__component_label=5)
        .exists()
    )
    # Liver 4, seen once at the last study, is an equivocal new lesion: pending, not PD.
    assert [r.new_lesions for r in responses(patient)] == [False, False, False]
    assert [r.pending_new_lesions for r in responses(patient)] == [0, 0, 1]
    assert event.action == "relink" and event.after["linked_to"]["lesion_label"] == "Liver 2"
    link = LesionLink.objects.get()
    assert link.user == radiologist and link.reason == "same lesion, misregistered"

    uids = set(Lesion.objects.values_list("tracking_uid", flat=True))
    patient_track(patient=patient)
    assert finding_at(2, 5).lesion.tracking_uid == small.tracking_uid
    assert set(Lesion.objects.values_list("tracking_uid", flat=True)) == uids


def test_relink_refuses_another_organ_and_a_later_lesion(patient, radiologist):
    lung = Lesion.objects.get(label="Left lung 1")
    with pytest.raises(ReviewError, match="a lesion cannot change organ"):
        lesion_relink(user=radiologist, measurement=finding_at(1, 5), lesion=lung, reason="x")
    later = finding_at(2, 6).lesion
    with pytest.raises(ReviewError, match="after this study"):
        lesion_relink(user=radiologist, measurement=finding_at(0, 3), lesion=later, reason="x")
    assert not LesionLink.objects.exists()


def test_merge_joins_every_sighting_and_split_undoes_it(patient, radiologist):
    small = Lesion.objects.get(label="Liver 2")
    moved = finding_at(1, 5).lesion

    lesion_merge(user=radiologist, lesion=moved, into=small, reason="one lesion")

    assert finding_at(1, 5).lesion == small and finding_at(2, 5).lesion == small
    assert not Lesion.objects.filter(tracking_uid=moved.tracking_uid).exists()
    assert LesionLink.objects.count() == 2
    assert [r.new_lesions for r in responses(patient)] == [False, False, False]
    assert [r.pending_new_lesions for r in responses(patient)] == [0, 0, 1]

    event = lesion_split(
        user=radiologist, measurement=finding_at(1, 5), reason="two lesions after all"
    )

    split_off = finding_at(1, 5)
    assert split_off.lesion != small and split_off.status == "new"
    assert split_off.lesion.label.startswith("Liver ")
    assert event.after["measurement"]["status"] == "new"
    assert responses(patient)[1].new_lesions
    # The merge's link at the third study follows the split-off lesion too: one candidate
    # is one lesion at every study, and the lesion it left is not found from here on
    # (never "resolved" by itself: only a radiologist confirms a lesion gone).
    later = finding_at(2, 5)
    assert later.lesion == split_off.lesion and later.status == "tracked"
    assert [m.status for m in small.measurements.order_by("study__study_date")] == [
        "new",
        "not_found",
        "not_found",
    ]
    assert [m.lesion.label for m in LesionMeasurement.objects.filter(component_label=5)] == [
        split_off.lesion.label
    ] * 2
    assert event.after["later_links_moved"] == [
        {
            "segmentation": later.segmentation_id,
            "component_label": 5,
            "anchor_before": [finding_at(0, 3).segmentation_id, 3],
        }
    ]


def test_a_split_keeps_a_later_link_made_as_a_separate_decision(patient, radiologist):
    small = Lesion.objects.get(label="Liver 2")
    lesion_relink(user=radiologist, measurement=finding_at(1, 5), lesion=small, reason="same")
    lesion_relink(user=radiologist, measurement=finding_at(2, 6), lesion=small, reason="also it")

    lesion_split(user=radiologist, measurement=finding_at(1, 5), reason="not after all")

    assert finding_at(1, 5).lesion != small
    assert finding_at(2, 6).lesion == small  # said separately: it stays


def test_merge_into_the_lesion_seen_first_only(patient, radiologist):
    small = Lesion.objects.get(label="Liver 2")
    moved = finding_at(1, 5).lesion
    with pytest.raises(ReviewError, match="merge into the lesion seen first"):
        lesion_merge(user=radiologist, lesion=small, into=moved, reason="one lesion")


def test_split_needs_a_candidate_of_the_measurement(patient, radiologist):
    with pytest.raises(ReviewError, match="component_label: 9 is not one"):
        lesion_split(user=radiologist, measurement=finding_at(1, 1), component_label=9, reason="x")
    with pytest.raises(ReviewError, match="already a lesion of its own"):
        lesion_split(user=radiologist, measurement=finding_at(0, 1), reason="x")


def test_targets_chosen_by_hand_stay_and_drive_the_sum(patient, radiologist):
    liver = Lesion.objects.get(label="Liver 1")
    lung = Lesion.objects.get(label="Left lung 1")

    event = targets_set(user=radiologist, patient=patient, lesions=[lung], reason="liver is NE")

    assert responses(patient)[0].sum_diameters_mm == pytest.approx(16.0)
    assert event.after["targets"] == [lung.tracking_uid]
    assert set(event.before["targets"]) >= {liver.tracking_uid, lung.tracking_uid}
    patient_track(patient=patient)
    targets = set(
        LesionMeasurement.objects.filter(is_target=True).values_list("lesion__label", flat=True)
    )
    assert targets == {"Left lung 1"}
    assert LesionMeasurement.objects.filter(target_by_hand=False).count() == 0

    targets_set(user=radiologist, patient=patient, lesions=[], reason="back to the rules")
    assert responses(patient)[0].sum_diameters_mm == pytest.approx(32.0 + 16.0 + 13.0)
    assert not LesionMeasurement.objects.filter(target_by_hand=True).exists()


def test_targets_follow_the_recist_limits(radiologist):
    plan = [
        [
            (1, "liver", LIVER, 14.0, 32.0),
            (3, "liver", SMALL, 1.2, 13.0),
            (4, "liver", FAR, 1.0, 12.0),
            (2, "lung", LUNG, 0.2, 8.0),
        ]
    ]
    patient = patient_with_studies("REVIEW-2", plan)
    livers = list(Lesion.objects.filter(patient=patient, organ="liver"))
    with pytest.raises(ReviewError, match="at most 2 targets per organ"):
        targets_set(user=radiologist, patient=patient, lesions=livers, reason="x")
    lung = Lesion.objects.get(patient=patient, organ="lung")
    with pytest.raises(ReviewError, match="8.0 mm at baseline; a target must be measurable"):
        targets_set(user=radiologist, patient=patient, lesions=[lung], reason="x")


def test_a_review_rescores_the_patient(patient, radiologist, settings):
    rng = np.random.default_rng(0)
    burden = rng.uniform(0.5, 40.0, 60)
    new = rng.integers(0, 2, 60).astype(float)
    table = pd.DataFrame(
        {
            "total_burden_ml": burden,
            "new_lesions": new,
            "duration_days": 2000.0 / (1.0 + burden / 10.0 + 2.0 * new) + rng.uniform(0, 30, 60),
            "event": rng.uniform(size=60) < 0.7,
        }
    )
    model = risk_model_fit(
        kind="cox", df=table, features=["total_burden_ml", "new_lesions"], penalizer=0.5
    )
    risk_model_save(model, models_dir() / "test-cox.joblib")
    version = RiskModelVersion.objects.create(
        name="test",
        kind="cox",
        artifact_path="test-cox.joblib",
        features=["total_burden_ml", "new_lesions"],
        parameters={"endpoint": "pfs"},
    )
    other = PatientFactory(patient_id="REVIEW-OTHER")
    StudyFactory(patient=other)

    measurement_accept(user=radiologist, measurement=finding_at(2, 6))
    first = RiskScore.objects.get(patient=patient, model_version=version)
    assert not RiskScore.objects.filter(patient=other).exists()  # only this patient rescored

    event = measurement_reject(user=radiologist, measurement=finding_at(2, 6), reason="vessel")
    second = RiskScore.objects.get(patient=patient, model_version=version)
    assert event.after["risk_scores_recomputed"] == 1
    assert second.score != pytest.approx(first.score)
    assert second.explanation["landmark_date"] == first.explanation["landmark_date"]
