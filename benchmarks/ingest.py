"""Ingest speed: ``manage.py ingest`` and the C-STORE listener against their yardsticks.

One run measures, on the same CT series (300 slices of 512x512 by default, written once
into a cache folder by RadTrack's own DICOM writer):

1. a bare loop of ``pydicom.dcmread`` plus ``.pixel_array`` over the files;
2. ``manage.py ingest --no-process`` into a fresh data folder and database;
3. a bare pynetdicom Storage SCP that only writes and fsyncs each instance (the ceiling
   for a listener built on pynetdicom);
4. ``manage.py dicom_listener --no-process``;
5. Debian's Orthanc;

3 to 5 each receive the series from dcmtk's storescu over one association, and again
split over 8 parallel associations. It prints instances per second and the ratios with
their targets: ingest / bare loop >= 1.0, listener / Orthanc >= 3, listener / bare SCP
>= 0.8. Only the import or the transfer is timed; starting Django, migrating, starting
the servers and checking the result afterwards are not. The load average of the machine
is printed before and after.

    .venv/bin/python benchmarks/ingest.py [--slices 300] [--size 512] [--repeat 3]
        [--database-url postgres://postgres@127.0.0.1:5432/radtrack_bench]
        [--baseline-tree /tmp/radtrack-before]

With ``--database-url`` (PostgreSQL), each measurement gets a fresh database created
beside the named one on the same server and dropped afterwards; the named database
itself is never touched. Without it, each gets a fresh SQLite file. With
``--baseline-tree`` (a checkout of an earlier commit, e.g. ``git archive HEAD | tar -x
-C DIR``), its ``manage.py ingest`` and listener are measured too, in the same run.
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
from concurrent.futures import ThreadPoolExecutor
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

INGEST_TARGET = 1.0
ORTHANC_TARGET = 3.0
CEILING_TARGET = 0.8
PARALLEL = 8
ORTHANC = "/usr/sbin/Orthanc"

# Run inside a subprocess with its own RADTRACK_DATA_DIR and DATABASE_URL, so that
# Django start-up is not timed.
_INGEST_PROGRAM = """
import io, json, os, sys, time
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "radtrack.settings")
django.setup()
from django.core.management import call_command, load_command_class
from imaging.models import Instance
import resource
load_command_class("imaging", "ingest")  # start-up, like Django's: not timed
def cpu():
    return sum(r.ru_utime + r.ru_stime
               for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))
