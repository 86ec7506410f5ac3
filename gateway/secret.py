"""The secret that signs reply, bounce and approval addresses (gateway.tokens): made,
kept and read once at start-up.

``[gateway] secret`` wins when it is set (gateway.config refuses one shorter than 32
bytes or shown in a document).  When it is empty the gateway makes a random one (32
bytes from the operating system's generator, as 64 hex digits) at its first start and
keeps it where every later start, and every other process, finds the same:

- SQLite: the file ``<data_dir>/secret``, mode 0600, written whole under a temporary
  name and linked into place, so two processes starting at once keep one of the two
  (the other reads it);
- PostgreSQL, where several instances on several machines share the database: the row
  ``reply`` of the table ``secret``, inserted once (INSERT … ON CONFLICT DO NOTHING) and
  read back, so every instance signs with the one that was inserted first.

A secret that was made is never made again: a file or row that is there but unreadable
or too short stops start-up with a message naming it (a new secret would silently
invalidate every address in the customers' mailboxes).  To rotate, see README.md.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from dataclasses import replace
from pathlib import Path
from typing import Callable

from sqlalchemy import select
from sqlalchemy.engine import Engine

from gateway.config import MIN_SECRET_BYTES, Config, ConfigError
from store.models import Secret, utcnow

log = logging.getLogger("gateway.secret")

SECRET_FILE = "secret"  # in data_dir (SQLite)
SECRET_ROW = "reply"  # the row of the table secret (PostgreSQL)


def make() -> str:
    """A new secret: 32 random bytes, as hex."""
    return secrets.token_hex(MIN_SECRET_BYTES)


def resolve(config: Config, engine: Callable[[], Engine]) -> Config:
    """``config`` with ``gateway.secret`` set: the configured one, else the one kept (made
    now if there is none yet).  ``engine`` gives the database's engine, asked only on
    PostgreSQL."""
    if config.gateway.secret:
        return config
    if config.database_url.startswith("sqlite"):
        value = from_file(config.data_dir / SECRET_FILE)
    else:
        value = from_database(engine())
    return replace(config, gateway=replace(config.gateway, secret=value))


def _checked(value: str, where: str) -> str:
    value = value.strip()
    if len(value.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(f"gateway.secret: the secret kept in {where} is {len(value.encode())} bytes, fewer than "
                          f"{MIN_SECRET_BYTES}: restore it from a backup, or set gateway.secret")
    return value


def from_file(path: Path) -> str:
    """The secret kept in ``path``, made and written there (mode 0600) on first use."""
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(make() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            # Atomic, and refused when another process put its secret there first.
            os.link(temporary, path)
            _sync_folder(path.parent)
            log.info("made the reply-address secret and kept it in %s (mode 0600)", path)
        except FileExistsError:
            pass
    finally:
        temporary.unlink(missing_ok=True)
    return _read(path)


def _read(path: Path) -> str:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        # Readable by others: whoever read it can sign addresses.  Closed now, and said.
        log.warning("%s was readable by other users (mode %o): set to 0600; if others could read it, "
                    "rotate the secret (README, Secret)", path, mode)
        os.chmod(path, 0o600)
    try:
        value = path.read_text(encoding="ascii")
    except (UnicodeDecodeError, OSError) as exc:
        raise ConfigError(f"gateway.secret: the secret kept in {path} cannot be read ({exc}): restore it, "
                          f"or set gateway.secret") from None
    return _checked(value, str(path))


def _sync_folder(folder: Path) -> None:
    """The new directory entry on disk, so a crash does not lose a secret already used."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def from_database(engine: Engine) -> str:
    """The secret of the row ``reply``, inserted once by whichever instance comes first."""
    from sqlalchemy.dialects.postgresql import insert as pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    table = Secret.__table__
    insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
    with engine.begin() as conn:
        made = conn.execute(insert(table).values(name=SECRET_ROW, value=make(), created_at=utcnow())
                            .on_conflict_do_nothing(index_elements=["name"]))
        value = conn.execute(select(table.c.value).where(table.c.name == SECRET_ROW)).scalar_one()
    if made.rowcount:
        log.info("made the reply-address secret and kept it in the database (table secret)")
    return _checked(value, "the database (table secret)")
