"""The dashboard under load: signed-in users on the worklist, patient pages and the API,
against gunicorn on PostgreSQL, with a bounded load generator.

A PostgreSQL database is filled with ``--patients`` synthetic patients (the cohort of
benchmarks/dashboard.py: three studies, lesions, responses, labs and a risk score each),
``--users`` clinician accounts are made, the static files collected, and gunicorn
started with ``--web-workers`` sync workers exactly as the Procfile runs it. Then each
user, in a thread of its own, signs in through the login form and makes
``--requests`` requests (bounded: the run also stops after ``--max-seconds``), each one
of the worklist (a random page of 50), a random patient's page, the worklist API or a
patient through the API, chosen at random with fixed odds, waiting ``--think`` seconds
(uniform between the two bounds, as locust's ``between``) after each answer; ``--think
0 0`` sends the next request at once (the server's saturation). Prints per kind and overall
the count, p50/p95/p99 in ms and errors (any status but 200, or no answer), and exits 1
when p95 > 300 ms or any request failed.

    .venv/bin/python benchmarks/load.py --database-url postgres://postgres@127.0.0.1:5432/radtrack_load
    .venv/bin/python benchmarks/load.py --database-url ... --reuse     # the database is filled already

Traffic goes to 127.0.0.1 only; the load generator shares the machine with the server,
so the figures include its cost.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET_P95_MS = 300.0
PASSWORD = "load-Bench-2026-passphrase"
#: What a user asks for, with its odds.
KINDS = (("worklist", 3), ("patient page", 4), ("API worklist", 1), ("API patient", 2))


def _prepare(n_patients: int, n_users: int, reuse: bool) -> None:
    """In a child whose environment names the database: migrate, fill, make the users."""
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.core.management import call_command
    from django.db import connection

    from benchmarks.dashboard import cohort_fill
    from patients.models import Patient

    call_command("migrate", verbosity=0, interactive=False)
    if not (reuse and Patient.objects.count() == n_patients):
        started = time.perf_counter()
        cohort_fill(n_patients)
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")  # as autovacuum would after a bulk load
        print(f"{n_patients} patients written in {time.perf_counter() - started:.0f} s", flush=True)
    clinicians = Group.objects.get(name="clinician")
    for i in range(n_users):
        user, _ = get_user_model().objects.get_or_create(username=f"load-user-{i:02d}")
        user.set_password(PASSWORD)
        user.save()
        user.groups.add(clinicians)
    call_command("collectstatic", verbosity=0, interactive=False)


def _database(url: str, reuse: bool) -> None:
    import psycopg

    base, _, name = url.rpartition("/")
    with psycopg.connect(
        f"{base.replace('postgres://', 'postgresql://', 1)}/postgres", autocommit=True
    ) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists and reuse:
            return
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')


@dataclass
class Tally:
    times_ms: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, ms: float, error: str = "") -> None:
        with self.lock:
            self.times_ms.setdefault(kind, []).append(ms)
            if error:
                self.errors.setdefault(kind, []).append(error)


def _user(base: str, index: int, patient_pks: list[int], n_requests: int, deadline: float,
          tally: Tally, seed: int, think: tuple[float, float], skip: list[str],
          signed_in: threading.Barrier) -> None:  # fmt: skip
    """Sign in, wait until every user has (sign-in is not timed), then make the requests."""
    import requests

    rng = random.Random(seed + index)
    session = requests.Session()
    login = session.get(f"{base}/accounts/login/", timeout=30)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text)
    answer = session.post(
        f"{base}/accounts/login/",
        data={"username": f"load-user-{index:02d}", "password": PASSWORD,
              "csrfmiddlewaretoken": token.group(1) if token else ""},
        headers={"Referer": f"{base}/accounts/login/"}, timeout=30,
    )  # fmt: skip
    signed_in.wait()
    if answer.status_code != 200 or "/accounts/login/" in answer.url:
        tally.add("sign-in", 0.0, f"sign-in failed: HTTP {answer.status_code}")
        return
    kinds = [k for k, _ in KINDS if k not in skip]
    weights = [w for k, w in KINDS if k not in skip]
    pages = max(1, len(patient_pks) // 50)
    for _ in range(n_requests):
        if time.monotonic() > deadline:
            return
        kind = rng.choices(kinds, weights)[0]
        pk = rng.choice(patient_pks)
        path = {
            "worklist": f"/?page={rng.randint(1, pages)}",
            "patient page": f"/patients/{pk}/",
            "API worklist": f"/api/v1/worklist/?page={rng.randint(1, pages)}",
            "API patient": f"/api/v1/patients/{pk}/",
        }[kind]
        started = time.perf_counter()
        try:
            response = session.get(base + path, timeout=30)
            error = "" if response.status_code == 200 else f"HTTP {response.status_code} {path}"
        except requests.RequestException as exc:
            error = f"{type(exc).__name__} {path}"
        tally.add(kind, (time.perf_counter() - started) * 1000, error)
        time.sleep(rng.uniform(*think))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _patient_pks(env: dict[str, str]) -> list[int]:
    import psycopg

    with psycopg.connect(env["DATABASE_URL"].replace("postgres://", "postgresql://", 1)) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM patients_patient")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url", required=True, help="PostgreSQL URL of the database to (re)make"
    )
    parser.add_argument("--patients", type=int, default=10000)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--requests", type=int, default=30, help="per user (default 30)")
    parser.add_argument("--think", type=float, nargs=2, default=[1.0, 3.0], metavar=("MIN", "MAX"),
                        help="seconds a user waits after each answer (default 1 3)")  # fmt: skip
    parser.add_argument("--max-seconds", type=float, default=600)
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--reuse", action="store_true", help="keep a database already filled")
    parser.add_argument("--skip", nargs="*", default=[], choices=[k for k, _ in KINDS],
                        help="kinds of request left out")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.patients, args.users, args.requests, args.web_workers) < 1:
        parser.error("--patients, --users, --requests and --web-workers must be positive")
    if args.prepare:
        _prepare(args.patients, args.users, args.reuse)
        return 0

    _database(args.database_url, args.reuse)
    with tempfile.TemporaryDirectory(prefix="radtrack-bench-load-") as tmp:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RADTRACK_", "DJANGO_"))},
            "DATABASE_URL": args.database_url,
            "RADTRACK_DATA_DIR": tmp,
            "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE", "radtrack.settings"),
            "DJANGO_SECRET_KEY": "load-benchmark-" + "x" * 50,
            # Backends kept for the whole run, so their CPU time can be read at the end.
            "DATABASE_CONN_MAX_AGE": "600",
        }
        subprocess.run([sys.executable, __file__, "--prepare", "--database-url", args.database_url,
                        "--patients", str(args.patients), "--users", str(args.users)]
                       + (["--reuse"] if args.reuse else []), env=env, check=True)  # fmt: skip
        port = _free_port()
        web = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "radtrack.wsgi", "--bind", f"127.0.0.1:{port}",
             "--workers", str(args.web_workers), "--timeout", "120"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            return _load(f"http://127.0.0.1:{port}", env, args, web.pid)
        finally:
            web.terminate()
            web.wait(timeout=30)


def _server_pids(web_pid: int, env: dict[str, str]) -> list[int]:
    """gunicorn's master and workers, and the PostgreSQL backends serving this database."""
    import psycopg

    children = Path(f"/proc/{web_pid}/task/{web_pid}/children")
    pids = [web_pid, *map(int, children.read_text().split())] if children.exists() else [web_pid]
    name = env["DATABASE_URL"].rpartition("/")[2]
    with psycopg.connect(env["DATABASE_URL"].replace("postgres://", "postgresql://", 1)) as conn:
        pids += [row[0] for row in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (name,))]  # fmt: skip
    return pids


