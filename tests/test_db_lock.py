"""SQLite's write lock is asked for every millisecond (store.db._begin_immediate): a
writer gets it right after the holder commits, not after a busy-handler sleep, and still
gives up after the busy timeout."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from store.db import init_db, make_engine


def _hold_lock(path, seconds: float, held: threading.Event) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    held.set()
    time.sleep(seconds)
    conn.execute("COMMIT")
    released = time.monotonic()
    conn.close()
    return released


def test_a_writer_gets_the_lock_as_soon_as_it_is_free(tmp_path):
    path = tmp_path / "x.db"
    engine = make_engine(f"sqlite:///{path}")
    init_db(engine)
    held, box = threading.Event(), {}
    thread = threading.Thread(target=lambda: box.update(released=_hold_lock(path, 0.12, held)))
    thread.start()
    held.wait(5)
    with engine.begin() as conn:
        got = time.monotonic()
        conn.execute(text("update counter set value = value + 1 where process = 'incident'"))
    thread.join()
    # SQLite's own handler would be sleeping its 100 ms steps by then.
    assert 0 <= got - box["released"] < 0.03
    with engine.connect() as conn:  # and the busy timeout is back for later statements
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000


def test_a_writer_gives_up_after_the_busy_timeout(tmp_path):
    path = tmp_path / "y.db"
    init_db(make_engine(f"sqlite:///{path}"))
    engine = make_engine(f"sqlite:///{path}", busy_timeout_ms=100)
    held = threading.Event()
    thread = threading.Thread(target=_hold_lock, args=(path, 0.6, held))
    thread.start()
    held.wait(5)
    start = time.monotonic()
    with pytest.raises(OperationalError, match="locked"):
        with engine.begin() as conn:
            conn.execute(text("select 1"))
    assert 0.09 < time.monotonic() - start < 0.4
    thread.join()
