"""Ingest speed: ``manage.py ingest`` and the C-STORE listener against their yardsticks.

One run measures, on the same CT series (300 slices of 512x512 by default, written once
into a cache folder by RadTrack's own DICOM writer):

1. a bare loop of ``pydicom.dcmread`` plus ``.pixel_array`` over the files;
2. ``manage.py ingest --no-process`` into a fresh data folder and database;
3. ``manage.py dicom_listener --no-process`` receiving the series from dcmtk's storescu;
4. Debian's Orthanc receiving the same series from the same storescu command;

and prints instances per second, ingest / bare loop and listener / Orthanc, with the
targets (>= 0.5 and >= 2.5). Only the import or the transfer is timed; starting Django,
migrating, starting the servers and checking the result afterwards are not.

    .venv/bin/python benchmarks/ingest.py [--slices 300] [--size 512]
        [--database-url postgres://postgres@127.0.0.1:5432/radtrack_bench]

With ``--database-url`` (PostgreSQL), each measurement gets a fresh database created
beside the named one on the same server and dropped afterwards; the named database
itself is never touched. Without it, each gets a fresh SQLite file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pydicom

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imaging.core.dicom.write import CTSeriesAttributes, ct_series_write, synthetic_uid  # noqa: E402
from imaging.core.geometry.volume import Volume  # noqa: E402

INGEST_TARGET = 0.5
LISTENER_TARGET = 2.5
ORTHANC = "/usr/sbin/Orthanc"

# Run inside a subprocess with its own RADTRACK_DATA_DIR and DATABASE_URL, so that
# Django start-up is not timed.
_INGEST_PROGRAM = """
import io, json, os, sys, time
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "radtrack.settings")
django.setup()
from django.core.management import call_command
from imaging.models import Instance
out = io.StringIO()
started = time.perf_counter()
call_command("ingest", sys.argv[1], no_process=True, quiet=True, stdout=out)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "stored": Instance.objects.count(),
                  "summary": out.getvalue().strip()}))
"""
_COUNT_PROGRAM = """
import json, os
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "radtrack.settings")
django.setup()
from imaging.models import IngestSession, Instance
print(json.dumps({"stored": Instance.objects.count(),
                  "sessions": list(IngestSession.objects.values("status", "stored", "rejected"))}))
"""


@dataclass
class Result:
    name: str
    files: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.files / self.seconds if self.seconds > 0 else float("nan")


# -- the series ----------------------------------------------------------------------
def phantom_hu(slices: int, size: int, seed: int = 0) -> np.ndarray:
    """A crude chest section per slice: body, lungs, spine, table, and scanner noise (HU).

    Noise and anatomy matter: constant images would compress and hash unrealistically.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    hu = np.empty((slices, size, size), dtype=np.float32)
    for k in range(slices):
        t = k / max(slices - 1, 1)
        image = np.full((size, size), -1000.0, dtype=np.float32)
        body = (x / 0.45) ** 2 + (y / 0.32) ** 2 <= 1
        image[body] = 40.0
        image[(x / 0.43) ** 2 + (y / 0.30) ** 2 > 0.85] = -100.0  # subcutaneous fat
        image[~body] = -1000.0
        lung_size = 0.12 + 0.06 * np.sin(np.pi * t)
        for side in (-1, 1):
            lung = ((x - side * 0.18) / lung_size) ** 2 + ((y + 0.02) / (lung_size * 1.6)) ** 2
            image[lung <= 1] = -850.0
        image[((x / 0.05) ** 2 + ((y - 0.2) / 0.05) ** 2) <= 1] = 700.0  # vertebra
        image[(y > 0.36) & (y < 0.38) & (np.abs(x) < 0.45)] = 200.0  # table
        image += rng.normal(0.0, 12.0, size=image.shape).astype(np.float32)
        hu[k] = image
    return hu


