"""Transports share one small interface (open, close, send), as Django's mail backends do.

``send`` returns a ``SendResult``: sent, or a temporary or permanent failure with the
server's answer.  Classifying a failure happens here, once.
"""

from __future__ import annotations

import os
import re
import smtplib
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from gateway.config import Config, OutboundSmtpSection


@dataclass(frozen=True)
class SendResult:
    outcome: str  # sent | temporary | permanent
    answer: str


class Transport:
    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def send(self, sender: str, recipients: list[str], raw: bytes, name_hint: str) -> SendResult:
        raise NotImplementedError

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()


class FileTransport(Transport):
    """Writes each mail as an ``.eml`` file into a folder, fsynced: try the loop without a relay."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)

    def send(self, sender: str, recipients: list[str], raw: bytes, name_hint: str) -> SendResult:
        self.folder.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name_hint)[:120]
        target = self.folder / f"{safe}.eml"
        tmp = self.folder / f".{safe}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        return SendResult("sent", f"written to {target.name}")


class SmtpTransport(Transport):
    """Sends through an SMTP relay; one connection is reused for a batch."""

    def __init__(self, settings: OutboundSmtpSection, base_dir: Path | None = None):
        self.settings = settings
        self.base_dir = base_dir
        self.conn: smtplib.SMTP | None = None

    def _password(self) -> str | None:
        s = self.settings
        if s.password_env:
            value = os.environ.get(s.password_env)
            if value is None:
                raise RuntimeError(f"outbound.smtp.password_env: ${s.password_env} is not set")
            return value
        if s.password_file:
            path = Path(s.password_file)
            if not path.is_absolute() and self.base_dir:
                path = self.base_dir / path
            return path.read_text().strip()
        return None

    def open(self) -> None:
        s = self.settings
        if s.security == "tls":
            conn: smtplib.SMTP = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout,
                                                  context=ssl.create_default_context())
        else:
            conn = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
        conn.ehlo()
        if s.security == "starttls":
            conn.starttls(context=ssl.create_default_context())
            conn.ehlo()
        password = self._password()
        if s.username and password is not None:
            conn.login(s.username, password)
        self.conn = conn

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.quit()
            except Exception:
                try:
                    self.conn.close()
                except Exception:
                    pass
            self.conn = None

    def send(self, sender: str, recipients: list[str], raw: bytes, name_hint: str) -> SendResult:
        try:
            if self.conn is None:
                self.open()
            assert self.conn is not None
            refused = self.conn.sendmail(sender, recipients, raw)
        except smtplib.SMTPRecipientsRefused as exc:
            self.close()
            codes = [code for code, _ in exc.recipients.values()]
            answer = "; ".join(f"{r}: {c} {m.decode(errors='replace') if isinstance(m, bytes) else m}"
                               for r, (c, m) in exc.recipients.items())
            return SendResult("temporary" if all(400 <= c < 500 for c in codes) else "permanent", answer)
        except smtplib.SMTPResponseException as exc:
            self.close()
            msg = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
            outcome = "permanent" if 500 <= exc.smtp_code < 600 else "temporary"
            return SendResult(outcome, f"{exc.smtp_code} {msg}")
        except (smtplib.SMTPException, OSError, socket.timeout) as exc:
            self.close()
            return SendResult("temporary", f"{type(exc).__name__}: {exc}")
        if refused:
            answer = "; ".join(f"{r}: {c} {m.decode(errors='replace')}" for r, (c, m) in refused.items())
            return SendResult("sent", f"250 accepted, some refused: {answer}")
        return SendResult("sent", "250 accepted")


def make_transport(config: Config) -> Transport:
    if config.outbound.transport == "smtp":
        return SmtpTransport(config.outbound.smtp, Path(config.base_dir))
    return FileTransport(config.outbox_dir)
