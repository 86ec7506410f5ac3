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

from gateway import metrics
from gateway.config import Config
from gateway.errors import StoreFailed
from gateway.ingest import faults
from gateway.ingest.inbound import Stored, header_message_id
from gateway.ingest.parse import MAIL_LOOP, Limits, over_limits
from gateway.ingest.spool import Spool
from store.addresses import key as address_key
from store.blobs import BlobStore, BlobWriter

log = logging.getLogger("gateway.smtp")


# Mails up to this size have their structure checked on the event loop (Door.handle_DATA).
CHECK_INLINE = 64 * 1024


class Door:
    """aiosmtpd handler."""

    # The inbound rows' source: the door the mail came through (the LMTP door's is "lmtp").
    source = "smtp"

    def __init__(self, config: Config, engine, blobs: BlobStore, on_stored: Callable[[Stored], None] | None = None,
                 spool: Spool | None = None):
        self.config = config
        self.engine = engine
        self.on_stored = on_stored
        self.spool = spool or Spool(engine, blobs)
        # Where the door writes a mail as it arrives (a large one piece by piece): the
        # spool's own folder when the blobs are in the database (Spool.door_blobs).
        self.blobs = self.spool.door_blobs
        self.own = {address_key(a) for a in config.gateway.addresses}
        self.own |= {address_key(a) for a in config.routing.routes}
        self.domains = {a.rpartition("@")[2] for a in self.own}
        self.limits = Limits(config.limits.max_parts, config.limits.max_depth, config.limits.max_header_length)
        self.reserve = faults.Reserve(config)

    def accepts(self, address: str) -> bool:
        k = address_key(address)
        local, _, domain = k.rpartition("@")
        if domain not in self.domains:
            return False
        if self.config.gateway.catch_all:
            return True
        return f"{local.split('+', 1)[0]}@{domain}" in self.own

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options):
        """A non-ASCII address only with SMTPUTF8 on MAIL (RFC 6531, 3.4): the door offers
        it, so aiosmtpd reads every command as UTF-8 and would take such an address from a
        client that never declared it.  aiosmtpd (1.4, ``smtp_MAIL``) leaves the
        transaction to a MAIL hook: it sets ``mail_from`` and ``mail_options`` itself."""
        if _control_character(address):
            return "501 5.1.7 Bad sender address syntax: control character in the address"
        if not _utf8_allowed(address, mail_options):
            metrics.refused("bad-address")
            return "553 5.6.7 Non-ASCII sender address without the SMTPUTF8 parameter"
        if not _valid_utf8(address):
            metrics.refused("bad-address")
            return "553 5.6.7 The address is not valid UTF-8"
        if (short := self.reserve.short()) is not None:
            return self._short_of_space(short)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    @staticmethod
    def _short_of_space(short: str) -> str:
        """Below [store] reserve_mb (gateway.ingest.faults): the sender keeps the mail."""
        log.warning("refused a mail: %s", short)
        metrics.refused("disk-reserve")
        return "452 4.3.1 Insufficient system storage, please try again later"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options):
        if _control_character(address):
            return "501 5.1.3 Bad recipient address syntax: control character in the address"
        # SMTPUTF8 is a parameter of MAIL: it covers the whole transaction (RFC 6531, 3.4).
        # The answer names the recipient: the sender's address may well be plain ASCII.
        if not _utf8_allowed(address, envelope.mail_options):
            metrics.refused("bad-address")
            return "553 5.6.7 Non-ASCII recipient address, and MAIL did not declare SMTPUTF8"
        if not _valid_utf8(address):
            metrics.refused("bad-address")
            return "553 5.6.7 The address is not valid UTF-8"
        if not self.accepts(address):
            metrics.refused("unknown-recipient")
            return "550 5.1.1 No such mailbox here"
        if len(envelope.rcpt_tos) >= self.config.smtp.max_recipients:
            metrics.refused("too-many-recipients")
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope):
        spooled = getattr(envelope, "spooled", None)
        if (short := self.reserve.short()) is not None:
            if spooled is not None:
                spooled.abort()
            return self._short_of_space(short)
        if spooled is not None:
            return await self._handle_spooled(envelope, spooled, session)
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        # Refuse a hostile structure while the sender can still be told; the check is a
        # linear scan, run off the event loop like the storing, except for a small mail
        # (tens of microseconds: less than the hand-over to a thread and back).
        if len(raw) <= CHECK_INLINE:
            problem = over_limits(raw, self.limits)
        else:
            problem = await asyncio.get_running_loop().run_in_executor(None, over_limits, raw, self.limits)
        if problem:
            log.warning("refused a mail from %s: %s", envelope.mail_from, problem)
            metrics.refused("loop" if problem.startswith(MAIL_LOOP) else "structure")
            return refusal(problem)
        try:
            # 250 only once the batch holding this mail is committed and its blob fsynced.
            stored = await asyncio.wrap_future(
                self.spool.submit(raw, source=self.source, mail_from=envelope.mail_from or "",
                                  rcpt_to=tuple(envelope.rcpt_tos), **client(session)))
        except StoreFailed as exc:
            log.error("could not store a mail from %s: %s", envelope.mail_from, exc)
            metrics.refused("store-failed")
            return "451 4.3.0 Could not store the message; please try again later"
        return self._stored(envelope, stored, len(raw))

    async def _handle_spooled(self, envelope: Envelope, writer: BlobWriter, session: Session) -> str:
        """A large mail, already in a temporary file of the blob store (see SpoolingSMTP):
        the same checks and the same group commit, without holding it in memory."""
        loop = asyncio.get_running_loop()
        try:
            problem, message_id = await loop.run_in_executor(None, _check_spooled, writer, self.limits)
        except Exception as exc:  # noqa: BLE001 - the sender is told to retry
            writer.abort()
            log.error("could not read back a mail from %s: %s", envelope.mail_from, exc)
            metrics.refused("store-failed")
            return "451 4.3.0 Could not store the message; please try again later"
        if problem:
            writer.abort()
            log.warning("refused a mail from %s: %s", envelope.mail_from, problem)
            metrics.refused("loop" if problem.startswith(MAIL_LOOP) else "structure")
            return refusal(problem)
        try:
            stored = await asyncio.wrap_future(
                self.spool.submit_written(writer, message_id, source=self.source, mail_from=envelope.mail_from or "",
                                          rcpt_to=tuple(envelope.rcpt_tos), **client(session)))
        except StoreFailed as exc:
            log.error("could not store a mail from %s: %s", envelope.mail_from, exc)
            metrics.refused("store-failed")
            return "451 4.3.0 Could not store the message; please try again later"
        return self._stored(envelope, stored, writer.size)

    def _stored(self, envelope: Envelope, stored: Stored, size: int) -> str:
        """The answer for a stored mail; with a journal its row comes a moment later (the
        spool's recorder wakes the worker then)."""
        log.info("received <%s> from %s to %s, %d bytes%s", stored.message_id, envelope.mail_from,
                 ",".join(envelope.rcpt_tos), size, " (duplicate)" if stored.duplicate else "",
                 extra={"message_id": stored.message_id, "inbound_id": stored.id})
        metrics.received(self.source)
        if stored.id is None:
            return f"250 2.0.0 Stored as {stored.sha256[:16]}"
        if self.on_stored is not None:
            self.on_stored(stored)
        return f"250 2.0.0 Stored as #{stored.id}"