def series_cached(cache: Path, slices: int, size: int) -> list[Path]:
    """The benchmark series, written once into ``cache`` and reused afterwards."""
    folder = cache / f"ct_{slices}x{size}x{size}"
    marker = cache / f"{folder.name}.complete.json"  # outside the folder that is imported
    if marker.exists():
        files = sorted(folder.glob("IM*.dcm"))
        if len(files) == slices:
            return files
    shutil.rmtree(folder, ignore_errors=True)
    marker.unlink(missing_ok=True)
    print(f"writing a {slices}-slice {size}x{size} CT series into {folder} (once)", flush=True)
    fov_mm = 350.0
    volume = Volume(
        phantom_hu(slices, size),
        (fov_mm / size, fov_mm / size, 1.25),
        (-fov_mm / 2, -fov_mm / 2, -slices * 1.25 / 2),
    )
    attrs = CTSeriesAttributes(
        patient_id="BENCH0001",
        patient_name="Bench^Mark",
        study_instance_uid=synthetic_uid(),
        series_instance_uid=synthetic_uid(),
        frame_of_reference_uid=synthetic_uid(),
    )
    files = ct_series_write(volume, folder, attrs)
    marker.write_text(json.dumps({"slices": slices, "size": size}))
    return files


# -- helpers -------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def fresh_database(database_url: str | None, tag: str, workdir: Path) -> Iterator[str]:
    """A database URL for one measurement: a new SQLite file, or a new PostgreSQL database."""
    if not database_url:
        yield f"sqlite:///{workdir / 'radtrack.sqlite3'}"
        return
    import psycopg
    from psycopg import sql

    parts = urlsplit(database_url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise SystemExit(f"--database-url must be a PostgreSQL URL, not {parts.scheme}://")
    base = parts.path.lstrip("/") or "radtrack_bench"
    name = f"{base}_{tag}_{os.getpid()}"
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def django_env(data_dir: Path, database_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        RADTRACK_DATA_DIR=str(data_dir),
        DATABASE_URL=database_url,
        DJANGO_SETTINGS_MODULE="radtrack.settings",
        RADTRACK_LOG_LEVEL="WARNING",
    )
    env.pop("CELERY_BROKER_URL", None)
    return env


def run_checked(args: list[str], env: dict[str, str] | None = None, **kw) -> str:
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, **kw)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:3])}... failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def migrate(env: dict[str, str]) -> None:
    run_checked([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], env)


def storescu(files: list[Path], port: int, called: str) -> float:
    """Send ``files`` over one association; return the seconds it took."""
    args = ["storescu", "-aet", "BENCHSCU", "-aec", called, "127.0.0.1", str(port)]
    args += [str(p) for p in files]
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"storescu to {called} failed:\n{done.stderr[-2000:]}")
    return seconds


