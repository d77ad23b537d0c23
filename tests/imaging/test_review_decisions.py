"""A radiologist's decisions outlive a new segmentation of the same series, follow the
exact candidates they were made on, and are never dropped without a record."""

import numpy as np
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from analytics.lesions.review.identities import lesion_merge, lesion_relink, lesion_split
from analytics.lesions.review.measurements import measurement_override, measurement_reject
from analytics.lesions.review.targets import targets_set
from analytics.lesions.selectors import review_history
from analytics.lesions.tracking.carry import candidates_pair
from analytics.lesions.tracking.track import patient_track
from imaging.models import Lesion, LesionLink, LesionMeasurement, ReviewEvent, Segmentation, Study
from tests.imaging.test_review import finding_at, patient_with_studies, responses
from tests.patients.factories import UserFactory

pytestmark = pytest.mark.django_db

RELABEL = 100  # a later run numbers the same findings differently


@pytest.fixture
def patient():
    return patient_with_studies("DECIDE-1")


@pytest.fixture
def radiologist():
    return UserFactory(groups=["radiologist"])


def resegment(patient, index, *, move_mm=(1.5, -1.0, 0.5), drop=()):
    """A later run segments the index-th study's series again: every candidate gets a
    new label (old + RELABEL) and its centroid moves by ``move_mm`` (the series' own
    LPS); the candidates labelled ``drop`` before are not found this time."""
    study = list(Study.objects.filter(patient=patient).order_by("study_date"))[index]
    old = (
        Segmentation.objects.filter(series=study.chosen_series)
        .order_by("-created_at", "-pk")
        .first()
    )
    lesions = []
    for c in old.lesions:
        if c["component_label"] in drop:
            continue
        lesions.append(
            {
                **c,
                "component_label": c["component_label"] + RELABEL,
                "centroid_lps_mm": [float(v) for v in np.add(c["centroid_lps_mm"], move_mm)],
            }
        )
    return Segmentation.objects.create(
        series=study.chosen_series,
        mask_path=f"masks/again-{study.pk}.nii.gz",
        model_name="test",
        model_version="2",
        lesions=lesions,
    )


def _numbers(patient):
    return [
        (r.sum_diameters_mm, r.total_volume_ml, r.recist_response, r.new_lesions)
        for r in responses(patient)
    ]


# ------------------------------------------------------------ finding 1: carry decisions
def _reject(radiologist, patient):
    measurement_reject(user=radiologist, measurement=finding_at(2, 6), reason="a vessel")


def _reject_kept(patient):
    m = finding_at(2, 6 + RELABEL)
    assert m.review_state == "rejected" and m.review_reason == "a vessel"
    assert m.reviewed_by is not None and m.reviewed_at is not None


def _override(radiologist, patient):
    measurement_override(
        user=radiologist, measurement=finding_at(0, 1), longest_diameter_mm=36.5, reason="PV"
    )


def _override_kept(patient):
    m = finding_at(0, 1 + RELABEL)
    assert m.review_state == "edited" and m.override_longest_diameter_mm == 36.5
    assert responses(patient)[0].sum_diameters_mm == pytest.approx(36.5 + 16.0 + 13.0)


def _relink(radiologist, patient):
    small = Lesion.objects.get(patient=patient, label="Liver 2")
    lesion_relink(user=radiologist, measurement=finding_at(1, 5), lesion=small, reason="same")


def _relink_kept_here(patient):
    assert finding_at(1, 5 + RELABEL).lesion.label == "Liver 2"
    link = LesionLink.objects.get()
    assert (link.segmentation.model_version, link.component_label) == ("2", 5 + RELABEL)


def _relink_kept_at_anchor(patient):
    assert finding_at(1, 5).lesion.label == "Liver 2"
    assert finding_at(0, 3 + RELABEL).lesion.label == "Liver 2"
    link = LesionLink.objects.get()
    assert (link.anchor_segmentation.model_version, link.anchor_component_label) == (
        "2",
        3 + RELABEL,
    )


