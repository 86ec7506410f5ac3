"""The parts of a running gateway, built once from the config and passed around."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from gateway.config import Config, ConfigError
from store.blobs import BlobStore
from store.db import init_db, make_engine

if TYPE_CHECKING:
    from gateway.ingest.process import Processor
    from gateway.outbound.notify import Notifier
    from gateway.outbound.render import Renderer
    from gateway.outbound.transports import Transport
    from store.notifications import Settings

# Each part imports its modules when first asked for: a command that takes mail in
# needs no templates (Jinja2, Babel) and no transport.


class App:
    """The parts of a gateway.  ``config`` is the configuration as loaded, with the
    signing secret resolved (gateway.secret: configured, or kept, or made now) the first
    time it is asked for, before anything signs or verifies an address; the processes
    that ``gateway serve`` starts are given that config, so every one uses the same."""

    def __init__(self, config: Config):
        self.loaded = config

    def __repr__(self) -> str:
        return f"App({self.loaded!r})"

    @cached_property
    def config(self) -> Config:
        from gateway.secret import resolve

        return resolve(self.loaded, lambda: self.engine)

    @cached_property
    def engine(self) -> Engine:
        """The database, its schema brought up to date.  A database that cannot be
        reached or opened is a ConfigError naming ``database.url`` (one line, exit 2)."""
        url = self.loaded.database_url
        try:
            engine = make_engine(url)
        except (ArgumentError, OSError) as exc:
            raise ConfigError(f"database.url: {_safe(url)} cannot be used: {exc}") from None
        try:
            init_db(engine)
        except OperationalError as exc:
            engine.dispose()
            raise ConfigError(f"database.url: cannot open {_safe(url)}: {_reason(exc)}") from None
        return engine

    @cached_property
    def blobs(self) -> BlobStore:
        """Where raw mails and attachments are: the database's rows, shared by every
        instance ([store] blobs = "database", the default with PostgreSQL), or files under
        the data folder.  Both have one interface."""
        if self.loaded.blobs_in_database:
            from store.dbblobs import DatabaseBlobStore

            return DatabaseBlobStore(self.engine, self.loaded.data_dir / "tmp")
        return BlobStore(self.loaded.blob_dir)

    @cached_property
    def renderer(self) -> Renderer:
        from gateway.outbound.notify import renderer_for

        return renderer_for(self.loaded)

    @cached_property
    def notifier(self) -> Notifier:
        from gateway.outbound.notify import Notifier

        return Notifier(self.config, self.renderer)

    @cached_property
    def notices(self) -> Settings:
        """What queueing a notification needs of the config (store.notifications)."""
        return self.config.notice_settings()

    @cached_property
    def processor(self) -> Processor:
        from gateway.ingest.process import Processor

        return Processor(self.config, self.engine, self.blobs)

    def transport(self) -> Transport:
        from gateway.outbound.transports import make_transport

        return make_transport(self.config)


def _safe(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "the URL"


def _reason(exc: OperationalError) -> str:
    """The driver's words, on one line ("connection to server at "db", port 5432 failed:
    FATAL: database "helpdesk" does not exist")."""
    text = " ".join(str(exc.orig if exc.orig is not None else exc).split())
    return text.removeprefix("connection failed: ")
