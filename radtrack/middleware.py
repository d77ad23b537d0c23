"""Request and response hygiene every page, REST call and FHIR read goes through.

- `QueryParameterMiddleware` refuses a request whose path or query parameters hold a
  control character (a NUL ends PostgreSQL text, and none has a meaning in a search):
  400 naming the parameter, as an OperationOutcome under ``/fhir/``, ``{"detail": ...}``
  under ``/api/`` and a plain page elsewhere. One check before any view, so no view can
  forget it.
- `SessionActivityMiddleware` restarts a logged-in session's idle time
  (``SESSION_COOKIE_AGE``, ``RADTRACK_SESSION_IDLE_MINUTES``) when a request comes, at
  most once a minute: saving the session on every request would write the database for
  every image tile and poll.
- `SecurityHeadersMiddleware` sends ``Cache-Control: no-store`` on every answer that
  is not a static file (pages, images and API answers carry patient data, and no
  browser or proxy cache should keep them), and the Content-Security-Policy in
  ``settings.RADTRACK_CONTENT_SECURITY_POLICY``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.utils.cache import patch_cache_control
from django.utils.html import escape

#: C0 controls but tab, line feed and carriage return, and DEL.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _shown(text: str, limit: int = 40) -> str:
    """A parameter name as it can be quoted back: controls escaped, length bounded."""
    escaped = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return escaped[:limit] + ("..." if len(escaped) > limit else "")


def query_problem(request: HttpRequest) -> str | None:
    """Why the request's path or query parameters cannot be used, or None if they can."""
    if _CONTROL.search(request.path):
        return "the path contains a control character"
    for name in request.GET:
        if _CONTROL.search(name):
            return f"query parameter name {_shown(name)!r} contains a control character"
        for value in request.GET.getlist(name):
            if _CONTROL.search(value):
                return f"query parameter {_shown(name)!r} contains a control character"
    return None


def _refusal(request: HttpRequest, reason: str) -> HttpResponse:
    if request.path.startswith("/fhir/"):
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "invalid", "diagnostics": reason}],
        }
        return HttpResponse(json.dumps(outcome), status=400, content_type="application/fhir+json")
    if request.path.startswith("/api/"):
        return HttpResponse(
            json.dumps({"detail": reason}), status=400, content_type="application/json"
        )
    return HttpResponseBadRequest(
        f"<!doctype html><title>Bad request</title><h1>Bad request</h1><p>{escape(reason)}</p>"
    )


class QueryParameterMiddleware:
    """Refuse paths and query parameters with control characters (400, naming which)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        reason = query_problem(request)
        if reason is not None:
            return _refusal(request, reason)
        return self.get_response(request)


#: The session key holding when the idle time was last restarted (seconds since the epoch).
SEEN_KEY = "_radtrack_seen"
#: How often, at most, a request restarts the idle time.
SESSION_REFRESH_S = 60


class SessionActivityMiddleware:
    """Restart the idle time of a logged-in session, at most every `SESSION_REFRESH_S`.

    Saving the session sets its expiry to ``SESSION_COOKIE_AGE`` from now; a session not
    saved for that long has expired and its user is logged out.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        session = getattr(request, "session", None)
        if session is not None and session.get("_auth_user_id"):
            now = int(time.time())
            if now - int(session.get(SEEN_KEY, 0)) >= SESSION_REFRESH_S:
                session[SEEN_KEY] = now
        return self.get_response(request)


class SecurityHeadersMiddleware:
    """``Cache-Control: no-store`` on everything but static files; the CSP on every answer."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        static = settings.STATIC_URL or "static/"
        if not request.path.startswith("/" + static.lstrip("/")):
            patch_cache_control(response, no_store=True, private=True)
        policy = getattr(settings, "RADTRACK_CONTENT_SECURITY_POLICY", "")
        if policy and "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = policy
        return response
