"""Throughput of processing with 1 and 2 CPU workers (Celery on Redis) on the same cohort.

A cohort is generated once (``--patients`` x ``--timepoints``, small preset). For each
worker count K in ``--workers`` a fresh site (data folder, database: SQLite, or
PostgreSQL with ``--database-url``) ingests it with the broker set, so every study is
queued on Redis (under a key prefix of its own, removed afterwards), then K worker
processes (``--concurrency 1`` each, reading every queue, as the Procfile's worker) start
together. The clock runs from their start until every series is processed. Torch and
ITK get ``--threads`` threads per worker (default: the machine's cores shared out).

Prints per K: wall seconds, studies per minute, the speed-up over K=1, and from the run
records the mean seconds per study of the whole run and of segmentation (the network,
the step a GPU takes over); exits 1 when a study failed.

    .venv/bin/python benchmarks/workers.py --patients 4 --timepoints 2
    .venv/bin/python benchmarks/workers.py --workers 1 2 --database-url postgres://postgres@127.0.0.1:5432/radtrack_workers
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _env(data: Path, broker: str, prefix: str, database_url: str, threads: int) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RADTRACK_", "CELERY_", "DJANGO_"))
    }
    env.pop("DATABASE_URL", None)
    env.update(
        RADTRACK_DATA_DIR=str(data),
        CELERY_BROKER_URL=broker,
        RADTRACK_BROKER_KEY_PREFIX=prefix,
        DJANGO_SETTINGS_MODULE=os.environ.get("DJANGO_SETTINGS_MODULE", "radtrack.settings"),
        DJANGO_SECRET_KEY="workers-benchmark-" + "x" * 50,
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(threads),
    )
    if database_url:
        env["DATABASE_URL"] = database_url
    return env


def _manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"manage.py {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


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


def _fresh_database(url: str, k: int) -> str:
    if not url:
        return ""
    import psycopg

    base, _, name = url.rpartition("/")
    name = f"{name}_{k}"
    with psycopg.connect(
        f"{base.replace('postgres://', 'postgresql://', 1)}/postgres", autocommit=True
    ) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{base}/{name}"


def one_count(k: int, *, cohort: Path, workdir: Path, args: argparse.Namespace) -> dict:
    """Ingest the cohort into a fresh site, start ``k`` workers, time them to the end."""
    data = workdir / f"site-{k}"
    data.mkdir()
    prefix = f"radtrack-bench-{uuid.uuid4().hex[:10]}:"
    threads = args.threads or max(1, (os.cpu_count() or 2) // k)
    env = _env(data, args.redis_url, prefix, _fresh_database(args.database_url, k), threads)
    _manage(env, "migrate", "--no-input", "-v0")
    _manage(env, "ingest", str(cohort / "dicom"))  # queues every study on Redis
    n_series = _query(env, "SELECT COUNT(*) FROM imaging_series")[0][0]
    workers = []
    started = time.perf_counter()
    for i in range(k):
        log = (data / f"worker-{i}.log").open("wb")
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "radtrack", "worker", "--concurrency", "1",
             "--without-gossip", "--without-mingle", "--hostname", f"bench{i}@%h"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        ))  # fmt: skip
    try:
        while True:
            states = [r[0] for r in _query(env, "SELECT state FROM imaging_series")]
            if all(s in {"processed", "failed", "not_analysed"} for s in states):
                break
            if time.perf_counter() - started > args.max_seconds:
                raise SystemExit(f"K={k}: not done after {args.max_seconds:.0f} s: {states}")
            time.sleep(1)
        wall = time.perf_counter() - started
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=60)
        _redis_clean(args.redis_url, prefix)
    runs = _query(env, "SELECT status, steps FROM imaging_processingrun")
    steps = [json.loads(s) if isinstance(s, str) else s for _, s in runs]
    per_run = [sum(x.get("seconds") or 0 for x in st if not x.get("group")) for st in steps]
    segment = [sum(x.get("seconds") or 0 for x in st if x.get("name") == "segment") for st in steps]
    return {
        "workers": k,
        "threads": threads,
        "series": n_series,
        "failed": sum(1 for status, _ in runs if status != "succeeded"),
        "wall_s": wall,
        "per_study_s": statistics.mean(per_run) if per_run else 0.0,
        "segment_s": statistics.mean(segment) if segment else 0.0,
    }


def _redis_clean(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=4)
    parser.add_argument("--timepoints", type=int, default=2)
    parser.add_argument("--seed", type=int, default=4245)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=0, help="per worker (default: cores / K)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--database-url", default="", help="PostgreSQL URL (one database per K)")
    parser.add_argument("--max-seconds", type=float, default=3600)
    args = parser.parse_args(argv)
    if min(args.patients, args.timepoints, *args.workers) < 1:
        parser.error("--patients, --timepoints and --workers must be positive")
    from imaging.core.synthetic.cohort import cohort_generate

    workdir = Path(tempfile.mkdtemp(prefix="radtrack-bench-workers-"))
    try:
        cohort_generate(workdir / "cohort", n_patients=args.patients, n_timepoints=args.timepoints,
                        seed=args.seed, size="small")  # fmt: skip
        results = [
            one_count(k, cohort=workdir / "cohort", workdir=workdir, args=args)
            for k in args.workers
        ]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    base = results[0]
    for r in results:
        rate = 60 * r["series"] / r["wall_s"]
        speedup = base["wall_s"] / r["wall_s"]
        print(f"{r['workers']} worker(s) x {r['threads']} thread(s): {r['series']} studies in "
              f"{r['wall_s']:.1f} s = {rate:.2f} studies/min, speed-up {speedup:.2f}; per study "
              f"{r['per_study_s']:.1f} s (segmentation {r['segment_s']:.1f} s); failed {r['failed']}")  # fmt: skip
    return 1 if any(r["failed"] for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
