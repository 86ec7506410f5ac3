"""Words the gateway's rooms share, named once.

The statuses and waiting reasons of a ticket are the lifecycle's (store.lifecycle);
what is here is the rest of the vocabulary that more than one room reads: the processes, the languages mails are written in, the states of a stored mail and of a
notification, the loop header.
"""

from __future__ import annotations

# The processes a ticket belongs to, and the prefix of their ticket numbers (INC-000001);
# their statuses and moves are the lifecycle's (store.lifecycle).
PROCESS_PREFIX = {"incident": "INC", "service-request": "SR", "change": "CHG"}
PROCESSES = tuple(PROCESS_PREFIX)

# The languages of the mails (manual §1.5: the Affected Person's), in the order the
# admins' tools list them; a person, a company or the config naming another falls back.
LANGUAGES = ("fr", "nl", "en", "de")
FALLBACK_LANGUAGE = "en"

# A stored mail (store.models.InboundMessage) is received until a worker processed it
# (a ticket, a reply, a mail ignored) or quarantined it (held, with the reason, for an
# agent); "quarantined" is also the outcome of such a mail.
RECEIVED = "received"
PROCESSED = "processed"
QUARANTINED = "quarantined"
INBOUND_STATES = (RECEIVED, PROCESSED, QUARANTINED)

# A notification (store.models.Outbox) is pending until the relay took it (sent) or it
# was given up (failed: a permanent refusal, the deadline, every recipient undeliverable).
PENDING = "pending"
SENT = "sent"
FAILED = "failed"
OUTBOX_STATES = (PENDING, SENT, FAILED)

# The header every mail of the gateway carries, naming the helpdesk address: mail that
# comes back with it is our own (a loop), never a customer's.
LOOP_HEADER = "X-Helpdesk-Loop"

# The door's sources of stored mail: their rows carry the connecting address and HELO,
# and the gateway checks their senders (gateway.ingest.verify).
DOOR_SOURCES = ("smtp", "lmtp")
