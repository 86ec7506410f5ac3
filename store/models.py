"""Tables of the gateway, as SQLModel classes.

Large contents (raw mails, attachments) live in the blob store by sha256; rows hold
their hash.  Times are timezone-aware UTC.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import BigInteger, Column, Index, LargeBinary, Text, UniqueConstraint, false
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def aware(value: datetime | None) -> datetime | None:
    """A time read back from a database column (SQLite gives it naive), as UTC; None stays None."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


class Counter(SQLModel, table=True):
    """Last ticket number used, per process, on SQLite.  PostgreSQL takes its numbers
    from one sequence a process (revision 0003, store.tickets.next_number); its rows
    there stand where they were at that upgrade, and a downgrade brings them up to date."""

    process: str = Field(primary_key=True)
    value: int = 0


class Company(SQLModel, table=True):
    """A customer company; its language is the fallback for its people's mails (manual §1.5)."""

    name: str = Field(primary_key=True)
    language: str = ""


class Person(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(index=True, unique=True)  # normalised: see store.addresses
    name: str = ""
    # fr, nl, en or de; "" when unknown (the company's, then the config's default applies).
    language: str = "en"
    company: str = Field(default="", index=True)
    # Granted access to every ticket of their company (manual §2).
    company_access: bool = False
    timezone: str = "Europe/Brussels"
    hard_bounces: int = 0
    undeliverable: bool = False
    created_at: datetime = Field(default_factory=utcnow)


class Ticket(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    number: str = Field(index=True, unique=True)
    process: str  # incident | service-request | change
    status: str = "New"
    waiting_reason: str | None = None
    title: str = ""
    description: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    personal_reference: str | None = Field(default=None, index=True)
    # Where the personal reference was found: subject-end, subject, attachment-name, attachment-text, agent.
    reference_source: str | None = None
    reporting_person_id: int = Field(foreign_key="person.id", index=True)
    affected_person_id: int = Field(foreign_key="person.id", index=True)
    # Data of the current status (the reason, the appointment, the solution...).
    status_reason: str | None = Field(default=None, sa_column=Column(Text))
    appointment_at: datetime | None = None
    appointment_place: str | None = None
    solution: str | None = Field(default=None, sa_column=Column(Text))
    approval_text: str | None = Field(default=None, sa_column=Column(Text))
    solved_at: datetime | None = None
    # A ticket this one comes from (a Change converted from an Incident, a new ticket after a Closed one).
    linked_ticket_id: int | None = Field(default=None, foreign_key="ticket.id")
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class StatusChange(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int = Field(foreign_key="ticket.id", index=True)
    at: datetime = Field(default_factory=utcnow)
    from_status: str | None = None
    to_status: str
    by: str = ""
    note: str | None = Field(default=None, sa_column=Column(Text))


class InboundMessage(SQLModel, table=True):
    """A raw mail as received, the record of truth; processed from here."""

    # (state, processed_at): the quarantine's size, its oldest and its last day's count,
    # read by gateway status and every /metrics scrape, from the index alone (revision 0007).
    __table_args__ = (UniqueConstraint("message_id", "sha256", name="uq_inbound_mid_sha"),
                      Index("ix_inboundmessage_state_processed_at", "state", "processed_at"))
    id: int | None = Field(default=None, primary_key=True)
    received_at: datetime = Field(default_factory=utcnow)
    source: str = ""  # smtp, ingest:<path>, imap:<name>
    mail_from: str = ""
    rcpt_to: str = ""  # comma separated envelope recipients
    # The door's client: its address and HELO name (revision 0012), for SPF
    # (gateway.ingest.verify); "" for mail that came another way (IMAP, gateway ingest).
    peer: str = Field(default="", sa_column_kwargs={"server_default": ""})
    helo: str = Field(default="", sa_column_kwargs={"server_default": ""})
    # The gateway's own Authentication-Results header for this mail, once verified.
    authentication: str | None = Field(default=None, sa_column=Column(Text))
    # Process chosen by the door (a mailbox's setting); None: routing by address.
    process: str | None = None
    message_id: str = Field(default="", index=True)  # normalised, "" when absent
    sha256: str
    size: int = 0
    # received | processed | quarantined
    state: str = Field(default="received", index=True)
    outcome: str | None = None
    ticket_number: str | None = None
    detail: str | None = Field(default=None, sa_column=Column(Text))
    attempts: int = 0
    processed_at: datetime | None = None
    # A failure of the surroundings (a full disk, the database away) is waited out, not
    # counted in attempts: the mail is taken again from not_before on, the delay growing
    # with waits (revision 0010, gateway.ingest.faults).
    not_before: datetime | None = None
    waits: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # Workers that died while holding this mail alone; past [limits] max_worker_deaths
    # it is quarantined ("processing killed the worker").
    deaths: int = Field(default=0, sa_column_kwargs={"server_default": "0"})


class TicketMessage(SQLModel, table=True):
    """A mail or note on a ticket: received, sent, or written by an agent."""

    # The rate limit counts a sender's recent mails for every mail (Processor.over_rate).
    __table_args__ = (Index("ix_ticketmessage_from_addr_created_at", "from_addr", "created_at"),)

    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int = Field(foreign_key="ticket.id", index=True)
    direction: str  # in | out | note
    internal: bool = False
    # Our MTA's Authentication-Results (authserv_id) said dmarc=pass for this mail's From
    # (revision 0005): only then may its To and Cc become people of the thread
    # (gateway.ingest.threads.permission).
    authenticated: bool = Field(default=False, sa_column_kwargs={"server_default": false()})
    from_addr: str = ""
    to_addrs: str = ""  # comma separated
    cc_addrs: str = ""
    subject: str = ""
    body_text: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    body_full: str | None = Field(default=None, sa_column=Column(Text))
    body_html: str | None = Field(default=None, sa_column=Column(Text))
    message_id: str | None = Field(default=None, index=True)  # normalised, without <>
    inbound_id: int | None = Field(default=None, foreign_key="inboundmessage.id")
    outbox_id: int | None = Field(default=None, foreign_key="outbox.id")
    created_at: datetime = Field(default_factory=utcnow)


class Attachment(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    message_id: int = Field(foreign_key="ticketmessage.id", index=True)
    filename: str
    content_type: str = "application/octet-stream"
    size: int = 0
    sha256: str
    inline: bool = False
    content_id: str | None = None


class Outbox(SQLModel, table=True):
    """A mail to send, written in the transaction of the change it tells about.

    One row is one copy for one recipient (each greeted by name, in the language the
    manual says).  What the mail says is decided when the row is written: the event, the
    language, the Message-ID and the thread, and ``context``, the snapshot of the ticket
    and the data the template shows (JSON, store.notifications).  The deliverer renders
    it (gateway.outbound) before the first attempt and keeps the bytes in ``raw``, so a
    retry sends the same bytes.  A row written before revision 0006 has ``raw`` and no
    ``context``."""

    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int | None = Field(default=None, foreign_key="ticket.id", index=True)
    event: str
    # The one address this copy goes to, checked (store.addresses.mailbox) and kept as an
    # addr-spec: the envelope's only RCPT TO.
    recipient: str = Field(index=True)
    recipient_name: str = ""
    person_id: int | None = Field(default=None, foreign_key="person.id")
    language: str = "en"
    subject: str = ""
    message_id: str = Field(index=True)  # without <>
    in_reply_to: str | None = None
    # The References of the mail, oldest first (a JSON list of Message-IDs without <>).
    thread_ids: str = Field(default="[]", sa_column=Column(Text, nullable=False, default="[]"))
    auto_submitted: str = "auto-generated"
    # What the template shows, as queued (JSON); None for a row rendered when queued.
    context: str | None = Field(default=None, sa_column=Column(Text))
    # An approval request's number among the ticket's requests (1, 2, ...), which its
    # reply address names; the same on every copy of the request.  None for other events.
    approval_request: int | None = None
    # The MIME message as sent (CRLF); None until the deliverer renders it.
    raw: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    # pending | sent | failed
    state: str = Field(default="pending", index=True)
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow, index=True)
    last_answer: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow)
    sent_at: datetime | None = None
    # The deliverer that holds the row (host:pid) until claimed_until: several deliverers
    # (several instances) never send one row at once, and a dead one's rows are taken over.
    claimed_by: str | None = None
    claimed_until: datetime | None = None
    # When its deliverer was about to give the relay the end of the message (revision
    # 0009): a deliverer that dies after that point leaves a mail the relay has (or is
    # taking), which is then counted as sent, not sent again (gateway.outbound.outbox).
    handed_at: datetime | None = None


class DeliveryAttempt(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    outbox_id: int = Field(foreign_key="outbox.id", index=True)
    at: datetime = Field(default_factory=utcnow)
    outcome: str  # sent | temporary | permanent
    answer: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))


class ServiceProcess(SQLModel, table=True):
    """A process of a running ``gateway serve`` (its heartbeat): the door, each worker, the
    deliverer, the HTTP server.  Each refreshes ``last_seen`` every
    ``[monitoring] heartbeat_interval`` seconds; ``gateway status`` and /readyz take a row
    not refreshed for three of them for a dead process.  One row a process, on any number
    of hosts: ``instance`` names the ``gateway serve`` it belongs to (host:pid of its
    parent), so several instances can be listed side by side."""

    __table_args__ = (UniqueConstraint("host", "pid", name="uq_serviceprocess_host_pid"),)
    id: int | None = Field(default=None, primary_key=True)
    host: str
    pid: int
    instance: str = Field(index=True)
    # door, worker-0, worker-1, deliverer, http
    role: str
    version: str = ""
    started_at: datetime = Field(default_factory=utcnow)
    last_seen: datetime = Field(default_factory=utcnow)
    # Set when the process stopped cleanly (or its parent saw it die): not a silent death.
    stopped_at: datetime | None = None
    # Why it stopped, when its parent saw it die ("killed by signal 9").
    exit_reason: str | None = None


class MailboxPoll(SQLModel, table=True):
    """The last pass of a mailbox's poller that worked and the last that failed, kept
    across restarts: a mailbox whose password expired fails at every pass while the
    service looks up, and ``gateway status`` must say so."""

    mailbox: str = Field(primary_key=True)
    host: str = ""
    last_success_at: datetime | None = None
    last_failure_at: datetime | None = None
    last_error: str | None = Field(default=None, sa_column=Column(Text))


class Secret(SQLModel, table=True):
    """A secret the gateway made itself (revision 0005): ``reply``, which signs the reply
    and bounce addresses when [gateway] secret is not set, made once by whichever
    instance starts first and read by every other (gateway.secret)."""

    name: str = Field(primary_key=True)
    value: str
    created_at: datetime = Field(default_factory=utcnow)


class AuditEntry(SQLModel, table=True):
    """Who changed what, when (revision 0008): every write of the API, the admin console
    and the customer pages, written in the transaction of the change (store.audit)."""

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    # Who: "token:<name>", "admin:<email>", "customer:<email>", "cli:<user>".
    actor: str = Field(index=True)
    # What: a dotted name, "ticket.status", "template.save", "token.revoke".
    action: str
    # On what: "INC-000001", "template:waiting/fr", "outbox:42".
    target: str = Field(default="", index=True)
    # The state before and after, as JSON (None: not applicable).
    before: str | None = Field(default=None, sa_column=Column(Text))
    after: str | None = Field(default=None, sa_column=Column(Text))
    # The client's address, for a change made over HTTP.
    client: str = ""


class ApiToken(SQLModel, table=True):
    """A token the HTTP API accepts (revision 0011): only the SHA-256 of the token is kept
    (the token itself is shown once, when made: store.api_tokens), its role says what it
    may do, a revoked one is refused from the next request on."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)
    role: str  # read | agent | admin
    token_hash: str = Field(unique=True, index=True)  # hex SHA-256 of the whole token
    prefix: str = ""  # the token's first characters, to tell tokens apart in a list
    created_at: datetime = Field(default_factory=utcnow)
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class WebhookEvent(SQLModel, table=True):
    """One event for one configured webhook (revision 0011), written in the transaction of
    the change it tells about (store.webhooks.queue), delivered by the deliverer with the
    same ``event_id`` (its ``webhook-id``) on every attempt until the receiver answers 2xx
    or the schedule is exhausted."""

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(unique=True, index=True)  # msg_...: the webhook-id header
    url: str  # the [[webhooks]] entry it is for
    event: str  # ticket.created, ticket.status_changed, ...
    payload: str = Field(sa_column=Column(Text, nullable=False))  # the JSON body, as sent
    # pending | delivered | failed
    state: str = Field(default="pending", index=True)
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow, index=True)
    last_answer: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow)
    delivered_at: datetime | None = None
    claimed_by: str | None = None
    claimed_until: datetime | None = None


class AdminUser(SQLModel, table=True):
    """An admin of the console (revision 0013, gateway.actions.admins): the address they
    sign in with, an argon2 hash of the password (never the password), the console's
    language, and the failed sign-ins that lock the account for a while."""

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(unique=True)
    password_hash: str
    language: str = "en"
    disabled: bool = False
    failures: int = 0  # failed sign-ins in a row
    locked_until: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)


class AdminSession(SQLModel, table=True):
    """A signed-in admin (revision 0013): the cookie holds a random token, the database
    only its SHA-256 (a leaked table signs nobody in).  Every instance reads the same
    rows, so a sign-out ends the session everywhere; ``ended_at`` set: never valid again."""

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(unique=True)
    admin_id: int = Field(foreign_key="adminuser.id", index=True)
    csrf: str  # the token every form of the session carries
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    ended_at: datetime | None = None
    client: str = ""


class SignInToken(SQLModel, table=True):
    """A sign-in link asked for on the customers' pages (revision 0014): its token's
    SHA-256 (the token itself is only in the mail), who it signs in, until when, and
    when it was used (once).  A request for an address nobody has is kept too, with no
    person: the rate limits count every request, known or not (gateway.actions.portal)."""

    __table_args__ = (Index("ix_signintoken_email_created_at", "email", "created_at"),
                      Index("ix_signintoken_client_created_at", "client", "created_at"))
    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(unique=True)
    email: str  # as typed, normalised (store.addresses.key)
    person_id: int | None = Field(default=None, foreign_key="person.id")
    client: str = ""  # the IP address that asked
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    used_at: datetime | None = None


class PortalGrant(SQLModel, table=True):
    """A person may see every ticket of a company or division (its name in Company,
    manual §2), granted by an operator (``gateway persons grant``; revision 0014)."""

    __table_args__ = (UniqueConstraint("person_id", "company", name="uq_portalgrant_person_company"),)
    id: int | None = Field(default=None, primary_key=True)
    person_id: int = Field(foreign_key="person.id", index=True)
    company: str
    granted_by: str = ""
    created_at: datetime = Field(default_factory=utcnow)


class Assessment(SQLModel, table=True):
    """A customer's word on a Solved ticket (manual §2.2; revision 0014): solved, with a
    satisfaction level 1-5 and a comment, or not solved, with the comment that sent it
    back to In progress."""

    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int = Field(foreign_key="ticket.id", index=True)
    person_id: int = Field(foreign_key="person.id")
    solved: bool = True
    level: int | None = None  # 1 (not at all satisfied) to 5 (very satisfied); None when not solved
    comment: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    created_at: datetime = Field(default_factory=utcnow)


class Blob(SQLModel, table=True):
    """A raw mail or an attachment kept in the database (revision 0009, ``[store] blobs =
    "database"``), by its sha256: the bytes are its BlobChunk rows, so that instances on
    several hosts share nothing but the database (store.dbblobs)."""

    sha256: str = Field(primary_key=True)
    size: int = Field(sa_column=Column(BigInteger, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class BlobChunk(SQLModel, table=True):
    """One piece (at most store.dbblobs.CHUNK bytes) of a Blob, in order of ``seq``."""

    sha256: str = Field(primary_key=True)
    seq: int = Field(primary_key=True)
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class Lease(SQLModel, table=True):
    """Who holds a job that must have one holder at a time across instances (revision
    0009): the closer, each IMAP mailbox.  Held while ``expires_at`` is ahead and renewed
    by its holder; taken over by another instance once it has passed (gateway.lease)."""

    name: str = Field(primary_key=True)
    holder: str
    expires_at: datetime


class ApprovalDecision(SQLModel, table=True):
    """An approval request decided (revision 0009): one row per request, made in the
    transaction that approves or refuses, so that a request is decided once whatever
    instance reads the answer (gateway.ingest.decisions)."""

    ticket_id: int = Field(foreign_key="ticket.id", primary_key=True)
    request: int = Field(primary_key=True)
    decision: str
    inbound_id: int | None = None
    decided_at: datetime = Field(default_factory=utcnow)
