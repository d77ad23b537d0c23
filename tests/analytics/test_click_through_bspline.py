"""A click on the viewer's follow-up pane, which shows the follow-up on the baseline's grid
through a deformable registration, lands where the radiologist clicked: the page sends it
in the baseline's LPS mm with the registration, and the server carries it through the
registration's full stored transform (B-spline included), which no 4x4 matrix holds.

The registration is stored as `test_full_transform_everywhere` stores one: its affine
part 12 mm off along S, a B-spline that brings it back, so the whole transform is the
true pose change between the studies while the matrix alone puts the click 12 mm away,
most of the way across the 14 mm nodule.
"""

from __future__ import annotations

import numpy as np
import pytest

from analytics.lesions.corrections_viewer import correction_context
from analytics.lesions.tracking.track import patient_track
from analytics.lesions.viewer import viewer_build
from imaging.models import Lesion, LesionMeasurement, Registration, ReviewEvent, Segmentation
from tests.analytics.correction_patient import correction_patient
from tests.analytics.test_full_transform_everywhere import (
    _deformable,
    _registration_store,
)
from tests.analytics.test_lesion_corrections import _add, _client
from tests.imaging.factories import SeriesFactory, StudyFactory
from tests.patients.factories import PatientFactory, UserFactory

pytestmark = pytest.mark.django_db


def _deformed(case) -> tuple[Registration, np.ndarray]:
    """The patient's registration stored with a B-spline (the same true change), as
    `registration_store` writes one; and that true change (baseline -> follow-up LPS)."""
    registration = Registration.objects.get(moving_series=case.studies[1].chosen_series)
    true = np.asarray(registration.matrix_fixed_to_moving, dtype=float)
    _registration_store(registration, _deformable(true))
    patient_track(patient=case.patient)
    return registration, true


def _shown_at(true: np.ndarray, follow_up_lps: np.ndarray) -> np.ndarray:
    """Where the follow-up pane shows a follow-up point: the baseline's LPS mm, through
    the true change (the pane's image is resampled through the full transform)."""
    return (np.linalg.inv(true) @ np.append(follow_up_lps, 1.0))[:3]


def test_the_follow_up_pane_sends_its_clicks_in_the_baseline_frame():
    case = correction_patient(patient_id="BSPLINE-PANE", missed_at=())
    registration, true = _deformed(case)

    sides = correction_context(viewer=viewer_build(patient=case.patient))["sides"]

    follow_up, baseline = sides["follow_up"], sides["baseline"]
    assert follow_up["to_own_lps_exact"] is False
    assert follow_up["registration"] == registration.pk and follow_up["own_grid"] is False
    assert "full transform" in follow_up["to_own_lps_note"]
    assert baseline["registration"] is None and baseline["own_grid"] is True
    assert baseline["to_own_lps_exact"] is True
    # What the page did before: the matrix alone puts the click 12 mm from the point shown.
    shown = _shown_at(true, case.centres[1])
    by_matrix = (np.asarray(follow_up["to_own_lps"]) @ np.append(shown, 1.0))[:3]
    assert np.linalg.norm(by_matrix - case.centres[1]) == pytest.approx(12.0, abs=0.01)


def test_a_click_in_the_baseline_frame_lands_where_the_full_transform_puts_it():
    case = correction_patient(patient_id="BSPLINE-CLICK", missed_at=(0, 1))
    registration, true = _deformed(case)
    baseline, follow_up = case.studies
    radiologist = UserFactory(groups=["radiologist"])
    shown = _shown_at(true, case.centres[1])

    answer = _add(
        _client(radiologist),
        follow_up,
        shown,
        seed_frame="baseline",
        registration=registration.pk,
        reason="missed at follow-up",
    )

    assert answer.status_code == 201, answer.json()
    body = answer.json()
    assert np.linalg.norm(np.array(body["seed_lps_mm"]) - case.centres[1]) < 0.01
    event = ReviewEvent.objects.get(action="lesion_add_click")
    seed = event.after["method"]["parameters"]["seed_lps_mm"]
    assert np.linalg.norm(np.array(seed) - case.centres[1]) < 0.01
    by_study = {row["study_instance_uid"]: row for row in body["measurements"]}
    clicked = by_study[follow_up.study_instance_uid]
    assert clicked["status"] == "added"
    assert np.linalg.norm(np.array(clicked["centroid_lps_mm"]) - case.centres[1]) < 3.0
    assert clicked["volume_ml"] == pytest.approx(case.volumes_ml[1], rel=0.35)
    # followed back to the baseline, where the full transform puts it
    assert by_study[baseline.study_instance_uid]["status"] == "propagated"
    at_baseline = by_study[baseline.study_instance_uid]["centroid_lps_mm"]
    assert np.linalg.norm(np.array(at_baseline) - case.centres[0]) < 4.0


def test_a_box_in_the_baseline_frame_is_carried_with_the_click():
    case = correction_patient(patient_id="BSPLINE-BOX", missed_at=(1,))
    registration, true = _deformed(case)
    follow_up = case.studies[1]
    shown = _shown_at(true, case.centres[1])
    box = [(shown - 12.0).tolist(), (shown + 12.0).tolist()]

    answer = _add(
        _client(UserFactory(groups=["radiologist"])),
        follow_up,
        shown,
        seed_frame="baseline",
        registration=registration.pk,
        box_lps_mm=box,
    )

    assert answer.status_code == 201, answer.json()
    event = ReviewEvent.objects.get(action="lesion_add_click")
    parameters = event.after["method"]["parameters"]
    carried = np.array(parameters["box_lps_mm"])
    # The true change is a rotation and shift: the carried box bounds the nodule, around
    # the follow-up's centre, not 12 mm above it.
    middle = carried.mean(axis=0)
    assert np.linalg.norm(middle - case.centres[1]) < 0.01
    clicked = {r["study_instance_uid"]: r for r in answer.json()["measurements"]}
    assert clicked[follow_up.study_instance_uid]["status"] == "added"


