"""What the imaging models announce to the layers above them.

Layers import only downward (docs/ARCHITECTURE.md, "Layers"): what is derived above
from a patient's studies and series (the worklist's latest study and "processing
failed" flag, `analytics.dashboard.flags`) listens here instead of being called from
here. The pipeline's own announcement of new results is `imaging.pipeline.signals`.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.dispatch import Signal

#: Sent inside the transaction that added or removed a study, changed a study's date or
#: patient, or changed a series' processing state, with ``patient_pks`` (a frozenset),
#: ``using`` (the database alias) and ``moved`` (True when a study already there changed
#: date or patient or was removed: what was derived from the patients' studies, lesions
#: tracked across them and responses, rests on an order or a patient that no longer
#: holds). Receivers write what derives from them in that same transaction; a
#: receiver's failure is the write's failure (`Signal.send`).
patient_imaging_changed = Signal()


def patient_imaging_announce(
    *, patient_pks: Iterable[int | None], using: str, moved: bool = False
) -> None:
    """Tell the listeners that these patients' studies or series changed (None ignored)."""
    pks = frozenset(pk for pk in patient_pks if pk is not None)
    if pks:
        patient_imaging_changed.send(
            sender="imaging.Study", patient_pks=pks, using=using, moved=moved
        )
