"""The HTTP API's client for tests: an `Api` around a `gateway serve` (harness.http), its
config with the relay and the database, and a mail sent over SMTP."""

from __future__ import annotations

import email
import email.policy
import json
import smtplib
import urllib.error
import urllib.request
import uuid
from email.message import EmailMessage
from pathlib import Path

from conftest import run_gateway
from harness.http import HttpService

HELPDESK = "helpdesk@desk.example.com"


class Api:
    """The service and a client of its API."""

    def __init__(self, service: HttpService, folder: Path, relay):
        self.service, self.folder, self.relay = service, folder, relay
        self.tokens: dict[str, str] = {}

    def gateway(self, *args: str, check: bool = True):
        return run_gateway("--config", str(self.folder / "config.toml"), *args, cwd=self.folder, check=check)

    def token(self, name: str, role: str) -> str:
        out = self.gateway("tokens", "create", name, "--role", role).stdout.decode()
        self.tokens[name] = out.splitlines()[0].strip()
        return self.tokens[name]

    def call(self, method: str, path: str, token: str | None = None, body=None, *, raw: bytes | None = None,
             content_type: str | None = None, headers: dict | None = None):
        """(status, headers, parsed JSON or bytes) of a real HTTP request."""
        data, sent = raw, dict(headers or {})
        if body is not None:
            data, content_type = json.dumps(body).encode(), "application/json"
        if content_type:
            sent["Content-Type"] = content_type
        if token:
            sent["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(f"http://127.0.0.1:{self.service.http_port}/api/v1{path}", data=data,
                                         method=method, headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                status, got, payload = answer.status, answer.headers, answer.read()
        except urllib.error.HTTPError as error:
            status, got, payload = error.code, error.headers, error.read()
        kind = got.get("Content-Type", "")
        return status, got, json.loads(payload) if "json" in kind and payload else payload

    def mails_to(self, address: str) -> list[email.message.EmailMessage]:
        return [email.message_from_bytes(raw, policy=email.policy.default)
                for _, rcpts, raw in list(self.relay.received) if address in rcpts]


def service_config(folder: Path, database_url: str, smtp_port: int, http_port: int, relay_port: int,
                   extra: str = "", gateway_extra: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.toml").write_text(f"""
[database]
url = "{database_url}"

[gateway]
addresses = ["{HELPDESK}"]
secret = "test-secret-of-at-least-32-bytes-0123456789"
{gateway_extra}

[smtp]
port = {smtp_port}

[http]
port = {http_port}

[outbound]
transport = "smtp"
retry_schedule = [2]

[outbound.smtp]
host = "127.0.0.1"
port = {relay_port}
timeout = 10

[logging]
format = "json"
file = "gateway.log"

[monitoring]
heartbeat_interval = 1
{extra}""")


def answers(service: HttpService) -> bool:
    """The HTTP process answers (the door holds its port from the start; the process
    itself starts later)."""
    try:
        return service.get("/healthz")[0] == 200
    except OSError:
        return False


def send_mail(port: int, subject: str, body: str, sender: str = "marie.dupont@example.be",
              attachment: tuple[str, str, bytes] | None = None) -> str:
    msg = EmailMessage()
    msg["From"] = f"Marie Dupont <{sender}>"
    msg["To"] = HELPDESK
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@example.be>"
    msg.set_content(body)
    if attachment:
        name, kind, data = attachment
        maintype, subtype = kind.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.send_message(msg)
    return msg["Message-ID"]
