"""Where one C-STORE's time goes: the listener's steps against a bare pynetdicom SCP's.

`ingest.py` measures the listener's rate against a bare Storage SCP that only writes and
fsyncs each instance (its ceiling). This one explains the ratio. Over one association
(dcmtk's ``storescu`` waits for each response before it sends the next instance, so
everything is in series), it times:

- for the bare SCP, its handler (encode, write, fsync) and the time between two handlers
  (the sender, the network, pynetdicom's receive and response);
- for the listener, run in this process over a fresh data folder and database, each step
  of its handler: the Part 10 bytes made from the received data set, the check (quick
  read and the two SHA-256), the look-up of the SOP Instance UID in the index, the copy
  staged on the other thread (write and fsync), the naming of that copy (folders made,
  rename, folders fsynced), the journal line, the group commit; and the time between
  two handlers.

With ``--folders-made`` the store's 65,536 ``objects/ab/cd`` folders exist before the
listener starts, as in a store past its first tens of thousands of objects, so naming
a file never makes a folder.

    .venv/bin/python benchmarks/listener_steps.py \\
        --database-url postgres://postgres@127.0.0.1:5432/radtrack_bench [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from ingest import django_env, fresh_database, run_checked, series_cached  # noqa: E402

#: (label, module, attribute): the listener's steps, timed where they are called from.
STEPS = (
    ("C-STORE handler", "imaging.ingest.listener", "StorageListener._on_store"),
    ("Part 10 bytes", "imaging.ingest.listener", "StorageListener._received_file"),
    ("check (quick read, 2 x SHA-256)", "imaging.ingest.readers", "data_inspect"),
    ("look-up in the index", "imaging.ingest.service", "stored_dataset_hashes"),
    ("staged copy (other thread)", "imaging.ingest.listener", "object_stage"),
    ("wait for the copy, and name it", "imaging.ingest.writes", "object_store"),
    ("naming (folders, rename, fsync)", "imaging.ingest.writes", "object_publish"),
    ("journal line", "imaging.ingest.service", "journal_append"),
    ("group commit (per commit)", "imaging.ingest.service", "IngestRun.flush"),
)

_BARE = "bare pynetdicom SCP handler (encode, write, fsync)"


def _timed(owner, attribute: str, label: str, marks: list) -> None:
    """Replace ``owner.attribute`` by a wrapper that notes (label, start, end)."""
    raw = owner.__dict__[attribute] if isinstance(owner, type) else getattr(owner, attribute)
    static = isinstance(raw, staticmethod)
    function = raw.__func__ if static else raw

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            marks.append((label, started, time.perf_counter()))

    setattr(owner, attribute, staticmethod(timed) if static else timed)


def _summary(marks: list, handler: str, files: int, seconds: float) -> dict:
    steps: dict[str, list[float]] = {}
    for label, started, ended in marks:
        steps.setdefault(label, []).append((ended - started) * 1000)
    spans = sorted((s, e) for label, s, e in marks if label == handler)
    gaps = [(spans[n + 1][0] - spans[n][1]) * 1000 for n in range(len(spans) - 1)]
    rows = {
        label: {"n": len(ms), "median": statistics.median(ms), "mean": statistics.mean(ms),
                "per_file": sum(ms) / files}
        for label, ms in steps.items()
    }  # fmt: skip
    rows["between two handlers"] = {
        "n": len(gaps), "median": statistics.median(gaps), "mean": statistics.mean(gaps),
        "per_file": sum(gaps) / files,
    }  # fmt: skip
    return {"seconds": seconds, "files": files, "steps": rows}


def _send(files: list[Path], port: int, called: str) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        ["storescu", "-aet", "BENCHSCU", "-aec", called, "127.0.0.1", str(port)]
        + [str(p) for p in files],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"storescu to {called} failed:\n{done.stderr[-2000:]}")
    return seconds


def bare_scp(files: list[Path]) -> dict:
    """The bare SCP of `ingest.py`, its handler timed."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import CTImageStorage

    marks: list = []
    with tempfile.TemporaryDirectory(prefix="radtrack-bench-steps-scp-") as folder:

        def store(event):
            started = time.perf_counter()
            path = os.path.join(folder, event.request.AffectedSOPInstanceUID + ".dcm")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, event.encoded_dataset())
                os.fsync(fd)
            finally:
                os.close(fd)
            marks.append((_BARE, started, time.perf_counter()))
            return 0x0000

        ae = AE("BARESCP")
        ae.maximum_pdu_size = 1 << 20
        ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, store)]
        )
        try:
            seconds = _send(files, server.server_address[1], "BARESCP")
        finally:
            server.shutdown()
        stored = len(list(Path(folder).glob("*.dcm")))
    if stored != len(files):
        raise SystemExit(f"the bare SCP stored {stored} of {len(files)}")
    return _summary(marks, _BARE, len(files), seconds)