def test_a_click_in_the_study_frame_still_needs_no_registration():
    case = correction_patient(patient_id="BSPLINE-OWN", missed_at=(0,))
    _deformed(case)

    answer = _add(_client(UserFactory(groups=["radiologist"])), case.studies[0], case.centres[0])

    assert answer.status_code == 201, answer.json()
    assert answer.json()["seed_lps_mm"] == pytest.approx(case.centres[0].tolist())


def test_a_registration_that_is_not_this_studys_is_refused_and_nothing_stored():
    case = correction_patient(patient_id="BSPLINE-REFUSE", missed_at=(0, 1))
    registration, true = _deformed(case)
    baseline, follow_up = case.studies
    client = _client(UserFactory(groups=["radiologist"]))
    shown = _shown_at(true, case.centres[1])
    other = SeriesFactory(study=StudyFactory(patient=PatientFactory()))
    another_patients = Registration.objects.create(
        moving_series=follow_up.chosen_series,
        fixed_series=other,
        backend="test",
        matrix_fixed_to_moving=np.eye(4).tolist(),
    )
    failed = Registration.objects.create(
        moving_series=follow_up.chosen_series,
        fixed_series=baseline.chosen_series,
        backend="test",
        matrix_fixed_to_moving=np.eye(4).tolist(),
        failed=True,
    )
    versions, lesions = Segmentation.objects.count(), Lesion.objects.count()

    def refused(study, **extra):
        answer = _add(client, study, shown, **extra)
        assert answer.status_code == 400, answer.json()
        return str(answer.json())

    # the baseline study's click through the follow-up's registration
    assert "registration" in refused(baseline, seed_frame="baseline", registration=registration.pk)
    assert "registration" in refused(
        follow_up, seed_frame="baseline", registration=another_patients.pk
    )
    assert "failed" in refused(follow_up, seed_frame="baseline", registration=failed.pk)
    assert "registration" in refused(follow_up, seed_frame="baseline", registration=10**12)
    assert "registration" in refused(follow_up, seed_frame="baseline")
    assert "registration" in refused(follow_up, registration=registration.pk)
    assert "seed_frame" in refused(follow_up, seed_frame="pane", registration=registration.pk)
    assert Segmentation.objects.count() == versions and Lesion.objects.count() == lesions
    assert not ReviewEvent.objects.exists()
    assert not LesionMeasurement.objects.filter(origin="added").exists()


# --------------------------------------------------------------------------- in a browser
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_click_on_the_deformed_follow_up_pane_in_a_browser_lands_on_the_nodule(live_server):
    from django.urls import reverse

    from tests.browser.test_dashboard import CHROMIUM_ARGS
    from tests.conftest import require_program
    from tests.imaging.test_viewer_corrections_browser import _POSITION
    from tests.patients.factories import PASSWORD

    chromium = require_program("chromium", why="the viewer's script runs in a browser")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    case = correction_patient(patient_id="BSPLINE-BROWSER", missed_at=(1,))
    registration, true = _deformed(case)
    follow_up = case.studies[1]
    shown = _shown_at(true, case.centres[1])
    user = UserFactory(groups=["radiologist"], username="dr-bspline")
    sent: list[str] = []

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on(
                "request",
                lambda r: sent.append(r.post_data or "") if r.url.endswith("/lesions/") else None,
            )
            page.goto(live_server.url + reverse("login"))
            page.fill("input[name=username]", user.username)
            page.fill("input[name=password]", PASSWORD)
            with page.expect_navigation():
                page.click("button[type=submit]")
            page.goto(live_server.url + reverse("lesions:viewer", args=[case.patient.pk]))
            page.wait_for_selector("body[data-viewer-ready]", state="attached", timeout=60_000)
            page.click("#add-lesion")
            x, y = page.evaluate(_POSITION, ["viewer-follow-up", [-shown[0], -shown[1], shown[2]]])
            with page.expect_navigation(timeout=120_000):
                page.mouse.click(x, y)
            page.wait_for_selector("body[data-viewer-ready]", state="attached", timeout=60_000)
        finally:
            browser.close()

    assert not errors, errors
    assert len(sent) == 1 and '"seed_frame":"baseline"' in sent[0], sent
    assert f'"registration":{registration.pk}' in sent[0], sent
    event = ReviewEvent.objects.get(action="lesion_add_click")
    assert event.user == user
    seed = np.array(event.after["method"]["parameters"]["seed_lps_mm"])
    # within a pixel or so of the nodule's centre (the affine part alone: 12 mm off)
    assert np.linalg.norm(seed - case.centres[1]) < 4.0, seed
    added = LesionMeasurement.objects.get(study=follow_up, origin="added")
    centre = np.array([added.centroid_x_mm, added.centroid_y_mm, added.centroid_z_mm])
    assert np.linalg.norm(centre - case.centres[1]) < 3.0
