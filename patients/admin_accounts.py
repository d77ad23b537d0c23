"""The admin site's accounts, groups, API tokens and login lockouts, hardened and audited.

- Only a superuser grants superuser status, groups or permissions, edits a group, or
  changes another staff or superuser account: an administrator (the ``admin`` group)
  can neither raise their own rights nor take over another administrator's account.
- API tokens are stored as digests (`radtrack.api.tokens`); the admin never lists
  them, and shows a new token once, on the page that answers its creation. An
  administrator issues tokens for their own account only (a token for someone else
  would let them act, and be audited, as that person); a superuser for anyone.
- Lifting a login lockout is deleting its access-attempt row.
- Every change to an account, group, token or lockout is written to the audit trail
  (``admin.<thing>.<add|change|delete>``) besides Django's own admin log.
"""

from __future__ import annotations

import secrets

from axes.models import AccessAttempt, AccessFailureLog
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group
from django.db import transaction
from django.template.response import TemplateResponse
from rest_framework.authtoken.admin import TokenAdmin
from rest_framework.authtoken.models import Token, TokenProxy

from patients.audit import audit_record
from radtrack.api.tokens import token_digest

User = get_user_model()

#: Fields of an account only a superuser may set.
GRANTING_FIELDS = ("is_superuser", "groups", "user_permissions")


class AccountAuditMixin:
    """Write each add, change and delete made through this admin to the audit trail."""

    audit_thing = "account"

    def _audit(self, request, verb: str, obj, message="") -> None:
        detail = f"{self.audit_thing} {obj.pk} ({obj})"
        if message:
            detail += f": {message}"
        audit_record(request=request, action=f"admin.{self.audit_thing}.{verb}", object=detail)

    def log_addition(self, request, obj, message):
        self._audit(request, "add", obj, _message_text(message))
        return super().log_addition(request, obj, message)

    def log_change(self, request, obj, message):
        self._audit(request, "change", obj, _message_text(message))
        return super().log_change(request, obj, message)

    def log_deletions(self, request, queryset):
        for obj in queryset:
            self._audit(request, "delete", obj)
        return super().log_deletions(request, queryset)


def _message_text(message) -> str:
    """Django's admin change message (a JSON list or text) as one short line."""
    if isinstance(message, list):
        parts = []
        for entry in message:
            for verb, detail in entry.items():
                fields = ", ".join(detail.get("fields", [])) if isinstance(detail, dict) else ""
                parts.append(f"{verb} {fields}".strip())
        return "; ".join(parts)
    return str(message)


def _may_edit_account(request, account) -> bool:
    """A superuser edits anyone; others edit themselves and accounts without staff rights."""
    if request.user.is_superuser or account is None:
        return True
    if account.pk == request.user.pk:
        return True
    return not (account.is_superuser or account.is_staff)


admin.site.unregister(User)
admin.site.unregister(Group)


@admin.register(User)
class RadTrackUserAdmin(AccountAuditMixin, UserAdmin):
    audit_thing = "user"

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            fields += [f for f in GRANTING_FIELDS if f not in fields]
        return fields

    def has_change_permission(self, request, obj=None):
        return super().has_change_permission(request, obj) and _may_edit_account(request, obj)

    def has_delete_permission(self, request, obj=None):
        if obj is not None and obj.pk == request.user.pk:
            return False
        return super().has_delete_permission(request, obj) and _may_edit_account(request, obj)

    def get_actions(self, request):
        # The bulk delete would skip the per-account check above.
        actions = super().get_actions(request)
        if not request.user.is_superuser:
            actions.pop("delete_selected", None)
        return actions

    def save_model(self, request, obj, form, change):
        if not request.user.is_superuser:
            # A belt to the braces of the read-only fields: nothing granting is saved.
            stored = User.objects.filter(pk=obj.pk).first() if obj.pk else None
            obj.is_superuser = stored.is_superuser if stored is not None else False
        super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change):
        if not request.user.is_superuser:
            for name in ("groups", "user_permissions"):
                form.cleaned_data.pop(name, None)
        super().save_related(request, form, formsets, change)


@admin.register(Group)
class RadTrackGroupAdmin(AccountAuditMixin, GroupAdmin):
    audit_thing = "group"

    def has_add_permission(self, request):
        return request.user.is_superuser

    def has_change_permission(self, request, obj=None):
        return request.user.is_superuser

    def has_delete_permission(self, request, obj=None):
        return request.user.is_superuser


admin.site.unregister(TokenProxy)


@admin.register(TokenProxy)
class ApiTokenAdmin(AccountAuditMixin, TokenAdmin):
    """Tokens by account and date; a new one shown once; never a stored value."""

    audit_thing = "token"
    list_display = ("user", "created")
    fields = ("user",)
    autocomplete_fields = ()

    def has_change_permission(self, request, obj=None):
        return False  # a token is issued or revoked, never edited

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "user" and not request.user.is_superuser:
            kwargs["queryset"] = User.objects.filter(pk=request.user.pk)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request, obj, form, change):
        if not request.user.is_superuser and obj.user_id != request.user.pk:
            raise PermissionError("only a superuser issues tokens for another account")
        raw = secrets.token_urlsafe(32)
        with transaction.atomic():
            Token.objects.filter(user_id=obj.user_id).delete()
            obj.key = token_digest(raw)
            obj.save()
        request._radtrack_issued_token = raw

    def response_add(self, request, obj, post_url_continue=None):
        raw = getattr(request, "_radtrack_issued_token", "")
        return TemplateResponse(
            request,
            "admin/radtrack/token_issued.html",
            {
                **self.admin_site.each_context(request),
                "title": "API token issued",
                "token": raw,
                "account": obj.user,
                "opts": self.opts,
            },
        )

    def _audit(self, request, verb: str, obj, message="") -> None:
        # Name the account, never the token or its digest.
        audit_record(
            request=request,
            action=f"admin.token.{verb}",
            object=f"API token of user {obj.user_id} ({obj.user})",
        )


@admin.register(AccessAttempt)
class LoginLockoutAdmin(admin.ModelAdmin):
    """Failed logins counted by django-axes; deleting a row lifts its lockout (audited)."""

    list_display = ["attempt_time", "username", "ip_address", "failures_since_start"]
    search_fields = ["username", "ip_address"]
    readonly_fields = ["attempt_time", "username", "ip_address", "failures_since_start"]
    fields = readonly_fields
    date_hierarchy = "attempt_time"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def log_deletions(self, request, queryset):
        for attempt in queryset:
            audit_record(
                request=request,
                action="admin.lockout.lift",
                object=f"login lockout of {attempt.username!r} from {attempt.ip_address}",
            )
        return super().log_deletions(request, queryset)


@admin.register(AccessFailureLog)
class LoginFailureAdmin(admin.ModelAdmin):
    list_display = ["attempt_time", "username", "ip_address", "locked_out"]
    search_fields = ["username", "ip_address"]
    date_hierarchy = "attempt_time"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