def _child(folder: Path) -> None:
    """In a process whose environment names a fresh data folder and database."""
    import importlib

    import django

    django.setup()
    from imaging.ingest import listener as listener_module
    from imaging.models import Instance

    marks: list = []
    for label, module_name, attribute in STEPS:
        owner = importlib.import_module(module_name)
        *classes, name = attribute.split(".")
        for class_name in classes:
            owner = getattr(owner, class_name)
        _timed(owner, name, label, marks)
    files = sorted(folder.glob("*.dcm"))
    listener, (_, port) = listener_module.listener_start(port=0, process=False)
    try:
        seconds = _send(files, port, listener_module.DEFAULT_AE_TITLE)
    finally:
        listener.stop()
    stored = Instance.objects.count()
    if stored != len(files):
        raise SystemExit(f"the listener stored {stored} of {len(files)}")
    summary = _summary(marks, STEPS[0][0], len(files), seconds)
    print(json.dumps(summary))


def listener(files: list[Path], database_url: str | None, folders_made: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="radtrack-bench-steps-") as tmp:
        work = Path(tmp)
        with fresh_database(database_url, "steps", work) as url:
            env = django_env(work / "data", url)
            run_checked([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], env)
            if folders_made:
                for a in range(256):
                    for b in range(256):
                        (work / "data" / "objects" / f"{a:02x}" / f"{b:02x}").mkdir(parents=True)
                os.sync()
            out = run_checked(
                [sys.executable, __file__, "--child", str(files[0].parent)], env, ROOT
            )
    return json.loads(out.strip().splitlines()[-1])


def _print(name: str, result: dict) -> None:
    files, seconds = result["files"], result["seconds"]
    print(f"\n{name}: {files} files in {seconds:.2f} s, {seconds / files * 1000:.2f} ms per file")
    print(f"{'step':<40} {'n':>5} {'median ms':>10} {'mean ms':>8} {'ms per file':>12}")
    for label, row in result["steps"].items():
        print(
            f"{label:<40} {row['n']:>5} {row['median']:>10.3f} {row['mean']:>8.3f}"
            f" {row['per_file']:>12.3f}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512, help="rows and columns")
    parser.add_argument("--database-url", default=None, help="a PostgreSQL URL (default: SQLite)")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "var" / "benchmarks")
    parser.add_argument("--folders-made", action="store_true")
    parser.add_argument("--repeat", type=int, default=1, help="keep the fastest of N runs")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child)
        return
    files = series_cached(args.cache_dir, args.slices, args.size)
    for path in files:  # the same warm page cache for both
        path.read_bytes()
    load = os.getloadavg()
    bare = min((bare_scp(files) for _ in range(args.repeat)), key=lambda r: r["seconds"])
    ours = min(
        (listener(files, args.database_url, args.folders_made) for _ in range(args.repeat)),
        key=lambda r: r["seconds"],
    )
    print(
        f"{'PostgreSQL' if args.database_url else 'SQLite'}; one association; fastest of "
        f"{args.repeat}; {os.cpu_count()} CPUs; load average before {load[0]:.2f}, after "
        f"{os.getloadavg()[0]:.2f}; folders made beforehand: {args.folders_made}"
    )
    _print("bare pynetdicom SCP", bare)
    _print("dicom_listener", ours)
    print(f"\nlistener / bare SCP: {bare['seconds'] / ours['seconds']:.2f} (target >= 0.8)")


if __name__ == "__main__":
    main()
