"""The operations endpoint over real HTTP against a real `gateway serve` (issue 16, items 5
and 6): /healthz, /readyz and /metrics; the counters move by exactly the mails sent;
/readyz turns 503 naming the check when a worker is killed (serve starts it again) and
when the relay refuses, and 200 again after; JSON logs in a file; `gateway status`
fails once the service stops."""

from __future__ import annotations

import json
import os
import shutil
import signal
import smtplib
import subprocess
import sys
import time
import urllib.error
import urllib.request
from email.message import EmailMessage
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, free_port, run_gateway, wait_for_port
from harness.service import children, wait_until
from harness.relay import running_relay
from store.schema import HEAD


class Service:
    """`gateway serve` in a subprocess, its HTTP server on a port of its own."""

    def __init__(self, folder: Path, smtp_port: int, http_port: int):
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("GATEWAY_CONFIG", None)
        env.pop("GATEWAY_HTTP_PORT", None)  # the config's port (conftest sets a free one for other tests)
        self.folder, self.smtp_port, self.http_port = folder, smtp_port, http_port
        self.log = open(folder / "service.out", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(folder / "config.toml"),
                                      "serve"], cwd=folder, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_for_port(smtp_port, proc=self.proc)
        wait_for_port(http_port, timeout=60, proc=self.proc)

    def get(self, path: str) -> tuple[int, bytes, str]:
        """(status, body, content type) of a real HTTP GET."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=30) as answer:
                return answer.status, answer.read(), answer.headers["Content-Type"]
        except urllib.error.HTTPError as error:
            return error.code, error.read(), error.headers["Content-Type"]

    def ready(self) -> tuple[int, dict]:
        status, body, _ = self.get("/readyz")
        return status, json.loads(body)

    def metrics(self) -> dict[tuple, float]:
        status, body, kind = self.get("/metrics")
        assert status == 200 and kind.startswith("text/plain; version=0.0.4"), (status, kind)
        return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(body.decode()) for sample in family.samples}

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self.log.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def relay():
    with running_relay() as handler:
        yield handler


@pytest.fixture
def service(tmp_path, relay):
    """A full gateway serve: SMTP and HTTP on free ports, notifications through the real
    relay, JSON logs into a file, heartbeats every second, the relay failing after 2."""
    smtp_port, http_port = free_port(), free_port()
    (tmp_path / "config.toml").write_text(f"""
[gateway]
addresses = ["helpdesk@desk.example.com"]
secret = "test-secret-of-at-least-32-bytes-0123456789"

[smtp]
port = {smtp_port}

[http]
port = {http_port}

[outbound]
transport = "smtp"
retry_schedule = [2]

[outbound.smtp]
host = "127.0.0.1"
port = {relay.port}
timeout = 10

[logging]
format = "json"
file = "gateway.log"

