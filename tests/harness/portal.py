"""The customers' pages' tests: a real ``gateway serve`` (SMTP door, worker, deliverer writing
``.eml`` files, HTTP) in a folder of its own, mail sent to its door, the mails it
delivers read back, and an HTTP client with cookies that does not follow redirects.

``Desk`` reads like the story it serves: ``desk.mail_from(...)``, ``desk.delivered(to,
containing)``, ``desk.gateway("ticket", "set-status", ...)``, ``Customer(desk).sign_in(email)``.
"""

from __future__ import annotations

import email
import email.policy
import http.cookiejar
import json
import os
import re
import secrets
import signal
import smtplib
import subprocess
import sys
import urllib.error
import urllib.request
from email.message import EmailMessage
from pathlib import Path

from conftest import ROOT, free_port, run_gateway, wait_for_port
from harness.service import wait_until

SECRET = "portal-test-secret-of-at-least-32-bytes-0123"


class Service:
    """`gateway serve` in a subprocess: its SMTP door and its HTTP server on ports of their own."""

    def __init__(self, folder: Path, smtp_port: int, http_port: int):
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("GATEWAY_CONFIG", None)
        env.pop("GATEWAY_HTTP_PORT", None)  # the config's port (conftest sets one for other tests)
        self.smtp_port, self.http_port = smtp_port, http_port
        self.log = open(folder / "service.out", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(folder / "config.toml"),
                                      "serve"], cwd=folder, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_for_port(smtp_port, proc=self.proc)
        wait_for_port(http_port, timeout=60, proc=self.proc)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(timeout=10)
        finally:
            self.log.close()


class Desk:
    """A running gateway serve with the file transport, its folder, its ports."""

    def __init__(self, folder: Path, database_url: str = "", extra: str = ""):
        self.folder = folder
        smtp_port, http_port = free_port(), free_port()
        database = f'[database]\nurl = "{database_url}"\n' if database_url else ""
        (folder / "config.toml").write_text(f"""
[gateway]
addresses = ["helpdesk@desk.example.com"]
name = "Example Helpdesk"
secret = "{SECRET}"
{database}
[smtp]
port = {smtp_port}

[http]
port = {http_port}
public_url = "http://127.0.0.1:{http_port}"

[monitoring]
heartbeat_interval = 1
{extra}
""")
        self.service = Service(folder, smtp_port, http_port)
        self.base = f"http://127.0.0.1:{http_port}"
        self.outbox = folder / "var" / "outbox"

    def stop(self) -> None:
        if self.service.proc.poll() is None:
            self.service.stop()

    def gateway(self, *args: str) -> str:
        """The real command line on this desk's config; its standard output."""
        return run_gateway("--config", str(self.folder / "config.toml"), *args, cwd=self.folder,
                           env={"GATEWAY_HTTP_PORT": str(self.service.http_port)}).stdout.decode()

    def ticket(self, number: str) -> dict:
        return json.loads(self.gateway("ticket", "show", number, "--json"))

    def mail_from(self, sender: str, subject: str, body: str, *, name: str = "", html: str | None = None) -> str:
        """Send a mail to the helpdesk's door, as a mail program does; its Message-ID."""
        msg = EmailMessage()
        msg["From"] = f"{name} <{sender}>" if name else sender
        msg["To"] = "helpdesk@desk.example.com"
        msg["Subject"] = subject
        msg["Message-ID"] = f"<{secrets.token_hex(8)}@client.example.com>"
        msg.set_content(body)
        if html is not None:
            msg.add_alternative(html, subtype="html")
        with smtplib.SMTP("127.0.0.1", self.service.smtp_port, timeout=30) as smtp:
            smtp.send_message(msg)
        return msg["Message-ID"]

    def mails(self) -> list[EmailMessage]:
        found = []
        for path in sorted(self.outbox.glob("*.eml")) if self.outbox.is_dir() else []:
            with open(path, "rb") as fh:
                found.append(email.message_from_binary_file(fh, policy=email.policy.default))
        return found

    def delivered(self, to: str, containing: str = "", *, count: int = 1, timeout: float = 60) -> EmailMessage:
        """The ``count``-th mail delivered (an .eml written) to ``to`` whose text holds
        ``containing``, waited for."""
        def find():
            hits = [m for m in self.mails() if to.lower() in str(m["To"]).lower() and containing in text_of(m)]
            return hits[count - 1] if len(hits) >= count else None
        return wait_until(find, timeout=timeout, interval=0.2)


def text_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    return part.get_content() if part is not None else ""


def link_in(message: EmailMessage, kind: str = "t") -> str:
    """The link to the customers' pages in a mail's text (``t``: a ticket's, ``sign-in``)."""
    found = re.search(rf"https?://\S+/portal/{kind}/\S+", text_of(message))
    assert found, f"no /portal/{kind}/ link in:\n{text_of(message)}"
    return found.group(0)


class _Keep(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a redirect is an answer to look at, not to follow
        return None


class Answer:
    def __init__(self, status: int, headers, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    @property
    def location(self) -> str:
        return self.headers.get("Location", "")

    def csrf(self) -> str:
        found = re.search(r'name="csrf" value="([0-9a-f]+)"', self.text)
        assert found, "no CSRF token on the page"
        return found.group(1)


class Customer:
    """A person's web browser, without the browser: cookies kept, redirects not followed."""

    def __init__(self, desk: Desk):
        self.desk = desk
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), _Keep)

    def _open(self, request: urllib.request.Request) -> Answer:
        try:
            with self.opener.open(request, timeout=30) as answer:
                return Answer(answer.status, answer.headers, answer.read())
        except urllib.error.HTTPError as error:
            return Answer(error.code, error.headers, error.read())

    def url(self, path: str) -> str:
        return path if path.startswith("http") else self.desk.base + path

    def get(self, path: str, method: str = "GET") -> Answer:
        return self._open(urllib.request.Request(self.url(path), method=method))

    def post(self, path: str, fields: dict, files: list[tuple[str, str, str, bytes]] = ()) -> Answer:
        """A form posted as a browser does (multipart when there are files:
        (field, filename, content type, data))."""
        boundary = secrets.token_hex(12)
        body = b""
        for name, value in fields.items():
            body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").encode()
        for field, filename, kind, data in files:
            body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
                     f"Content-Type: {kind}\r\n\r\n").encode() + data + b"\r\n"
        body += f"--{boundary}--\r\n".encode()
        request = urllib.request.Request(self.url(path), data=body, method="POST",
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        return self._open(request)

    def csrf(self, path: str = "/portal") -> str:
        return self.get(path).csrf()

    def follow(self, link: str) -> Answer:
        """Open a link from a mail and press its button (the page's form)."""
        page = self.get(link)
        assert page.status == 200, (page.status, page.text)
        return self.post(link, {"csrf": page.csrf()})

    def sign_in(self, address: str, count: int = 1) -> Answer:
        """Ask for a sign-in link, take it from the delivered mail, use it."""
        answer = self.post("/portal/sign-in", {"email": address, "csrf": self.csrf()})
        assert answer.status == 200, answer.text
        link = link_in(self.desk.delivered(address, "/portal/sign-in/", count=count), "sign-in")
        done = self.follow(link)
        assert done.status == 303 and done.location.endswith("/portal/tickets"), (done.status, done.text)
        return done
