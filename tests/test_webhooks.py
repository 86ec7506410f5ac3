"""Webhooks (issue 22) against a real HTTP receiver started by the test and a real
`gateway serve`, on SQLite and PostgreSQL: every event kind arrives signed as the
Standard Webhooks specification says (verified with its own library and the secret);
a receiver answering 500 sees the same event again, same webhook-id, until it answers
200; the gateway killed while an event is on its way delivers it once after the
restart, with the same webhook-id; `gateway webhooks list` and /metrics say so."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks import Webhook

from conftest import free_port
from harness.api import Api, answers, send_mail, service_config
from harness.http import HttpService as Service
from harness.relay import running_relay
from harness.service import wait_until

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # 24 bytes, base64: the spec's example form
EVENTS = ["ticket.created", "ticket.status_changed", "ticket.comment_added", "mail.quarantined",
          "notification.failed"]


class Receiver:
    """A real HTTP server that records every POST (headers and body) and answers as its
    script for the event's type (or "*") says: a status code, or "hang" (answer nothing
    until released); then 200."""

    def __init__(self):
        self.script: dict[str, list[str]] = {}
        self.calls: list[dict] = []  # every request that arrived
        self.answered: list[dict] = []  # those answered 2xx
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                call = {"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body,
                        "at": time.monotonic()}
                receiver.calls.append(call)
                kind = json.loads(body).get("type", "")
                script = receiver.script.get(kind) or receiver.script.get("*") or []
                action = script.pop(0) if script else "200"
                if action == "hang":
                    receiver.release.wait(120)
                    return  # the connection closes with no answer
                self.send_response(int(action))
                self.end_headers()
                if action.startswith("2"):
                    receiver.answered.append(call)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, calls=None) -> list[dict]:
        return [json.loads(c["body"]) for c in (self.answered if calls is None else calls)]

    def close(self):
        self.release.set()
        self.server.shutdown()


@pytest.fixture
def receiver():
    started = Receiver()
    yield started
    started.close()


def hooks_config(receiver: Receiver, schedule: str = "[1, 1, 1, 1]") -> str:
    return f"""
