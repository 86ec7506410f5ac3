"""serve, ingest, process."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gateway.errors import StoreFailed

# What a command needs is imported when it runs (``gateway --help`` and the parser of
# another command import none of it).


def register(sub, common) -> None:
    p = sub.add_parser("serve", parents=[common], help="run the SMTP listener and the worker")
    p.add_argument("--accept-only", action="store_true",
                   help="only accept and store mail (no processing, no delivery): a listener-only node")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("ingest", parents=[common], help="feed raw messages from files or stdin (-)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="a .eml file, or - for standard input")
    p.add_argument("--json", action="store_true", help="one JSON object per message")
    p.add_argument("--no-deliver", action="store_true", help="leave notifications in the outbox")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("process", parents=[common], help="process stored mail that is waiting, now")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_process)


def cmd_serve(config, args) -> int:
    from gateway.service import serve

    return serve(config, accept_only=args.accept_only, log_level=args.log_level)


def _print_outcome(outcome: Outcome, as_json: bool) -> None:
    if as_json:
        print(json.dumps(outcome.as_dict(), ensure_ascii=False), flush=True)
    else:
        parts = [outcome.source, outcome.outcome]
        if outcome.ticket:
            parts.append(outcome.ticket)
        if outcome.detail:
            parts.append(f"({outcome.detail})")
        print(" ".join(parts), flush=True)


def _read_batches(paths: list[str], most: int, most_bytes: int):
    """The paths in batches: at most ``most`` mails and ``most_bytes`` of raw mail (at
    least one mail); each item (source, raw or None, why it could not be read)."""
    batch, size = [], 0
    for path in paths:
        source = "stdin" if path == "-" else path
        try:
            raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
        except OSError as exc:
            batch.append((source, None, f"cannot read: {exc.strerror}"))
            continue
        if batch and (len(batch) >= most or size + len(raw) > most_bytes):
            yield batch
            batch, size = [], 0
        batch.append((source, raw, None))
        size += len(raw)
        raw = None  # the batch holds it: once the command lets go of a large one, it is freed
    if batch:
        yield batch


def cmd_ingest(config, args) -> int:
    """Mails are taken as the service's worker takes them: a batch of them stored in one
    commit (their blobs fsynced first), then processed in one transaction
    (Processor.process_batch), then their outcomes printed; the next batch is read only
    then (a reply finds the ticket of a mail before it).  A mail larger than a batch is
    stored and processed alone, read back from its blob (not two copies of it)."""
    from gateway.app import App
    from gateway.ingest.process import BATCH_BYTES, BATCH_MAILS
    from gateway.ingest.spool import Spool

    app = App(config)
    status = 0
    spools: list[Spool] = []
    try:
        for batch in _read_batches(args.paths, BATCH_MAILS, BATCH_BYTES):
            stored = _store_batch(app, batch, spools)
            status = max(status, _process_and_print(app, stored, args.json))
    finally:
        for spool in spools:
            spool.close()
    if not args.no_deliver:
        from gateway.outbound.outbox import deliver_pending

        # Every confirmation that is due, not only the first hundred (a relay that cannot
        # be reached still ends the run; what it refuses for now waits for its retry).
        deliver_pending(app.engine, app.config, app.transport(), limit=None, notifier=app.notifier)
    return status


def _store_batch(app, batch: list, spools: list) -> list[tuple]:
    """Store a batch: (source, Stored, size) for each mail stored, (source, Outcome) for
    each that could not be.  ``spools`` holds the door's Spool, made on first use."""
    from gateway.ingest.inbound import Stored, store_raw
    from gateway.ingest.process import BATCH_BYTES, BATCH_MAILS, Outcome
    from gateway.ingest.spool import Spool

    stored: list[tuple] = []
    if len(batch) == 1 and batch[0][1] is not None and len(batch[0][1]) > BATCH_BYTES:
        source, raw, _ = batch.pop()
        size = len(raw)
        try:
            stored.append((source, store_raw(app.engine, app.blobs, raw, source=f"ingest:{source}"), size))
        except StoreFailed as exc:
            stored.append((source, Outcome(source, "", "error", None, str(exc))))
        del raw
        return stored
    if not spools:
        spools.append(Spool(app.engine, app.blobs, max_batch=BATCH_MAILS))
    spool = spools[0]
    waiting = []
    first: dict[bytes, int] = {}  # the same bytes twice in a batch: the first is stored
    for source, raw, error in batch:
        if raw is None:
            waiting.append((source, None, error, 0))
        elif raw in first:
            waiting.append((source, first[raw], None, len(raw)))
        else:
            first[raw] = len(waiting)
            waiting.append((source, spool.submit(raw, source=f"ingest:{source}"), None, len(raw)))
    batch.clear()
    first.clear()
    for source, future, error, size in waiting:
        if future is None:
            stored.append((source, Outcome(source, "", "error", None, error)))
        elif isinstance(future, int):  # a copy of an earlier mail of the batch
            earlier = stored[future]
            if len(earlier) == 2:
                stored.append((source, Outcome(source, "", "error", None, earlier[1].detail)))
            else:
                one = earlier[1]
                stored.append((source, Stored(one.id, True, one.message_id, one.sha256), size))
        else:
            try:
                stored.append((source, future.result(), size))
            except StoreFailed as exc:
                stored.append((source, Outcome(source, "", "error", None, str(exc))))
    return stored


def _process_and_print(app, stored: list[tuple], as_json: bool) -> int:
    """Process a stored batch in one transaction (more if its mails are larger than a
    batch) and print each mail's outcome; 1 if one could not be stored."""
    from gateway import metrics
    from gateway.ingest.process import Outcome

    ids = [entry[1].id for entry in stored if len(entry) == 3]
    known = {entry[1].id: (entry[1].sha256, entry[2]) for entry in stored
             if len(entry) == 3 and not entry[1].duplicate}
    outcomes: dict[int, Outcome] = {}
    todo = list(dict.fromkeys(ids))
    while todo:
        done = app.processor.process_batch(todo, known=known)
        outcomes.update(zip(todo, done))
        todo = todo[len(done):]
    status = 0
    for entry in stored:
        if len(entry) == 2:
            _print_outcome(entry[1], as_json)
            status = 1
            continue
        source, one, _size = entry
        metrics.received("ingest")
        outcome = outcomes[one.id]
        if one.duplicate:
            outcome = Outcome(source, one.message_id, "duplicate", outcome.ticket, f"already stored as #{one.id}")
        else:
            outcome = Outcome(source, outcome.message_id, outcome.outcome, outcome.ticket, outcome.detail)
        _print_outcome(outcome, as_json)
    return status


def cmd_process(config, args) -> int:
    from gateway.app import App
    from gateway.outbound.outbox import deliver_pending

    app = App(config)
    for outcome in app.processor.process_pending(limit=10_000):
        _print_outcome(outcome, args.json)
    deliver_pending(app.engine, app.config, app.transport(), limit=None, notifier=app.notifier)
    return 0
