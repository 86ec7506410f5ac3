"""The gateway benchmark, in one run:  python3 -m bench.run [--quick] [--no-postgres]

Measures (each figure the median of at least three runs, with min-max):
 1. end to end: real SMTP clients over loopback (1, 8, 32 connections) send the set to a
    real ``gateway serve``; done when every inbound mail is processed (ticket committed,
    confirmation in the outbox, same transaction): mails/s, p50/p99 end of DATA -> 250,
    p50/p99 250 -> ticket committed, peak RSS of the service (all its processes);
 2. the ceiling with the same clients: a bare aiosmtpd server that writes each message to
    a file with fsync and answers 250 (bench/ceiling.py); end to end / ceiling;
 3. ``gateway ingest`` of the set from files: mails/s;
 4. threading: time to find the ticket of a reply in a store of 10 k and 1 M messages;
 5. notifications rendered and built as MIME per second, per language;
 6. memory: one mail with a 25 MB attachment through SMTP and through ingest;
 7. items 1 and 3 on PostgreSQL too (own schema, dropped afterwards).
Prints a table, writes the raw figures to bench/results/<time>.json and the table into
BENCHMARKS.md.  Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # python3 bench/run.py
    sys.path.insert(0, str(ROOT))

from bench import peer_helpdesk  # noqa: E402
from bench.mailset import HELPDESK, Mail, big_mail, generate  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PG_URL = os.environ.get("GATEWAY_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


# Helpers ------------------------------------------------------------------------------
def env() -> dict:
    e = dict(os.environ)
    e.pop("GATEWAY_CONFIG", None)
    # Compiled byte code kept (outside the repository), as an installed gateway has it:
    # without it every process compiles the gateway's modules again (~0.3 s of CPU).
    e.pop("PYTHONDONTWRITEBYTECODE", None)
    e["PYTHONPYCACHEPREFIX"] = str(peer_helpdesk.cache_dir() / "pycache")
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing on port {port}")


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    k = min(len(v) - 1, max(0, round(p / 100 * (len(v) - 1))))
    return v[k]


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def tree(pid: int) -> list[int]:
    """pid and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def role(pid: int, door: int) -> str:
    """door, worker, deliverer or other (the names gateway serve gives its processes)."""
    if pid == door:
        return "door"
    try:
        comm = open(f"/proc/{pid}/comm").read().strip()
    except OSError:
        return "other"
    return "worker" if comm.startswith("gw-worker") else "deliverer" if comm == "gw-deliverer" else "other"


