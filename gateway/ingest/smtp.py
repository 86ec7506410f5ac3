"""The SMTP door: refuse what can be refused while the sender can still be told, store
the rest durably, then answer 250.  No parsing, templates or ticket logic here.

Storing runs in the spool's writer thread, never on the event loop, so one slow disk
does not stall every other connection; concurrent DATA commands share one commit (group
commit, see spool.py), and each is answered only once its own commit is done.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
from typing import Callable

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, _DataState

from gateway.config import Config
from gateway.errors import StoreFailed
from gateway.ingest.inbound import Stored, header_message_id
from gateway.ingest.parse import Limits, over_limits
from gateway.ingest.spool import Spool
from store.addresses import key as address_key
from store.blobs import BlobStore, BlobWriter

log = logging.getLogger("gateway.smtp")


class Door:
    """aiosmtpd handler."""

    def __init__(self, config: Config, engine, blobs: BlobStore, on_stored: Callable[[Stored], None] | None = None,
                 spool: Spool | None = None):
        self.config = config
        self.engine = engine
        self.blobs = blobs
        self.on_stored = on_stored
        self.spool = spool or Spool(engine, blobs)
        self.own = {address_key(a) for a in config.gateway.addresses}
        self.own |= {address_key(a) for a in config.routing.routes}
        self.domains = {a.rpartition("@")[2] for a in self.own}
        self.limits = Limits(config.limits.max_parts, config.limits.max_depth, config.limits.max_header_length)

    def accepts(self, address: str) -> bool:
        k = address_key(address)
        local, _, domain = k.rpartition("@")
        if domain not in self.domains:
            return False
        if self.config.gateway.catch_all:
            return True
        return f"{local.split('+', 1)[0]}@{domain}" in self.own

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options):
        if not self.accepts(address):
            return "550 5.1.1 No such mailbox here"
        if len(envelope.rcpt_tos) >= self.config.smtp.max_recipients:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope):
        spooled = getattr(envelope, "spooled", None)
        if spooled is not None:
            return await self._handle_spooled(envelope, spooled)
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        loop = asyncio.get_running_loop()
        # Refuse a hostile structure while the sender can still be told; the check is a
        # linear scan, run off the event loop like the storing.
        problem = await loop.run_in_executor(None, over_limits, raw, self.limits)
        if problem:
            log.warning("refused a mail from %s: %s", envelope.mail_from, problem)
            return f"552 5.3.4 Message refused: {problem}"
        try:
            # 250 only once the batch holding this mail is committed and its blob fsynced.
            stored = await asyncio.wrap_future(
                self.spool.submit(raw, source="smtp", mail_from=envelope.mail_from or "",
                                  rcpt_to=tuple(envelope.rcpt_tos)))
        except StoreFailed as exc:
            log.error("could not store a mail from %s: %s", envelope.mail_from, exc)
            return "451 4.3.0 Could not store the message; please try again later"
        log.info("received <%s> from %s to %s, %d bytes%s", stored.message_id, envelope.mail_from,
                 ",".join(envelope.rcpt_tos), len(raw), " (duplicate)" if stored.duplicate else "")
        if self.on_stored is not None:
            self.on_stored(stored)
        return f"250 2.0.0 Stored as #{stored.id}"

    async def _handle_spooled(self, envelope: Envelope, writer: BlobWriter) -> str:
        """A large mail, already in a temporary file of the blob store (see SpoolingSMTP):
        the same checks and the same group commit, without holding it in memory."""
        loop = asyncio.get_running_loop()
        try:
            problem, message_id = await loop.run_in_executor(None, _check_spooled, writer, self.limits)
        except Exception as exc:  # noqa: BLE001 - the sender is told to retry
            writer.abort()
            log.error("could not read back a mail from %s: %s", envelope.mail_from, exc)
            return "451 4.3.0 Could not store the message; please try again later"
        if problem:
            writer.abort()
            log.warning("refused a mail from %s: %s", envelope.mail_from, problem)
            return f"552 5.3.4 Message refused: {problem}"
        try:
            stored = await asyncio.wrap_future(
                self.spool.submit_written(writer, message_id, source="smtp", mail_from=envelope.mail_from or "",
                                          rcpt_to=tuple(envelope.rcpt_tos)))
        except StoreFailed as exc:
            log.error("could not store a mail from %s: %s", envelope.mail_from, exc)
            return "451 4.3.0 Could not store the message; please try again later"
        log.info("received <%s> from %s to %s, %d bytes%s", stored.message_id, envelope.mail_from,
                 ",".join(envelope.rcpt_tos), writer.size, " (duplicate)" if stored.duplicate else "")
        if self.on_stored is not None:
            self.on_stored(stored)
        return f"250 2.0.0 Stored as #{stored.id}"


def _check_spooled(writer: BlobWriter, limits: Limits) -> tuple[str | None, str]:
    """over_limits and the Message-ID of a spooled mail, read through a memory map (the
    pages are the file's, given back when it is unmapped)."""
    writer.flush()
    with open(writer.path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        return over_limits(mapped, limits), header_message_id(mapped)


# A mail larger than this is written to a file as it arrives rather than kept in memory.
SPOOL_IN_MEMORY = 1 << 20


class SpoolingSMTP(SMTP):
    """aiosmtpd's SMTP whose DATA keeps a large mail on disk, not in memory.

    aiosmtpd keeps DATA as a list of line objects, then joins them: a 34 MB mail costs
    the door ~3.8 times its size.  This is its ``smtp_DATA`` (aiosmtpd 1.4) with the lines
    written, dot-unstuffed, to a temporary blob in batches of ``SPOOL_IN_MEMORY`` once the
    mail grows past that; a smaller mail is handed over as bytes as before.  The end of
    DATA is still only <CR><LF>.<CR><LF> (aiosmtpd reads CRLF-terminated lines: the fix
    for SMTP smuggling, CVE-2024-27305), and over the size limit the rest is read and
    dropped, then 552."""

    async def smtp_DATA(self, arg: str) -> None:
        blobs: BlobStore | None = getattr(self.event_handler, "blobs", None)
        if self._decode_data or blobs is None or "DATA" not in self._handle_hooks:
            # Not the door's set-up (bytes, a blob store, handle_DATA): aiosmtpd's own way.
            return await super().smtp_DATA(arg)
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        loop = asyncio.get_running_loop()
        pending: list[bytes] = []  # unstuffed lines not yet written
        pending_bytes = num_bytes = 0
        writer: BlobWriter | None = None
        limit = self.data_size_limit
        fragments: list[bytes] = []
        state = _DataState.NOMINAL
        ended = False
        try:
            while self.transport is not None:
                try:
                    line: bytes = await self._reader.readuntil(b"\r\n")
                except asyncio.CancelledError:
                    log.info("connection lost during DATA")
                    self._writer.close()
                    raise
                except asyncio.LimitOverrunError as e:
                    # A line longer than the stream limit: read on, answer once the data ends.
                    if state == _DataState.NOMINAL:
                        state = _DataState.TOO_LONG
                    pending.clear()
                    line = await self._reader.read(e.consumed)
                if not fragments and line == b".\r\n":
                    ended = True
                    break
                num_bytes += len(line)
                if state == _DataState.NOMINAL and limit and num_bytes > limit:
                    state = _DataState.TOO_MUCH  # drain the rest, then 552
                    pending.clear()
                fragments.append(line)
                if not line.endswith(b"\r\n"):
                    continue
                if state == _DataState.NOMINAL:
                    line = b"".join(fragments)
                    if len(line) > self.line_length_limit:
                        state = _DataState.TOO_LONG
                        pending.clear()
                    else:
                        # Dot-unstuffing (RFC 5321, 4.5.2).
                        pending.append(line[1:] if line.startswith(b".") else line)
                        pending_bytes += len(line)
                        if pending_bytes >= SPOOL_IN_MEMORY:
                            if writer is None:
                                writer = await loop.run_in_executor(None, blobs.writer)
                            chunk = b"".join(pending)
                            pending.clear()
                            pending_bytes = 0
                            await loop.run_in_executor(None, writer.write, chunk)
                fragments.clear()
            if ended and state == _DataState.NOMINAL and writer is not None and pending:
                chunk = b"".join(pending)
                pending.clear()
                await loop.run_in_executor(None, writer.write, chunk)
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        if not ended or state != _DataState.NOMINAL:
            if writer is not None:
                writer.abort()
            if state == _DataState.TOO_LONG:
                await self.push("500 Line too long (see RFC5321 4.5.3.1.6)")
            elif state == _DataState.TOO_MUCH:
                await self.push("552 Error: Too much mail data")
            self._set_post_data_state()
            return
        if writer is None:
            content = b"".join(pending)
            pending.clear()
            self.envelope.content = self.envelope.original_content = content
        else:
            # The handler owns the temporary blob from here: it commits or drops it.
            self.envelope.spooled = writer
        try:
            status = await self._call_handler_hook("DATA")
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)


class _Connections:
    """Connections open now, in all and per IP address, shared by every session."""

    def __init__(self) -> None:
        self.total = 0
        self.by_ip: dict[str, int] = {}


# Commands a client has no reason to repeat endlessly in one session; the others are
# bounded by the size of a mail batch (a relay may send hundreds of mails on one connection).
COMMAND_CALL_LIMIT = {"NOOP": 100, "RSET": 1000, "VRFY": 10, "EXPN": 10, "HELP": 10, "*": 1_000_000}


def make_server_factory(config: Config, door: Door) -> Callable[[], SMTP]:
    connections = _Connections()
    limit_total = config.smtp.max_connections
    limit_ip = config.smtp.max_connections_per_ip

    class GatewaySMTP(SpoolingSMTP):
        """aiosmtpd's SMTP with caps on concurrent connections, which it lacks, and a
        large mail's DATA kept on disk (SpoolingSMTP)."""

        _counted_ip: str | None = None

        def connection_made(self, transport) -> None:
            peer = transport.get_extra_info("peername")
            ip = str(peer[0]) if peer else "?"
            if connections.total >= limit_total or connections.by_ip.get(ip, 0) >= limit_ip:
                log.warning("refused a connection from %s: %d open, %d from it", ip, connections.total,
                            connections.by_ip.get(ip, 0))
                transport.write(b"421 4.7.0 Too many connections, please try again later\r\n")
                transport.close()
                return
            self._counted_ip = ip
            connections.total += 1
            connections.by_ip[ip] = connections.by_ip.get(ip, 0) + 1
            super().connection_made(transport)

        def connection_lost(self, exc) -> None:
            if self._counted_ip is None:
                return  # refused above: aiosmtpd never saw this connection
            ip, self._counted_ip = self._counted_ip, None
            connections.total -= 1
            connections.by_ip[ip] -= 1
            if not connections.by_ip[ip]:
                del connections.by_ip[ip]
            super().connection_lost(exc)

    def factory() -> SMTP:
        return GatewaySMTP(
            door,
            data_size_limit=config.smtp.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=config.message_id_domain,
            ident="helpdesk gateway",
            timeout=config.smtp.timeout,
            command_call_limit=COMMAND_CALL_LIMIT,
        )

    return factory
