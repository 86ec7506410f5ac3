"""The SMTP door: refuse what can be refused while the sender can still be told, store
the rest durably, then answer 250.  No parsing, templates or ticket logic here.

Storing runs in the spool's writer thread, never on the event loop, so one slow disk
does not stall every other connection; concurrent DATA commands share one commit (group
commit, see spool.py), and each is answered only once its own commit is done.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.config import Config
from gateway.errors import StoreFailed
from gateway.ingest.inbound import Stored
from gateway.ingest.parse import Limits, over_limits
from gateway.ingest.spool import Spool
from store.addresses import key as address_key
from store.blobs import BlobStore

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

    class GatewaySMTP(SMTP):
        """aiosmtpd's SMTP with caps on concurrent connections, which it lacks."""

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
