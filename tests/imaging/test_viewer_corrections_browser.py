"""Corrections in a real browser (Playwright driving Debian's Chromium): a reviewer adds
the lesion the segmenter missed by clicking it in the viewer, edits its mask with the
brush, and the patient page's chart shows the new lesion's line."""

import pytest
from django.urls import reverse

from imaging.models import LesionMeasurement, ReviewEvent
from tests.analytics.correction_patient import correction_patient
from tests.browser.test_dashboard import CHROMIUM_ARGS
from tests.conftest import require_program
from tests.patients.factories import PASSWORD, UserFactory

#: The canvas position (CSS pixels from the page's corner) of a point, RAS mm, on the
#: slice that holds it: the crosshair is put there first, so NiiVue shows that slice.
_POSITION = """([side, ras]) => {
  const pane = radtrackViewer.panes.filter(p => p.canvas.id === side)[0];
  pane.nv.scene.crosshairPos = pane.nv.mm2frac(ras);
  pane.nv.drawScene();
  pane.canvas.scrollIntoView({block: "center"});
  const at = pane.nv.frac2canvasPosWithTile(pane.nv.mm2frac(ras), pane.nv.sliceTypeAxial);
  const box = pane.canvas.getBoundingClientRect();
  const dpr = pane.nv.uiData.dpr || 1;
  return [box.left + at.pos[0] / dpr, box.top + at.pos[1] / dpr];
}"""


_PAINTED = "radtrackViewer.panes[0].nv.drawBitmap.reduce((n, v) => n + (v > 0 ? 1 : 0), 0)"


def _chart_lines(page, url) -> int:
    page.goto(url)
    page.wait_for_selector("[data-figure=fig-lesions][data-drawn=true]", timeout=30_000)
    return page.eval_on_selector_all("#fig-lesions-chart .scatterlayer .trace", "e => e.length")


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_lesion_added_by_a_click_and_edited_with_the_brush_reaches_the_chart(live_server):
    chromium = require_program("chromium", why="the viewer's script runs in a browser")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    case = correction_patient(patient_id="BROWSER-CORR", missed_at=(0, 1))
    baseline = case.studies[0]
    centre = [float(v) for v in case.centres[0]]
    user = UserFactory(groups=["radiologist"], username="dr-click")
    viewer_url = live_server.url + reverse("lesions:viewer", args=[case.patient.pk])
    patient_url = live_server.url + reverse("patients:detail", args=[case.patient.pk])

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
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
            lines_before = _chart_lines(page, patient_url)

            # add: the button, then one click on the nodule in the baseline pane
            page.goto(viewer_url)
            page.wait_for_selector("body[data-viewer-ready]", state="attached", timeout=60_000)
            page.click("#add-lesion")
            x, y = page.evaluate(
                _POSITION, ["viewer-baseline", [-centre[0], -centre[1], centre[2]]]
            )
            with page.expect_navigation(timeout=120_000):
                page.mouse.click(x, y)
            page.wait_for_selector("body[data-viewer-ready]", state="attached", timeout=60_000)
            # the baseline table's row of the added lesion (rows are rebuilt on every change)
            row_id = page.evaluate(
                "Array.from(document.querySelectorAll('tr[id^=baseline-]'))"
                ".filter(r => r.textContent.includes('Added by a radiologist')).map(r => r.id)"
            )
            status_after_add = page.text_content("#viewer-status")

            # edit: the brush paints a stroke beside the lesion, then save
            page.click(f"#{row_id[0]} [data-edit-mask]")
            page.wait_for_selector(
                "body[data-correction=editing]", state="attached", timeout=60_000
            )
            drawn = page.evaluate(_PAINTED)
            page.select_option("#brush-size", "3")
            x, y = page.evaluate(
                _POSITION, ["viewer-baseline", [-centre[0], -centre[1], centre[2]]]
            )
            page.mouse.move(x + 14, y - 4)
            page.mouse.down()
            page.mouse.move(x + 14, y + 4, steps=6)
            page.mouse.up()
            painted = page.evaluate(_PAINTED)
            page.click("[data-mask-step=grow]")  # one voxel more all round
            grown = page.evaluate(_PAINTED)
            with page.expect_navigation(timeout=120_000):
                page.click("#mask-save")
            page.wait_for_selector("body[data-viewer-ready]", state="attached", timeout=60_000)
            lines_after = _chart_lines(page, patient_url)
            legend = page.text_content("#fig-lesions-chart")
        finally:
            browser.close()

    assert not errors, errors
    assert len(row_id) == 1, status_after_add
    assert painted > drawn > 0  # the drawing held the lesion, and the brush added to it
    assert grown > painted
    event = ReviewEvent.objects.get(action="lesion_add_click")
    assert event.user == user
    edit = ReviewEvent.objects.get(action="mask_edit")
    assert edit.user == user and edit.after["mask"]["voxels_added"] > 0
    assert edit.before["measurement"]["volume_ml"] < edit.after["measurement"]["volume_ml"]
    edited = LesionMeasurement.objects.get(
        study=baseline, lesion__tracking_uid=edit.before["subject"]["lesion_uid"]
    )
    assert edited.origin == "edited" and edited.review_state == "edited"
    assert lines_after == lines_before + 1
    assert edited.lesion.label in legend
