"""Reading mailboxes over IMAP, the door for desks whose address is a mailbox:

- client.py: the mailbox's secret, connecting, logging in, folders;
- importer.py: one pass over a folder (fetch, store, process, move; too-large mails);
- poller.py: a thread a mailbox, IDLE or polling, with backoff;
- check.py: ``gateway imap check``, step by step.
"""

from __future__ import annotations

from gateway.ingest.imap.check import Step, check
from gateway.ingest.imap.client import (ImapConfigError, close_quietly, connect, ensure_folder, login, move,
                                        open_mailbox, secret_for)
from gateway.ingest.imap.importer import TOO_LARGE, Importer, ItemResult, record_too_large, retry_failed
from gateway.ingest.imap.poller import Poller, pollers_for, start_pollers

__all__ = ["TOO_LARGE", "ImapConfigError", "Importer", "ItemResult", "Poller", "Step", "check", "close_quietly",
           "connect", "ensure_folder", "login", "move", "open_mailbox", "pollers_for", "record_too_large",
           "retry_failed", "secret_for", "start_pollers"]
