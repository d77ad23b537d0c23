"""Shared test helpers.

Tests that need an outside program skip with a visible reason when it is missing, so
``make test`` passes on a bare machine; with ``RADTRACK_REQUIRE_ALL=1`` (set by
``.ci/run``) a missing program fails the test instead.
"""

import os
import shutil

import pytest

REQUIRE_ALL = os.environ.get("RADTRACK_REQUIRE_ALL", "") == "1"


def require_program(name: str, *, why: str = "") -> str:
    """Return the path of ``name`` on PATH, or skip (fail under RADTRACK_REQUIRE_ALL)."""
    path = shutil.which(name)
    if path:
        return path
    message = (
        f"{name} is not installed{': ' + why if why else ''} (apt-get install it; .ci/run does)"
    )
    if REQUIRE_ALL:
        pytest.fail(message + " and RADTRACK_REQUIRE_ALL=1", pytrace=False)
    pytest.skip(message)
    raise AssertionError("unreachable")


def pytest_collection_modifyitems(config, items):
    """The slow tests first, each kept in its order: `make test` runs the suite on two
    processes (pytest-xdist), which then share the long tests instead of one process
    finishing them alone after the short ones are done."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def _cache_clear():
    """Counts kept in the cache (failed API authentications) start afresh in every test."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(autouse=True)
def _static_files_unhashed(settings, tmp_path):
    """Pages render without `collectstatic`: the served site's hashed, compressed names
    need its manifest (tests/production checks that storage itself)."""
    settings.STATIC_ROOT = tmp_path / "static"
    settings.STATIC_ROOT.mkdir()
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.fixture(autouse=True)
def _data_dir(tmp_path, settings):
    """Every test stores files under its own temporary data folder."""
    settings.DATA_DIR = tmp_path / "data"
    settings.DATA_DIR.mkdir()
    return settings.DATA_DIR