out = io.StringIO()
cpu_before, started = cpu(), time.perf_counter()
call_command("ingest", sys.argv[1], no_process=True, quiet=True, stdout=out)
seconds, cpu_seconds = time.perf_counter() - started, cpu() - cpu_before
print(json.dumps({"seconds": seconds, "cpu": cpu_seconds, "stored": Instance.objects.count(),
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
#: The ceiling: pynetdicom receiving with the listener's PDU size, writing each instance
#: (File Meta and data set as received) and fsyncing it before answering, nothing else.
_BARE_SCP_PROGRAM = """
import os, sys
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
port, folder = int(sys.argv[1]), sys.argv[2]
def store(event):
    path = os.path.join(folder, event.request.AffectedSOPInstanceUID + ".dcm")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, event.encoded_dataset())
        os.fsync(fd)
    finally:
        os.close(fd)
    return 0x0000
ae = AE("BARESCP")
ae.maximum_pdu_size = 1 << 20
ae.maximum_associations = 16
ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, store)])
print("listening", flush=True)
sys.stdin.read()
server.shutdown()
"""


@dataclass
class Result:
    name: str
    files: int
    seconds: float
    #: CPU seconds the importing or receiving side used (user + system, all its
    #: threads and reader processes): less sensitive to other load than ``seconds``.
    cpu_seconds: float = float("nan")

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


def run_checked(args: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:3])}... failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def storescu(files: list[Path], port: int, called: str, associations: int = 1) -> float:
    """Send ``files`` over ``associations`` parallel associations; the seconds it took."""
    groups = [files[i::associations] for i in range(associations)]

    def send(group: list[Path]) -> subprocess.CompletedProcess:
        args = ["storescu", "-aet", "BENCHSCU", "-aec", called, "127.0.0.1", str(port)]
        return subprocess.run(args + [str(p) for p in group], capture_output=True, text=True)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=associations) as pool:
        results = list(pool.map(send, groups))
    seconds = time.perf_counter() - started
    for done in results:
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
    cpu_before, started = time.process_time(), time.perf_counter()
    for path in files:
        ds = pydicom.dcmread(path)
        _ = ds.pixel_array
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_before
    return Result("pydicom dcmread + pixel_array", len(files), seconds, cpu)


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a running process has used (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_storescu(pid: int, files: list[Path], port: int, called: str, n: int):
    """storescu's seconds, and the CPU seconds the receiving process used meanwhile."""
    cpu_before = process_cpu(pid)
    seconds = storescu(files, port, called, n)
    return seconds, process_cpu(pid) - cpu_before


def ingest_command(folder: Path, files: list[Path], database_url: str | None, tree: Path) -> Result:
    with tempfile.TemporaryDirectory(prefix="radtrack-bench-ingest-") as tmp:
        work = Path(tmp)
        with fresh_database(database_url, "ingest", work) as url:
            env = django_env(work / "data", url)
            run_checked([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], env, tree)
            out = run_checked([sys.executable, "-c", _INGEST_PROGRAM, str(folder)], env, tree)
            report = json.loads(out.strip().splitlines()[-1])
    if report["stored"] != len(files):
        raise SystemExit(f"ingest stored {report['stored']} of {len(files)}: {report['summary']}")
    return Result(f"manage.py ingest{_label(tree)}", len(files), report["seconds"], report["cpu"])


def _label(tree: Path) -> str:
    return "" if tree == ROOT else " (before)"


def listener(files: list[Path], database_url: str | None, tree: Path, parallel: int) -> Result:
    with tempfile.TemporaryDirectory(prefix="radtrack-bench-listener-") as tmp:
        work = Path(tmp)
        with fresh_database(database_url, "listener", work) as url:
            env = django_env(work / "data", url)
            run_checked([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], env, tree)
            port = free_port()
            log = open(work / "listener.log", "w")  # noqa: SIM115 - closed below
            proc = subprocess.Popen(
                [sys.executable, "manage.py", "dicom_listener", "--port", str(port)]
                + ["--no-process", "--grace", "30"],
                cwd=tree,
                env=env,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
            try:
                line = proc.stdout.readline()
                if "listening" not in line:
                    raise SystemExit(f"the listener did not start: {line}")
                seconds, cpu = timed_storescu(proc.pid, files, port, "RADTRACK", parallel)
            finally:
                stop(proc)  # waits for the associations' sessions to be finished
                log.close()
            report = json.loads(run_checked([sys.executable, "-c", _COUNT_PROGRAM], env, tree))
    if report["stored"] != len(files):
        raise SystemExit(f"the listener stored {report['stored']} of {len(files)}: {report}")
    return Result(f"dicom_listener{_label(tree)} x{parallel}", len(files), seconds, cpu)


def bare_scp(files: list[Path], parallel: int) -> Result:
    with tempfile.TemporaryDirectory(prefix="radtrack-bench-scp-") as tmp:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-c", _BARE_SCP_PROGRAM, str(port), tmp],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            if "listening" not in proc.stdout.readline():
                raise SystemExit("the bare SCP did not start")
            seconds, cpu = timed_storescu(proc.pid, files, port, "BARESCP", parallel)
        finally:
            proc.stdin.close()
            proc.wait(timeout=30)
        stored = len(list(Path(tmp).glob("*.dcm")))
    if stored != len(files):
        raise SystemExit(f"the bare SCP stored {stored} of {len(files)}")
    return Result(f"bare pynetdicom SCP x{parallel}", len(files), seconds, cpu)


def orthanc(files: list[Path], parallel: int) -> Result | None:
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
            seconds, cpu = timed_storescu(proc.pid, files, dicom_port, "ORTHANC", parallel)
            with urllib.request.urlopen(f"{base}/statistics", timeout=10) as response:
                count = json.load(response)["CountInstances"]
        finally:
            stop(proc)
            log.close()
    if count != len(files):
        raise SystemExit(f"Orthanc stored {count} of {len(files)}")
    return Result(f"Orthanc 1.10 x{parallel}", len(files), seconds, cpu)


# -- report --------------------------------------------------------------------------
def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def report(rows: dict[str, Result | None], database: str, loads: tuple[str, str]) -> None:
    print()
    print(f"database: {database}; {os.cpu_count()} CPUs; before: {loads[0]}; after: {loads[1]}")
    print(f"{'measurement':<36} {'files':>6} {'seconds':>8} {'files/s':>8} {'cpu ms/file':>12}")
    for r in rows.values():
        if r is not None:
            cpu = r.cpu_seconds / r.files * 1000
            print(f"{r.name:<36} {r.files:>6} {r.seconds:>8.2f} {r.rate:>8.1f} {cpu:>12.2f}")
    print()
    print(f"{'ratio':<36} {'value':>6} {'target':>8} {'met':>8}")
    ratios = [("ingest / bare read", "ingest", "bare", INGEST_TARGET)]
    ratios.append(("ingest (before) / bare read", "ingest_before", "bare", INGEST_TARGET))
    for n in (1, PARALLEL):
        for tag, label in (("", ""), ("_before", " (before)")):
            listener = f"listener{tag}{n}"
            ratios.append(
                (f"listener{label} / Orthanc, x{n}", listener, f"orthanc{n}", ORTHANC_TARGET)
            )
            ratios.append(
                (f"listener{label} / bare SCP, x{n}", listener, f"scp{n}", CEILING_TARGET)
            )
    for name, top, bottom, target in ratios:
        if rows.get(top) is None or rows.get(bottom) is None:
            continue
        value = rows[top].rate / rows[bottom].rate
        met = "yes" if value >= target else "NO"
        print(f"{name:<36} {value:>6.2f} {'>= ' + str(target):>8} {met:>8}")


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
        "--skip-listener", action="store_true", help="the import rows only (a quick look)"
    )
    parser.add_argument(
        "--baseline-tree", type=Path, help="an earlier checkout, measured too ('before' rows)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each measurement N times and keep the fastest (for a busy machine)",
    )
    args = parser.parse_args(argv)
    if args.slices < PARALLEL or args.size < 8:
        parser.error(f"--slices must be at least {PARALLEL} and --size at least 8")
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

    loads = [_load()]
    db = args.database_url
    rows: dict[str, Result | None] = {"bare": fastest(lambda: bare_read(files))}
    rows["ingest"] = fastest(lambda: ingest_command(folder, files, db, ROOT))
    if args.baseline_tree:
        rows["ingest_before"] = fastest(
            lambda: ingest_command(folder, files, db, args.baseline_tree)
        )
    for n in () if args.skip_listener else (1, PARALLEL):
        rows[f"scp{n}"] = fastest(lambda n=n: bare_scp(files, n))
        rows[f"listener{n}"] = fastest(lambda n=n: listener(files, db, ROOT, n))
        if args.baseline_tree:
            rows[f"listener_before{n}"] = fastest(
                lambda n=n: listener(files, db, args.baseline_tree, n)
            )
        if not args.skip_orthanc:
            rows[f"orthanc{n}"] = fastest(lambda n=n: orthanc(files, n))
    loads.append(_load())
    database = "PostgreSQL" if db else "SQLite"
    if args.repeat > 1:
        database += f"; fastest of {args.repeat} runs each"
    report(rows, database, (loads[0], loads[1]))


if __name__ == "__main__":
    main()
