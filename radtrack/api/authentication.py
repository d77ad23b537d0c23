"""REST authentication: digest-stored tokens, 401 with ``WWW-Authenticate`` for anonymous
calls, and too many failed authentications from one address answered 429.

`DigestTokenAuthentication` comes first in ``DEFAULT_AUTHENTICATION_CLASSES`` so that
DRF answers an unauthenticated call with 401 and ``WWW-Authenticate: Token`` (the
session class has no challenge to offer, and DRF would answer 403). Each failed token
counts against the client address (`radtrack.addresses.client_address`) in the cache;
past ``RADTRACK_API_AUTH_FAILURE_LIMIT`` failures within
``RADTRACK_API_AUTH_FAILURE_WINDOW_S`` seconds, every token call from that address gets
429 with ``Retry-After`` until the window has passed, right token or not.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.core.cache import cache
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication

from radtrack.addresses import client_address
from radtrack.api.tokens import token_digest


def _key(request) -> str:
    return f"radtrack:api-auth-failures:{client_address(request) or 'unknown'}"


def _failures(request) -> list[float]:
    window = settings.RADTRACK_API_AUTH_FAILURE_WINDOW_S
    now = time.time()
    return [t for t in cache.get(_key(request), []) if now - t < window]


def auth_failure_record(request) -> None:
    """Count one failed authentication from the request's address."""
    failures = _failures(request)
    failures.append(time.time())
    cache.set(_key(request), failures, timeout=settings.RADTRACK_API_AUTH_FAILURE_WINDOW_S)


def auth_throttle_check(request) -> None:
    """Raise `Throttled` (429) while the address is over its failure limit."""
    failures = _failures(request)
    if len(failures) >= settings.RADTRACK_API_AUTH_FAILURE_LIMIT:
        wait = settings.RADTRACK_API_AUTH_FAILURE_WINDOW_S - (time.time() - failures[0])
        raise exceptions.Throttled(
            wait=max(1, int(wait) + 1),
            detail="too many failed authentications from this address; try again later",
        )


class DigestTokenAuthentication(TokenAuthentication):
    """``Authorization: Token <token>``, looked up by its digest, failures throttled."""

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        auth_throttle_check(request)
        try:
            return super().authenticate(request)
        except exceptions.AuthenticationFailed:
            auth_failure_record(request)
            raise

    def authenticate_credentials(self, key):
        return super().authenticate_credentials(token_digest(key))
