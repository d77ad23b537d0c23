"""Factories for patients, users in RadTrack's groups, and audit events."""

import datetime as dt

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from factory.django import DjangoModelFactory, Password

from patients.models import AuditEvent, Patient

PASSWORD = "a-long-test-password"


class UserFactory(DjangoModelFactory):
    """A user; ``UserFactory(groups=["clinician"])`` puts it in groups made by migration."""

    class Meta:
        model = get_user_model()
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.org")
    password = Password(PASSWORD)

    @factory.post_generation
    def groups(self, create, extracted, **kwargs):
        if create and extracted:
            self.groups.add(*(Group.objects.get(name=name) for name in extracted))


class PatientFactory(DjangoModelFactory):
    class Meta:
        model = Patient
        django_get_or_create = ["patient_id"]

    patient_id = factory.Sequence(lambda n: f"RT-{n:04d}")
    name = factory.Sequence(lambda n: f"Testpatient{n}^Alex")
    birth_date = dt.date(1960, 5, 17)
    sex = Patient.Sex.FEMALE


class AuditEventFactory(DjangoModelFactory):
    class Meta:
        model = AuditEvent

    user = factory.SubFactory(UserFactory)
    username = factory.LazyAttribute(lambda e: e.user.username if e.user else "")
    action = "patient.view"
    object = ""
