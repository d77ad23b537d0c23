"""Writes of studies and series that announce the patients they changed
(`imaging.signals.patient_imaging_changed`), inside the writing transaction.

What the worklist shows of a patient's imaging (the latest study date, whether a series
failed processing) is stored above this layer and must follow every write that changes
it, however it is made: a row's ``save`` or ``delete`` and the QuerySet's bulk writes.
Only writes that change an announced field are announced (a series' ``state``, a
study's ``study_date`` or patient), so the ingest's frequent counter updates cost
nothing more.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from django.db import models, router, transaction

from imaging.signals import patient_imaging_announce

Values = dict[str, Any]
#: Rows per lookup: under SQLite's limit on bound parameters.
CHUNK = 500


def chunks(items: Iterable[Any]) -> Iterable[list[Any]]:
    ordered = sorted(set(items))
    return (ordered[i : i + CHUNK] for i in range(0, len(ordered), CHUNK))


class AnnouncedRow:
    """Model mixin: ``save`` and ``delete`` announce the row's patients (before and
    after) when the row is new, goes, or changes one of ``announced_fields``
    (attribute names). The model says how values lead to patients
    (`patients_of_values`)."""

    announced_fields: ClassVar[tuple[str, ...]] = ()
    #: Whether a change to a row already there (or its removal) moves what was derived
    #: from it (a study's date or patient: the order of a patient's studies, whose
    #: they are): announced with ``moved`` (`imaging.signals.patient_imaging_changed`).
    moves_results: ClassVar[bool] = False

    @classmethod
    def patients_of_values(cls, values: Iterable[Values], *, using: str) -> set[int]:
        """The patients (primary keys) that rows with these ``values`` belong to; each
        model using the mixin defines it."""
        raise NotImplementedError(f"{cls.__name__} must define patients_of_values")

    @classmethod
    def from_db(cls, db, field_names, values):
        row = super().from_db(db, field_names, values)  # type: ignore[misc]
        loaded = row.__dict__
        if all(name in loaded for name in cls.announced_fields):
            row._announced_loaded = {name: loaded[name] for name in cls.announced_fields}
        return row

    def _announced_now(self) -> Values:
        return {name: getattr(self, name) for name in self.announced_fields}

    def save(self, *args, **kwargs) -> None:
        using = kwargs.get("using") or router.db_for_write(type(self), instance=self)
        loaded: Values | None = getattr(self, "_announced_loaded", None)
        now = self._announced_now()
        fields = kwargs.get("update_fields")
        saved = fields is None or not set(self.announced_fields).isdisjoint(
            self._meta.get_field(name).attname
            for name in fields  # type: ignore[attr-defined]
        )
        if loaded == now or not saved:
            super().save(*args, **kwargs)  # type: ignore[misc]
            return
        with transaction.atomic(using=using, savepoint=False):
            super().save(*args, **kwargs)  # type: ignore[misc]
            changed = [v for v in (loaded, now) if v is not None]
            patient_imaging_announce(
                patient_pks=type(self).patients_of_values(changed, using=using),
                using=using,
                moved=loaded is not None and self.moves_results,
            )
        self._announced_loaded = now

    def delete(self, *args, **kwargs):
        using = kwargs.get("using") or router.db_for_write(type(self), instance=self)
        with transaction.atomic(using=using, savepoint=False):
            patients = type(self).patients_of_values([self._announced_now()], using=using)
            deleted = super().delete(*args, **kwargs)  # type: ignore[misc]
            patient_imaging_announce(patient_pks=patients, using=using, moved=self.moves_results)
        return deleted


class AnnouncingQuerySet(models.QuerySet):
    """Bulk writes of an `AnnouncedRow` model that announce the patients they changed."""

    def _attnames(self, names: Iterable[str]) -> set[str]:
        return {self.model._meta.get_field(name).attname for name in names}

    def _announced(self, names: Iterable[str]) -> bool:
        return not set(self.model.announced_fields).isdisjoint(self._attnames(names))

    def _patients(self, values: Iterable[Values]) -> set[int]:
        return self.model.patients_of_values(values, using=self.db)

    def _stored(self, pks: list[Any]) -> list[Values]:
        manager = self.model._base_manager.using(self.db)
        fields = self.model.announced_fields
        return [v for part in chunks(pks) for v in manager.filter(pk__in=part).values(*fields)]

    def _announce(self, patients: set[int], *, moved: bool = False) -> None:
        moved = moved and self.model.moves_results
        patient_imaging_announce(patient_pks=patients, using=self.db, moved=moved)

    def bulk_create(self, objs, *args, **kwargs):
        objs = list(objs)
        with transaction.atomic(using=self.db, savepoint=False):
            created = super().bulk_create(objs, *args, **kwargs)
            self._announce(self._patients(o._announced_now() for o in objs))
        return created

    def bulk_update(self, objs, fields, *args, **kwargs):
        if not self._announced(fields):
            return super().bulk_update(objs, fields, *args, **kwargs)
        objs = list(objs)
        with transaction.atomic(using=self.db, savepoint=False):
            before = self._stored([o.pk for o in objs])
            updated = super().bulk_update(objs, fields, *args, **kwargs)
            self._announce(
                self._patients([*before, *(o._announced_now() for o in objs)]), moved=True
            )
        return updated

    def update(self, **kwargs):
        if not self._announced(kwargs):
            return super().update(**kwargs)
        with transaction.atomic(using=self.db, savepoint=False):
            pks = list(self.values_list("pk", flat=True))
            before = self._stored(pks)
            updated = super().update(**kwargs)
            self._announce(self._patients([*before, *self._stored(pks)]), moved=True)
        return updated

    update.alters_data = True

    def delete(self):
        with transaction.atomic(using=self.db, savepoint=False):
            before = list(self.values(*self.model.announced_fields))
            deleted = super().delete()
            self._announce(self._patients(before), moved=True)
        return deleted

    delete.alters_data = True
    delete.queryset_only = True
