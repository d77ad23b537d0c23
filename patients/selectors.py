"""Public reads about patients: search by MRN or name, and how a sex code reads.

The patient list and page, which show imaging and analytics results too, are built in
`analytics.dashboard.patient`.
"""

from __future__ import annotations

import re

from django.db.models import Q

from patients.models import Patient


def sex_label(value: str) -> str:
    try:
        return str(Patient.Sex(value).label)
    except ValueError:
        return value


def patient_search_filter(search: str) -> Q:
    """Every word must appear in the MRN or the name (DICOM ``Family^Given``)."""
    query = Q()
    for term in re.split(r"[\s,^]+", search.strip()):
        if term:
            query &= Q(patient_id__icontains=term) | Q(name__icontains=term)
    return query
