"""Login throttling: django-axes counts failed logins per account and per address and
locks either out after ``AXES_FAILURE_LIMIT`` failures (settings: the axes section).

`LoginThrottleBackend` is axes' check, first in ``AUTHENTICATION_BACKENDS``. A login
without a request (the test client's ``login``, a shell) comes through no door an
attacker can reach, so it is passed to the next backend instead of refused; every web
login form and the admin's pass the request.
"""

from __future__ import annotations

from axes.backends import AxesStandaloneBackend


class LoginThrottleBackend(AxesStandaloneBackend):
    """Refuse a login while its account or address is locked out (axes)."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)
