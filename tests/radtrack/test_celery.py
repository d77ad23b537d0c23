"""The task policy: transient errors are retried, everything else fails at once."""

import pytest
from django.db import OperationalError

from radtrack.celery import TRANSIENT_ERRORS, radtrack_task

calls: dict[str, int] = {}


@radtrack_task(queue="cpu", max_retries=3)
def _flaky(name: str, failures: int, error: str) -> str:
    calls[name] = calls.get(name, 0) + 1
    if calls[name] <= failures:
        raise {"db": OperationalError, "value": ValueError}[error](f"attempt {calls[name]}")
    return f"done after {calls[name]} attempts"


@pytest.fixture(autouse=True)
def _eager():
    # The embedded default: tasks run in-process, retries in-line, and a final failure
    # is kept on the result (``get`` raises it), as settings.CELERY_TASK_EAGER_PROPAGATES.
    assert _flaky.app.conf.task_always_eager and not _flaky.app.conf.task_eager_propagates
    calls.clear()


def test_a_transient_database_error_is_retried_until_it_succeeds():
    result = _flaky.delay("db-twice", 2, "db")
    assert result.get() == "done after 3 attempts"
    assert calls["db-twice"] == 3


def test_retries_stop_after_max_retries():
    with pytest.raises(OperationalError):
        _flaky.delay("db-always", 10, "db").get()
    assert calls["db-always"] == 4  # the first try and three retries


def test_an_error_that_is_not_transient_is_not_retried():
    with pytest.raises(ValueError):
        _flaky.delay("bad-data", 1, "value").get()
    assert calls["bad-data"] == 1


def test_the_policy_is_set_on_every_task():
    assert _flaky.acks_late and _flaky.reject_on_worker_lost
    assert tuple(_flaky.autoretry_for) == TRANSIENT_ERRORS
    assert _flaky.retry_backoff and _flaky.max_retries == 3
