"""Parallel C-STORE associations into the DICOM listener: is anything lost?

Generates ``--associations`` studies (one per patient, small preset), starts
``manage.py dicom_listener`` on a free port over a fresh database (SQLite, or PostgreSQL
with ``--database-url``), and runs one dcmtk ``storescu`` per study, all at once. Then
counts: every file sent is an instance stored with its checksum (``verify_storage``),
one ingest session per association, none rejected. Prints the wall time, files per
second and each association's seconds; exits 1 when anything is missing.

The listener stores and indexes only (``--no-process``): this measures the door, not the
pipeline (benchmarks/workers.py).

    .venv/bin/python benchmarks/listener.py --associations 8
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _query(env: dict[str, str], sql: str) -> list[tuple]:
    url = env.get("DATABASE_URL", "")
    if url:
        import psycopg

        with psycopg.connect(url.replace("postgres://", "postgresql://", 1)) as conn:
            return [tuple(r) for r in conn.execute(sql)]
    with contextlib.closing(
        sqlite3.connect(Path(env["RADTRACK_DATA_DIR"]) / "radtrack.sqlite3", timeout=30)
    ) as conn:
        return list(conn.execute(sql))


def _fresh_database(url: str) -> str:
    if not url:
        return ""
    import psycopg

    base, _, name = url.rpartition("/")
    with psycopg.connect(
        f"{base.replace('postgres://', 'postgresql://', 1)}/postgres", autocommit=True
    ) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return url


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.3)
    raise SystemExit(f"the listener did not open port {port}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--associations", type=int, default=8)
    parser.add_argument("--seed", type=int, default=4246)
    parser.add_argument("--database-url", default="", help="PostgreSQL URL (made afresh)")
    args = parser.parse_args(argv)
    storescu = shutil.which("storescu")
    if storescu is None:
        raise SystemExit("storescu is not installed (apt-get install dcmtk)")
    from imaging.core.synthetic.cohort import cohort_generate

    work = Path(tempfile.mkdtemp(prefix="radtrack-bench-listener-"))
    listener = None
    try:
        cohort_generate(work / "cohort", n_patients=args.associations, n_timepoints=1,
                        seed=args.seed, size="small")  # fmt: skip
        studies = sorted(p for p in (work / "cohort" / "dicom").glob("*/*") if p.is_dir())
        n_files = sum(1 for s in studies for f in s.rglob("*") if f.is_file())
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RADTRACK_", "CELERY_", "DJANGO_"))
        }
        env.pop("DATABASE_URL", None)
        env.update(RADTRACK_DATA_DIR=str(work / "data"), DJANGO_SECRET_KEY="listener-bench-" + "x" * 50,
                   DJANGO_SETTINGS_MODULE=os.environ.get("DJANGO_SETTINGS_MODULE", "radtrack.settings"))  # fmt: skip
        if args.database_url:
            env["DATABASE_URL"] = _fresh_database(args.database_url)
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--no-input", "-v0"],
            cwd=ROOT,
            env=env,
            check=True,
        )
        port = _free_port()
        listener = subprocess.Popen(
            [sys.executable, "manage.py", "dicom_listener", "--port", str(port), "--no-process"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_port(port, 120)
        started = time.perf_counter()
        senders = [
            (subprocess.Popen([storescu, "-aec", "RADTRACK", "-aet", f"MODALITY{i}", "+sd", "+r",
                               "127.0.0.1", str(port), str(study)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), time.perf_counter())
            for i, study in enumerate(studies)
        ]  # fmt: skip
        seconds, failures = [], []
        for sender, began in senders:
            _, err = sender.communicate(timeout=600)
            seconds.append(time.perf_counter() - began)
            if sender.returncode != 0:
                failures.append(err.decode(errors="replace")[-300:])
        wall = time.perf_counter() - started
        # Each association's session closes when it ends: give the last ones a moment.
        time.sleep(2)
        stored = _query(env, "SELECT COUNT(*) FROM imaging_instance")[0][0]
        sessions = _query(
            env, "SELECT COUNT(*), SUM(stored), SUM(rejected) FROM imaging_ingestsession"
        )[0]
        verify = subprocess.run([sys.executable, "manage.py", "verify_storage"], cwd=ROOT, env=env,
                                capture_output=True, text=True, check=False)  # fmt: skip
    finally:
        if listener is not None:
            listener.terminate()
            listener.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    print(f"{len(studies)} associations at once, {n_files} files: {wall:.1f} s, "
          f"{n_files / wall:.0f} files/s; per association {min(seconds):.1f} to {max(seconds):.1f} s")  # fmt: skip
    print(f"stored {stored} of {n_files}; sessions {sessions[0]}, stored {sessions[1]}, rejected "
          f"{sessions[2]}; storescu failures {len(failures)}; verify_storage exit {verify.returncode}: "
          f"{verify.stdout.strip().splitlines()[-1] if verify.stdout.strip() else verify.stderr[-300:]}")  # fmt: skip
    for failure in failures:
        print("  storescu:", failure)
    lost = stored != n_files or failures or verify.returncode != 0
    return 1 if lost else 0


if __name__ == "__main__":
    raise SystemExit(main())
