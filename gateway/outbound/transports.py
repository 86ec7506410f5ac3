"""Transports share one small interface (open, close, send), as Django's mail backends do.

``send`` returns a ``SendResult``: sent, or a temporary or permanent failure with the
server's answer.  Classifying a failure happens here, once.
"""

from __future__ import annotations

import logging
import os
import re
import smtplib
import ssl
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

from gateway.config import Config, OutboundSmtpSection
from gateway.outbound.compose import ascii_domain
from store.addresses import InvalidAddress, mailbox, quote_local

log = logging.getLogger("gateway.outbound")


# What a transport calls when the relay has all of a mail but its end; what it returns,
# if anything, right after the end (see Transport.send).
AtEnd = Callable[[], "Callable[[], None] | None"]


@dataclass(frozen=True)
class SendResult:
    """What became of one mail.

    ``outcome``: sent, temporary (try again later) or permanent (never again).
    ``answer``: the server's words, for the attempt log and ``outbox list``.
    ``retry``: recipients refused with a 4xx while others were accepted; the mail counts as
    sent for the others and must be sent again to these.
    ``connection``: the failure is the relay's (cannot connect, TLS, AUTH), not this mail's;
    the worker stops the batch instead of trying every mail against a dead relay.
    """

    outcome: str  # sent | temporary | permanent
    answer: str
    retry: tuple[str, ...] = ()
    connection: bool = False


class Transport:
    """``open``, ``send`` per mail, ``close``.  ``unrecorded`` holds sends whose outcome
    the outbox could not commit (see ``gateway.outbound.outbox``): the worker keeps one
    transport for its life, so a mail the relay took is recorded later, not sent again."""

    def __init__(self) -> None:
        # outbox id -> (Delivery, SendResult, time of the attempt)
        self.unrecorded: dict[int, tuple] = {}

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def send(self, sender: str, recipients: list[str], raw: bytes, name_hint: str,
             at_end: AtEnd | None = None) -> SendResult:
        """Send one mail.  ``at_end`` is called when the relay has the whole message but
        its end (the SMTP dot; the file's rename): after it the mail is the relay's, before
        it the relay drops it.  If it raises, the mail is not ended (a temporary failure).
        What it returns, if anything, is called right after the end went out (to wait for
        what ``at_end`` only started: gateway.outbound.outbox._handing)."""
        raise NotImplementedError

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()


class FileTransport(Transport):
    """Writes each mail as an ``.eml`` file into a folder, fsynced: try the loop without a relay."""

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = Path(folder)

    def open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)

    def send(self, sender: str, recipients: list[str], raw: bytes, name_hint: str,
             at_end: AtEnd | None = None) -> SendResult:
        self.folder.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name_hint)[:120]
        target = self.folder / f"{safe}.eml"
        tmp = self.folder / f".{safe}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        finish = at_end() if at_end is not None else None
        os.replace(tmp, target)
        if finish is not None:
            finish()
        return SendResult("sent", f"written to {target.name}")


