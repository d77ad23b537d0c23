"""Who may do what: the groups and the checks pages and API views share.

Groups (created by migration ``patients.0002_groups``):

- ``clinician``: sees patients, studies, series and their processing (view permissions).
- ``radiologist``: as clinician, and may upload images (``imaging.add_instance``).
- ``admin``: as radiologist, and manages accounts and API tokens, lifts login lockouts,
  and reads the audit trail (in the Django admin site, which also needs the account's
  staff flag). Only a superuser grants groups, permissions or superuser status
  (`patients.admin`), so an administrator cannot raise their own rights.
- ``researcher``: de-identified data only (``patients.export_research``, no view
  permission): the research download page, never a name, MRN or real date.

Checks go through Django permissions, not group names, so a superuser passes them all
and an administrator can grant one permission to one account.
"""

from __future__ import annotations

from rest_framework.permissions import BasePermission

CLINICIAN = "clinician"
RADIOLOGIST = "radiologist"
ADMIN = "admin"
RESEARCHER = "researcher"
GROUPS = (CLINICIAN, RADIOLOGIST, ADMIN, RESEARCHER)

UPLOAD_PERMISSION = "imaging.add_instance"


def can_upload(user) -> bool:
    """Whether ``user`` may send images in (web upload, REST API)."""
    return bool(user is not None and user.is_authenticated and user.has_perm(UPLOAD_PERMISSION))


REVIEW_PERMISSION = "imaging.change_lesionmeasurement"


def can_review(user) -> bool:
    """Whether ``user`` may review lesions (accept, reject, relink, targets, overrides)."""
    return bool(user is not None and user.is_authenticated and user.has_perm(REVIEW_PERMISSION))


RESEARCH_PERMISSION = "patients.export_research"


def can_export_research(user) -> bool:
    """Whether ``user`` may download de-identified research data."""
    return bool(user is not None and user.is_authenticated and user.has_perm(RESEARCH_PERMISSION))


def can_view_ingest_session(user, session) -> bool:
    """The account that ran an import, or anyone who may upload, may read its report."""
    if user is None or not user.is_authenticated:
        return False
    return session.user_id == user.pk or can_upload(user)


class CanUpload(BasePermission):
    """DRF permission: the user is logged in and may upload images."""

    message = "Your account may not upload images (radiologist or admin group needed)."

    def has_permission(self, request, view) -> bool:
        return can_upload(request.user)


class CanViewIngestSession(BasePermission):
    """DRF permission for one ingest session's report."""

    message = "Only the account that ran this import, or one that may upload, may read it."

    def has_object_permission(self, request, view, obj) -> bool:
        return can_view_ingest_session(request.user, obj)
