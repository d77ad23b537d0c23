"""Real processes for the production tests: a site (its own data folder and database),
Celery workers, gunicorn, a private Redis and a private PostgreSQL cluster.

The shared Redis (RADTRACK_TEST_REDIS_URL, default database 15 of 127.0.0.1:6379, which
`.ci/run` starts) is used under a key prefix of each test's own, and only those keys are
removed afterwards: the tests never touch anyone else's data. Tests that stop Redis or
PostgreSQL start private ones on other ports.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REQUIRE_ALL, require_program

ROOT = Path(__file__).resolve().parents[2]
TEST_REDIS_URL = os.environ.get("RADTRACK_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def missing(message: str) -> None:
    """Skip, or fail under RADTRACK_REQUIRE_ALL=1."""
    if REQUIRE_ALL:
        pytest.fail(message + " and RADTRACK_REQUIRE_ALL=1", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], Any], *, timeout: float, what: str, every: float = 0.5) -> Any:
    """Poll ``check`` until it returns something true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Process:
    """A child in its own session (so the whole group can be signalled), logging to a file."""

    def __init__(self, name: str, args: list[str], *, env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        self._out = log.open("ab")
        self.popen = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signum)

    def kill(self) -> None:
        """SIGKILL to the process and every child: a machine lost, nothing cleaned up."""
        self.signal_group(signal.SIGKILL)
        self.popen.wait(timeout=30)

    def stop(self, timeout: float = 20) -> None:
        if self.popen.poll() is None:
            self.signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.popen.wait(timeout=30)
        else:  # the leader is gone; its children may not be
            self.signal_group(signal.SIGKILL)
        self._out.close()

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


class Site:
    """One installation: data folder, database, broker; runs its commands and processes."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, env
        self.processes: list[Process] = []

    @property
    def data(self) -> Path:
        return Path(self.env["RADTRACK_DATA_DIR"])

    def manage(
        self, *args: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if check and done.returncode != 0:
            raise AssertionError(
                f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
            )
        return done

    def start(self, name: str, args: list[str], **env: str) -> Process:
        process = Process(name, args, env={**self.env, **env}, log=self.root / f"{name}.log")
        self.processes.append(process)
        return process

    def worker(self, name: str, *, queues: str = "ingest,cpu,gpu,export", **env: str) -> Process:
        return self.start(
            name,
            [sys.executable, "-m", "celery", "-A", "radtrack", "worker", "--queues", queues,
             "--concurrency", "1", "--loglevel", "INFO", "--without-gossip", "--without-mingle",
             "--hostname", f"{name}@%h"],
            **env,
        )  # fmt: skip

    def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        url = self.env.get("DATABASE_URL", "")
        if url.startswith("postgres"):
            import psycopg

            with psycopg.connect(
                url.replace("postgres://", "postgresql://", 1), autocommit=True
            ) as conn:
                return [tuple(row) for row in conn.execute(query.replace("?", "%s"), params)]
        with contextlib.closing(
            sqlite3.connect(self.data / "radtrack.sqlite3", timeout=30)
        ) as conn:
            return list(conn.execute(query, params))

    def series_states(self) -> list[str]:
        return [row[0] for row in self.sql("SELECT state FROM imaging_series ORDER BY id")]

    def runs(self) -> list[dict[str, Any]]:
        rows = self.sql(
            "SELECT id, series_id, status, attempts, error, steps FROM imaging_processingrun ORDER BY id"
        )
        keys = ("id", "series_id", "status", "attempts", "error", "steps")
        runs = [dict(zip(keys, row, strict=True)) for row in rows]
        for run in runs:
            run["steps"] = (
                json.loads(run["steps"]) if isinstance(run["steps"], str) else run["steps"]
            )
        return runs

    def step_status(self, name: str) -> str:
        """The status of step ``name`` of the latest run, or ''."""
        runs = self.runs()
        steps = [s for s in (runs[-1]["steps"] if runs else []) if s.get("name") == name]
        return steps[-1].get("status", "") if steps else ""

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.tail()}" for p in self.processes)

    def close(self) -> None:
        for process in reversed(self.processes):
            process.stop()


@pytest.fixture(scope="session")
def cohort(tmp_path_factory) -> Path:
    """One small patient with two studies (seed 21, as tests/imaging/test_pipeline.py)."""
    from imaging.core.synthetic import cohort as synthetic

    out = tmp_path_factory.mktemp("production-cohort")
    synthetic.cohort_generate(out, n_patients=1, n_timepoints=2, seed=21, size="small")
    return out


def study_folders(cohort: Path) -> list[Path]:
    return sorted(p for p in (cohort / "dicom").glob("*/*") if p.is_dir())


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory) -> Path:
    """A migrated SQLite database, copied by each site (migrating takes seconds)."""
    folder = tmp_path_factory.mktemp("migrated")
    env = {**_base_env(), "RADTRACK_DATA_DIR": str(folder)}
    done = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input", "-v0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return folder / "radtrack.sqlite3"


def _base_env() -> dict[str, str]:
    """This environment less the site's settings; the test run's settings module."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "RADTRACK_", "CELERY_"))
    }
    env.pop("DATABASE_URL", None)
    settings_module = os.environ.get("DJANGO_SETTINGS_MODULE", "radtrack.settings")
    env.update(DJANGO_SETTINGS_MODULE=settings_module, PYTHONUNBUFFERED="1")
    return env