[[webhooks]]
url = "http://127.0.0.1:{receiver.port}/hooks/gateway"
events = {json.dumps(EVENTS)}
secret = "{SECRET}"
retry_schedule = {schedule}
"""


def start(folder, database_url, relay, extra: str) -> Service:
    smtp_port, http_port = free_port(), free_port()
    service_config(folder, database_url, smtp_port, http_port, relay.port,
                   extra=extra, gateway_extra='unknown_senders = "quarantine"')
    service = Service(folder, smtp_port, http_port)
    wait_until(lambda: answers(service), timeout=180, interval=0.5)
    return service


def verified(call: dict) -> dict:
    """The body, once its signature checks out with the secret (the library of the spec)."""
    return Webhook(SECRET).verify(call["body"], call["headers"])


def test_every_event_signed_and_retried_on_500(tmp_path, database_url, receiver):
    with running_relay() as relay:
        relay.script = ["550 5.1.1 no such user"]  # the first notification fails for good
        receiver.script = {"ticket.created": ["500", "500"]}  # refused twice
        service = start(tmp_path, database_url, relay, hooks_config(receiver))
        api = Api(service, tmp_path, relay)
        try:
            agent = api.token("hooks-test", "agent")
            status, _, done = api.call("POST", "/tickets", agent, {
                "process": "incident", "reporter": "ghost@example.be", "title": "Scanner offline",
                "description": "The scanner on floor 3 is offline."})
            assert status == 201
            number = done["number"]
            # The confirmation to ghost@ is refused (550): notification.failed.
            wait_until(lambda: [c for c in receiver.calls
                                          if json.loads(c["body"])["type"] == "ticket.created"][2:], timeout=90)
            tries = [c for c in receiver.calls if json.loads(c["body"])["type"] == "ticket.created"]
            # Three attempts of one event: the same id, each signed with its own timestamp.
            assert len({c["headers"]["webhook-id"] for c in tries}) == 1 and len(tries) == 3, tries
            for call in tries:
                body = verified(call)
                assert body["data"]["ticket"]["number"] == number
            api.gateway("ticket", "set-status", number, "in-progress")
            api.call("POST", f"/tickets/{number}/comments", agent, {"text": "Rebooted the scanner."})
            send_mail(service.smtp_port, "Hello", "Who are you?", sender="stranger@elsewhere.example")
            # The customer's reply by mail: a comment on the ticket, told as such.
            send_mail(service.smtp_port, f"Re: [{number}] Scanner offline", "It is on again, thanks.",
                      sender="ghost@example.be")
            wait_until(lambda: [e for e in receiver.events() if e["type"] == "ticket.comment_added"
                                and e["data"].get("channel") == "mail"], timeout=120)
            wait_until(lambda: {e["type"] for e in receiver.events()} >= set(EVENTS), timeout=120)
            for call in receiver.answered:
                verified(call)
            # A tampered body or a wrong secret is refused by the receiver's check.
            forged = dict(receiver.answered[0], body=receiver.answered[0]["body"].replace(b"\"data\"", b"\"dat4\""))
            with pytest.raises(Exception):
                verified(forged)
            with pytest.raises(Exception):
                Webhook("whsec_" + "A" * 32).verify(receiver.answered[0]["body"], receiver.answered[0]["headers"])
            by_type = {e["type"]: e["data"] for e in receiver.events()}
            assert (by_type["ticket.status_changed"]["from_status"],
                    by_type["ticket.status_changed"]["to_status"]) == ("New", "In progress")
            assert by_type["ticket.comment_added"]["ticket"]["number"] == number
            assert by_type["notification.failed"]["recipient"] == "ghost@example.be"
            assert "550" in by_type["notification.failed"]["answer"]
            assert by_type["mail.quarantined"]["inbound_id"] >= 1
            # Each delivered once (a 2xx ends it), and the list says so.
            ids = [c["headers"]["webhook-id"] for c in receiver.answered]
            assert len(ids) == len(set(ids))
            listed = json.loads(api.gateway("webhooks", "list", "--json").stdout)
            assert {r["state"] for r in listed} == {"delivered"}
            first = next(r for r in listed if r["id"] == tries[0]["headers"]["webhook-id"])
            assert first["attempts"] == 3 and first["last_answer"].startswith("200")
            metrics = service.metrics()
            assert metrics[("gateway_webhook_events", (("state", "delivered"),))] == len(listed)
            assert metrics[("gateway_webhook_attempts_total", (("state", "retry"),))] == 2
        finally:
            service.kill()


def test_killed_before_the_answer_delivered_once_after_restart(tmp_path, database_url, receiver):
    with running_relay() as relay:
        receiver.script = {"*": ["hang"]}
        service = start(tmp_path, database_url, relay, hooks_config(receiver, "[600]"))
        api = Api(service, tmp_path, relay)
        try:
            api.gateway("ticket", "create", "--process", "incident", "--reporter", "anna@example.be",
                        "--title", "Badge reader broken", "--description", "The badge reader refuses badges.")
            # The event is on its way: the receiver holds the request, unanswered.
            wait_until(lambda: receiver.calls, timeout=90)
            event_id = receiver.calls[0]["headers"]["webhook-id"]
            service.kill()  # SIGKILL to the whole group: no answer recorded, nothing cleaned up
        finally:
            service.kill()
        receiver.release.set()
        assert receiver.answered == []
        restarted = start(tmp_path, database_url, relay, hooks_config(receiver, "[600]"))
        try:
            wait_until(lambda: receiver.answered, timeout=120)
            time.sleep(5)  # anything sent twice would have come by now (the deliverer looks every 2 s)
            after = receiver.calls[1:]
            assert [c["headers"]["webhook-id"] for c in after] == [event_id]
            assert len(receiver.answered) == 1
            body = verified(receiver.answered[0])
            assert body["type"] == "ticket.created" and body["data"]["ticket"]["title"] == "Badge reader broken"
        finally:
            restarted.kill()