def status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler:
    """Samples the summed RSS of a process tree every 20 ms; keeps the peak."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self.pids = tree(pid)
        self._t = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        return sum(status_kb(p, "VmRSS") for p in self.pids) * 1024

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            if n % 25 == 0:
                self.pids = tree(self.pid)
            n += 1
            self.peak = max(self.peak, self.now())
            time.sleep(0.02)

    def start(self) -> "RssSampler":
        self.peak = self.now()
        self._t.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return self.peak


def wire(raw: bytes) -> bytes:
    """CRLF line ends and dot-stuffing, as the client sends the DATA body."""
    raw = re.sub(rb"(?<!\r)\n", b"\r\n", raw)
    if not raw.endswith(b"\r\n"):
        raw += b"\r\n"
    raw = re.sub(rb"(?m)^\.", b"..", raw)
    return raw


# The SMTP clients -----------------------------------------------------------------------
async def _reply(reader: asyncio.StreamReader) -> tuple[int, str]:
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed")
        lines.append(line.decode("latin-1").rstrip())
        if line[3:4] != b"-":
            return int(line[:3]), "\n".join(lines)


async def _client(port: int, queue: list, mails: list[Mail], bodies: list[bytes], out: dict) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    await _reply(reader)
    writer.write(b"EHLO bench.example\r\n")
    await _reply(reader)
    while queue:
        i = queue.pop()
        mail = mails[i]
        writer.write(f"MAIL FROM:<{mail.sender}>\r\nRCPT TO:<{HELPDESK}>\r\nDATA\r\n".encode())
        for _ in range(3):
            await _reply(reader)
        writer.write(bodies[i])
        await writer.drain()
        writer.write(b".\r\n")
        t0 = time.perf_counter()
        code, text = await _reply(reader)
        t1 = time.perf_counter()
        out["latency"].append(t1 - t0)
        out["size"].append(len(mail.raw))
        out["accepted_at"][mail.message_id] = time.time()
        if code != 250:
            out["failed"].append((i, text))
    writer.write(b"QUIT\r\n")
    try:
        await _reply(reader)
    except ConnectionError:
        pass
    writer.close()


def send(port: int, mails: list[Mail], bodies: list[bytes], conns: int) -> dict:
    out = {"latency": [], "size": [], "accepted_at": {}, "failed": []}
    queue = list(range(len(mails)))[::-1]  # pop() takes them in order

    async def main():
        await asyncio.gather(*(_client(port, queue, mails, bodies, out) for _ in range(conns)))

    start_wall, t0 = time.time(), time.perf_counter()
    asyncio.run(main())
    out["elapsed"] = time.perf_counter() - t0
    out["start_wall"] = start_wall
    return out


# The gateway under test -----------------------------------------------------------------
def make_pg_schema() -> tuple[str, str]:
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"create schema {schema}")
    sep = "&" if "?" in PG_URL else "?"
    return schema, f"{PG_URL}{sep}options=-csearch_path%3D{schema}"


def drop_pg_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"drop schema {schema} cascade")


class Site:
    """A temporary folder with a config for one database (sqlite or postgres)."""

    def __init__(self, db: str, smtp_extra: str = "", url: str | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="gwbench-"))
        self.schema = None
        if url is not None:  # another site's database (several instances): not ours to drop
            self.url = url
        elif db == "postgres":
            self.schema, self.url = make_pg_schema()
        else:
            self.url = f"sqlite:///{self.dir / 'var' / 'gateway.db'}"
        self.port = free_port()
        self.config = self.dir / "config.toml"
        self.config.write_text(
            f'[gateway]\ndata_dir = "var"\n[database]\nurl = "{self.url}"\n[smtp]\nport = {self.port}\n{smtp_extra}')

    def close(self) -> None:
        import shutil

        if self.schema:
            drop_pg_schema(self.schema)
        shutil.rmtree(self.dir, ignore_errors=True)

    def engine(self):
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url

        url = make_url(self.url)
        if url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg")
        return create_engine(url)

    def progress(self, engine) -> tuple[int, int]:
        from sqlalchemy import text

        with engine.connect() as conn:
            total = conn.execute(text("select count(*) from inboundmessage")).scalar()
            waiting = conn.execute(text("select count(*) from inboundmessage where state = 'received'")).scalar()
        return total, waiting

    def processed(self, engine) -> dict[str, float]:
        from sqlalchemy import text

        out = {}
        with engine.connect() as conn:
            for mid, at in conn.execute(text("select message_id, processed_at from inboundmessage")):
                if isinstance(at, str):
                    at = datetime.fromisoformat(at)
                if at.tzinfo is None:
                    at = at.replace(tzinfo=timezone.utc)
                out[mid] = at.timestamp()
        return out

    def outcomes(self, engine) -> dict:
        from sqlalchemy import text

        with engine.connect() as conn:
            rows = conn.execute(text("select outcome, count(*) from inboundmessage group by outcome")).all()
            outbox = conn.execute(text("select count(*) from outbox")).scalar()
        return {"outcomes": {str(k): v for k, v in rows}, "outbox": outbox}

    def serve(self) -> subprocess.Popen:
        log = open(self.dir / "serve.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(self.config), "serve"],
                                cwd=self.dir, env=env(), stdout=log, stderr=subprocess.STDOUT)
        wait_port(self.port, proc)
        # Measured from when the service is ready: every worker has warmed up (its log line
        # "ready in"; ~0.5 s each, longer on PostgreSQL) and the deliverer runs.
        from gateway.config import load_config
        from gateway.service import worker_count

        workers = worker_count(load_config(self.config, env={}))
        end = time.monotonic() + 60
        while time.monotonic() < end:
            text = (self.dir / "serve.log").read_text(errors="replace")
            if text.count("ready in") >= workers and "deliverer started" in text:
                break
            time.sleep(0.05)
        return proc


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def e2e_once(db: str, mails: list[Mail], bodies: list[bytes], conns: int, timeout: float = 900) -> dict:
    site = Site(db)
    try:
        proc = site.serve()
        engine = site.engine()
        try:
            time.sleep(1.0)  # the worker process starts (spawn) and goes idle
            sampler = RssSampler(proc.pid).start()
            idle = sampler.now()
            pids = tree(proc.pid)
            cpu0 = {p: cpu_seconds(p) for p in pids}
            sent = send(site.port, mails, bodies, conns)
            end = time.monotonic() + timeout
            while True:
                total, waiting = site.progress(engine)
                if total >= len(mails) - len(sent["failed"]) and waiting == 0:
                    break
                if time.monotonic() > end:
                    raise TimeoutError(f"{waiting} of {total} mails still waiting after {timeout} s")
                time.sleep(0.05)
            peak = sampler.stop()
            cpu_ms: dict[str, float] = {}
            for p in pids:  # CPU a mail by role, up to the last ticket committed (+ <= 50 ms)
                r = role(p, proc.pid)
                cpu_ms[r] = cpu_ms.get(r, 0.0) + (cpu_seconds(p) - cpu0[p]) * 1000 / len(mails)
            done = site.processed(engine)
            outcomes = site.outcomes(engine)
        finally:
            stop(proc)
            engine.dispose()
        last = max(done.values())
        commit_lat = [done[m] - t for m, t in sent["accepted_at"].items() if m in done]
        small_lat = [lat for lat, size in zip(sent["latency"], sent["size"]) if size < 1_000_000]
        return {
            "mails": len(mails), "failed": len(sent["failed"]),
            "mails_per_s": len(mails) / (last - sent["start_wall"]),
            "accept_p50_ms": pct(sent["latency"], 50) * 1000, "accept_p99_ms": pct(sent["latency"], 99) * 1000,
            "accept_p99_under_1mb_ms": pct(small_lat, 99) * 1000,
            "commit_p50_ms": pct(commit_lat, 50) * 1000, "commit_p99_ms": pct(commit_lat, 99) * 1000,
            "send_s": sent["elapsed"], "idle_rss_mb": idle / 2**20, "peak_rss_mb": peak / 2**20,
            "cpu_ms_per_mail": cpu_ms, **outcomes,
        }
    finally:
        site.close()


def instances_once(count: int, mails: list[Mail], bodies: list[bytes], conns: int, timeout: float = 900) -> dict:
    """The mixed set against ``count`` instances of gateway serve on one PostgreSQL (issue
    19), each with its own folder and port, the clients spread over their ports: mails a
    second up to the last one processed, and the 250's latency."""
    first = Site("postgres", "[http]\nenabled = false\n")
    sites = [first] + [Site("postgres", "[http]\nenabled = false\n", url=first.url) for _ in range(count - 1)]
    procs = []
    try:
        for site in sites:
            procs.append(site.serve())
        engine = first.engine()
        try:
            time.sleep(1.0)
            out = {"latency": [], "size": [], "accepted_at": {}, "failed": []}
            queue = list(range(len(mails)))[::-1]

            async def main():
                await asyncio.gather(*(_client(sites[k % count].port, queue, mails, bodies, out)
                                       for k in range(conns)))

            start_wall = time.time()
            asyncio.run(main())
            end = time.monotonic() + timeout
            while True:
                total, waiting = first.progress(engine)
                if total >= len(mails) - len(out["failed"]) and waiting == 0:
                    break
                if time.monotonic() > end:
                    raise TimeoutError(f"{waiting} of {total} mails still waiting after {timeout} s")
                time.sleep(0.05)
            done = first.processed(engine)
        finally:
            for proc in procs:
                stop(proc)
            engine.dispose()
        return {"instances": count, "mails": len(mails), "failed": len(out["failed"]),
                "mails_per_s": len(mails) / (max(done.values()) - start_wall),
                "accept_p50_ms": pct(out["latency"], 50) * 1000, "accept_p99_ms": pct(out["latency"], 99) * 1000}
    finally:
        for site in sites[1:]:
            site.close()
        first.close()