@pytest.fixture
def redis_url() -> str:
    """The shared test Redis, reachable, or skip (fail under RADTRACK_REQUIRE_ALL)."""
    import redis

    require_program("redis-server", why="the broker of the production tests")
    try:
        redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=2).ping()
    except redis.exceptions.RedisError as exc:
        missing(f"no Redis at {TEST_REDIS_URL} ({exc}); .ci/run starts one")
    return TEST_REDIS_URL


@pytest.fixture
def make_site(tmp_path, migrated_sqlite) -> Iterator[Callable[..., Site]]:
    """Build sites on a broker; each gets a key prefix of its own, removed afterwards."""
    import redis

    sites: list[tuple[Site, str]] = []

    def build(*, broker_url: str, database_url: str = "", **env: str) -> Site:
        root = tmp_path / f"site{len(sites)}"
        data = root / "data"
        data.mkdir(parents=True)
        prefix = f"radtrack-test-{uuid.uuid4().hex[:12]}:"
        site_env = {
            **_base_env(),
            "RADTRACK_DATA_DIR": str(data),
            "CELERY_BROKER_URL": broker_url,
            "RADTRACK_BROKER_KEY_PREFIX": prefix,
            "DJANGO_SECRET_KEY": uuid.uuid4().hex * 2,
            **env,
        }
        if database_url:
            site_env["DATABASE_URL"] = database_url
        else:
            shutil.copy(migrated_sqlite, data / "radtrack.sqlite3")
        site = Site(root, site_env)
        sites.append((site, prefix))
        return site

    yield build
    for site, prefix in sites:
        site.close()
        url = site.env["CELERY_BROKER_URL"]
        with contextlib.suppress(redis.exceptions.RedisError):
            client = redis.Redis.from_url(url, socket_connect_timeout=2)
            keys = list(client.scan_iter(match=f"{prefix}*"))
            if keys:
                client.delete(*keys)


# --------------------------------------------------------------------------- Redis
class PrivateRedis:
    """A redis-server of the test's own on a free port, its queue kept on disk
    (appendonly), so that stopping and starting it keeps what was queued."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        self.process = subprocess.Popen(
            [require_program("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.folder), "--appendonly", "yes", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        wait_for(lambda: _pings(client), timeout=20, what="the private Redis")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: Redis writes its append-only file and exits
            self.process.wait(timeout=20)


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


@pytest.fixture
def private_redis(tmp_path) -> Iterator[PrivateRedis]:
    require_program("redis-server", why="the broker restart test")
    folder = tmp_path / "redis"
    folder.mkdir()
    server = PrivateRedis(folder)
    server.start()
    yield server
    server.stop()


# --------------------------------------------------------------------------- PostgreSQL
class PrivatePostgres:
    """A PostgreSQL cluster of the test's own (initdb, pg_ctl as user postgres) on a free
    port, so restarting it disturbs no one else."""

    def __init__(self, bindir: Path, folder: Path) -> None:
        self.bindir, self.folder, self.port = bindir, folder, free_port()

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/radtrack"

    def _as_postgres(self, *args: str) -> None:
        done = subprocess.run(
            ["runuser", "-u", "postgres", "--", *args], capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed: {done.stdout}{done.stderr}")

    def init(self) -> None:
        self._as_postgres(str(self.bindir / "initdb"), "-D", str(self.folder / "db"), "-A", "trust",
                          "-U", "postgres", "--no-sync")  # fmt: skip
        self.ctl("start")
        self._as_postgres(
            str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "radtrack"
        )

    def ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.folder / "db"), "-l",
                          str(self.folder / "log"), "-o", options, "-w", *extra, action)  # fmt: skip


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb") or ""]
    if not found[-1] or os.geteuid() != 0 or not shutil.which("runuser"):
        missing(
            "a private PostgreSQL cluster needs initdb and pg_ctl, run as root (runuser postgres)"
        )
    folder = Path(tempfile.mkdtemp(prefix="radtrack-pg-"))
    folder.chmod(0o755)
    shutil.chown(folder, user="postgres")
    server = PrivatePostgres(Path(found[-1]).parent, folder)
    try:
        server.init()
        yield server
    finally:
        with contextlib.suppress(AssertionError):
            server.ctl("stop", "-m", "immediate")
        shutil.rmtree(folder, ignore_errors=True)
