"""The SMTP door on a free loopback port, as `gateway serve` runs it (our server factory in
aiosmtpd's Controller), and a raw-socket dialogue that sends DATA exactly as given."""

from __future__ import annotations

import time

from aiosmtpd.controller import Controller

from conftest import free_port
from gateway.ingest.smtp import Door, make_server_factory
from harness.ingest import make_app


class DoorController(Controller):
    """aiosmtpd's Controller running our own server factory (the one `gateway serve` uses)."""

    def __init__(self, factory, port: int):
        self._factory = factory
        super().__init__(None, hostname="127.0.0.1", port=port)

    def factory(self):
        return self._factory()


def start(tmp_path, extra: str):
    app = make_app(tmp_path, extra)
    door = Door(app.config, app.engine, app.blobs)
    controller = DoorController(make_server_factory(app.config, door), free_port())
    controller.start()
    return app, controller


def sized_door(tmp_path, max_size: int = 64 * 2**20):
    app = make_app(tmp_path, f"[smtp]\nmax_message_size = {max_size}\n")
    stored = []
    door = Door(app.config, app.engine, app.blobs, on_stored=stored.append)
    controller = DoorController(make_server_factory(app.config, door), free_port())
    controller.start()
    return app, controller, stored


def dialogue(port: int, data: bytes, cuts: list[int] | None = None) -> list[bytes]:
    """One mail over a raw socket: the bytes of DATA exactly as given (no dot-stuffing or
    line-ending repair by a client library); the replies, in order.  ``cuts``: DATA sent in
    those pieces, one at a time, with a pause between (the door reads each alone), and the
    session ends after the reply to it; otherwise in 1 MB writes, then a NOOP."""
    import socket

    replies = []
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = sock.makefile("rb")

        def reply() -> bytes:
            while True:
                line = reader.readline()
                if line[3:4] != b"-":
                    replies.append(line)
                    return line

        reply()
        for command in (b"EHLO client.example\r\n", b"MAIL FROM:<alice@example.com>\r\n",
                        b"RCPT TO:<helpdesk@localhost>\r\n", b"DATA\r\n"):
            sock.sendall(command)
            reply()
        if cuts is None:
            view = memoryview(data)
            for i in range(0, len(data), 1 << 20):
                sock.sendall(view[i:i + (1 << 20)])
            reply()
            sock.sendall(b"NOOP\r\n")
        else:
            pos = 0
            for cut in cuts + [len(data)]:
                sock.sendall(data[pos:cut])
                pos = cut
                time.sleep(0.02)
        reply()
        sock.sendall(b"QUIT\r\n")
        reply()
    return replies