def _cpu_seconds(pids: list[int]) -> float:
    """User and system CPU seconds the processes have used (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def _load(base: str, env: dict[str, str], args: argparse.Namespace, web_pid: int) -> int:
    import requests

    for _ in range(120):
        try:
            if requests.get(f"{base}/healthz/", timeout=5).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(1)
    pks = _patient_pks(env)
    load_before = os.getloadavg()[0]
    tally = Tally()
    mark: dict[str, float] = {}

    def _go() -> None:  # every user is signed in: the timed part starts
        mark["cpu"] = _cpu_seconds(_server_pids(web_pid, env))
        mark["started"] = time.perf_counter()

    signed_in = threading.Barrier(args.users, action=_go)
    deadline = time.monotonic() + args.max_seconds
    threads = [
        threading.Thread(
            target=_user,
            args=(
                base,
                i,
                pks,
                args.requests,
                deadline,
                tally,
                args.seed,
                tuple(args.think),
                args.skip,
                signed_in,
            ),
        )  # fmt: skip
        for i in range(args.users)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - mark["started"]
    cpu_before = mark["cpu"]
    everything = [ms for values in tally.times_ms.values() for ms in values]
    n_errors = sum(len(v) for v in tally.errors.values())
    print(f"{args.users} users (think {args.think[0]:g}-{args.think[1]:g} s), {args.patients} "
          f"patients, gunicorn {args.web_workers} workers, {len(everything)} requests in "
          f"{wall:.1f} s ({len(everything) / wall:.1f} per s); load average before "
          f"{load_before:.1f}, after {os.getloadavg()[0]:.1f}")  # fmt: skip
    for kind, values in [*sorted(tally.times_ms.items()), ("all", everything)]:
        if not values:
            continue
        errors = n_errors if kind == "all" else len(tally.errors.get(kind, []))
        print(f"  {kind:<13} n {len(values):>5}  p50 {_percentile(values, 0.5):7.1f} ms  "
              f"p95 {_percentile(values, 0.95):7.1f} ms  p99 {_percentile(values, 0.99):7.1f} ms  "
              f"errors {errors}")  # fmt: skip
    for kind, messages in tally.errors.items():
        print(f"  {kind} errors, first: {messages[:3]}")
    server_cpu = _cpu_seconds(_server_pids(web_pid, env)) - cpu_before
    print(f"  server CPU (gunicorn workers and their PostgreSQL backends): {server_cpu:.1f} s, "
          f"{1000 * server_cpu / max(1, len(everything)):.0f} ms per request")  # fmt: skip
    p95 = _percentile(everything, 0.95) if everything else float("inf")
    met = p95 <= TARGET_P95_MS and n_errors == 0
    print(json.dumps({"p95_ms": round(p95, 1), "errors": n_errors, "met": met}))
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