def _merge(radiologist, patient):
    small = Lesion.objects.get(patient=patient, label="Liver 2")
    lesion_merge(user=radiologist, lesion=finding_at(1, 5).lesion, into=small, reason="one")


def _merge_kept(patient):
    assert finding_at(1, 5).lesion.label == "Liver 2"
    assert finding_at(2, 5 + RELABEL).lesion.label == "Liver 2"


def _targets(radiologist, patient):
    lung = Lesion.objects.get(patient=patient, label="Left lung 1")
    targets_set(user=radiologist, patient=patient, lesions=[lung], reason="liver NE")


def _targets_kept(patient):
    targets = set(
        LesionMeasurement.objects.filter(is_target=True).values_list("lesion__label", flat=True)
    )
    assert targets == {"Left lung 1"}
    assert not LesionMeasurement.objects.filter(target_by_hand=False).exists()
    assert responses(patient)[0].sum_diameters_mm == pytest.approx(16.0)


@pytest.mark.parametrize(
    ("decide", "resegmented", "kept"),
    [
        (_reject, 2, _reject_kept),
        (_override, 0, _override_kept),
        (_relink, 1, _relink_kept_here),
        (_relink, 0, _relink_kept_at_anchor),
        (_merge, 2, _merge_kept),
        (_targets, 0, _targets_kept),
    ],
    ids=["reject", "override", "relink", "relink-anchor", "merge", "targets"],
)
def test_a_new_segmentation_of_a_series_keeps_every_decision_and_tracking_uid(
    patient, radiologist, decide, resegmented, kept
):
    decide(radiologist, patient)
    uids = set(Lesion.objects.filter(patient=patient).values_list("tracking_uid", "label"))
    numbers = _numbers(patient)

    resegment(patient, resegmented)
    summary = patient_track(patient=patient)

    kept(patient)
    assert set(Lesion.objects.filter(patient=patient).values_list("tracking_uid", "label")) == uids
    assert _numbers(patient) == numbers
    assert summary.stale == [] and summary.carried
    event = ReviewEvent.objects.get(action="carry_over")
    assert event.user is None and event.after["carried"] == summary.carried
    # carried once: the next rebuild finds the decisions on the new segmentation
    again = patient_track(patient=patient)
    assert again.carried == [] and again.stale == []
    kept(patient)


def test_a_decision_that_cannot_be_carried_is_recorded_for_re_review(patient, radiologist):
    _reject(radiologist, patient)
    _relink(radiologist, patient)
    far = finding_at(2, 6).lesion

    resegment(patient, 2, drop=(6,))  # the run no longer finds the rejected candidate
    resegment(patient, 1, move_mm=(40.0, 0.0, 0.0))  # nor the relinked one where it was
    summary = patient_track(patient=patient)

    assert not LesionMeasurement.objects.filter(review_state="rejected").exists()
    [review] = summary.stale_reviews
    assert review["kind"] == "review" and "needs re-review" in review["message"]
    assert review["lesion_uid"] == far.tracking_uid and review["component_labels"] == [6]
    assert review["decision"]["review_state"] == "rejected"
    assert review["decision"]["review_reason"] == "a vessel"
    [link] = summary.stale_links
    assert link["kind"] == "link" and link["component_labels"] == [5]
    assert LesionLink.objects.get().component_label == 5  # kept, as it was made
    event = ReviewEvent.objects.get(action="carry_over")
    assert event.after["stale_reviews"] == summary.stale_reviews
    assert summary.as_dict()["stale_links"] == summary.stale_links
    # a stored link that no longer applies is listed on every rebuild, never dropped
    assert len(patient_track(patient=patient).stale_links) == 1