def client(session: Session) -> dict[str, str]:
    """The connecting client as the inbound row keeps it (``peer``, ``helo``): SPF is
    checked on them in processing (gateway.ingest.verify), after the 250."""
    peer = session.peer[0] if isinstance(session.peer, tuple) and session.peer else ""
    return {"peer": str(peer), "helo": str(session.host_name or "")}


def _control_character(address: str) -> bool:
    """A NUL, a line break or another control character (C0, DEL) in an address: no
    address has one (RFC 5321, 4.1.2), and one kept would follow the mail into the
    database (PostgreSQL refuses NUL in text: the mail could then never be stored) and
    into headers of our own.  aiosmtpd passes them through."""
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in address)


def _utf8_allowed(address: str, mail_options) -> bool:
    """False for a non-ASCII address (UTF-8, or raw 8-bit bytes that aiosmtpd keeps as
    surrogates) in a transaction whose MAIL did not carry SMTPUTF8."""
    return address.isascii() or any(option.upper() == "SMTPUTF8" for option in mail_options)


def _valid_utf8(address: str) -> bool:
    """False when the address held bytes that are not UTF-8 (kept as surrogates): with
    SMTPUTF8 declared they are still no address, and storing them could only fail, again
    at every retry of the sender; a permanent answer now tells it."""
    try:
        address.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def refusal(problem: str) -> str:
    """The SMTP answer to a mail over a limit (parse.over_limits): a permanent refusal,
    so the sending server returns it to its author.  A loop is RFC 3463's 5.4.6 with
    554, as RFC 5321 (6.3) and Postfix answer one; every other limit 552 5.3.4."""
    if problem.startswith(MAIL_LOOP):
        return f"554 5.4.6 Routing loop detected: {problem}"
    return f"552 5.3.4 Message refused: {problem}"