class SmtpTransport(Transport):
    """Sends through an SMTP relay; one connection is reused for a batch.

    Security ``none``, ``starttls`` (required: a relay that does not offer it is an error,
    never a silent fall back to plain text) or ``tls`` (implicit TLS, port 465).  AUTH when a
    username is set, the password from the environment or a file.

    A connection that breaks (dropped mid-DATA, a timeout, a 421) is closed; the mail in
    flight gets a temporary failure and the next ``send`` opens a new connection.
    Failures while opening (connect, TLS, AUTH) are temporary whatever their code: they
    say the relay or our settings are wrong, not that this mail is undeliverable, and a
    misconfigured password must not fail every notification for good.
    """

    def __init__(self, settings: OutboundSmtpSection, base_dir: Path | None = None):
        super().__init__()
        self.settings = settings
        self.base_dir = base_dir
        self.conn: smtplib.SMTP | None = None

    def _path(self, value: str) -> Path:
        path = Path(value).expanduser()
        if not path.is_absolute() and self.base_dir:
            path = self.base_dir / path
        return path

    def _password(self) -> str | None:
        s = self.settings
        if s.password_env:
            value = os.environ.get(s.password_env)
            if value is None:
                raise RuntimeError(f"outbound.smtp.password_env: ${s.password_env} is not set")
            return value
        if s.password_file:
            return self._path(s.password_file).read_text().strip()
        return None

    def _tls_context(self) -> ssl.SSLContext:
        cafile = str(self._path(self.settings.tls_ca_file)) if self.settings.tls_ca_file else None
        return ssl.create_default_context(cafile=cafile)

    def __enter__(self):
        # The connection opens on the first send: failing to reach the relay is a result
        # of that send (temporary), not an exception out of the batch.
        return self

    def open(self) -> None:
        """Connect, say EHLO, STARTTLS and AUTH as configured.  Raises on failure."""
        if self.conn is not None:
            return
        s = self.settings
        if s.security not in ("none", "starttls", "tls"):
            raise ValueError(f"outbound.smtp.security must be none, starttls or tls, not {s.security!r}")
        if s.security == "tls":
            conn: smtplib.SMTP = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout, context=self._tls_context())
        else:
            conn = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
        try:
            conn.ehlo()
            if s.security == "starttls":
                # smtplib.starttls raises SMTPNotSupportedError when the relay does not offer it.
                conn.starttls(context=self._tls_context())
                conn.ehlo()
            if s.username:
                password = self._password()
                if password is None:
                    raise RuntimeError("outbound.smtp.username is set but neither password_env nor password_file")
                conn.login(s.username, password)
        except BaseException:
            _close_quietly(conn)
            raise
        self.conn = conn

    def close(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            try:
                conn.quit()
            except Exception:  # noqa: BLE001 - the connection may already be gone
                _close_quietly(conn)

    def _drop(self) -> None:
        """Forget a connection that failed, without talking to it any more."""
        if self.conn is not None:
            _close_quietly(self.conn)
            self.conn = None

    def send(self, sender: str, recipients: list[str], raw: bytes, name_hint: str,
             at_end: AtEnd | None = None) -> SendResult:
        try:
            self.open()
        except smtplib.SMTPResponseException as exc:
            return SendResult("temporary", f"cannot open the relay: {_answer(exc.smtp_code, exc.smtp_error)}",
                              connection=True)
        except (smtplib.SMTPException, OSError, RuntimeError, ValueError) as exc:
            return SendResult("temporary", f"cannot open the relay: {type(exc).__name__}: {exc}", connection=True)
        conn = self.conn
        assert conn is not None
        try:
            return self._transaction(conn, sender, recipients, raw, at_end)
        except smtplib.SMTPResponseException as exc:
            # 421 means the relay closes the connection; other codes leave it usable, but a
            # fresh connection for the next mail costs little and leaves no doubtful state.
            self._drop()
            return SendResult(_classify(exc.smtp_code), _answer(exc.smtp_code, exc.smtp_error))
        except (smtplib.SMTPException, OSError) as exc:
            # Dropped connection, timeout, reset: no 250 came, so the mail is not known to
            # be taken and goes again later.  (A relay that queued it but answered after
            # data_timeout gets a copy with the same Message-ID: hence the long default.)
            self._drop()
            return SendResult("temporary", f"{type(exc).__name__}: {exc}")
        except UnicodeEncodeError as exc:
            # An address that needs SMTPUTF8 and a relay that does not offer it: this will
            # not change by trying again.
            self._rset_or_drop()
            return SendResult("permanent", f"the relay does not offer SMTPUTF8, needed for this address: {exc}")
        except Exception as exc:  # noqa: BLE001 - nothing may escape the delivery of one mail
            log.exception("unexpected failure while sending %s", name_hint)
            self._drop()
            return SendResult("temporary", f"{type(exc).__name__}: {exc}")

    def _rset_or_drop(self) -> None:
        """Reset the transaction to reuse the connection, or drop it if even that fails."""
        if self.conn is None:
            return
        try:
            self.conn.rset()
        except Exception:  # noqa: BLE001
            self._drop()

    def _refused(self, code: int, msg: bytes | str, stage: str) -> SendResult:
        # 421: the relay is closing the connection; anything else: reset and go on.
        if code == 421:
            self._drop()
        else:
            self._rset_or_drop()
        return SendResult(_classify(code), f"{stage}{_answer(code, msg)}")

    def _transaction(self, conn: smtplib.SMTP, sender: str, recipients: list[str], raw: bytes,
                     at_end: AtEnd | None = None) -> SendResult:
        """MAIL, RCPT per recipient, DATA: the steps of ``sendmail``, with each answer kept.

        Each recipient is checked again and written by us (``RCPT TO:<addr-spec>``, its
        local part quoted where it must be, its domain in IDNA form), not re-parsed by
        smtplib: one address is one RCPT, whatever commas its local part holds."""
        sender = ascii_domain(sender)
        original: dict[str, str] = {}
        for r in recipients:
            try:
                box = mailbox(r)
            except InvalidAddress as exc:
                return SendResult("permanent", f"not an address to send to: {r!r}: {exc}")
            original[f"{quote_local(box.local)}@{box.ascii_domain}"] = r
        recipients = list(original)
        options = ["SMTPUTF8"] if conn.has_extn("smtputf8") and not _ascii(sender, recipients) else []
        if conn.has_extn("size"):
            options.append(f"SIZE={len(raw)}")
        code, msg = conn.mail(sender, options)
        if code != 250:
            return self._refused(code, msg, "MAIL FROM: ")
        accepted: list[str] = []
        refused: dict[str, tuple[int, str]] = {}
        for rcpt in recipients:
            code, msg = _rcpt(conn, rcpt)
            if code == 421:
                return self._refused(code, msg, f"RCPT TO {rcpt}: ")
            if code in (250, 251):
                accepted.append(rcpt)
            else:
                refused[rcpt] = (code, _answer(code, msg))
        temporary = tuple(original[r] for r, (c, _) in refused.items() if not 500 <= c < 600)
        refusals = "; ".join(f"{r}: {a}" for r, a in ((r, a) for r, (_, a) in refused.items()))
        if not accepted:
            self._rset_or_drop()
            return SendResult("temporary" if temporary else "permanent", refusals)
        # The long wait is for the answer after the dot: give DATA the RFC's time.
        if conn.sock is not None:
            conn.sock.settimeout(self.settings.data_timeout)
        try:
            code, msg = _data(conn, raw, at_end)
        finally:
            if conn.sock is not None:
                conn.sock.settimeout(self.settings.timeout)
        if code != 250:
            return self._refused(code, msg, "DATA: ")
        answer = _answer(code, msg)
        if refused:
            answer = f"{answer}; refused: {refusals}"
        return SendResult("sent", answer, retry=temporary)


def _data(conn: smtplib.SMTP, raw: bytes, at_end: AtEnd | None) -> tuple[int, bytes]:
    """smtplib's ``data``, with ``at_end`` called between the message and its end: a
    relay that never gets the dot drops the message, one that got it delivers it."""
    conn.putcmd("data")
    code, repl = conn.getreply()
    if code != 354:
        raise smtplib.SMTPDataError(code, repl)
    body = re.sub(rb"(?m)^\.", b"..", raw)
    if body[-2:] != b"\r\n":
        body += b"\r\n"
    conn.send(body)
    finish = at_end() if at_end is not None else None
    conn.send(b".\r\n")
    if finish is not None:
        finish()
    return conn.getreply()


def _rcpt(conn: smtplib.SMTP, address: str) -> tuple[int, bytes]:
    """RCPT TO for ``address`` exactly as given (smtplib's rcpt parses it again).  A
    non-ASCII address raises UnicodeEncodeError unless MAIL declared SMTPUTF8, as in
    smtplib (its command encoding)."""
    conn.putcmd("rcpt", f"TO:<{address}>")
    return conn.getreply()


def _ascii(sender: str, recipients: list[str]) -> bool:
    return all(a.isascii() for a in [sender, *recipients])


def _classify(code: int) -> str:
    return "permanent" if 500 <= code < 600 else "temporary"


def _answer(code: int, msg: bytes | str) -> str:
    text = msg.decode("utf-8", errors="replace") if isinstance(msg, bytes) else str(msg)
    return f"{code} {' '.join(text.split())}"


def _close_quietly(conn: smtplib.SMTP) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001
        pass


def make_transport(config: Config) -> Transport:
    if config.outbound.transport == "smtp":
        return SmtpTransport(config.outbound.smtp, Path(config.base_dir))
    return FileTransport(config.outbox_dir)
