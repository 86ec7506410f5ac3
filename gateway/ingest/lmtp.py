"""The LMTP door (RFC 2033): how Postfix, Exim or Dovecot hand mail to a local service.

It is the SMTP door (gateway/ingest/smtp.py) spoken in LMTP: the same refusals while
the MTA can still be told (unknown recipient 550, too large 552, a loop 554...), the
same storing through the spool's journal (a recipient's 250 only once the mail is on
disk), the same reading of DATA (SpoolingSMTP) and the same limits ([smtp]
max_message_size, max_recipients, timeout, connections).  What LMTP changes:

- the client greets with LHLO; HELO and EHLO are refused (aiosmtpd's LMTP);
- after the data, one reply per accepted recipient, in the order of their RCPT
  commands (RFC 2033, 4.2), also for a refusal that SMTP answers once (too large, a
  line too long): the MTA waits for as many replies as it has recipients;
- PIPELINING and ENHANCEDSTATUSCODES are announced, as RFC 2033 (5) requires;
- it listens on a TCP port, or on a UNIX socket ([lmtp] socket, socket_mode).

The mail is stored once for all its recipients (one inbound row, as over SMTP): each
gets the answer of that one storing.  Its inbound row's source is "lmtp".
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import stat
from pathlib import Path

from aiosmtpd.lmtp import LMTP

from gateway.config import Config
from gateway.ingest.smtp import Door, SpoolingSMTP, make_server_factory

log = logging.getLogger("gateway.lmtp")


class LmtpDoor(Door):
    """The SMTP door's checks and storing, for mail handed over in LMTP."""

    source = "lmtp"

    async def handle_EHLO(self, server, session, envelope, hostname: str, responses: list[str]) -> list[str]:
        """LHLO's answer (aiosmtpd answers LHLO as EHLO) with the extensions an LMTP
        server must offer.  A hook of this form has to note the client's name itself."""
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]


class SpoolingLMTP(LMTP, SpoolingSMTP):
    """aiosmtpd's LMTP reading DATA as the SMTP door does (SpoolingSMTP), with one reply
    per recipient after the data.

    SpoolingSMTP (and aiosmtpd under it) pushes one reply after the data, whether it is
    the handler's answer or its own refusal; here that reply is sent once for each
    recipient of the transaction.  A reply that already holds one line per recipient
    goes out as it is."""

    _data_recipients = 0  # recipients of the DATA being read; 0 outside DATA
    _data_started = False  # the 354 went out: the next reply is the one after the data

    async def smtp_DATA(self, arg: str) -> None:
        self._data_recipients = len(self.envelope.rcpt_tos) if self.envelope is not None else 0
        self._data_started = False
        try:
            await super().smtp_DATA(arg)
        finally:
            self._data_recipients = 0

    async def push(self, status) -> None:
        if self._data_recipients:
            text = status.decode("utf-8", "replace") if isinstance(status, bytes) else status
            if not self._data_started:
                # Before the 354, a refusal of the DATA command itself: one reply.
                self._data_started = text.startswith("354")
            else:
                count, self._data_recipients = self._data_recipients, 0
                if len(text.split("\r\n")) != count:
                    status = "\r\n".join([text] * count)
        await super().push(status)


def bind(config: Config) -> socket.socket:
    """The socket of ``[lmtp]``: its UNIX socket when one is set, else host and port.
    Bound before the service starts anything else, so a socket it cannot have stops it
    at once (OSError); it listens once ``listen`` serves it, so an MTA is refused (and
    retries) until the door can answer."""
    if config.lmtp.socket:
        return bind_socket(config.path(config.lmtp.socket), config.lmtp.mode)
    infos = socket.getaddrinfo(config.lmtp.host, config.lmtp.port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's create_server
        sock.bind(address)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def listen(config: Config, door: LmtpDoor, sock: socket.socket) -> asyncio.AbstractServer:
    """Serve LMTP for ``door`` on ``sock`` (``bind``).  ``close`` (below) stops it and
    removes a UNIX socket."""
    loop = asyncio.get_running_loop()
    factory = make_server_factory(config, door, protocol=SpoolingLMTP)
    if sock.family == socket.AF_UNIX:
        server = await loop.create_unix_server(factory, sock=sock)
        log.info("listening for LMTP on %s (mode %s)", sock.getsockname(), format(config.lmtp.mode, "04o"))
    else:
        server = await loop.create_server(factory, sock=sock, backlog=1024)  # as the SMTP door's (service.BACKLOG)
        host, port = sock.getsockname()[:2]
        log.info("listening for LMTP on %s:%s", host, port)
    return server


def bind_socket(path: Path, mode: int) -> socket.socket:
    """A UNIX socket bound at ``path`` with permissions ``mode``, not listening yet.

    The permissions are set before it listens, so nobody connects while the socket has
    those of the umask.  A socket file left by a gateway that died is replaced; one
    that a running process still answers on is not (two gateways on one socket would
    each get part of the mail): that is an error naming it."""
    if path.is_socket():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # nothing answers on it: left by a previous run
        else:
            raise OSError(errno.EADDRINUSE, f"another process listens on the LMTP socket {path}")
        finally:
            probe.close()
    elif path.exists():
        raise OSError(errno.EEXIST, f"[lmtp] socket {path} exists and is not a socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, mode)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def close(server: asyncio.AbstractServer, config: Config) -> None:
    """Stop listening; remove the UNIX socket (Python 3.11 leaves the file behind)."""
    server.close()
    await server.wait_closed()
    if config.lmtp.socket:
        path = config.path(config.lmtp.socket)
        try:
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()
        except FileNotFoundError:
            pass
