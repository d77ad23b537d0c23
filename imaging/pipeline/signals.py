"""What the pipeline announces to the layers above it.

The pipeline measures one study; what follows from it for the patient (linking lesions
across studies, responses, the risk score) belongs to `analytics`, which listens here.
Imaging never imports analytics (docs/ARCHITECTURE.md, "Layers").
"""

from __future__ import annotations

from typing import Any

from django.dispatch import Signal

#: Sent, in the worker, when a study of ``patient`` has new results (a series processed,
#: or a user's series choice pointing at one already processed), with ``device``. Each
#: receiver answers a dict; together they go on the run's ``track_lesions`` step.
patient_results_changed = Signal()


def patient_results_announce(*, patient, device: str) -> dict[str, Any]:
    """Tell the listeners that ``patient`` has new results; return what they did.

    Sent with `Signal.send`, not `send_robust`: a listener's failure is the run's
    failure, shown on the run record, never swallowed.
    """
    result: dict[str, Any] = {}
    for _receiver, answer in patient_results_changed.send(
        sender=patient.__class__, patient=patient, device=device
    ):
        result.update(answer or {})
    return result
