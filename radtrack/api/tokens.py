"""API tokens kept as digests: the database holds SHA-256 of each token, never the token.

A token is issued once (`api_token_issue`, the ``api_token`` command, the admin site),
shown once, and from then on only its digest is stored in DRF's ``Token.key``: a copy of
the database or an administrator's screen holds nothing that authenticates. Tokens
are random (256 bits), so an unsalted digest is as strong as the token itself.
"""

from __future__ import annotations

import hashlib
import secrets

from django.db import transaction
from rest_framework.authtoken.models import Token

#: DRF's ``Token.key`` holds 40 characters: the first 40 hex digits (160 bits) of SHA-256.
DIGEST_LENGTH = 40


def token_digest(raw: str) -> str:
    """What is stored for the token ``raw``."""
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:DIGEST_LENGTH]


def api_token_issue(*, user) -> str:
    """Give ``user`` a new API token, replacing any earlier one, and return it.

    The returned text is the only copy: show it to its owner once.
    """
    raw = secrets.token_urlsafe(32)
    with transaction.atomic():
        Token.objects.filter(user=user).delete()
        Token.objects.create(user=user, key=token_digest(raw))
    return raw