def stop(proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- measurements --------------------------------------------------------------------
def bare_read(files: list[Path]) -> Result:
    started = time.perf_counter()
    for path in files:
        ds = pydicom.dcmread(path)
        _ = ds.pixel_array
    return Result("pydicom dcmread + pixel_array", len(files), time.perf_counter() - started)


def ingest_command(folder: Path, files: list[Path], database_url: str | None) -> Result:
    with tempfile.TemporaryDirectory(prefix="radtrack-bench-ingest-") as tmp:
        work = Path(tmp)
        with fresh_database(database_url, "ingest", work) as url:
            env = django_env(work / "data", url)
            migrate(env)
            out = run_checked([sys.executable, "-c", _INGEST_PROGRAM, str(folder)], env)
            report = json.loads(out.strip().splitlines()[-1])
    if report["stored"] != len(files):
        raise SystemExit(f"ingest stored {report['stored']} of {len(files)}: {report['summary']}")
    return Result("manage.py ingest --no-process", len(files), report["seconds"])


def listener(files: list[Path], database_url: str | None) -> Result:
    with tempfile.TemporaryDirectory(prefix="radtrack-bench-listener-") as tmp:
        work = Path(tmp)
        with fresh_database(database_url, "listener", work) as url:
            env = django_env(work / "data", url)
            migrate(env)
            port = free_port()
            log = open(work / "listener.log", "w")  # noqa: SIM115 - closed below
            proc = subprocess.Popen(
                [sys.executable, "manage.py", "dicom_listener", "--port", str(port)]
                + ["--no-process", "--grace", "30"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
            try:
                line = proc.stdout.readline()
                if "listening" not in line:
                    raise SystemExit(f"the listener did not start: {line}")
                seconds = storescu(files, port, "RADTRACK")
            finally:
                stop(proc)  # waits for the association's session to be finished
                log.close()
            report = json.loads(run_checked([sys.executable, "-c", _COUNT_PROGRAM], env))
    if report["stored"] != len(files):
        raise SystemExit(f"the listener stored {report['stored']} of {len(files)}: {report}")
    return Result("dicom_listener (storescu)", len(files), seconds)


def orthanc(files: list[Path]) -> Result | None:
    if not Path(ORTHANC).exists():
        print(f"{ORTHANC} is not installed (apt-get install orthanc): Orthanc skipped")
        return None
    with tempfile.TemporaryDirectory(prefix="radtrack-bench-orthanc-") as tmp:
        work = Path(tmp)
        http_port, dicom_port = free_port(), free_port()
        config = {
            "Name": "RadTrackBench",
            "StorageDirectory": str(work / "storage"),
            "IndexDirectory": str(work / "index"),
            "HttpPort": http_port,
            "DicomPort": dicom_port,
            "DicomAet": "ORTHANC",
            "DicomCheckCalledAet": False,
            # Orthanc listens on every interface: keep it closed to other machines.
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [],
        }
        (work / "orthanc.json").write_text(json.dumps(config))
        log = open(work / "orthanc.log", "w")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [ORTHANC, str(work / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT
        )
        base = f"http://127.0.0.1:{http_port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"{base}/system", timeout=1):
                        break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("Orthanc did not start; see its log") from None
                    time.sleep(0.2)
            seconds = storescu(files, dicom_port, "ORTHANC")
            with urllib.request.urlopen(f"{base}/statistics", timeout=10) as response:
                count = json.load(response)["CountInstances"]
        finally:
            stop(proc)
            log.close()
    if count != len(files):
        raise SystemExit(f"Orthanc stored {count} of {len(files)}")
    return Result("Orthanc 1.10 (storescu)", len(files), seconds)


# -- report --------------------------------------------------------------------------
def report(bare: Result, ingest: Result, scp: Result, peer: Result | None, database: str) -> None:
    rows = [bare, ingest, scp] + ([peer] if peer else [])
    print()
    print(f"database: {database}; {os.cpu_count()} CPUs")
    print(f"{'measurement':<34} {'files':>6} {'seconds':>8} {'files/s':>8}")
    for r in rows:
        print(f"{r.name:<34} {r.files:>6} {r.seconds:>8.2f} {r.rate:>8.1f}")
    print()
    print(f"{'ratio':<34} {'value':>6} {'target':>8} {'met':>8}")
    ratios = [("ingest / bare read", ingest.rate / bare.rate, INGEST_TARGET)]
    if peer:
        ratios.append(("listener / Orthanc", scp.rate / peer.rate, LISTENER_TARGET))
    for name, value, target in ratios:
        print(
            f"{name:<34} {value:>6.2f} {'>= ' + str(target):>8} {'yes' if value >= target else 'NO':>8}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512, help="rows and columns")
    parser.add_argument(
        "--database-url",
        default=None,
        help="a PostgreSQL URL; fresh databases are created beside it (default: SQLite)",
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=ROOT / "var" / "benchmarks", help="series cache"
    )
    parser.add_argument("--skip-orthanc", action="store_true")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each measurement N times and keep the fastest (for a busy machine)",
    )
    args = parser.parse_args(argv)
    if args.slices < 1 or args.size < 8:
        parser.error("--slices must be at least 1 and --size at least 8")
    if not shutil.which("storescu"):
        parser.error("storescu is not installed (apt-get install dcmtk)")

    files = series_cached(args.cache_dir, args.slices, args.size)
    folder = files[0].parent
    for path in files:  # the same warm page cache for every measurement
        path.read_bytes()

    def fastest(measure) -> Result | None:
        results = [measure() for _ in range(max(args.repeat, 1))]
        results = [r for r in results if r is not None]
        return min(results, key=lambda r: r.seconds) if results else None

    bare = fastest(lambda: bare_read(files))
    ingest = fastest(lambda: ingest_command(folder, files, args.database_url))
    scp = fastest(lambda: listener(files, args.database_url))
    peer = None if args.skip_orthanc else fastest(lambda: orthanc(files))
    database = "PostgreSQL" if args.database_url else "SQLite"
    if args.repeat > 1:
        database += f"; fastest of {args.repeat} runs each"
    report(bare, ingest, scp, peer, database)


if __name__ == "__main__":
    main()
