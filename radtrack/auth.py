"""Login throttling: django-axes counts failed logins per account and per address and
locks either out after ``AXES_FAILURE_LIMIT`` failures (settings: the axes section).

`LoginThrottleBackend` is axes' check, first in ``AUTHENTICATION_BACKENDS``. A login
without a request (the test client's ``login``, a shell) comes through no door an
attacker can reach, so it is passed to the next backend instead of refused; every web
login form and the admin's pass the request.
"""

from __future__ import annotations

from axes.backends import AxesStandaloneBackend

#: Either alone locks out: an account tried too often, or an address that tried too often.
LOCKOUT_PARAMETERS = ["username", "ip_address"]


def lockout_parameters(request_or_attempt, credentials=None) -> list[str]:
    """What a lockout is counted by (``AXES_LOCKOUT_PARAMETERS``): the account and,
    separately, the address; the account alone when the address cannot be known
    (`radtrack.addresses.client_address` gave None: a Unix socket), or every such client
    would share one count and a few wrong passwords would lock all of them out."""
    address = getattr(request_or_attempt, "axes_ip_address", None)
    if address is None:
        address = getattr(request_or_attempt, "ip_address", None)
    return LOCKOUT_PARAMETERS if address else ["username"]


class LoginThrottleBackend(AxesStandaloneBackend):
    """Refuse a login while its account or address is locked out (axes)."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)
