"""Every worklist filter and sort at 10,000 patients: server time and query count.

A database (PostgreSQL with ``--database-url``, else a SQLite file) is filled with the
cohort of benchmarks/dashboard.py (three studies, lesions, responses, labs and a risk
score per patient) unless ``--reuse`` finds it filled. Logged in as a clinician through
Django's test client (the whole request: middleware, view, queries, template, audit
row), each case below is requested three times to warm up and ``--repeat`` times timed:
the worklist page under every order, every flag, a tier, a search and a combination,
a page deep in the list, and the worklist API. Prints p50/p95/p99 (ms), the query count
of one request and the rows matched, and exits 1 when a p95 is over 150 ms or a case's
query count differs from the unfiltered page's.

    .venv/bin/python benchmarks/worklist.py --database-url postgres://postgres@127.0.0.1:5432/radtrack_bench_wl
    .venv/bin/python benchmarks/worklist.py --database-url ... --reuse --repeat 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET_P95_MS = 150.0

#: (name, path and query string); the API cases are compared among themselves.
CASES = (
    ("risk order (page 1)", "/"),
    ("risk order, page 100", "/?page=100"),
    ("order: patient", "/?order=patient"),
    ("order: last study", "/?order=last_study"),
    ("flag: new progression", "/?flag=new_progression"),
    ("flag: new lesion", "/?flag=new_lesion"),
    ("flag: rising marker", "/?flag=rising_marker"),
    ("flag: processing failed", "/?flag=processing_failed"),
    ("flag: awaiting review", "/?flag=awaiting_review"),
    ("flag: needs attention", "/?flag=needs_attention"),
    ("tier: high", "/?tier=high"),
    ("search: an MRN", "/?q=BENCH-004242"),
    ("rising marker + high, last study", "/?flag=rising_marker&tier=high&order=last_study"),
    ("API page 1", "/api/v1/worklist/"),
    ("API page 100", "/api/v1/worklist/?page=100"),
    ("API rising marker, 200 a page", "/api/v1/worklist/?flags=rising_marker&page_size=200"),
    ("API new progression, by patient", "/api/v1/worklist/?flags=new_progression&order=patient"),
)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _database(url: str, reuse: bool) -> None:
    """Create the PostgreSQL database (dropped first unless ``reuse`` finds it)."""
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


def _fill(n_patients: int, reuse: bool) -> None:
    from django.core.management import call_command
    from django.db import connection

    from benchmarks.dashboard import cohort_fill
    from patients.models import Patient

    call_command("migrate", verbosity=0, interactive=False)
    call_command("collectstatic", verbosity=0, interactive=False)  # the pages' manifest
    if reuse and Patient.objects.count() == n_patients:
        return
    started = time.perf_counter()
    cohort_fill(n_patients)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")  # as autovacuum would after a bulk load
    print(f"{n_patients} patients written in {time.perf_counter() - started:.0f} s", flush=True)


def _matched(url: str) -> int:
    """How many patients the page at ``url`` lists in all (read by the selector, untimed)."""
    from urllib.parse import parse_qs, urlsplit

    from analytics.dashboard.worklist import worklist_page

    query = parse_qs(urlsplit(url).query)
    return worklist_page(
        tier=query.get("tier", [None])[0],
        search=query.get("q", [""])[0],
        flags=query.get("flag", []),
        order=query.get("order", ["risk"])[0],
    ).total


def _time_cases(repeat: int) -> list[tuple[str, float, float, float, int, int]]:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    user, _ = get_user_model().objects.get_or_create(username="bench-worklist")
    user.groups.add(Group.objects.get(name="clinician"))
    client = Client()
    client.force_login(user)
    out = []
    for name, url in CASES:
        for _ in range(3):  # warm caches and the template loader
            assert client.get(url).status_code == 200, (name, url)
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (name, response.status_code)
        with CaptureQueriesContext(connection) as queries:
            response = client.get(url)
        matched = response.json()["count"] if url.startswith("/api/") else _matched(url)
        out.append(
            (
                name,
                statistics.median(times),
                _percentile(times, 0.95),
                _percentile(times, 0.99),
                len(queries),
                matched,
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="PostgreSQL URL of the database to (re)make")
    parser.add_argument("--patients", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--reuse", action="store_true", help="keep a database already filled")
    args = parser.parse_args(argv)
    if args.patients < 1 or args.repeat < 1:
        parser.error("--patients and --repeat must be positive")
    with tempfile.TemporaryDirectory(prefix="radtrack-bench-worklist-") as tmp:
        if args.database_url:
            _database(args.database_url, args.reuse)
            os.environ["DATABASE_URL"] = args.database_url
        else:
            os.environ["DATABASE_URL"] = f"sqlite:///{Path(tmp) / 'worklist.sqlite3'}"
        os.environ["RADTRACK_DATA_DIR"] = tmp
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "radtrack.settings")
        import django

        django.setup()
        _fill(args.patients, args.reuse)
        results = _time_cases(args.repeat)
    database = "PostgreSQL" if args.database_url else "SQLite"
    print(f"{args.patients} patients on {database}, {args.repeat} timed requests per case")
    print(f"  {'case':<34} {'p50':>8} {'p95':>8} {'p99':>8}  queries  matched")
    page_queries = {r[4] for r in results if not r[0].startswith("API")}
    api_queries = {r[4] for r in results if r[0].startswith("API")}
    for name, p50, p95, p99, n_queries, matched in results:
        print(f"  {name:<34} {p50:8.1f} {p95:8.1f} {p99:8.1f}  {n_queries:>7}  {matched}")
    worst = max(r[2] for r in results)
    constant = len(page_queries) == 1 and len(api_queries) == 1
    met = worst <= TARGET_P95_MS and constant
    print(
        f"target: every p95 <= {TARGET_P95_MS:.0f} ms (worst {worst:.1f} ms) and one query "
        f"count for the page ({sorted(page_queries)}) and one for the API "
        f"({sorted(api_queries)}): {'met' if met else 'NOT met'}"
    )
    print(json.dumps({"worst_p95_ms": round(worst, 1), "constant_queries": constant, "met": met}))
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
