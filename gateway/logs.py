"""Logging set-up: text for a person, JSON for a log collector, to standard error or a file.

The lines about a mail carry what identifies it as record attributes (``extra=``):
``message_id``, ``inbound_id``, ``ticket``, ``outcome``, ``outbox_id``.  The text format
shows them in its message, as before; the JSON format adds them as fields, so a log
collector can find every line about INC-000042 without parsing sentences.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from gateway.config import LoggingSection

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The record attributes a line about a mail may carry (extra=...).
FIELDS = ("ticket", "message_id", "inbound_id", "outcome", "outbox_id", "mailbox")


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, process (its role in
    gateway serve, and pid), message, the mail's fields where known, and the exception."""

    def __init__(self, role: str = "") -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": self.role or record.processName,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value not in (None, ""):
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class _AlembicChatter(logging.Filter):
    """Alembic says at every migration which implementation and DDL mode it uses: not the
    operator's business.  Its "Running upgrade 0004 -> 0007" lines stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not (text.startswith("Context impl") or text.startswith("Will assume"))


def setup(level: str = "INFO", settings: LoggingSection | None = None, role: str = "",
          base_dir: Path | None = None) -> None:
    """Configure the root logger of this process (each process of gateway serve calls it)."""
    settings = settings or LoggingSection()
    if settings.file:
        path = Path(settings.file).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        path.parent.mkdir(parents=True, exist_ok=True)
        # Watched: logrotate moves the file, the next record opens a new one.
        handler: logging.Handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(role) if settings.format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(getattr(logging, str(level).upper(), logging.INFO))
    # Alembic lists the plugins it sets up at every start (1.17 and later): noise.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    migration = logging.getLogger("alembic.runtime.migration")
    if not any(isinstance(f, _AlembicChatter) for f in migration.filters):
        migration.addFilter(_AlembicChatter())
    # uvicorn's own loggers propagate to ours (one format, one file); its start and stop
    # lines repeat ours.
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
