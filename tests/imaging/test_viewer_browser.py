"""The viewer in a real browser: NiiVue draws both studies (WebGL2 via SwiftShader in
headless Chromium), presets and jumps act on both panes, and a review updates the page."""

import pytest
from django.urls import reverse

from imaging.models import LesionMeasurement, Study
from tests.conftest import require_program
from tests.imaging.test_review import patient_with_studies
from tests.imaging.test_viewer import _images_write
from tests.patients.factories import PASSWORD, UserFactory


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_viewer_draws_both_studies_and_review_updates_the_categories(live_server):
    chromium = require_program("chromium", why="the viewer's script runs in a browser")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    patient = patient_with_studies("BROWSER-1")
    _images_write(patient)
    user = UserFactory(groups=["radiologist"])
    middle = Study.objects.filter(patient=patient).order_by("study_date")[1]
    moved = LesionMeasurement.objects.get(study=middle, component_label=5)
    liver = LesionMeasurement.objects.get(study=middle, component_label=1)
    url = live_server.url + reverse("lesions:viewer", args=[patient.pk]) + f"?study={middle.pk}"

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox",
                "--headless",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page()
            errors = []
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
            page.goto(live_server.url + reverse("login"))
            page.fill("input[name=username]", user.username)
            page.fill("input[name=password]", PASSWORD)
            with page.expect_navigation():
                page.click("button[type=submit]")
            page.goto(url)
            # A selector, not a script: the CSP allows no eval, which wait_for_function needs.
            page.wait_for_selector("body[data-viewer-ready]", state="attached", timeout=60_000)
            ready = page.evaluate("document.body.dataset.viewerReady")
            status = page.text_content("#viewer-status")
            layers = page.evaluate("radtrackViewer.panes.map(p => p.nv.volumes.length)")
            # Give NiiVue time to resize: a canvas sized to an unbounded parent grows.
            page.wait_for_timeout(1500)
            canvases = page.evaluate(
                "radtrackViewer.panes.map(p => [p.canvas.getBoundingClientRect().height,"
                " p.nv.opts.isRadiologicalConvention])"
            )
            viewport_height = page.evaluate("window.innerHeight")
            page.keyboard.press("1")  # lung window
            lung = page.evaluate(
                "radtrackViewer.panes.map(p => [p.nv.volumes[0].cal_min, p.nv.volumes[0].cal_max])"
            )
            page.click(f"[data-jump='follow_up-{liver.pk}']")
            positions = page.evaluate(
                "radtrackViewer.panes.map(p => Array.from(p.nv.frac2mm(p.nv.scene.crosshairPos)).slice(0, 3))"
            )
            expected = page.evaluate(
                f"JSON.parse(document.getElementById('viewer-jumps').textContent)['follow_up-{liver.pk}']"
            )
            page.keyboard.press("PageUp")
            stepped = page.evaluate(
                "radtrackViewer.panes.map(p => Array.from(p.nv.frac2mm(p.nv.scene.crosshairPos))[2])"
            )
            before = page.text_content("#responses tbody tr:nth-child(2)")
            form = page.locator(f"#review-{moved.pk}")
            form.locator("input[name=reason]").first.fill("a vessel, not a lesion")
            with page.expect_navigation():
                form.locator("button[value=reject]").click()
            after = page.text_content("#responses tbody tr:nth-child(2)")
            message = page.text_content(".messages")
        finally:
            browser.close()

    assert ready == "true", status
    assert not errors
    assert layers == [3, 3]  # volume, lesion mask, probability map on each side
    for height, radiological in canvases:
        assert 200 < height <= viewport_height  # the whole slice is on screen
        assert radiological  # the patient's right on the screen's left, as on a PACS
    assert lung == [[-1350, 150], [-1350, 150]]
    for position in positions:
        assert position == pytest.approx(expected, abs=4.0)  # within a 4 mm voxel
    assert stepped[0] == pytest.approx(stepped[1], abs=0.01)  # the panes scroll together
    assert stepped[0] == pytest.approx(expected[2] + 4.0, abs=4.0)
    assert "PD" in before and "yes" in before
    # No longer PD; the baseline's small target is not found there, so NE (not 0 mm, not PR)
    assert "NE" in after and "PD" not in after and "no" in after
    assert "Rejected as a false positive" in message
