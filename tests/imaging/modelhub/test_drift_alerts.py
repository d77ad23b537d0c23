"""Drift alerts in the database and on the pages: the generated stream whose noise and
kernel change half-way, stored run by run as the pipeline stores it, opens a new-protocol
alert and shift alerts (once each), shown on the pipeline page, in the worklist's
"needs attention" and on the drift page, until acknowledged."""

from __future__ import annotations

import datetime as dt

import pytest
from django.urls import reverse
from django.utils import timezone

from imaging.core.modelhub.drift import flat_statistics
from imaging.modelhub.drift import drift_after_run, study_statistics_store
from imaging.modelhub.models import DriftAlert, StudyStatistics
from imaging.modelhub.services import active_model
from patients.models import AuditEvent
from tests.imaging.factories import ProcessingRunFactory, SeriesFactory
from tests.imaging.modelhub.stream import AFTER, BEFORE, statistics
from tests.patients.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def streamed(settings):
    """The active model's reference is 20 studies like the first half; then the stream."""
    settings.RADTRACK_DRIFT_WINDOW = 10
    model = active_model()
    reference_rows = [flat_statistics(*statistics(1000 + n, BEFORE)) for n in range(20)]
    model.reference_statistics = {
        "values": {
            k: [r[k] for r in reference_rows if r[k] is not None] for k in reference_rows[0]
        },
        "protocols": ["Acme | STANDARD | slices 1.5-3 mm"],
    }
    model.save()
    opened_at = {}
    start = timezone.now() - dt.timedelta(days=40)
    for n in range(40):
        acquisition = BEFORE if n < 20 else AFTER
        series = SeriesFactory(
            manufacturer="Acme", kernel=acquisition.kernel, slice_thickness_mm=2.0
        )
        run = ProcessingRunFactory(series=series)
        inputs, outputs = statistics(n, acquisition)
        row = study_statistics_store(run=run, series=series, model_label=model.label,
                                     statistics={"inputs": inputs, "outputs": outputs})  # fmt: skip
        StudyStatistics.objects.filter(pk=row.pk).update(created_at=start + dt.timedelta(days=n))
        for alert in drift_after_run(run=run):
            opened_at[(alert.kind, alert.statistic)] = n
    return model, opened_at


def test_the_stream_opens_alerts_after_the_change_and_only_then(streamed):
    model, opened_at = streamed
    assert opened_at, "no alert"
    assert min(opened_at.values()) == 20
    assert opened_at[("new_protocol", "")] == 20
    assert opened_at[("shift", "noise_hu")] == 29
    alert = DriftAlert.objects.get(kind="shift", statistic="noise_hu")
    assert alert.protocol == "Acme | SHARP | slices 1.5-3 mm" and alert.model_label == model.label
    assert alert.detail["reference"] == "the model's reference studies"
    # One alert per finding while it is open, however many studies repeat it.
    assert DriftAlert.objects.filter(kind="shift", statistic="noise_hu").count() == 1


def test_alerts_show_on_the_pipeline_page_and_the_worklist_until_acknowledged(streamed, client):
    client.force_login(UserFactory(groups=["radiologist"]))
    for name in ("analytics:pipeline", "analytics:worklist"):
        page = client.get(reverse(name))
        assert page.status_code == 200
        assert b'data-testid="drift-alerts"' in page.content, name
        assert b"Needs attention: the studies coming in have changed" in page.content
        assert b"New scanner or protocol" in page.content
    drift = client.get(reverse("modelhub:drift"))
    assert drift.status_code == 200
    assert "fig-drift-noise_hu" in drift.context["figures"]
    figure = drift.context["figures"]["fig-drift-noise_hu"]
    assert {t["name"] for t in figure["data"]} == {
        "Acme | STANDARD | slices 1.5-3 mm",
        "Acme | SHARP | slices 1.5-3 mm",
    }
    assert (
        figure["layout"]["shapes"][0]["y0"] < figure["layout"]["shapes"][0]["y1"]
    )  # reference band
    # A radiologist sees alerts; an administrator acknowledges them.
    alert = DriftAlert.objects.get(kind="new_protocol")
    assert client.post(reverse("modelhub:acknowledge", args=[alert.pk])).status_code == 403
    client.force_login(UserFactory(groups=["admin"]))
    for alert in DriftAlert.objects.all():
        assert client.post(reverse("modelhub:acknowledge", args=[alert.pk])).status_code == 302
    assert (
        AuditEvent.objects.filter(action="model.drift.acknowledge").count()
        == DriftAlert.objects.count()
    )
    assert b'data-testid="drift-alerts"' not in client.get(reverse("analytics:worklist")).content


def test_the_registry_pages_need_their_permissions(client):
    client.force_login(UserFactory(groups=["clinician"]))
    assert client.get(reverse("modelhub:registry")).status_code == 403
    client.force_login(UserFactory(groups=["radiologist"]))
    assert client.get(reverse("modelhub:registry")).status_code == 200
    assert client.post(reverse("modelhub:rollback")).status_code == 403
