"""The parts of a running gateway, built once from the config and passed around."""

from __future__ import annotations

import logging
from functools import cached_property

from sqlalchemy.engine import Engine

from gateway.config import Config
from gateway.ingest.process import Processor
from gateway.outbound.notify import Notifier
from gateway.outbound.render import SHIPPED_DIR, Renderer
from gateway.outbound.transports import Transport, make_transport
from store.blobs import BlobStore
from store.db import init_db, make_engine


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
        engine = make_engine(self.loaded.database_url)
        init_db(engine)
        return engine

    @cached_property
    def blobs(self) -> BlobStore:
        return BlobStore(self.loaded.blob_dir)

    @cached_property
    def renderer(self) -> Renderer:
        loaded = self.loaded
        override = loaded.path(loaded.templates.override_dir) if loaded.templates.override_dir else None
        return Renderer(SHIPPED_DIR, override)

    @cached_property
    def notifier(self) -> Notifier:
        return Notifier(self.config, self.renderer)

    @cached_property
    def processor(self) -> Processor:
        return Processor(self.config, self.engine, self.blobs, self.notifier)

    def transport(self) -> Transport:
        return make_transport(self.config)


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
