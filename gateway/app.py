"""The parts of a running gateway, built once from the config and passed around."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property

from sqlalchemy.engine import Engine

from gateway.config import Config
from gateway.ingest.process import Processor
from gateway.outbound.notify import Notifier, renderer_for
from gateway.outbound.render import Renderer
from gateway.outbound.transports import Transport, make_transport
from store.blobs import BlobStore
from store.db import init_db, make_engine
from store.notifications import Settings


@dataclass
class App:
    config: Config

    @cached_property
    def engine(self) -> Engine:
        engine = make_engine(self.config.database_url)
        init_db(engine)
        return engine

    @cached_property
    def blobs(self) -> BlobStore:
        return BlobStore(self.config.blob_dir)

    @cached_property
    def renderer(self) -> Renderer:
        return renderer_for(self.config)

    @cached_property
    def notifier(self) -> Notifier:
        return Notifier(self.config, self.renderer)

    @cached_property
    def notices(self) -> Settings:
        """What queueing a notification needs of the config (store.notifications)."""
        return self.config.notice_settings()

    @cached_property
    def processor(self) -> Processor:
        return Processor(self.config, self.engine, self.blobs)

    def transport(self) -> Transport:
        return make_transport(self.config)


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