def _check_spooled(writer: BlobWriter, limits: Limits) -> tuple[str | None, str]:
    """over_limits and the Message-ID of a spooled mail, read through a memory map (the
    pages are the file's, given back when it is unmapped)."""
    writer.flush()
    with open(writer.path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        return over_limits(mapped, limits), header_message_id(mapped)


# A mail larger than this is written to a file as it arrives rather than kept in memory.
SPOOL_IN_MEMORY = 1 << 20


class DataScanner:
    """The text of DATA, taken in chunks of any size, with the meaning aiosmtpd gives it
    line by line (1.4, ``smtp_DATA``), at a small part of its cost per byte:

    - DATA ends only at a line that is exactly ".<CR><LF>" after a <CR><LF>: <LF>.<LF>,
      <LF>.<CR><LF> or <CR>.<CR><LF> do not end it (SMTP smuggling, CVE-2024-27305);
    - a leading dot is removed from a line that follows a <CR><LF> (dot-unstuffing, RFC
      5321, 4.5.2), never after a bare <LF>, which is text;
    - a line longer than ``line_length`` (with its end) makes it TOO_LONG, more than
      ``size_limit`` bytes TOO_MUCH; whichever comes first in the stream counts, as in
      aiosmtpd (whose stream reader raises on a line of over ``stream_limit`` bytes
      before counting it, and counts a shorter one before checking its length); from
      then on the text is only read, for its end.

    One difference from aiosmtpd, on purpose: for the length limits a bare <LF> ends a
    line too, as Postfix reads one.  A client that writes LF line endings sends a mail
    whose lines are short; aiosmtpd took the whole mail for one line and answered a
    permanent 500 Line too long, and the mail was lost.  The text is kept as it came.

    ``feed`` returns None until the end, then how many bytes of its chunk were DATA (the
    rest belong to the next command).  ``pending`` holds the unstuffed text not yet taken.
    """

    def __init__(self, line_length: int, stream_limit: int, size_limit: int | None):
        self.line_length = line_length
        self.stream_limit = stream_limit
        self.size_limit = size_limit
        self.state = _DataState.NOMINAL
        self.num_bytes = 0  # as aiosmtpd counts them: lines as sent, without the end
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.ended = False
        # The line being read (after the last <LF>); once the data is refused only its
        # last two bytes are kept, enough to find an end that straddles two chunks.
        self._tail = b""
        # _tail starts a line after a <CR><LF> (or DATA's first line): only there may a
        # dot be unstuffed, or ".<CR><LF>" end the data.
        self._crlf_before = True

    def take(self) -> bytes:
        out = b"".join(self.pending)
        self.pending.clear()
        self.pending_bytes = 0
        return out

    def feed(self, chunk: bytes) -> int | None:
        head = len(self._tail)
        data = self._tail + chunk if head else chunk
        if self._crlf_before and data[:3] == b".\r\n":
            end = 0
        else:
            end = data.find(b"\r\n.\r\n")
            end = end + 2 if end >= 0 else -1
        if end >= 0:
            self._lines(data[:end], self._crlf_before)
            self._tail = b""
            self.ended = True
            return end + 3 - head
        # Up to the last line end, <CR><LF> or a bare <LF>: a mail written with LF line
        # endings is taken a line at a time too, never held whole in _tail.
        cut = data.rfind(b"\n")
        if cut >= 0:
            cut += 1
            self._lines(data[:cut], self._crlf_before)
            self._tail = data[cut:]
            self._crlf_before = cut >= 2 and data[cut - 2] == 13
        else:
            self._tail = data
        if self.state is _DataState.NOMINAL and len(self._tail) >= self.stream_limit + 1:
            # Whatever follows, this line is over the stream limit: too long before counted.
            self._refuse(_DataState.TOO_LONG)
        if self.state is not _DataState.NOMINAL and len(self._tail) > 2:
            self._tail = self._tail[-2:]
            self._crlf_before = False  # only the end of its line is kept
        return None

    def _refuse(self, state: _DataState) -> None:
        self.state = state
        self.pending.clear()  # drop what was kept: memory, not an answer, is at stake
        self.pending_bytes = 0

    def _lines(self, body: bytes, crlf_before: bool) -> None:
        """Whole lines (``body`` starts a line, after a <CR><LF> when ``crlf_before``, and
        ends with <LF>, or is empty)."""
        if self.state is not _DataState.NOMINAL or not body:
            return
        n = len(body)
        longest = max(map(len, body.split(b"\n"))) + 1 if n > self.line_length else n
        if longest > self.line_length or (self.size_limit and self.num_bytes + n > self.size_limit):
            return self._lines_one_by_one(body, crlf_before)
        self.num_bytes += n
        if crlf_before and body[:1] == b".":
            body = body[1:]
        body = body.replace(b"\r\n.", b"\r\n")
        self.pending.append(body)
        self.pending_bytes += len(body)

    def _lines_one_by_one(self, body: bytes, crlf_before: bool) -> None:
        """aiosmtpd's order, line by line (a line ending at each <LF>), where a limit is
        crossed in ``body``."""
        for line in body.split(b"\n")[:-1]:
            size = len(line) + 1
            if size - 1 > self.stream_limit:
                return self._refuse(_DataState.TOO_LONG)
            self.num_bytes += size
            if self.size_limit and self.num_bytes > self.size_limit:
                return self._refuse(_DataState.TOO_MUCH)
            if size > self.line_length:
                return self._refuse(_DataState.TOO_LONG)
            if crlf_before and line[:1] == b".":
                line = line[1:]
            self.pending.append(line + b"\n")
            self.pending_bytes += len(line) + 1
            crlf_before = line[-1:] == b"\r"


class SpoolingSMTP(SMTP):
    """aiosmtpd's SMTP whose DATA is read in chunks, and a large mail kept on disk.

    aiosmtpd reads DATA line by line (an await, a join and a list entry a line: ~17 ms of
    the door's CPU for a 5 MB mail) and keeps it as a list of lines, then joins them: a
    34 MB mail costs the door ~3.8 times its size.  This is its ``smtp_DATA`` (aiosmtpd
    1.4) reading up to each ".<CR><LF>" (or as much as the stream holds, when there is
    none), with the text's meaning kept by DataScanner: the same end (only
    <CR><LF>.<CR><LF>: SMTP smuggling, CVE-2024-27305), dot-unstuffing, 500 for a line
    too long and 552 over the size limit, both after the rest is read.  Once a mail grows
    past ``SPOOL_IN_MEMORY`` its text is written to a temporary blob as it comes; a
    smaller mail is handed over as bytes as before."""

    # complex: aiosmtpd's smtp_DATA in upstream's shape (to compare it line by line), reading into the spool as it comes
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
        # The reader was made with line_length_limit as its limit (SMTP.connection_made).
        scanner = DataScanner(self.line_length_limit, self.line_length_limit, self.data_size_limit)
        writer: BlobWriter | None = None
        try:
            while self.transport is not None:
                try:
                    # Every end of DATA ends with ".<CR><LF>": read up to the next one.
                    chunk: bytes = await self._reader.readuntil(b".\r\n")
                except asyncio.CancelledError:
                    log.info("connection lost during DATA")
                    self._writer.close()
                    raise
                except asyncio.LimitOverrunError as e:
                    # More than the stream's limit before the next ".<CR><LF>": take what
                    # holds none (the reader keeps the last two bytes, which may start one).
                    chunk = await self._reader.read(e.consumed)
                except asyncio.IncompleteReadError:
                    break  # the connection closed before the end
                used = scanner.feed(chunk)
                if used is not None:
                    # The reader stopped at the first ".<CR><LF>", so the end is the chunk's.
                    assert used == len(chunk)
                    break
                if scanner.pending_bytes >= SPOOL_IN_MEMORY:
                    if writer is None:
                        writer = await loop.run_in_executor(None, blobs.writer)
                    await loop.run_in_executor(None, writer.write, scanner.take())
            if scanner.ended and scanner.state == _DataState.NOMINAL and writer is not None and scanner.pending:
                await loop.run_in_executor(None, writer.write, scanner.take())
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        state = scanner.state
        if not scanner.ended or state != _DataState.NOMINAL:
            if writer is not None:
                writer.abort()
            if state == _DataState.TOO_LONG:
                metrics.refused("line-too-long")
                await self.push("500 Line too long (see RFC5321 4.5.3.1.6)")
            elif state == _DataState.TOO_MUCH:
                metrics.refused("too-large")
                await self.push("552 Error: Too much mail data")
            self._set_post_data_state()
            return
        if writer is None:
            content = scanner.take()
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


def make_server_factory(config: Config, door: Door, protocol: type[SpoolingSMTP] = SpoolingSMTP) -> Callable[[], SMTP]:
    """Sessions of ``protocol`` (SMTP; gateway.ingest.lmtp's LMTP) for ``door``, with the
    [smtp] limits and a cap on connections shared by this factory's sessions."""
    connections = _Connections()
    limit_total = config.smtp.max_connections
    limit_ip = config.smtp.max_connections_per_ip

    class GatewaySMTP(protocol):
        """aiosmtpd's SMTP (or LMTP) with caps on concurrent connections, which it lacks,
        and a large mail's DATA kept on disk (SpoolingSMTP)."""

        _counted_ip: str | None = None

        def connection_made(self, transport) -> None:
            peer = transport.get_extra_info("peername")
            ip = str(peer[0]) if peer else "?"
            if connections.total >= limit_total or connections.by_ip.get(ip, 0) >= limit_ip:
                log.warning("refused a connection from %s: %d open, %d from it", ip, connections.total,
                            connections.by_ip.get(ip, 0))
                metrics.refused("too-many-connections")
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