@pytest.mark.parametrize(
    ("old", "new", "paired"),
    [
        # (label, organ, centre mm, longest mm) -> old label: new label
        ([(1, "liver", (0, 0, 0), 8.0)], [(7, "liver", (4.9, 0, 0), 8.0)], {1: 7}),
        ([(1, "liver", (0, 0, 0), 8.0)], [(7, "liver", (5.1, 0, 0), 8.0)], {}),
        ([(1, "liver", (0, 0, 0), 30.0)], [(7, "liver", (14.0, 0, 0), 10.0)], {1: 7}),
        ([(1, "liver", (0, 0, 0), 30.0)], [(7, "lung", (1.0, 0, 0), 30.0)], {}),
        # nearest-first would pair 1 with 8 and leave 2 alone; the best pairing takes both
        (
            [(1, "liver", (0, 0, 0), 12.0), (2, "liver", (9, 0, 0), 12.0)],
            [(7, "liver", (-5, 0, 0), 12.0), (8, "liver", (4, 0, 0), 12.0)],
            {1: 7, 2: 8},
        ),
    ],
)
def test_candidates_pair_by_organ_and_distance(old, new, paired):
    def entries(rows):
        return [
            {"component_label": k, "organ": o, "centroid_lps_mm": list(c), "longest_diameter_mm": d}
            for k, o, c, d in rows
        ]

    pairs = candidates_pair(old=entries(old), new=entries(new))
    assert {k: v[0] for k, v in pairs.items()} == paired


# ------------------------------------------- finding 2: a decision is on exact candidates
def test_a_merge_withdraws_the_override_made_on_one_part(patient, radiologist):
    liver = finding_at(1, 1).lesion
    measurement_override(user=radiologist, measurement=finding_at(1, 1), volume_ml=12, reason="x")

    event = lesion_merge(user=radiologist, lesion=finding_at(1, 5).lesion, into=liver, reason="y")

    combined = finding_at(1, 1)
    assert sorted(combined.component_labels) == [1, 5] and combined.lesion == liver
    assert combined.override_volume_ml is None and combined.review_state == "pending"
    assert combined.effective_volume_ml == pytest.approx(9.0 + 1.1)
    [stale] = event.after["stale_reviews"]
    assert stale["lesion_uid"] == liver.tracking_uid and stale["component_labels"] == [1]
    assert stale["decision"]["override_volume_ml"] == 12.0


def test_a_split_does_not_hand_the_combined_lesions_override_to_a_part(patient, radiologist):
    liver = finding_at(1, 1).lesion
    lesion_merge(user=radiologist, lesion=finding_at(1, 5).lesion, into=liver, reason="one")
    measurement_override(
        user=radiologist, measurement=finding_at(1, 1), longest_diameter_mm=45, reason="both"
    )

    event = lesion_split(
        user=radiologist, measurement=finding_at(1, 1), component_label=1, reason="two"
    )

    for component in (1, 5):
        part = finding_at(1, component)
        assert part.component_labels == [component]
        assert part.override_longest_diameter_mm is None and part.review_state == "pending"
    [stale] = event.after["stale_reviews"]
    assert sorted(stale["component_labels"]) == [1, 5]
    assert stale["decision"]["override_longest_diameter_mm"] == 45.0


def test_a_hand_chosen_target_whose_candidates_change_is_dropped_and_said(patient, radiologist):
    liver = Lesion.objects.get(patient=patient, label="Liver 1")
    lung = Lesion.objects.get(patient=patient, label="Left lung 1")
    targets_set(user=radiologist, patient=patient, lesions=[liver, lung], reason="chosen")

    event = lesion_relink(
        user=radiologist, measurement=finding_at(0, 3), lesion=liver, reason="same lesion"
    )

    targets = set(
        LesionMeasurement.objects.filter(is_target=True).values_list("lesion__label", flat=True)
    )
    assert targets == {"Left lung 1"}
    [stale] = event.after["stale_targets"]
    assert stale["lesion_uid"] == liver.tracking_uid and stale["component_labels"] == [1]


