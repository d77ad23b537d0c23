"""What every app's REST API shares: primary keys in URLs and filters, pagination, the
permission check the pages also use, the error body, and the upload size limit.

The audited read-only base that every patient-data viewset uses is
`patients.api_base.AuditedReadOnlyViewSet` (the audit log lives in patients).
"""

from __future__ import annotations

import django_filters
from django import forms
from django.conf import settings
from rest_framework import exceptions, serializers, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import BasePermission


# -- size limit ---------------------------------------------------------------------
class UploadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "too_large"


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MB"


def upload_limit_message(size_bytes: int | None = None) -> str:
    """The sentence a client sees when it sends more than the configured limit."""
    limit = settings.RADTRACK_MAX_UPLOAD_BYTES
    size = f"{_mb(size_bytes)} is" if size_bytes is not None else "the upload is"
    return (
        f"{size} over the upload limit of {_mb(limit)} "
        f"({limit} bytes; RADTRACK_MAX_UPLOAD_MB); send fewer files per request"
    )


def request_content_length(request) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


class DetailSerializer(serializers.Serializer):
    detail = serializers.CharField()


# -- read-only resources: the base every app's read API shares ----------------------
#: Primary keys in URLs: at most 18 digits, so every one fits a 64-bit database integer.
ID_PATTERN = r"[0-9]{1,18}"


class APIPagination(PageNumberPagination):
    """``?page=`` (from 1) and ``?page_size=`` (default 50, at most 500)."""

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class IdFilter(django_filters.NumberFilter):
    """A primary key in a query parameter: a whole number a database integer can hold."""

    field_class = forms.IntegerField

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", 2**63 - 1)
        super().__init__(*args, **kwargs)


class HasViewPermissions(BasePermission):
    """The account holds every Django permission in the view's ``required_permissions``.

    These are the permissions the pages check; `patients.groups` gives them to the
    clinician, radiologist and admin groups.
    """

    message = "Your account may not read these records (clinician, radiologist or admin needed)."

    def has_permission(self, request, view) -> bool:
        user = request.user
        wanted = getattr(view, "required_permissions", ())
        return bool(user is not None and user.is_authenticated and user.has_perms(wanted))