def ceiling_once(mails: list[Mail], bodies: list[bytes], conns: int) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="gwceil-"))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.ceiling", str(port), str(folder)], cwd=ROOT, env=env())
    try:
        wait_port(port, proc)
        sent = send(port, mails, bodies, conns)
    finally:
        stop(proc)
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    small_lat = [lat for lat, size in zip(sent["latency"], sent["size"]) if size < 1_000_000]
    return {"mails_per_s": len(mails) / sent["elapsed"], "failed": len(sent["failed"]),
            "accept_p50_ms": pct(sent["latency"], 50) * 1000, "accept_p99_ms": pct(sent["latency"], 99) * 1000,
            "accept_p99_under_1mb_ms": pct(small_lat, 99) * 1000}


def ingest_once(db: str, files: list[Path]) -> dict:
    site = Site(db)
    try:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "gateway", "--config", str(site.config), "ingest",
                               "--no-deliver", "--json", *map(str, files)], cwd=site.dir, env=env(),
                              capture_output=True)
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.decode()[-2000:])
        outcomes = [json.loads(line)["outcome"] for line in proc.stdout.decode().splitlines()]
        return {"mails_per_s": len(files) / elapsed, "elapsed_s": elapsed,
                "outcomes": {o: outcomes.count(o) for o in set(outcomes)}}
    finally:
        site.close()


