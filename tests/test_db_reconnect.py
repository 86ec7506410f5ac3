"""A pooled PostgreSQL connection whose server side went away (a restart, an idle
timeout) is replaced before use once it has been idle (store.db._ping_when_idle), and
connections in steady use are not pinged at all."""

from __future__ import annotations

import time

import psycopg
from sqlalchemy import text

import store.db as db
from conftest import POSTGRES_URL


def test_a_dead_idle_connection_is_replaced(postgres_url, monkeypatch):
    monkeypatch.setattr(db, "PING_AFTER_IDLE", 0.2)
    engine = db.make_engine(postgres_url)
    try:
        with engine.connect() as conn:
            pid = conn.execute(text("select pg_backend_pid()")).scalar()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as killer:
            killer.execute("select pg_terminate_backend(%s)", (pid,))
        time.sleep(0.4)
        with engine.connect() as conn:
            assert conn.execute(text("select pg_backend_pid()")).scalar() != pid
    finally:
        engine.dispose()


def test_a_connection_in_steady_use_is_not_pinged(postgres_url, monkeypatch):
    pings = []
    real = db._ping
    monkeypatch.setattr(db, "_ping", lambda conn: (pings.append(1), real(conn)))
    engine = db.make_engine(postgres_url)
    try:
        for _ in range(5):
            with engine.connect() as conn:
                conn.execute(text("select 1"))
        assert pings == []  # checked out again at once: known good
        monkeypatch.setattr(db, "PING_AFTER_IDLE", 0.0)
        for _ in range(3):
            with engine.connect() as conn:
                conn.execute(text("select 1"))
        assert len(pings) == 3  # idle past the limit (0 s here): tested first
    finally:
        engine.dispose()
