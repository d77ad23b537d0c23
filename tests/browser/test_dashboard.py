"""The dashboard in a real browser (Playwright driving Debian's Chromium): log in, the
worklist, a patient's charts, the viewer, a rejected lesion changing the response, log out.

Screenshots go to ``RADTRACK_TEST_ARTIFACTS`` (default ``test-artifacts/``).
"""

import datetime as dt
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from django.urls import reverse

from analytics.dashboard.worklist import worklist_page
from analytics.models import RiskModelVersion, models_dir
from analytics.risk.core.survival import risk_model_fit, risk_model_save
from analytics.risk.services import FEATURES, risk_scores_compute
from imaging.models import LesionMeasurement, Study
from patients.models import ClinicalEvent, LabResult
from tests.conftest import require_program
from tests.imaging.test_review import patient_with_studies
from tests.imaging.test_viewer import _images_write
from tests.patients.factories import PASSWORD, PatientFactory, UserFactory

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _artifacts() -> Path:
    folder = Path(os.environ.get("RADTRACK_TEST_ARTIFACTS", "test-artifacts")) / "dashboard"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _model_fit_and_score() -> RiskModelVersion:
    """A real (tiny) Cox model on a synthetic training table, saved and used to score
    every patient, so that a review's rescoring runs the real code path."""
    rng = np.random.default_rng(3)
    n = 80
    table = pd.DataFrame({name: rng.normal(size=n) for name in FEATURES})
    hazard = np.exp(0.8 * table[FEATURES[0]])
    table["duration_days"] = rng.exponential(400.0 / hazard).round() + 1
    table["event"] = rng.random(n) < 0.7
    table["patient_id"] = [f"T{i}" for i in range(n)]
    model = risk_model_fit(kind="cox", df=table, features=FEATURES)
    risk_model_save(model, models_dir() / "browser-cox.joblib")
    version = RiskModelVersion.objects.create(
        name="cox-pfs-browser",
        kind="cox",
        artifact_path="browser-cox.joblib",
        features=list(FEATURES),
        training_fingerprint="0" * 64,
        parameters={"endpoint": "pfs"},
        tier_thresholds=model.tiers.as_dict(),
        metrics={
            "c_index": 0.68,
            "c_index_sd": 0.05,
            "horizon_days": 365.0,
            "calibration": [
                {"group": g, "n": 8, "mean_predicted": g / 11, "observed": g / 12,
                 "followed_to_horizon": g < 9}
                for g in range(1, 11)
            ],
        },
    )  # fmt: skip
    assert risk_scores_compute(model_version=version) >= 1
    return version


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_clinician_path_through_the_dashboard(live_server):
    chromium = require_program("chromium", why="the dashboard is tested in a real browser")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    patient = patient_with_studies("BROWSER-DASH")
    _images_write(patient)
    for i in range(6):
        other = PatientFactory(patient_id=f"OTHER-{i}")
        # outcomes after the landmark (their lab date) for the cohort page's curves
        if i % 2:
            ClinicalEvent.objects.create(
                patient=other,
                kind="progression",
                date=dt.date(2024, 6, 1) + dt.timedelta(days=40 * i),
            )
        ClinicalEvent.objects.create(patient=other, kind="censor", date=dt.date(2025, 1, 1))
        LabResult.objects.create(
            patient=other,
            loinc_code="2039-6",
            value=2.0 + i,
            unit="ng/mL",
            observed_at=dt.datetime(2024, 5, 5, 9, tzinfo=dt.UTC),
        )
    for k, value in enumerate((3.0, 3.4, 7.5)):
        LabResult.objects.create(
            patient=patient,
            loinc_code="2039-6",
            value=value,
            unit="ng/mL",
            observed_at=dt.datetime(2024, 1 + 3 * k, 5, 9, tzinfo=dt.UTC),
        )
    _model_fit_and_score()
    expected_first = worklist_page().rows[0]
    user = UserFactory(groups=["radiologist"])
    middle = Study.objects.filter(patient=patient).order_by("study_date")[1]
    moved = LesionMeasurement.objects.get(study=middle, component_label=5)
    shots = _artifacts()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            errors: list[str] = []
            outside: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            # The Content-Security-Policy must let every script, style and worker run.
            page.on(
                "console",
                lambda message: (
                    errors.append(message.text)
                    if "Content Security Policy" in message.text
                    else None
                ),
            )
            page.on(
                "request",
                lambda request: (
                    None
                    if request.url.startswith((live_server.url, "data:", "blob:"))
                    else outside.append(request.url)
                ),
            )

            # log in: the worklist is the home page
            page.goto(live_server.url + "/")
            page.fill("input[name=username]", user.username)
            page.fill("input[name=password]", PASSWORD)
            with page.expect_navigation():
                page.click("button[type=submit]")
            worklist_path = page.url.removeprefix(live_server.url)
            first_row = page.text_content("table.worklist tbody tr:first-child")
            page.screenshot(path=str(shots / "1-worklist.png"), full_page=True)

            # keyboard: the skip link is the first stop
            page.keyboard.press("Tab")
            skip_focused = page.evaluate("document.activeElement.className")

            # a patient: the charts are drawn by the site's own Plotly
            with page.expect_navigation():
                page.click(
                    f"table.worklist a[href='{reverse('patients:detail', args=[patient.pk])}']"
                )
            page.wait_for_selector("[data-figure][data-drawn=true]", timeout=30_000)
            page.wait_for_selector(
                "[data-figure]:not([data-drawn=true])", state="detached", timeout=30_000
            )
            drawn = page.eval_on_selector_all(
                "[data-figure][data-drawn=true]", "els => els.map(e => e.dataset.figure)"
            )
            lines = page.eval_on_selector_all(
                "#fig-lesions-chart .scatterlayer .trace", "e => e.length"
            )
            page.screenshot(path=str(shots / "2-patient.png"), full_page=True)

            # the viewer: both studies load, and the slices scroll
            with page.expect_navigation():
                page.click("text=Open the image viewer")
            # A selector, not a script: the CSP allows no eval, which wait_for_function needs.
            page.wait_for_selector("body[data-viewer-ready]", state="attached", timeout=60_000)
            z = "radtrackViewer.panes.map(p => Array.from(p.nv.frac2mm(p.nv.scene.crosshairPos))[2])"
            before_scroll = page.evaluate(z)
            page.focus("#viewer-follow-up")
            for _ in range(3):
                page.keyboard.press("PageUp")
            after_scroll = page.evaluate(z)
            page.screenshot(path=str(shots / "3-viewer.png"), full_page=True)

            # reject the lesion that made the middle study PD, from the patient page
            page.goto(live_server.url + reverse("patients:detail", args=[patient.pk]))
            cell = f"[data-testid=recist-{middle.pk}]"
            before = page.text_content(cell)
            page.locator(f"tr:has(#review-{moved.pk}) details.review-toggle > summary").click()
            form = page.locator(f"#review-{moved.pk}")
            form.locator("input[name=reason]").first.fill("a vessel, not a lesion")
            with page.expect_navigation():
                form.locator("button[value=reject]").click()
            after = page.text_content(cell)
            # tracking is rebuilt after a review, so the row is found by what it says
            struck = page.locator("table.lesions tr.is-rejected").count()
            page.wait_for_selector("[data-figure=fig-timeline][data-drawn=true]")
            page.screenshot(path=str(shots / "4-after-reject.png"), full_page=True)

            # cohort: survival by tier, metrics and calibration
            page.goto(live_server.url + reverse("analytics:cohort"))
            page.wait_for_selector("[data-figure=fig-calibration][data-drawn=true]")
            cohort_drawn = page.eval_on_selector_all(
                "[data-figure][data-drawn=true]", "els => els.map(e => e.dataset.figure)"
            )
            page.screenshot(path=str(shots / "5-cohort.png"), full_page=True)

            # pipeline: every series' state and steps
            page.goto(live_server.url + reverse("analytics:pipeline"))
            pipeline_text = page.text_content("#pipeline-live")
            page.screenshot(path=str(shots / "6-pipeline.png"), full_page=True)

            # log out
            with page.expect_navigation():
                page.click("button:has-text('Log out')")
            logged_out = page.url.removeprefix(live_server.url)
            page.screenshot(path=str(shots / "7-logged-out.png"))
        finally:
            browser.close()

    assert not errors, errors
    assert not outside, f"pages reached outside the site: {outside}"
    assert worklist_path == reverse("analytics:worklist")
    assert expected_first.patient_id in first_row and expected_first.tier_label in first_row
    assert "skip-link" in skip_focused
    assert set(drawn) == {"fig-lesions", "fig-timeline", "fig-risk"}
    assert lines >= 4  # one line per lesion identity
    assert before_scroll[0] == pytest.approx(before_scroll[1], abs=0.01)
    assert after_scroll[1] != pytest.approx(before_scroll[1], abs=0.01)  # it scrolled
    assert after_scroll[0] == pytest.approx(after_scroll[1], abs=0.01)  # together
    # Without the "new" lesion the middle study is no longer PD, but the baseline's small
    # liver target was not found there either: not evaluable, never a silent 0 mm.
    assert before == "PD" and after == "NE"
    # Rejection holds for the lesion, not one study (RECIST 4.3.5 review rule, issue 15):
    # both of its sightings, middle and last study, are struck through with their state.
    assert struck == 2
    assert logged_out.startswith(reverse("login"))
    assert set(cohort_drawn) == {"fig-km", "fig-calibration"}
    assert "BROWSER-DASH" in pipeline_text and "Processed" in pipeline_text
    for name in (
        "1-worklist",
        "2-patient",
        "3-viewer",
        "4-after-reject",
        "5-cohort",
        "6-pipeline",
        "7-logged-out",
    ):
        assert (shots / f"{name}.png").stat().st_size > 10_000