def run_cpu(cmd: list[str], cwd: Path, env_: dict) -> tuple[float, float, str]:
    """Run ``cmd`` to its end: wall seconds, CPU seconds (user + system, from the
    child's resource usage as wait4 returns it, its own waited-for children included)
    and its output.  A non-zero exit is an error."""
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env_, stdout=out, stderr=subprocess.STDOUT)
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... exited {proc.returncode}: {text[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, text


def warm_bytecode() -> None:
    """One ``gateway ingest`` (delivery included) and one service import, so that the
    byte code cache (env()) is filled before anything is measured."""
    site = Site("sqlite")
    try:
        path = site.dir / "warm.eml"
        path.write_bytes(generate(1, small_only=True)[0].raw)
        run_cpu([sys.executable, "-m", "gateway", "--config", str(site.config), "ingest", str(path)], site.dir, env())
        run_cpu([sys.executable, "-c", "import gateway.service, gateway.http.server, bench.ceiling"], ROOT, env())
    finally:
        site.close()


# 8. Start-up ------------------------------------------------------------------------------
STARTUP_CEILING_S = 0.3


def startup_bench(runs: int) -> dict:
    """CPU seconds of ``gateway --help`` and of a ``gateway ingest`` of one small mail
    (SQLite, its database already made; a new mail each run), beside the floors measured
    in the same run: the interpreter doing nothing, and importing SQLAlchemy and SQLModel
    (which the store needs).  The four alternate, so load weighs on all alike."""
    site = Site("sqlite")
    try:
        mails = generate(runs + 1, small_only=True)
        paths = []
        for m in mails:
            path = site.dir / f"one-{m.index}.eml"
            path.write_bytes(m.raw)
            paths.append(path)
        gw = [sys.executable, "-m", "gateway", "--config", str(site.config)]
        run_cpu([*gw, "ingest", "--no-deliver", str(paths[0])], site.dir, env())  # the database, the byte code
        run_cpu([*gw, "--help"], site.dir, env())
        out: dict[str, list[float]] = {"python": [], "store_libraries": [], "help": [], "ingest_one": []}
        for r in range(runs):
            out["python"].append(run_cpu([sys.executable, "-c", "pass"], site.dir, env())[1])
            out["store_libraries"].append(run_cpu([sys.executable, "-c", "import sqlalchemy.orm, sqlmodel"],
                                                  site.dir, env())[1])
            out["help"].append(run_cpu([*gw, "--help"], site.dir, env())[1])
            _wall, cpu, text = run_cpu([*gw, "ingest", "--no-deliver", "--json", str(paths[r + 1])], site.dir, env())
            if json.loads(text.strip().splitlines()[-1])["outcome"] not in ("created", "appended"):
                raise RuntimeError(f"one-mail ingest: {text[-500:]}")
            out["ingest_one"].append(cpu)
        return {k: summary(v) for k, v in out.items()}
    finally:
        site.close()


# 9. The peer: django-helpdesk's get_email ---------------------------------------------------
def peer_bench(files: list[Path], runs: int, log) -> dict:
    """``gateway ingest`` (confirmations rendered and written by the file transport) and
    django-helpdesk's ``get_email`` (its confirmations to Django's in-memory mail backend)
    of the same files, each a whole process, start-up included, each on a SQLite
    database made beforehand; the two alternate, run by run.  Ratio = the gateway's
    mails/s ÷ the peer's, per pair."""
    import shutil

    version = peer_helpdesk.ensure_venv(log)
    gw_runs, peer_runs = [], []
    for r in range(runs):
        site = Site("sqlite")
        try:
            gw = [sys.executable, "-m", "gateway", "--config", str(site.config)]
            run_cpu([*gw, "db", "upgrade"], site.dir, env())
            wall, cpu, text = run_cpu([*gw, "ingest", "--json", *map(str, files)], site.dir, env())
            outcomes = [json.loads(line)["outcome"] for line in text.splitlines() if line.startswith("{")]
            if len(outcomes) != len(files):
                raise RuntimeError(f"gateway ingest: {len(outcomes)} outcomes for {len(files)} mails: {text[-1000:]}")
            gw_runs.append({"mails_per_s": len(files) / wall, "elapsed_s": wall, "cpu_s": cpu,
                            "outcomes": {o: outcomes.count(o) for o in set(outcomes)}})
        finally:
            site.close()
        folder = Path(tempfile.mkdtemp(prefix="gwpeer-"))
        try:
            maildir = folder / "mail"
            maildir.mkdir()
            for f in files:
                shutil.copyfile(f, maildir / f.name)
            peer_helpdesk.prepare(folder, maildir)
            wall, cpu, text = run_cpu([str(peer_helpdesk.python()), "-m", "bench.peer_helpdesk", "run", str(folder)],
                                      folder, peer_helpdesk.peer_env(folder))
            left = len(os.listdir(maildir))
            counts = dict(kv.split("=") for kv in text.strip().splitlines()[-1].split())
            peer_runs.append({"mails_per_s": len(files) / wall, "elapsed_s": wall, "cpu_s": cpu,
                              "left_unprocessed": left, **{k: int(v) for k, v in counts.items()}})
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        log(f"peer run {r + 1}: gateway ingest {gw_runs[-1]['mails_per_s']:.1f}/s, "
            f"django-helpdesk get_email {peer_runs[-1]['mails_per_s']:.1f}/s")
    return {"peer": version, "mails": len(files),
            "gateway": {k: summary([x[k] for x in gw_runs]) for k in ("mails_per_s", "cpu_s")},
            "django_helpdesk": {k: summary([x[k] for x in peer_runs]) for k in ("mails_per_s", "cpu_s")},
            "ratio": summary([g["mails_per_s"] / p["mails_per_s"] for g, p in zip(gw_runs, peer_runs)]),
            # CPU time is less moved by the other load of a shared machine than wall time.
            "cpu_ratio": summary([p["cpu_s"] / g["cpu_s"] for g, p in zip(gw_runs, peer_runs)]),
            "raw": {"gateway": gw_runs, "django_helpdesk": peer_runs}}


def ingest_maxrss(site: Site, path: Path) -> int:
    """Peak RSS (bytes) of one ``gateway ingest`` process (its VmHWM, see bench/peak.py)."""
    proc = subprocess.run([sys.executable, "-m", "bench.peak", "--config", str(site.config), "ingest",
                           "--no-deliver", str(path)], cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise RuntimeError(f"ingest of {path} exited {proc.returncode}: {proc.stderr.decode()[-2000:]}")
    return int(proc.stderr.decode().strip().splitlines()[-1].split()[1])


# 4. Threading ---------------------------------------------------------------------------
def _threading_store(size: int):
    """A SQLite store of ``size`` ticket messages (10 a ticket), bulk-inserted."""
    from sqlalchemy import insert

    from gateway.app import App
    from gateway.config import load_config
    from store.models import Person, Ticket, TicketMessage

    site = Site("sqlite")
    app = App(load_config(site.config, env={}))
    engine = app.engine
    per_ticket = 10
    tickets = size // per_ticket
    now = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(insert(Person.__table__), [
            {"email": f"p{i}@client.example", "name": f"Personne {i}", "language": "fr", "company": "",
             "company_access": False, "timezone": "Europe/Brussels", "hard_bounces": 0, "undeliverable": False,
             "created_at": now} for i in range(1000)])
        chunk = 50_000
        for start in range(0, tickets, chunk):
            conn.execute(insert(Ticket.__table__), [
                {"id": i + 1, "number": f"INC-{i + 1:07d}", "process": "incident", "status": "New", "title": "t",
                 "description": "", "reporting_person_id": i % 1000 + 1, "affected_person_id": i % 1000 + 1,
                 "created_at": now, "updated_at": now} for i in range(start, min(tickets, start + chunk))])
        for start in range(0, size, chunk):
            conn.execute(insert(TicketMessage.__table__), [
                {"ticket_id": i // per_ticket + 1, "direction": "in" if i % 2 else "out", "internal": False,
                 "from_addr": f"p{(i // per_ticket) % 1000}@client.example", "to_addrs": HELPDESK, "cc_addrs": "",
                 "subject": "s", "body_text": "", "message_id": f"m{i}@bench.example", "created_at": now}
                for i in range(start, min(size, start + chunk))])
    return site, app, per_ticket, time.perf_counter() - t0


def threading_bench(sizes: tuple[int, ...], lookups: int = 300) -> dict:
    """Both stores built first, then their lookups alternated (one reply on each in turn),
    so that whatever else the machine does weighs on both alike: their ratio is the
    figure, and on a shared machine two series taken a minute apart differed by 2x."""
    import random

    from sqlalchemy import text

    from gateway.ingest.parse import parse
    from store.db import session_for
    from store.models import InboundMessage

    stores = {size: _threading_store(size) for size in sizes}
    try:
        times: dict[int, list[float]] = {size: [] for size in sizes}
        # The rate limit's count for a sender the store has never seen (the common case,
        # and the worst without an index: nothing stops the search early).
        rate_times: dict[int, list[float]] = {size: [] for size in sizes}
        rngs = {size: random.Random(size) for size in sizes}
        for k in range(lookups):
            for size in sizes:
                _site, app, per_ticket, _ = stores[size]
                proc = app.processor
                target = rngs[size].randrange(size)
                raw = (f"From: Personne <p{(target // per_ticket) % 1000}@client.example>\r\nTo: {HELPDESK}\r\n"
                       f"Subject: RE: question\r\nMessage-ID: <reply{k}@client.example>\r\n"
                       f"In-Reply-To: <m{target}@bench.example>\r\nReferences: <m{max(0, target - 1)}@bench.example> "
                       f"<m{target}@bench.example>\r\n\r\nMerci.\r\n").encode()
                mail = parse(raw, proc.limits)
                inbound = InboundMessage(source="smtp", rcpt_to=HELPDESK, message_id=mail.message_id, sha256="x")
                with session_for(app.engine) as session:
                    t = time.perf_counter()
                    facts = proc.gather(session, inbound, mail)
                    times[size].append(time.perf_counter() - t)
                    t = time.perf_counter()
                    proc.over_rate(session, f"new{k}@elsewhere.example")
                    rate_times[size].append(time.perf_counter() - t)
                expected = f"INC-{target // per_ticket + 1:07d}"
                if facts.thread is None or facts.thread.number != expected:
                    raise AssertionError(f"threading found {facts.thread} instead of {expected}")
        out = {}
        for size in sizes:
            _site, app, _per, build_s = stores[size]
            plans = {}
            with app.engine.connect() as conn:
                for name, sql in {
                    "find_thread": "select ticket_id from ticketmessage where message_id in ('m1@bench.example',"
                                   " 'm2@bench.example') order by id desc limit 1",
                    "duplicate": "select ticket.number from ticket join ticketmessage on ticketmessage.ticket_id ="
                                 " ticket.id where ticketmessage.message_id = 'x' and ticketmessage.direction = 'in'"
                                 " limit 1",
                    "rate_limit": "select id from ticketmessage where direction = 'in' and from_addr = 'x'"
                                  " and created_at >= '2026-01-01' limit 21",
                }.items():
                    plans[name] = [str(r[-1]) for r in conn.execute(text("explain query plan " + sql))]
            out[size] = {"messages": size, "build_s": build_s, "lookup_p50_ms": pct(times[size], 50) * 1000,
                         "lookup_p99_ms": pct(times[size], 99) * 1000,
                         "rate_p50_ms": pct(rate_times[size], 50) * 1000, "plans": plans}
        return out
    finally:
        for site, app, _per, _b in stores.values():
            app.engine.dispose()
            site.close()


# 5. Notifications -----------------------------------------------------------------------
def notifications_bench(seconds: float) -> dict:
    from gateway.app import App
    from gateway.config import load_config
    from gateway.outbound.compose import Envelope, build_bytes, new_message_id
    from store.db import session_for
    from store.tickets import create_ticket, get_or_create_person

    site = Site("sqlite")
    out = {}
    try:
        app = App(load_config(site.config, env={}))
        for lang in ("fr", "nl", "en", "de"):
            with session_for(app.engine) as session:
                person, _ = get_or_create_person(session, f"{lang}@client.example", "Hélène Côté", lang)
                ticket = create_ticket(session, process="incident", title="Écran noir au démarrage",
                                       description="L'écran reste noir.", reporter=person, by=person.email)
                session.commit()
                n, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < seconds:
                    ctx = app.notifier.context(ticket, person, lang)
                    mail = app.renderer.render_safe("new", lang, ctx)
                    env_ = Envelope(from_name="Helpdesk", from_addr=HELPDESK, to=((person.name, person.email),),
                                    reply_to=HELPDESK, message_id=new_message_id("localhost"), in_reply_to=None,
                                    references=(), number=ticket.number, loop_id=HELPDESK,
                                    auto_submitted="auto-replied", date=datetime.now(timezone.utc))
                    build_bytes(mail, env_)
                    n += 1
                out[lang] = n / (time.perf_counter() - t0)
    finally:
        site.close()
    return out


# 6. Memory ------------------------------------------------------------------------------
def memory_bench(db: str = "sqlite") -> dict:
    """On PostgreSQL the blobs are in the database ([store] blobs' default there): the
    mail goes into it in chunks and the worker reads it back from it."""
    mail = big_mail()
    # A 25 MB attachment is ~34 MB once base64-encoded: above the default 25 MiB limit.
    # Any free port for the HTTP face: 8025 may be another run's on a shared machine.
    bigger = f"max_message_size = {64 * 2**20}\n[http]\nport = 0\n"
    site = Site(db, bigger)
    out = {"message_bytes": len(mail.raw), "attachment_bytes": 25_000_000}
    try:
        proc = site.serve()
        engine = site.engine()
        try:
            time.sleep(1.5)
            pids = tree(proc.pid)
            idle_each = {p: status_kb(p, "VmRSS") * 1024 for p in pids}
            sampler = RssSampler(proc.pid).start()
            idle = sampler.now()
            sent = send(site.port, [mail], [wire(mail.raw)], 1)
            if sent["failed"]:
                raise RuntimeError(f"the 25 MB mail was refused: {sent['failed']}")
            end = time.monotonic() + 300
            while site.progress(engine) != (1, 0) and time.monotonic() < end:
                time.sleep(0.05)
            peak = sampler.stop()
            hwm_each = {p: status_kb(p, "VmHWM") * 1024 for p in pids}
            out["smtp"] = {"failed": len(sent["failed"]), "idle_mb": idle / 2**20, "peak_mb": peak / 2**20,
                           "above_idle_mb": (peak - idle) / 2**20, "ratio": (peak - idle) / len(mail.raw),
                           "per_process_above_idle_mb": {
                               ("door" if p == proc.pid else f"child{p}"): (hwm_each[p] - idle_each[p]) / 2**20
                               for p in pids}}
        finally:
            stop(proc)
            engine.dispose()
    finally:
        site.close()
    site = Site(db, bigger)
    try:
        big, small = site.dir / "big.eml", site.dir / "small.eml"
        big.write_bytes(mail.raw)
        small.write_bytes(generate(1, small_only=True)[0].raw)
        idle = ingest_maxrss(site, small)
        peak = ingest_maxrss(site, big)
        out["ingest"] = {"idle_mb": idle / 2**20, "peak_mb": peak / 2**20, "above_idle_mb": (peak - idle) / 2**20,
                         "ratio": (peak - idle) / len(mail.raw)}
    finally:
        site.close()
    return out


# The run --------------------------------------------------------------------------------
def machine() -> dict:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = status = ""
    try:
        mem = next(line.split(":", 1)[1].strip() for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": mem, "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}", "load_at_start": [round(x, 2) for x in load],
            "sqlite": __import__("sqlite3").sqlite_version, "status": status}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m bench.run", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sets, 1 M store replaced by 100 k: a check, not figures")
    ap.add_argument("--runs", type=int, default=3, help="runs per figure (median, min-max); default 3")
    ap.add_argument("--mails", type=int, help="mails in the mixed set (default 200; quick 40)")
    ap.add_argument("--no-postgres", action="store_true", help="skip item 7")
    ap.add_argument("--only", default="",
                    help="comma list of parts: e2e,small,ingest,threading,notify,memory,memory-pg,pg,instances,"
                         "startup,peer")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite the table in BENCHMARKS.md")
    args = ap.parse_args(argv)
    n = args.mails or (40 if args.quick else 200)
    n_small = 100 if args.quick else 400
    big_store = 100_000 if args.quick else 1_000_000
    conns_list = (1, 8, 32)
    parts = set(args.only.split(",")) if args.only else {"e2e", "small", "ingest", "threading", "notify", "memory",
                                                           "pg", "startup", "peer"}
    if args.no_postgres:
        parts.discard("pg")
    mixed = generate(n)
    small = generate(n_small, small_only=True)
    bodies = [wire(m.raw) for m in mixed]
    small_bodies = [wire(m.raw) for m in small]
    res: dict = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
                 "quick": args.quick, "runs": args.runs, "mixed_mails": n, "small_mails": n_small,
                 "mixed_bytes": sum(len(m.raw) for m in mixed)}

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def e2e_series(db: str, mails, bodies_, conns: int, with_ceiling: bool) -> dict:
        runs, ceil = [], []
        for r in range(args.runs):
            if with_ceiling:
                ceil.append(ceiling_once(mails, bodies_, conns))
            runs.append(e2e_once(db, mails, bodies_, conns))
            log(f"{db} {len(mails)} mails x{conns}: {runs[-1]['mails_per_s']:.1f}/s"
                + (f" (ceiling {ceil[-1]['mails_per_s']:.1f}/s)" if with_ceiling else ""))
        keys = ("mails_per_s", "accept_p50_ms", "accept_p99_ms", "accept_p99_under_1mb_ms", "commit_p50_ms",
                "commit_p99_ms", "peak_rss_mb")
        out = {k: summary([r[k] for r in runs]) for k in keys}
        out["cpu_ms_per_mail"] = {r: summary([run["cpu_ms_per_mail"].get(r, 0.0) for run in runs])
                                  for r in ("door", "worker", "deliverer")}
        out["raw"] = runs
        if with_ceiling:
            out["ceiling"] = {k: summary([c[k] for c in ceil]) for k in ("mails_per_s", "accept_p99_ms",
                                                                   "accept_p99_under_1mb_ms")}
            out["ratio"] = summary([r["mails_per_s"] / c["mails_per_s"] for r, c in zip(runs, ceil)])
        return out

    warm_bytecode()
    with tempfile.TemporaryDirectory(prefix="gwset-") as d:
        files = []
        for m in mixed:
            p = Path(d) / f"{m.index:05d}.eml"
            p.write_bytes(m.raw)
            files.append(p)
        for db in ("sqlite", "postgres"):
            if db == "postgres" and "pg" not in parts:
                continue
            if "e2e" in parts or (db == "postgres" and not args.only):
                res.setdefault(db, {})["e2e"] = {str(c): e2e_series(db, mixed, bodies, c, db == "sqlite")
                                                 for c in conns_list}
            if "small" in parts or (db == "postgres" and not args.only):
                res.setdefault(db, {})["small_8"] = e2e_series(db, small, small_bodies, 8, True)
            if "ingest" in parts or (db == "postgres" and not args.only):
                runs = [ingest_once(db, files) for _ in range(args.runs)]
                log(f"{db} ingest: {[round(r['mails_per_s'], 1) for r in runs]}/s")
                res.setdefault(db, {})["ingest"] = {"mails_per_s": summary([r["mails_per_s"] for r in runs]),
                                                    "raw": runs}
        if "peer" in parts:
            res["peer"] = peer_bench(files, args.runs, log)
    if "startup" in parts:
        res["startup"] = startup_bench(max(5, args.runs))
        log(f"start-up CPU s: { {k: round(v['median'], 3) for k, v in res['startup'].items()} }")
    if "threading" in parts:
        res["threading"] = {}
        # One pair of stores, their lookups alternated (threading_bench), 3 x 300 lookups each.
        pair = threading_bench((10_000, big_store), lookups=900)
        for size in (10_000, big_store):
            r = pair[size]
            res["threading"][str(size)] = {"lookup_p50_ms": summary([r["lookup_p50_ms"]]),
                                           "lookup_p99_ms": summary([r["lookup_p99_ms"]]),
                                           "rate_p50_ms": summary([r["rate_p50_ms"]]), "raw": [r]}
            log(f"threading {size}: {r['lookup_p50_ms']:.2f} ms (built in {r['build_s']:.0f} s)")
        a, b = (res["threading"][str(s)]["lookup_p50_ms"]["median"] for s in (10_000, big_store))
        res["threading"]["ratio"] = b / a
    if "notify" in parts:
        runs = [notifications_bench(1.0 if args.quick else 3.0) for _ in range(args.runs)]
        res["notifications_per_s"] = {lang: summary([r[lang] for r in runs]) for lang in runs[0]}
        log(f"notifications: { {k: round(v['median']) for k, v in res['notifications_per_s'].items()} }")
    for key, db in (("memory", "sqlite"), ("memory_pg", "postgres")):
        if key == "memory" and "memory" not in parts or key == "memory_pg" and not {"memory", "memory-pg"} & parts \
                or key == "memory_pg" and args.no_postgres:
            continue
        runs = [memory_bench(db) for _ in range(args.runs)]
        res[key] = {"message_bytes": runs[0]["message_bytes"], "raw": runs}
        for way in ("smtp", "ingest"):
            res[key][way] = {k: summary([r[way][k] for r in runs]) for k in ("above_idle_mb", "ratio")}
        log(f"{key}: smtp {res[key]['smtp']['ratio']['median']:.1f}x, "
            f"ingest {res[key]['ingest']['ratio']['median']:.1f}x")
    if "instances" in parts and not args.no_postgres:
        res["instances"] = {}
        for count in (1, 2):
            runs = [instances_once(count, mixed, bodies, 8) for _ in range(args.runs)]
            res["instances"][str(count)] = {k: summary([r[k] for r in runs])
                                            for k in ("mails_per_s", "accept_p50_ms", "accept_p99_ms")}
            res["instances"][str(count)]["failed"] = sum(r["failed"] for r in runs)
            log(f"instances {count}: {res['instances'][str(count)]['mails_per_s']['median']:.1f} mails/s")
    res["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    res["machine"]["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    table = render_table(res)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{res['started'].replace(':', '')}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(res, indent=1, ensure_ascii=False))
    print(f"\nraw figures: {out.relative_to(ROOT)}")
    if not args.no_doc:
        update_doc(table)
    return 0


