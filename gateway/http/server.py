"""The HTTP process of ``gateway serve``: uvicorn serving gateway.http's application.

Its own process, as the workers are: a scrape's database reads, a page being rendered
or a slow client never take the SMTP door's event loop (or its GIL), and the door's
answers never wait for them.  It runs below the door's CPU priority like the workers
(``[service] worker_nice``): a sender's 250 comes before a scrape.

The door opens the listening socket before it starts anything (a port in use stops the
start with one line) and hands it to this process; the door stops it with SIGTERM.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading

import uvicorn

log = logging.getLogger("gateway.http")


def http_main(config, sock: socket.socket, instance: str, roles: tuple[str, ...], doors: dict[str, int],
              parent_pid: int, log_level: str = "INFO") -> None:
    from gateway import metrics
    from gateway.heartbeat import Heartbeat
    from gateway.http import create_app
    from gateway.http.ops import Ops
    from gateway.service import _child_setup, _lower_priority, _name_process
    from store.db import make_engine

    _child_setup(config, log_level, "http")
    metrics.zeros()  # every known series shows from the first scrape
    _name_process("gw-http")
    _lower_priority(config)
    # Not App.engine: that brings the schema up to date first, and fails when the
    # database is down, which is exactly when /healthz must answer and /readyz say so.
    engine = make_engine(config.database_url, connect_timeout=3)
    app = create_app(Ops(config, engine, instance, tuple(roles), dict(doors), metrics.folder(config.data_dir)))
    server = _Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                                    timeout_graceful_shutdown=5))

    def orphaned() -> None:  # the door died without telling us
        while not server.should_exit:
            if os.getppid() != parent_pid:
                log.warning("parent process gone; HTTP server stops")
                server.should_exit = True
                return
            threading.Event().wait(1.0)

    threading.Thread(target=orphaned, name="http-orphan-check", daemon=True).start()
    heartbeat = Heartbeat(engine, "http", instance, config.monitoring.heartbeat_interval).start()
    host, port = sock.getsockname()[:2]
    log.info("HTTP server started (pid %s) on %s:%s", os.getpid(), host, port)
    try:
        server.run(sockets=[sock])
    finally:
        heartbeat.stop()
        engine.dispose()
    log.info("HTTP server stopped")


class _Server(uvicorn.Server):
    """uvicorn's Server, stopped by SIGTERM only: SIGINT (a Ctrl-C in the terminal) is the
    door's to handle, which then stops this process in its turn."""

    @contextlib.contextmanager
    def capture_signals(self):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        previous = signal.signal(signal.SIGTERM, lambda *_: setattr(self, "should_exit", True))
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)
