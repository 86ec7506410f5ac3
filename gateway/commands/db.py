"""db upgrade, db downgrade, db current, db check, db revision: the database's schema
(store.schema).

These commands open the database without App, whose engine would upgrade it on the way.
"""

from __future__ import annotations

import json
import re

from gateway.errors import CommandError
from store import schema
from store.db import make_engine


def register(sub, common) -> None:
    p = sub.add_parser("db", parents=[common], help="the database's schema: upgrade, current, check")
    dsub = p.add_subparsers(dest="db_command", metavar="ACTION")
    dsub.required = True
    s = dsub.add_parser("upgrade", parents=[common],
                        help="upgrade the schema to this version's newest revision (start-up does it too)")
    s.set_defaults(func=cmd_upgrade)
    s = dsub.add_parser("downgrade", parents=[common],
                        help="take the schema back to an older revision, before installing an older version "
                             "(back up first)")
    s.add_argument("revision", help="the revision the older version expects, e.g. 0001")
    s.set_defaults(func=cmd_downgrade)
    s = dsub.add_parser("current", parents=[common], help="the database's revision and this version's newest")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_current)
    s = dsub.add_parser("check", parents=[common],
                        help="compare the database with the models; exit 1 and list the differences")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_check)
    s = dsub.add_parser("revision", parents=[common],
                        help="(developers) write a new revision file, numbered after the head")
    s.add_argument("-m", "--message", required=True, help="what the revision changes, a few words")
    s.add_argument("--autogenerate", action="store_true",
                   help="fill it with the differences between the models and the database (at head)")
    s.set_defaults(func=cmd_revision)
    s = dsub.add_parser("move-blobs", parents=[common],
                        help="copy the blob files under the data folder into the database, checking every sha256")
    s.add_argument("--from", dest="source", metavar="FOLDER",
                   help="the file store to copy (default: <data_dir>/blobs)")
    s.set_defaults(func=cmd_move_blobs)


def _engine(config):
    return make_engine(config.database_url)


def cmd_upgrade(config, args) -> int:
    engine = _engine(config)
    try:
        done = schema.upgrade(engine)  # a SchemaError is printed by gateway.cli
    finally:
        engine.dispose()
    start = schema.BASELINE if done.stamped else done.before
    if done.stamped:
        print(f"the tables made before migrations are the baseline's: stamped {schema.BASELINE}")
    if start == done.after:
        print(f"at {done.after} (head): nothing to upgrade")
    else:
        print(f"upgraded from {start or 'an empty database'} to {done.after}")
    return 0


def cmd_downgrade(config, args) -> int:
    """Undo the revisions after ``args.revision`` (their ``downgrade()``, newest first),
    so that an older version of the gateway, whose newest revision that is, can start.
    Only a numbered revision older than the database's: never ``base`` (no tables)."""
    if not re.fullmatch(r"\d{4}", args.revision):
        raise CommandError(f"{args.revision!r} is not a revision: give one such as {schema.BASELINE}")
    engine = _engine(config)
    try:
        now = schema.stored_revision(engine)
        if now is None:
            raise CommandError("the database has no schema revision: nothing to downgrade")
        if not re.fullmatch(r"\d{4}", now) or int(args.revision) >= int(now):
            raise CommandError(f"the database is at {now}: {args.revision} is not an older revision")
        if int(args.revision) < int(schema.BASELINE):
            raise CommandError(f"the oldest revision is {schema.BASELINE}")
        done = schema.downgrade(engine, args.revision)  # a SchemaError is printed by gateway.cli
    finally:
        engine.dispose()
    print(f"downgraded from {done.before} to {done.after}")
    return 0


def cmd_current(config, args) -> int:
    engine = _engine(config)
    try:
        now = schema.state(engine)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps({"revision": now.revision, "head": now.head, "tables": now.tables}))
    elif now.revision == now.head:
        print(f"{now.revision} (head)")
    else:
        print(f"{now.describe}; this version's newest is {now.head}")
    return 0


def cmd_check(config, args) -> int:
    """Exit 0 when the database is at head and its tables are the models'; 1 otherwise."""
    engine = _engine(config)
    try:
        now = schema.state(engine)
        found = schema.differences(engine)
    finally:
        engine.dispose()
    problems = []
    if now.revision != now.head:
        problems.append(f"revision: {now.describe}; this version's newest is {now.head} (gateway db upgrade)")
    problems += found
    if args.json:
        print(json.dumps({"revision": now.revision, "head": now.head, "differences": problems}, indent=2))
    elif problems:
        print("the database and the models disagree:")
        for line in problems:
            print(f"  - {line}")
    else:
        print(f"the database matches the models (revision {now.revision}, head)")
    return 1 if problems else 0


def cmd_move_blobs(config, args) -> int:
    """Copy a file store into the database (``[store] blobs = "database"``): each file is
    read as a stream, its sha256 computed and compared with its name, then stored in
    chunks; a file whose bytes are not its name is named and not copied (exit 1).  The
    files are left in place: remove them once every instance reads the database.  Run
    again, it copies only what is missing."""
    from pathlib import Path

    from gateway.app import App
    from store.dbblobs import DatabaseBlobStore

    source = Path(args.source) if args.source else config.blob_dir
    if not source.is_dir():
        raise CommandError(f"no blob store at {source}")
    app = App(config)
    target = DatabaseBlobStore(app.engine, config.data_dir / "tmp")
    copied = present = 0
    wrong: list[str] = []
    for path in sorted(p for p in source.glob("??/*") if p.is_file() and not p.name.startswith(".tmp-")):
        name = path.name
        if not re.fullmatch(r"[0-9a-f]{64}", name):
            continue
        if target.exists(name):
            present += 1
            continue
        with target.writer() as writer, open(path, "rb") as fh:
            for piece in iter(lambda: fh.read(1 << 20), b""):
                writer.write(piece)
            if writer.digest != name:
                writer.abort()
                wrong.append(f"{path}: its bytes' sha256 is {writer.digest}")
                continue
            writer.commit()
        stored = _sha256(target.open(name))
        if stored != name:  # what the database gives back, read as every instance will
            wrong.append(f"{path}: the database gives back bytes whose sha256 is {stored}")
            continue
        copied += 1
    for line in wrong:
        print(f"not copied: {line}")
    print(f"copied {copied} blob(s) into the database, {present} were there already"
          + (f", {len(wrong)} do not match their name" if wrong else ""))
    return 1 if wrong else 0


def _sha256(stream) -> str:
    import hashlib

    digest = hashlib.sha256()
    with stream:
        for piece in iter(lambda: stream.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def cmd_revision(config, args) -> int:
    """A new file in store/migrations/versions, numbered after the head (0002, 0003...)."""
    from alembic import command

    engine = _engine(config)
    try:
        with engine.connect() as conn:
            alembic_config = schema.alembic_config(conn, schema.MIGRATIONS_DIR)
            head = schema.script_directory(alembic_config).get_current_head()
            if not re.fullmatch(r"\d{4}", head or ""):
                raise CommandError(f"the head revision {head!r} is not numbered NNNN")
            if args.autogenerate and schema.stored_revision(engine) != head:
                raise CommandError(f"--autogenerate compares with the database, which must be at {head} first "
                                   "(gateway db upgrade)")
            script = command.revision(alembic_config, message=args.message, autogenerate=args.autogenerate,
                                      rev_id=f"{int(head) + 1:04d}")
    finally:
        engine.dispose()
    print(f"wrote {script.path}")
    print(f"review it, and set HEAD = {script.revision!r} in store/schema.py")
    return 0