def fmt(s: dict | None, digits: int = 1) -> str:
    if not s:
        return "-"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


def cpu_row(series: dict | None) -> str:
    cpu = (series or {}).get("cpu_ms_per_mail")
    if not cpu:
        return "-"
    return " / ".join(f"{cpu[r]['median']:.2f}" for r in ("door", "worker", "deliverer"))


def render_table(res: dict) -> str:
    m = res["machine"]
    lines = [f"Run {res['started']}{' (QUICK: small sets, not figures)' if res['quick'] else ''}; "
             f"{m['cores']} cores {m['cpu']}, {m['memory']}, Python {m['python']}, SQLite {m['sqlite']}; "
             f"load {m['load_at_start']} -> {m.get('load_at_end')}; median (min–max) of {res['runs']} runs; "
             f"mixed set {res['mixed_mails']} mails / {res['mixed_bytes'] / 2**20:.0f} MB, "
             f"small set {res['small_mails']} mails.", ""]
    lines += ["| Measure | SQLite | PostgreSQL | Target |", "|---|---|---|---|"]
    sq, pg = res.get("sqlite", {}), res.get("postgres", {})

    def row(name, a, b="-", target=""):
        lines.append(f"| {name} | {a} | {b} | {target} |")

    for c in ("1", "8", "32"):
        e, p = sq.get("e2e", {}).get(c), pg.get("e2e", {}).get(c)
        if not e and not p:
            continue
        row(f"mixed, {c} conn: end to end mails/s", fmt(e and e["mails_per_s"]), fmt(p and p["mails_per_s"]),
            "PG ≥ 0.7 × SQLite" if c == "8" else "")
        if e:
            row(f"mixed, {c} conn: ceiling mails/s (bare aiosmtpd + fsync)", fmt(e["ceiling"]["mails_per_s"]))
            row(f"mixed, {c} conn: end to end ÷ ceiling", fmt(e["ratio"], 2), "-", "≥ 0.6" if c == "8" else "")
            row(f"mixed, {c} conn: ceiling DATA→250 p99 ms, mails < 1 MB (same aiosmtpd, no database)",
                fmt(e["ceiling"]["accept_p99_under_1mb_ms"]))
        row(f"mixed, {c} conn: DATA→250 p50 / p99 ms", f"{fmt(e and e['accept_p50_ms'])} / {fmt(e and e['accept_p99_ms'])}",
            f"{fmt(p and p['accept_p50_ms'])} / {fmt(p and p['accept_p99_ms'])}")
        row(f"mixed, {c} conn: DATA→250 p99 ms, mails < 1 MB", fmt(e and e["accept_p99_under_1mb_ms"]),
            fmt(p and p["accept_p99_under_1mb_ms"]), "< 100" if c == "8" else "")
        row(f"mixed, {c} conn: 250→ticket committed p50 / p99 ms",
            f"{fmt(e and e['commit_p50_ms'], 0)} / {fmt(e and e['commit_p99_ms'], 0)}",
            f"{fmt(p and p['commit_p50_ms'], 0)} / {fmt(p and p['commit_p99_ms'], 0)}")
        row(f"mixed, {c} conn: peak RSS of the service, MB", fmt(e and e["peak_rss_mb"], 0),
            fmt(p and p["peak_rss_mb"], 0))
        if c == "8":
            row("mixed, 8 conn: CPU ms a mail (median), door / worker(s) / deliverer", cpu_row(e), cpu_row(p))
    e, p = sq.get("small_8"), pg.get("small_8")
    if e or p:
        row("small only, 8 conn: end to end mails/s", fmt(e and e["mails_per_s"]), fmt(p and p["mails_per_s"]), "≥ 250")
        # The ceiling (no database) runs just before each end to end run, of either database.
        row("small only, 8 conn: ceiling mails/s (bare aiosmtpd + fsync, beside each run)",
            fmt(e and e.get("ceiling", {}).get("mails_per_s")), fmt(p and p.get("ceiling", {}).get("mails_per_s")))
        row("small only, 8 conn: end to end ÷ ceiling", fmt(e and e.get("ratio"), 2), fmt(p and p.get("ratio"), 2),
            "≥ 0.5 SQLite, ≥ 0.4 PostgreSQL")
        row("small only, 8 conn: DATA→250 p99 ms", fmt(e and e["accept_p99_ms"]), fmt(p and p["accept_p99_ms"]),
            "< 100")
        row("small only, 8 conn: CPU ms a mail (median), door / worker(s) / deliverer", cpu_row(e), cpu_row(p))
    e, p = sq.get("ingest"), pg.get("ingest")
    if e or p:
        row("`gateway ingest` of the mixed set, mails/s (incl. start-up)", fmt(e and e["mails_per_s"]),
            fmt(p and p["mails_per_s"]))
    pe = res.get("peer")
    if pe:
        row(f"`gateway ingest` of the mixed set, whole process, confirmations written: mails/s", fmt(pe["gateway"]["mails_per_s"]))
        row(f"peer: {pe['peer']} `get_email` of the same files, whole process: mails/s",
            fmt(pe["django_helpdesk"]["mails_per_s"]))
        row("`gateway ingest` ÷ django-helpdesk `get_email`, pairs in turn", fmt(pe["ratio"], 2), "-", "≥ 3")
        if "cpu_ratio" in pe:
            row("CPU s of the whole process, gateway / peer", f"{fmt(pe['gateway']['cpu_s'])} / "
                f"{fmt(pe['django_helpdesk']['cpu_s'])}")
            row("peer's CPU ÷ the gateway's, pairs in turn", fmt(pe["cpu_ratio"], 2))
    # The PostgreSQL target, read off the rows above: the ratio of the medians.
    pairs = [(name, sq.get(key, {}).get(sub) if sub else sq.get(key), pg.get(key, {}).get(sub) if sub else pg.get(key))
             for name, key, sub in (("mixed 8 conn", "e2e", "8"), ("small 8 conn", "small_8", None),
                                    ("ingest", "ingest", None))]
    ratios = [(name, b["mails_per_s"]["median"] / a["mails_per_s"]["median"]) for name, a, b in pairs if a and b]
    if ratios:
        row(f"PostgreSQL ÷ SQLite, medians: {' / '.join(name for name, _r in ratios)}", "-",
            " / ".join(f"{r:.2f}" for _name, r in ratios), "≥ 0.7")
    t = res.get("threading")
    if t:
        sizes = [k for k in t if k != "ratio"]
        for s in sizes:
            row(f"threading: find the ticket of a reply, {int(s):,} messages, p50 ms", fmt(t[s]["lookup_p50_ms"], 2))
        row(f"threading: {int(sizes[-1]):,} ÷ {int(sizes[0]):,}", f"{t['ratio']:.2f}", "-", "≤ 1.5")
        if all("rate_p50_ms" in t[s] for s in sizes):
            for s in sizes:
                row(f"rate limit check, a first-time sender, {int(s):,} messages, p50 ms",
                    fmt(t[s]["rate_p50_ms"], 3))
    for lang, s in res.get("notifications_per_s", {}).items():
        row(f"notifications rendered + built as MIME per s, {lang}", fmt(s, 0))
    st = res.get("startup")
    if st:
        row("start-up floor: `python3 -c pass`, CPU s", fmt(st["python"], 3))
        row("start-up floor: `python3 -c 'import sqlalchemy.orm, sqlmodel'` (the store's libraries), CPU s",
            fmt(st["store_libraries"], 3))
        row("`gateway --help`, CPU s", fmt(st["help"], 3), "-", f"< {STARTUP_CEILING_S}")
        row("`gateway ingest` of one small mail (SQLite), CPU s", fmt(st["ingest_one"], 3), "-",
            f"< {STARTUP_CEILING_S}")
    for count, figures in res.get("instances", {}).items():
        row(f"mixed, 8 conn spread over {count} instance(s) of gateway serve, one PostgreSQL: mails/s",
            "-", fmt(figures["mails_per_s"]), "for the record")
        row(f"mixed, 8 conn, {count} instance(s): 250 latency p50 / p99, ms", "-",
            f"{fmt(figures['accept_p50_ms'], 0)} / {fmt(figures['accept_p99_ms'], 0)}")
    mem, mem_pg = res.get("memory"), res.get("memory_pg")
    if mem or mem_pg:
        mb = (mem or mem_pg)["message_bytes"] / 2**20

        def mem_cell(m, way: str) -> str:
            return f"{fmt(m[way]['above_idle_mb'], 0)} ({fmt(m[way]['ratio'], 1)}×)" if m else "-"

        # PostgreSQL's column: the blobs in the database (written and read in chunks).
        row(f"25 MB attachment ({mb:.0f} MB message) via SMTP: peak RSS above idle, MB (× message)",
            mem_cell(mem, "smtp"), mem_cell(mem_pg, "smtp"), "≤ 4×")
        row("25 MB attachment via `gateway ingest`: peak RSS above idle, MB (× message)",
            mem_cell(mem, "ingest"), mem_cell(mem_pg, "ingest"), "≤ 4×")
    return "\n".join(lines)


def update_doc(table: str) -> None:
    doc = ROOT / "BENCHMARKS.md"
    text = doc.read_text() if doc.exists() else "<!-- results -->\n<!-- /results -->\n"
    start, end = "<!-- results -->", "<!-- /results -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _old, tail = rest.split(end, 1)
        doc.write_text(f"{head}{start}\n{table}\n{end}{tail}")


if __name__ == "__main__":
    sys.exit(main())
