"""``gateway imap check``: each step of reaching a mailbox (the secret, the connection, TLS,
the login, the folders), tried in order, the first that fails named with its reason."""

from __future__ import annotations

import imaplib
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

from imapclient.exceptions import IMAPClientError, LoginError

from gateway.config import MailboxSection
from gateway.ingest.imap.client import ImapConfigError, close_quietly, connect, login, secret_for


@dataclass(frozen=True)
class Step:
    name: str
    ok: bool
    detail: str


def check(box: MailboxSection, env: Mapping[str, str] | None = None,
          ssl_context: ssl.SSLContext | None = None) -> list[Step]:
    """Try credentials, DNS, TCP, TLS/greeting, login and folders; stop at the first failure."""
    steps: list[Step] = []

    def fail(name: str, detail: str) -> list[Step]:
        steps.append(Step(name, False, detail))
        return steps

    try:
        kind, _secret = secret_for(box, env)
        steps.append(Step("credentials", True, "OAuth2 token obtained" if kind == "xoauth2" else "password found"))
    except ImapConfigError as exc:
        return fail("credentials", str(exc))
    try:
        infos = socket.getaddrinfo(box.host, box.port, type=socket.SOCK_STREAM)
        addresses = sorted({info[4][0] for info in infos})
        steps.append(Step("dns", True, f"{box.host} -> {', '.join(addresses)}"))
    except socket.gaierror as exc:
        return fail("dns", f"{box.host} does not resolve: {exc.strerror or exc}")
    try:
        with socket.create_connection((box.host, box.port), timeout=15):
            steps.append(Step("tcp", True, f"port {box.port} open"))
    except OSError as exc:
        return fail("tcp", f"cannot connect to {box.host}:{box.port}: {exc.strerror or exc}")
    tls_step = {"tls": "tls", "starttls": "starttls"}.get(box.security, "greeting")
    try:
        client = connect(box, ssl_context)
    except ssl.SSLError as exc:
        return fail(tls_step, f"TLS handshake failed: {exc.reason or exc}")
    except ssl.CertificateError as exc:  # pragma: no cover - a subclass of SSLError on 3.7+
        return fail(tls_step, f"certificate rejected: {exc}")
    except (OSError, IMAPClientError, imaplib.IMAP4.error) as exc:
        what = "no IMAP greeting" if box.security != "starttls" else "STARTTLS failed"
        return fail(tls_step, f"{what}: {type(exc).__name__}: {exc}")
    try:
        clear = "IMAP greeting received (no TLS" + (
            ")" if _loopback(box.host) else ": the password crosses the network unencrypted)")
        steps.append(Step(tls_step, True, {"tls": "TLS established", "starttls": "STARTTLS established"}
                          .get(box.security, clear)))
        try:
            login(client, box, env)
            steps.append(Step("login", True, f"logged in as {box.user}"))
        except (LoginError, IMAPClientError, imaplib.IMAP4.error) as exc:
            return fail("login", f"the server refused {box.user}: {_text(exc)}")
        if not client.folder_exists(box.folder):
            return fail("folder", f"folder {box.folder!r} does not exist")
        info = client.select_folder(box.folder, readonly=True)
        steps.append(Step("folder", True, f"{box.folder!r}: {info.get(b'EXISTS', 0)} message(s)"))
        for name in (box.processed_folder, box.failed_folder):
            steps.append(Step("folder", True, f"{name!r} exists" if client.folder_exists(name)
                              else f"{name!r} missing: it will be created on the first run"))
        caps = client.capabilities()
        steps.append(Step("capabilities", True, ", ".join(
            f"{c} {'yes' if c.encode() in caps else 'no'}" for c in ("IDLE", "MOVE", "UIDPLUS"))))
        return steps
    finally:
        close_quietly(client)


def _loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _text(exc: Exception) -> str:
    text = str(exc)
    if text.startswith("b'") or text.startswith('b"'):
        text = text[2:-1]
    return text