[monitoring]
heartbeat_interval = 1
relay_failures = 2
""")
    started = Service(tmp_path, smtp_port, http_port)
    try:
        # Ready once every process beats (the workers warm up first).
        wait_until(lambda: started.ready()[0] == 200, timeout=90, interval=0.2)
        yield started
    finally:
        started.kill()


def send(port: int, n: int, sender: str = "marie.dupont@example.be", to: str = "helpdesk@desk.example.com") -> str:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = f"Printer {n} jams"
    msg["Message-ID"] = f"<ops-{n}-{time.time_ns()}@example.be>"
    msg.set_content(f"Printer {n} on the second floor jams at every page.")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.send_message(msg)
    return msg["Message-ID"].strip("<>")


def moved(before: dict, after: dict, name: str, **labels) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_healthz_readyz_and_metrics_count_exactly_the_mails_sent(service, relay, tmp_path):
    status, body, _ = service.get("/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    code, ready = service.ready()
    assert code == 200 and ready["ready"] and ready["failing"] == []
    assert set(ready["checks"]) == {"database", "door:smtp", "door", "worker-0", "deliverer", "journal", "inbound",
                                    "outbox", "relay"}
    assert ready["checks"]["door:smtp"]["detail"].startswith(f"127.0.0.1:{service.smtp_port} answered 220 ")

    before = service.metrics()
    ids = [send(service.smtp_port, n, sender=f"user{n}@example.be") for n in range(3)]
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(service.smtp_port, 9, to="nobody@desk.example.com")
    wait_until(lambda: len(relay.received) == 3, timeout=60)
    # The deliverer counts once the relay's 250 is recorded: a moment after the relay has it.
    after = wait_until(lambda: (m := service.metrics()) and moved(before, m, "gateway_notifications_total",
                                                                   state="sent") == 3 and m, timeout=30)
    assert moved(before, after, "gateway_mails_received_total", door="smtp") == 3
    assert moved(before, after, "gateway_mails_received_total", door="imap") == 0
    assert moved(before, after, "gateway_mails_processed_total", outcome="created") == 3
    assert moved(before, after, "gateway_tickets_created_total", process="incident") == 3
    assert moved(before, after, "gateway_notifications_total", state="failed") == 0
    assert moved(before, after, "gateway_smtp_refused_total", reason="unknown-recipient") == 1
    assert moved(before, after, "gateway_processing_seconds_count") == 3
    assert moved(before, after, "gateway_delivery_seconds_count") == 3
    assert after[("gateway_processing_seconds_bucket", (("le", "+Inf"),))] == after[
        ("gateway_processing_seconds_count", ())]
    for queue in ("inbound", "outbox", "quarantine"):
        assert after[("gateway_queue_depth", (("queue", queue),))] == 0
        assert after[("gateway_queue_oldest_seconds", (("queue", queue),))] == 0
    assert after[("gateway_database_up", ())] == 1
    assert after[("gateway_relay_failed_attempts", ())] == 0
    assert {k[1][0][1]: v for k, v in after.items() if k[0] == "gateway_process_up"} == {
        "door": 1, "worker-0": 1, "deliverer": 1, "http": 1}
    if shutil.which("promtool"):  # Prometheus's own linter of the exposition
        _, text, _ = service.get("/metrics")
        lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=60)
        assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()

    # The service runs: gateway status says so (exit 0); stopped, it says it is not (exit 1).
    config = str(tmp_path / "config.toml")
    assert run_gateway("--config", config, "status", cwd=tmp_path).returncode == 0
    assert service.stop() == 0
    stopped = run_gateway("--config", config, "status", cwd=tmp_path, check=False)
    assert stopped.returncode == 1 and "PROBLEM: gateway serve is not running" in stopped.stdout.decode()

    # The log file: one JSON object a line; the line of each mail's outcome names it.
    records = [json.loads(line) for line in (tmp_path / "gateway.log").read_text().splitlines()]
    created = [r for r in records if r.get("outcome") == "created"]
    assert sorted(r["message_id"] for r in created) == sorted(ids)
    assert all(r["ticket"].startswith("INC-") and isinstance(r["inbound_id"], int) and r["logger"] == "gateway.ingest"
               and r["process"] == "worker-0" for r in created)
    received = [r for r in records if r["message"].startswith("received <")]
    assert sorted(r["message_id"] for r in received) == sorted(ids)
    # Alembic's notes about itself are not the operator's business; its upgrades are.
    assert not [r for r in records if r["logger"] == "alembic.runtime.plugins"
                or r["message"].startswith(("Context impl", "Will assume"))]
    assert [r for r in records if r["message"].startswith("Running upgrade ") and f"-> {HEAD}," in r["message"]]


def test_readyz_names_a_killed_worker_until_serve_has_started_another(service, tmp_path):
    """SIGKILL the worker: serve sees it die, marks its heartbeat, and starts another a
    second later; /readyz is 503 naming worker-0 (and how it died) meanwhile, 200 after,
    and the new worker processes mail."""
    old = children(service.proc.pid)
    worker = _pid_of(service.proc.pid, "gw-worker-0")
    os.kill(worker, signal.SIGKILL)
    code, body = wait_until(lambda: (r := service.ready())[0] == 503 and r, timeout=30, interval=0.05)
    assert body["failing"] == ["worker-0"], body
    assert f"pid {worker} " in body["checks"]["worker-0"]["detail"]
    assert "killed by SIGKILL (signal 9)" in body["checks"]["worker-0"]["detail"]
    wait_until(lambda: service.ready()[0] == 200, timeout=90, interval=0.2)
    assert _pid_of(service.proc.pid, "gw-worker-0") != worker and set(children(service.proc.pid)) == set(old)
    log = (tmp_path / "gateway.log").read_text()
    assert f"worker-0 (pid {worker}) killed by SIGKILL (signal 9)" in log and "worker-0 started again" in log
    before = service.metrics()
    send(service.smtp_port, 1)
    wait_until(lambda: moved(before, service.metrics(), "gateway_mails_processed_total", outcome="created") == 1,
               timeout=60)


def test_readyz_turns_503_while_the_relay_refuses_and_200_once_it_takes_mail(service, relay):
    """The real relay refuses (554, then 451): two failed attempts in a row ([monitoring]
    relay_failures = 2) make /readyz 503 naming the relay; the 451's retry goes through
    and it is 200 again."""
    relay.script = ["554 5.7.1 Relay access denied", "451 4.3.0 Try again later"]
    before = service.metrics()
    send(service.smtp_port, 1, sender="anne@example.be")
    send(service.smtp_port, 2, sender="bob@example.be")
    code, body = wait_until(lambda: (r := service.ready())[0] == 503 and r, timeout=60, interval=0.1)
    assert body["failing"] == ["relay"], body
    assert body["checks"]["relay"]["detail"].startswith("2 of the last attempts failed in a row (limit 2)")
    refusing = service.metrics()
    assert refusing[("gateway_relay_failed_attempts", ())] == 2
    assert moved(before, refusing, "gateway_notifications_total", state="failed") == 1
    assert moved(before, refusing, "gateway_notifications_total", state="retried") == 1
    # The 451 is retried (retry_schedule = [2]) and taken: ready again.
    wait_until(lambda: service.ready()[0] == 200, timeout=60, interval=0.2)
    assert len(relay.received) == 1
    assert moved(before, service.metrics(), "gateway_notifications_total", state="sent") == 1


def _pid_of(parent: int, name: str) -> int:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == parent and (entry / "comm").read_text().strip() == name:
                return int(entry.name)
        except OSError:
            continue
    raise LookupError(f"no {name} under {parent}")
