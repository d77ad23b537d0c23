"""What the patients layer announces to the layers above it.

Layers import only downward (docs/ARCHITECTURE.md, "Layers"): what is derived above
from a patient's lab results (the worklist's marker flags, `analytics.dashboard.flags`)
listens here instead of being called from here.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.dispatch import Signal

#: Sent inside the transaction that wrote, changed or deleted lab results, with
#: ``patient_pks`` (a frozenset of the patients whose results changed) and ``using``
#: (the database alias). Receivers write what derives from them in that same
#: transaction; a receiver's failure is the write's failure (`Signal.send`).
lab_results_changed = Signal()


def lab_results_announce(*, patient_pks: Iterable[int | None], using: str) -> None:
    """Tell the listeners that these patients' lab results changed (None is ignored)."""
    pks = frozenset(pk for pk in patient_pks if pk is not None)
    if pks:
        lab_results_changed.send(sender="patients.LabResult", patient_pks=pks, using=using)


#: Sent inside an EHR import's transaction, once its medications are written, with
#: ``patient_pks`` (a frozenset of the patients for whom the import carried an immune
#: checkpoint inhibitor, `patients.models.PatientMedication.checkpoint_inhibitor`) and
#: ``using``. A receiver (the iRECIST switch, `analytics.lesions.review.irecist_ehr`)
#: returns a list of notes for the import's report; its failure is the import's failure.
checkpoint_inhibitors_imported = Signal()


def checkpoint_inhibitors_announce(*, patient_pks: Iterable[int], using: str) -> list[str]:
    """Tell the listeners that the import carried checkpoint inhibitors for these
    patients; the notes they return, in order."""
    pks = frozenset(patient_pks)
    if not pks:
        return []
    replies = checkpoint_inhibitors_imported.send(
        sender="patients.PatientMedication", patient_pks=pks, using=using
    )
    return [note for _receiver, notes in replies for note in (notes or [])]


#: Sent inside an EHR import's transaction, once its clinical events (progression,
#: death, ...) are written, with ``patient_pks`` (a frozenset of the patients who got a
#: new event) and ``using``. What rests on a patient's outcomes listens (their risk
#: score is recomputed once the import commits, `analytics.risk.tasks`).
clinical_events_imported = Signal()


def clinical_events_announce(*, patient_pks: Iterable[int], using: str) -> None:
    """Tell the listeners that these patients got new clinical events."""
    pks = frozenset(patient_pks)
    if pks:
        clinical_events_imported.send(sender="patients.ClinicalEvent", patient_pks=pks, using=using)
