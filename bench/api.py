"""The HTTP API's benchmark:  python3 -m bench.api [--tickets 100000] [--requests 300]

On a store of N tickets (made straight in SQLite, 1 person for 100 tickets, one in
seven Closed), against a real ``gateway serve`` and a read token:

 1. ticket search (GET /api/v1/tickets?q=WORD, a title word matching ~1 % of the
    tickets, 50 a page): p50/p99 of the request's time over real HTTP, and the same
    search straight on the database (store.tickets.find_tickets) in the same run, the
    ceiling the HTTP face adds to;
 2. tickets listed per second: every open ticket walked in pages of 500 by cursor;
    against the same walk straight on the database.

Prints the figures and writes them into BENCHMARKS.md between <!-- api --> markers.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import env, free_port, pct, stop, wait_port  # noqa: E402

WORDS = ["printer", "vpn", "laptop", "screen", "badge", "mailbox", "password", "scanner", "phone", "wifi",
         "licence", "backup", "server", "printer-toner", "keyboard", "mouse", "docking", "teams", "sharepoint",
         "excel"]


def fill(url: str, n: int) -> None:
    """N tickets and N/100 people, in one transaction a batch."""
    from sqlalchemy import insert

    from store.db import make_engine
    from store.models import Person, Ticket
    from store.schema import ensure_current

    engine = make_engine(url)
    ensure_current(engine)
    rng = random.Random(22)
    start = datetime(2025, 1, 1, tzinfo=timezone.utc)
    people = max(n // 100, 1)
    with engine.begin() as conn:
        conn.execute(insert(Person.__table__), [dict(email=f"user{i}@example.be", name=f"User {i}", language="en",
                                                     company="", company_access=False, timezone="Europe/Brussels",
                                                     hard_bounces=0, undeliverable=False, created_at=start)
                                                for i in range(people)])
    batch = []
    for i in range(1, n + 1):
        at = start + timedelta(minutes=i)
        # "rare" in one title a hundred: the search's needle.
        word = "rare" if i % 100 == 0 else rng.choice(WORDS)
        batch.append(dict(number=f"INC-{i:06d}", process="incident", status="Closed" if i % 7 == 0 else "New",
                          title=f"The {word} does not work ({i})", description="", reporting_person_id=i % people + 1,
                          affected_person_id=i % people + 1, created_at=at, updated_at=at))
        if len(batch) == 5000 or i == n:
            with engine.begin() as conn:
                conn.execute(insert(Ticket.__table__), batch)
            batch = []
    engine.dispose()


def get(port: int, path: str, token: str) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1{path}",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=120) as answer:
        return json.loads(answer.read())


def walk_http(port: int, token: str) -> int:
    seen, cursor = 0, None
    while True:
        page = get(port, "/tickets?limit=500" + (f"&cursor={cursor}" if cursor else ""), token)
        seen += len(page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            return seen


def walk_db(engine) -> int:
    from store.db import reader
    from store.tickets import TicketQuery, find_tickets

    seen, after = 0, None
    while True:
        with reader(engine) as session:
            rows = find_tickets(session, TicketQuery(after_id=after, limit=500))
        seen += len(rows)
        if len(rows) < 500:
            return seen
        after = rows[-1].id


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m bench.api", description=__doc__.split("\n")[0])
    ap.add_argument("--tickets", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="gw-bench-api-"))
    url = f"sqlite:///{folder / 'var' / 'gateway.db'}"
    (folder / "var").mkdir()
    smtp_port, http_port = free_port(), free_port()
    (folder / "config.toml").write_text(f'[database]\nurl = "{url}"\n[gateway]\naddresses = ["helpdesk@desk.example.com"]'
                                        f'\n[smtp]\nport = {smtp_port}\n[http]\nport = {http_port}\n')
    started = time.monotonic()
    fill(url, args.tickets)
    filled = time.monotonic() - started
    e = env()
    token = subprocess.run([sys.executable, "-m", "gateway", "--config", str(folder / "config.toml"), "tokens",
                            "create", "bench", "--role", "read"], cwd=folder, env=e, capture_output=True,
                           check=True).stdout.decode().split()[0]
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(folder / "config.toml"), "serve"],
                            cwd=folder, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_port(http_port, proc, timeout=180)
        deadline = time.monotonic() + 180
        while True:
            try:
                get(http_port, "/tickets?limit=1", token)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        from store.db import make_engine, reader
        from store.tickets import TicketQuery, find_tickets

        engine = make_engine(url)
        http_times, db_times = [], []
        for _ in range(args.requests):
            t = time.perf_counter()
            found = get(http_port, "/tickets?q=rare&limit=50", token)
            http_times.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            with reader(engine) as session:
                direct = find_tickets(session, TicketQuery(text="rare", limit=51))
            db_times.append((time.perf_counter() - t) * 1000)
        assert len(found["items"]) == min(50, len(direct)) > 0
        t = time.perf_counter()
        listed = walk_http(http_port, token)
        http_walk = time.perf_counter() - t
        t = time.perf_counter()
        direct_listed = walk_db(engine)
        db_walk = time.perf_counter() - t
        assert listed == direct_listed
        engine.dispose()
    finally:
        stop(proc)
    res = {"tickets": args.tickets, "open": listed, "fill_s": round(filled, 1),
           "search_http_ms": {"p50": pct(http_times, 50), "p99": pct(http_times, 99)},
           "search_db_ms": {"p50": pct(db_times, 50), "p99": pct(db_times, 99)},
           "listed_per_s_http": listed / http_walk, "listed_per_s_db": direct_listed / db_walk,
           "load": os.getloadavg()[0], "when": datetime.now(timezone.utc).isoformat(timespec="minutes")}
    table = render(res)
    print(table)
    if not args.no_doc:
        update_doc(table)
    return 0


def render(r: dict) -> str:
    h, d = r["search_http_ms"], r["search_db_ms"]
    return "\n".join([
        f"Store of {r['tickets']:,} tickets on SQLite ({r['open']:,} open), read token, real HTTP to "
        f"`gateway serve`; {r['when']}, load average {r['load']:.1f} at the end.",
        "",
        "| figure | over HTTP (API) | straight on the database (ceiling) | API / ceiling |",
        "| --- | --- | --- | --- |",
        f"| ticket search `q=` (p50) | {h['p50']:.1f} ms | {d['p50']:.1f} ms | {h['p50'] / d['p50']:.1f}× |",
        f"| ticket search `q=` (p99) | {h['p99']:.1f} ms | {d['p99']:.1f} ms | {h['p99'] / d['p99']:.1f}× |",
        f"| tickets listed per second (pages of 500 by cursor) | {r['listed_per_s_http']:,.0f} | "
        f"{r['listed_per_s_db']:,.0f} | {r['listed_per_s_http'] / r['listed_per_s_db']:.2f} |",
    ])


def update_doc(table: str) -> None:
    doc = ROOT / "BENCHMARKS.md"
    text = doc.read_text()
    start, end = "<!-- api -->", "<!-- /api -->"
    if start not in text:
        text += f"\n## The HTTP API (python3 -m bench.api)\n\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    _old, tail = rest.split(end, 1)
    doc.write_text(f"{head}{start}\n{table}\n{end}{tail}")


if __name__ == "__main__":
    sys.exit(main())