# ---------------------------------------------- finding 6: fragments' diameters add up
@pytest.mark.parametrize(
    ("study", "component", "into", "longest_mm", "short_mm"),
    [
        (1, 5, "Liver 1", 27.0 + 12.5, 27.0 * 0.8),  # merged: Liver 1 is 1 + 5 at study 1
        (2, 6, "Liver 1", 21.0 + 11.0, 21.0 * 0.8),  # relinked: 1 + 6 at study 2
    ],
)
def test_a_lesion_of_several_candidates_adds_their_longest_diameters(
    patient, radiologist, study, component, into, longest_mm, short_mm
):
    target = Lesion.objects.get(patient=patient, label=into)
    lesion_relink(
        user=radiologist, measurement=finding_at(study, component), lesion=target, reason="one"
    )

    row = LesionMeasurement.objects.get(lesion=target, study__study_date=_date(study))
    assert sorted(row.component_labels) == sorted([1, component])
    assert row.longest_diameter_mm == pytest.approx(longest_mm)  # RECIST 1.1 section 4.3.2
    assert row.short_axis_mm == pytest.approx(short_mm)
    assert row.is_target
    others = sum(
        m.effective_longest_diameter_mm
        for m in LesionMeasurement.objects.filter(study=row.study, is_target=True).exclude(
            pk=row.pk
        )
    )
    # A target is still not found there, so the targets measured are not the sum of the
    # targets: it is left out, and the note carries what the measured ones add up to.
    assert LesionMeasurement.objects.filter(study=row.study, is_target=True, status="not_found")
    assessed = responses(patient)[study]
    assert assessed.sum_diameters_mm is None
    assert f"measured sum to {longest_mm + others:.1f} mm" in assessed.response_note


def _date(index):
    return sorted(set(LesionMeasurement.objects.values_list("study__study_date", flat=True)))[index]


# ----------------------------------------------------- finding 7: one order of locks
def test_override_locks_the_patient_before_the_measurement(patient, radiologist):
    m = finding_at(0, 1)
    with CaptureQueriesContext(connection) as queries:
        measurement_override(user=radiologist, measurement=m, longest_diameter_mm=36, reason="x")

    sql = [q["sql"] for q in queries.captured_queries]
    patient_at = next(i for i, q in enumerate(sql) if 'FROM "patients_patient"' in q)
    measurement_at = next(i for i, q in enumerate(sql) if 'FROM "imaging_lesionmeasurement"' in q)
    assert patient_at < measurement_at
    if connection.features.has_select_for_update:
        assert "FOR UPDATE" in sql[patient_at] and "FOR UPDATE" in sql[measurement_at]


# ------------------------------------------- finding 15: history outlives the rows
def test_review_history_names_what_each_event_was_about_after_rebuilds(
    patient, radiologist, client
):
    far = finding_at(2, 6)
    event = measurement_reject(user=radiologist, measurement=far, reason="a vessel")
    lesion = far.lesion
    patient_track(patient=patient)  # rows rebuilt: the event loses its row
    event.refresh_from_db()
    assert event.measurement is None

    [row] = review_history(patient=patient)
    assert row.event == event and row.action == "Rejected as a false positive"
    assert (row.lesion_uid, row.lesion_label, row.lesion) == (
        lesion.tracking_uid,
        lesion.label,
        lesion,
    )
    assert row.study_instance_uid == far.study.study_instance_uid
    assert row.study_date == far.study.study_date.isoformat()
    assert (row.segmentation, row.component_labels) == (far.segmentation_id, [6])

    client.force_login(radiologist)
    page = client.get(reverse("lesions:viewer", args=[patient.pk])).content.decode()
    history = page[page.index('id="review-history"') :]
    assert lesion.tracking_uid in history and far.study.study_instance_uid in history
    assert "a vessel" in history and f"segmentation {far.segmentation_id}: 6" in history
