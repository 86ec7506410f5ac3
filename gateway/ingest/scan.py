"""Attachments scanned by ClamAV before a ticket offers them (issue 25).

The whole stored mail is handed to ``clamd`` over its UNIX socket or TCP with its
INSTREAM command (clamd decodes the MIME parts and archives itself): a few lines of its
documented protocol rather than a client library (the Python ones are unmaintained).
It runs in processing, before the mail is parsed, so nothing of an infected mail is
kept as an attachment: the mail is quarantined with the signature's name, no ticket is
made, and so nobody is told of it.

A clamd that does not answer makes the mail wait (``gateway.errors.Wait``: it stays
received, and is tried again), never pass unscanned, unless ``[scan] pass_unscanned``
says otherwise.  An answer that is an error (a mail larger than clamd's
StreamMaxLength) quarantines the mail: it could not be scanned, and it will not be
scannable later either.
"""

from __future__ import annotations

import logging
import socket
import struct
import time

from gateway import metrics
from gateway.config import Config
from gateway.errors import Quarantine, Wait

log = logging.getLogger("gateway.scan")

CHUNK = 64 * 1024
# After clamd did not answer, the next try waits this long (the worker sleeps instead
# of spinning over the waiting mails).
RETRY_AFTER = 1.0


class ScannerDown(OSError):
    """clamd could not be reached, or did not answer in time."""


class Scanner:
    def __init__(self, config: Config):
        self.address = config.scan.clamd
        self.timeout = config.scan.timeout
        self.pass_unscanned = config.scan.pass_unscanned
        self._retry_at = 0.0

    def _connect(self) -> socket.socket:
        if ":" in self.address and not self.address.startswith("/"):
            host, _, port = self.address.rpartition(":")
            return socket.create_connection((host.strip("[]"), int(port)), timeout=self.timeout)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.address)
        except OSError:
            sock.close()
            raise
        return sock

    def answer(self, raw: bytes) -> str:
        """clamd's answer for ``raw`` ("stream: OK", "stream: <name> FOUND", "... ERROR");
        ScannerDown when it cannot be had."""
        try:
            with self._connect() as sock:
                sock.sendall(b"zINSTREAM\0")
                view = memoryview(raw)
                for start in range(0, len(raw), CHUNK):
                    part = view[start:start + CHUNK]
                    sock.sendall(struct.pack("!L", len(part)) + part)
                sock.sendall(struct.pack("!L", 0))
                reply = b""
                while not reply.endswith(b"\0"):
                    got = sock.recv(4096)
                    if not got:
                        break
                    reply += got
        except OSError as exc:
            raise ScannerDown(f"clamd at {self.address} did not answer: {exc}") from None
        if not reply:
            raise ScannerDown(f"clamd at {self.address} closed the connection without an answer")
        return reply.rstrip(b"\0").decode("utf-8", "replace").strip()

    def scan(self, raw: bytes) -> None:
        """Nothing when ``raw`` is clean; Quarantine (naming the signature) when it is not;
        Wait when clamd does not answer."""
        wait = self._retry_at - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, RETRY_AFTER))
        try:
            said = self.answer(raw)
        except ScannerDown as exc:
            self._retry_at = time.monotonic() + RETRY_AFTER
            if self.pass_unscanned:
                log.warning("%s; processed unscanned ([scan] pass_unscanned)", exc)
                return
            log.warning("%s; the mail waits", exc)
            raise Wait(f"waits for the virus scanner: {exc}") from None
        self._retry_at = 0.0
        if said.endswith("FOUND"):
            name = said.removeprefix("stream:").strip()[:-len("FOUND")].strip()
            metrics.infected(name)
            raise Quarantine(f"infected: {name} (ClamAV); no attachment kept, nobody told")
        if said.endswith("ERROR"):
            raise Quarantine(f"could not be scanned: clamd said {said!r}")
        if not said.endswith("OK"):
            raise Wait(f"waits for the virus scanner: clamd said {said!r}")
