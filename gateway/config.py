"""Configuration: read once from TOML and the environment into frozen, typed objects.

The search order is: the file named by ``--config`` (or ``GATEWAY_CONFIG``), else
``config.toml`` in the current directory when there is one, else the embedded defaults
below.  Every key can then be overridden from the environment as
``GATEWAY_<SECTION>_<KEY>`` (``GATEWAY_DATABASE_URL``, ``GATEWAY_OUTBOUND_SMTP_HOST``), so
secrets never need to sit in the file.  A key that is unknown or of the wrong type stops
start-up with a message naming it.

Relative paths are taken relative to the directory of the config file (or the current
directory when there is none).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from store.vocabulary import LANGUAGES, PROCESSES


class ConfigError(Exception):
    """A configuration problem; the message names the key."""


@dataclass(frozen=True)
class GatewaySection:
    # Addresses the gateway answers for; the first is the From of its mails.
    addresses: tuple[str, ...] = ("helpdesk@localhost",)
    # Display name of the helpdesk in the From of its mails.
    name: str = "Helpdesk"
    # Folder for the database (by default), the blob store and the outbox.
    data_dir: str = "var"
    # Language for a new person when the mail does not tell (fr, nl, en, de).
    default_language: str = "en"
    # Domain of the Message-IDs the gateway writes; empty: the first address's domain.
    message_id_domain: str = ""
    # Secret that signs the reply, bounce and approval addresses: at least 32 bytes,
    # from the environment (GATEWAY_GATEWAY_SECRET).  Empty: the gateway makes a random
    # one at its first start and keeps it (<data_dir>/secret, or the database on
    # PostgreSQL, shared by every instance), see gateway.secret.
    secret: str = ""
    # Rotation: the secret used before, still accepted (never used to sign) on the
    # addresses of mails sent before the change, until previous_secret_until (an ISO
    # 8601 date or date-time, UTC unless it says otherwise).
    previous_secret: str = ""
    previous_secret_until: str = ""
    # authserv-id of our own MTA's Authentication-Results (RFC 8601); empty: not read.
    # A reply whose DMARC result from that MTA is "fail" changes nothing on its ticket;
    # only a mail whose topmost result from it is "pass" may enrol its To and Cc.
    authserv_id: str = ""
    # Catch-all: accept any local part at the helpdesk domains (else 550 on unknown ones).
    catch_all: bool = False
    # What to do with a mail from an unknown sender: create, reject or quarantine.
    unknown_senders: str = "create"

    def verifying_secrets(self, now: datetime | None = None) -> tuple[str, ...]:
        """The secrets a signed address may verify with, ``now``: the secret, and the
        previous one until previous_secret_until has passed."""
        if self.previous_secret and (now or datetime.now(timezone.utc)) < secret_until(self.previous_secret_until):
            return (self.secret, self.previous_secret)
        return (self.secret,)


@dataclass(frozen=True)
class DatabaseSection:
    # SQLAlchemy URL; empty: SQLite at <data_dir>/gateway.db.
    url: str = ""


@dataclass(frozen=True)
class StoreSection:
    # Where raw mails and attachments are kept: "database" (rows of the database, shared
    # by every instance) or "files" (under <data_dir>/blobs); empty: "database" with
    # PostgreSQL, "files" with SQLite.
    blobs: str = ""
    # Free space kept in reserve under the data folder (journal, blobs, SQLite database,
    # file outbox): below it the doors answer 452 and the worker and the deliverer wait,
    # so the database is not the one to hit the wall (0: no reserve).
    reserve_mb: int = 64


@dataclass(frozen=True)
class SmtpSection:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 2525
    # Largest message accepted, in bytes (552 above it).
    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = 50
    # Idle seconds before a client is disconnected.
    timeout: int = 300
    # Connections at once, in all and from one IP address; more get 421 (aiosmtpd has no cap).
    max_connections: int = 200
    max_connections_per_ip: int = 50


@dataclass(frozen=True)
class LmtpSection:
    # The LMTP listener (RFC 2033), for an MTA in front (Postfix's lmtp transport); off by
    # default.  Its mails get the [smtp] limits (size, recipients, timeout, connections).
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 2424
    # Path of a UNIX socket to listen on instead of host and port; empty: TCP.
    socket: str = ""
    # Permissions of the socket (octal): who may connect.
    socket_mode: str = "0660"

    @property
    def mode(self) -> int:
        return int(self.socket_mode, 8)


@dataclass(frozen=True)
class OutboundSmtpSection:
    host: str = "localhost"
    port: int = 25
    # none, starttls or tls (implicit TLS).
    security: str = "none"
    username: str = ""
    # Name of an environment variable holding the password.
    password_env: str = ""
    # Path of a file holding the password.
    password_file: str = ""
    # PEM file of the CA(s) to trust for the relay's certificate; empty: the system's.
    tls_ca_file: str = ""
    # Seconds to wait for the relay on connect and on each command.
    timeout: float = 30.0
    # Seconds to wait for the relay's answer after the message data (RFC 5321 4.5.3.2:
    # 10 minutes; a shorter wait turns a slow relay into duplicates).
    data_timeout: float = 600.0


@dataclass(frozen=True)
class OutboundSection:
    # file (writes .eml files into outbox_dir) or smtp (sends through a relay).
    transport: str = "file"
    # Folder for the file transport; empty: <data_dir>/outbox.
    outbox_dir: str = ""
    # Seconds between attempts, then the last value repeats until give_up_after.
    retry_schedule: tuple[int, ...] = (300, 900, 1800, 3600, 7200, 14400)
    # Seconds after the first attempt when a mail is given up as failed.
    give_up_after: int = 5 * 24 * 3600
    # Hard bounces after which an address is marked undeliverable.
    undeliverable_after: int = 3
    # Subject "[INC-000001] <title>" on every mail of a ticket, so that Gmail (which starts a
    # new conversation when the subject changes) keeps one thread; false: the template's
    # subject per event, tagged.
    stable_subject: bool = True
    # VERP: each mail's envelope sender is helpdesk+b<outbox id>.<token>@domain, so a
    # bounce names the mail it returns even when it quotes none of it.  Needs a relay that
    # lets the gateway send from plus-addresses of the helpdesk address (Postfix, Exim
    # do; Microsoft 365's SMTP AUTH may refuse a sender other than the mailbox).
    verp: bool = False
    smtp: OutboundSmtpSection = field(default_factory=OutboundSmtpSection)


@dataclass(frozen=True)
class LifecycleSection:
    # Days after which a Solved ticket is closed.
    close_after_days: int = 14
    # Seconds between two runs of the automatic close in the running service.
    close_interval: int = 3600


@dataclass(frozen=True)
class ServiceSection:
    # How much lower than the SMTP listener's the workers' and the deliverer's CPU
    # priority is (nice, 0-19; 0: the same).  The listener's answers are what senders
    # wait for; processing catches up when they are done.
    worker_nice: int = 5


@dataclass(frozen=True)
class TemplatesSection:
    # Folder of admin overrides: a template or catalog there wins over the shipped one.
    override_dir: str = ""


@dataclass(frozen=True)
class LimitsSection:
    max_parts: int = 500
    max_depth: int = 20
    max_header_length: int = 64 * 1024
    # Failed processing attempts before a mail is quarantined.
    max_attempts: int = 3
    # Notifications to one sender: at most rate_limit mails in rate_window seconds.
    rate_limit: int = 20
    rate_window: int = 600
    # New tickets from one sender: past new_tickets_per_sender in new_tickets_window
    # seconds, a mail that would open another is quarantined for an agent (0: no limit).
    new_tickets_per_sender: int = 0
    new_tickets_window: int = 3600
    # A sender whose mail says again what one of theirs said in the last loop_window
    # seconds (a robot answering every mail alike), or names in its text the Message-ID
    # of a mail we sent them in that time: the mail is kept on that ticket, no new
    # ticket, no answer (0: off).
    loop_window: int = 3600
    # Workers that died while holding one mail (a parser crash in a C extension) before
    # that mail is quarantined: "processing killed the worker".
    max_worker_deaths: int = 3
    # A failure of the surroundings (a full disk, the database away, a lock held too
    # long) is not the mail's: it waits, 2 s, then twice as long each time, at most this
    # many seconds, never counted in max_attempts (gateway.ingest.faults).
    max_wait_delay: int = 300


@dataclass(frozen=True)
class RoutingSection:
    # Process for mail to an address not listed in routes: incident, service-request, change.
    default_process: str = "incident"
    # Address -> process, e.g. {"requests@example.com" = "service-request"}.
    routes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HttpSection:
    # The operations endpoint (/healthz, /readyz, /metrics), served by gateway serve in a
    # process of its own; later the API and the admin pages too.
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8025
    # The address customers reach these pages at, as the links in mails name it
    # (https://desk.example.com behind a proxy); empty: http://<host>:<port>.
    public_url: str = ""


@dataclass(frozen=True)
class PortalSection:
    # The customers' pages under /portal (gateway.http.portal).
    enabled: bool = True
    # Days a ticket's link in a notification opens that ticket for its recipient.
    link_days: int = 30
    # Minutes a sign-in link sent by mail is valid (it is used once).
    sign_in_minutes: int = 15
    # Sign-in links asked for one address, and from one client (IP address), within
    # sign_in_window seconds; more are refused (the client) or not sent (the address).
    sign_ins_per_address: int = 3
    sign_ins_per_client: int = 20
    sign_in_window: int = 3600
    # Hours a signed-in session lasts.
    session_hours: int = 12


@dataclass(frozen=True)
class AdminSection:
    # The admin console (/admin on the [http] server; accounts: gateway admins add EMAIL).
    # Hours a signed-in session lasts; after them the admin signs in again.
    session_hours: int = 8
    # Cookies marked Secure (sent over HTTPS only): "auto" when the request came over TLS
    # or, with trust_proxy, a proxy says X-Forwarded-Proto: https; "always"; "never".
    secure_cookies: str = "auto"
    # Believe the X-Forwarded-Proto and X-Forwarded-For headers of the proxy in front.
    trust_proxy: bool = False
    # Failed sign-ins in a row that lock an account, and for how many minutes.
    max_failures: int = 5
    lock_minutes: int = 15
    # Sign-in attempts one client address may make a minute (any account).
    attempts_per_minute: int = 10


@dataclass(frozen=True)
class LoggingSection:
    # text: one line a record, for a person; json: one JSON object a line (time, level,
    # logger, message and, where known, ticket, message_id, inbound_id, outcome).
    format: str = "text"
    # A file the records are appended to instead of standard error (reopened when
    # logrotate moves it); empty: standard error.
    file: str = ""


@dataclass(frozen=True)
class MonitoringSection:
    # gateway status and /readyz: a stored mail waiting to be processed, or a notification
    # due and not sent, for longer than this many seconds is a problem.
    max_wait: int = 600
    # The relay's last this-many delivery attempts all refused or timed out: a problem.
    relay_failures: int = 3
    # Seconds between two heartbeats of each process of gateway serve; a process not
    # heard from for three of them is taken for dead.
    heartbeat_interval: int = 10


@dataclass(frozen=True)
class MailboxSection:
    name: str = ""
    host: str = "localhost"
    port: int = 993
    # tls (implicit), starttls or none.
    security: str = "tls"
    user: str = ""
    password_env: str = ""
    password_file: str = ""
    # Command printing an OAuth2 access token (XOAUTH2), instead of a password.
    oauth2_token_command: str = ""
    folder: str = "INBOX"
    processed_folder: str = "processed"
    failed_folder: str = "failed"
    # Process for every mail of this mailbox; empty: routing by address.
    process: str = ""
    idle: bool = True
    poll_interval: int = 60


@dataclass(frozen=True)
class WebhookSection:
    # Where the events are POSTed (http or https).
    url: str = ""
    # Which events: ticket.created, ticket.status_changed, ticket.comment_added,
    # mail.quarantined, notification.failed (store.webhooks.EVENTS).
    events: tuple[str, ...] = ()
    # The signing secret, as the Standard Webhooks specification writes it: whsec_ and
    # the base64 of 24 to 64 random bytes.
    secret: str = ""
    # Seconds to wait after each failed attempt (the answer not 2xx, or none); after the
    # last, the event is failed (gateway webhooks list shows it).
    retry_schedule: tuple[int, ...] = (5, 30, 120, 600, 1800, 3600, 7200, 21600)


@dataclass(frozen=True)
class AuthSection:
    # The gateway checks SPF, DKIM and DMARC itself (gateway.ingest.verify): "on", "off",
    # or "" (the default): on when gateway.authserv_id is empty, i.e. no MTA in front
    # whose Authentication-Results are trusted.
    verify: str = ""
    # The authserv-id of the gateway's own Authentication-Results header; empty: the
    # domain of its Message-IDs.
    authserv_id: str = ""
    # Also verify mail read from IMAP mailboxes or by gateway ingest, which has no
    # connecting address: DKIM and DMARC only (SPF is "none"), so a domain that signs
    # nothing and publishes p=reject is held.
    other_sources: bool = False
    # DNS server to ask ("192.0.2.53" or "192.0.2.53:5353"); empty: the system's resolver.
    dns_server: str = ""
    # Seconds all of one mail's DNS questions may take together; past it the checks
    # still open are "temperror", which never counts as a pass.
    time_limit: float = 10.0
    # Domains whose ARC seal is trusted (a mailing list, Microsoft 365's
    # "microsoft.com"...): a mail they forwarded, whose DKIM they broke, passes DMARC
    # when their seal validates and their ARC-Authentication-Results said dmarc=pass.
    arc_forwarders: tuple[str, ...] = ()


@dataclass(frozen=True)
class ScanSection:
    # clamd's address: the path of its UNIX socket, or host:port; empty: no scanning.
    clamd: str = ""
    # Seconds to wait for clamd's answer on one mail.
    timeout: float = 60.0
    # When clamd does not answer, the mail waits (retried).  true: it is processed
    # unscanned instead (a warning in the log).
    pass_unscanned: bool = False


@dataclass(frozen=True)
class Config:
    gateway: GatewaySection = field(default_factory=GatewaySection)
    database: DatabaseSection = field(default_factory=DatabaseSection)
    store: StoreSection = field(default_factory=StoreSection)
    smtp: SmtpSection = field(default_factory=SmtpSection)
    lmtp: LmtpSection = field(default_factory=LmtpSection)
    outbound: OutboundSection = field(default_factory=OutboundSection)
    lifecycle: LifecycleSection = field(default_factory=LifecycleSection)
    service: ServiceSection = field(default_factory=ServiceSection)
    templates: TemplatesSection = field(default_factory=TemplatesSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    routing: RoutingSection = field(default_factory=RoutingSection)
    http: HttpSection = field(default_factory=HttpSection)
    admin: AdminSection = field(default_factory=AdminSection)
    portal: PortalSection = field(default_factory=PortalSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    monitoring: MonitoringSection = field(default_factory=MonitoringSection)
    auth: AuthSection = field(default_factory=AuthSection)
    scan: ScanSection = field(default_factory=ScanSection)
    mailboxes: tuple[MailboxSection, ...] = ()
    webhooks: tuple[WebhookSection, ...] = ()
    # Directory relative paths are resolved against (not a key of the file).
    base_dir: str = "."

    # Derived paths -------------------------------------------------------------------
    def path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p

    @property
    def data_dir(self) -> Path:
        return self.path(self.gateway.data_dir)

    @property
    def database_url(self) -> str:
        if self.database.url:
            # libpq (psql, Heroku, many hosting panels) takes postgres:// as postgresql://;
            # SQLAlchemy knows only the second.
            scheme, sep, rest = self.database.url.partition("://")
            return f"postgresql://{rest}" if sep and scheme == "postgres" else self.database.url
        return f"sqlite:///{self.data_dir / 'gateway.db'}"

    @property
    def outbox_dir(self) -> Path:
        return self.path(self.outbound.outbox_dir) if self.outbound.outbox_dir else self.data_dir / "outbox"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def blobs_in_database(self) -> bool:
        """Whether raw mails and attachments live in the database ([store] blobs; by
        default with PostgreSQL only)."""
        if self.store.blobs:
            return self.store.blobs == "database"
        return self.database_url.startswith("postgresql")

    @property
    def helpdesk_address(self) -> str:
        return self.gateway.addresses[0]

    @property
    def message_id_domain(self) -> str:
        return self.gateway.message_id_domain or self.helpdesk_address.rpartition("@")[2] or "localhost"

    @property
    def verifying(self) -> bool:
        """Whether the gateway checks SPF, DKIM and DMARC itself ([auth] verify)."""
        return self.auth.verify == "on" or (self.auth.verify == "" and not self.gateway.authserv_id)

    @property
    def own_authserv_id(self) -> str:
        return self.auth.authserv_id or self.message_id_domain

    @property
    def trusted_authserv_id(self) -> str:
        """The authserv-id whose Authentication-Results the decisions read: the
        gateway's own when it verifies, else the MTA's (gateway.authserv_id)."""
        return self.own_authserv_id if self.verifying else self.gateway.authserv_id

    @property
    def public_url(self) -> str:
        """The base of the links in mails: ``[http] public_url``, else the address the
        HTTP server listens on."""
        if self.http.public_url:
            return self.http.public_url.rstrip("/")
        host = f"[{self.http.host}]" if ":" in self.http.host else self.http.host
        return f"http://{host}:{self.http.port}"

    def notice_settings(self):
        """What queueing a notification needs (store.notifications.Settings): with the
        signing secret resolved, each copy carries its recipient's link to the ticket."""
        from functools import partial

        from gateway.tokens import ticket_link
        from store.notifications import Settings

        link = None
        if self.gateway.secret and self.http.enabled and self.portal.enabled:
            link = partial(ticket_link, self.gateway.secret, self.public_url, self.portal.link_days)
        return Settings(default_language=self.gateway.default_language, message_id_domain=self.message_id_domain,
                        helpdesk_address=self.helpdesk_address, ticket_link=link)

    def mailbox(self, name: str) -> MailboxSection:
        for box in self.mailboxes:
            if box.name == name:
                return box
        raise ConfigError(f"no mailbox named {name!r} in the config (known: {', '.join(b.name for b in self.mailboxes) or 'none'})")


_CHOICES = {
    ("outbound", "transport"): ("file", "smtp"),
    ("outbound.smtp", "security"): ("none", "starttls", "tls"),
    ("mailboxes", "security"): ("none", "starttls", "tls"),
    ("gateway", "unknown_senders"): ("create", "reject", "quarantine"),
    ("routing", "default_process"): PROCESSES,
    ("gateway", "default_language"): LANGUAGES,
    ("logging", "format"): ("text", "json"),
    ("auth", "verify"): ("", "on", "off"),
    ("admin", "secure_cookies"): ("auto", "always", "never"),
    ("store", "blobs"): ("", "database", "files"),
}

# GATEWAY_* variables that are not keys, yet allowed: the config file's path, and those
# the tests and the benchmark read.  Any other GATEWAY_* name that is no key (a typo,
# GATEWAY_SMTP_PROT) stops start-up, as an unknown key in the file does.
NOT_KEYS = ("GATEWAY_CONFIG", "GATEWAY_CORPUS", "GATEWAY_TEST_POSTGRES_URL", "GATEWAY_BENCH_POSTGRES_URL")


# complex: one branch per type a setting may declare (bool, int, float, path, list, dict, literal), each from TOML or the environment
def _convert(value, tp, where: str):
    """Check and convert one value from TOML or the environment to the declared type."""
    origin = typing.get_origin(tp)
    from_env = isinstance(value, str) and tp is not str
    if tp is bool:
        if from_env:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if from_env:
            try:
                return int(value)
            except ValueError:
                pass
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if from_env:
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if from_env:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if from_env:
            pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
            value = {k.strip(): v.strip() for k, v in pairs}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return {str(k): _convert(v, str, f"{where}.{k}") for k, v in value.items()}
    raise ConfigError(f"{where}: unsupported type {tp}")  # pragma: no cover


def _build(cls, data: dict, section: str, env: dict[str, str], env_prefix: str | None):
    if not isinstance(data, dict):
        raise ConfigError(f"[{section}]: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)} - {"base_dir"}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown key {unknown[0]!r} in [{section}]" if section else f"unknown section or key {unknown[0]!r}"
        )
    kwargs = {}
    for name in names:
        tp = hints[name]
        where = f"{section}.{name}" if section else name
        sub_prefix = f"{env_prefix}_{name.upper()}" if env_prefix is not None else None
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, data.get(name, {}), where, env, sub_prefix)
            continue
        if typing.get_origin(tp) is tuple and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            items = data.get(name, [])
            if not isinstance(items, list):
                raise ConfigError(f"[[{where}]]: expected an array of tables")
            item_cls = typing.get_args(tp)[0]
            kwargs[name] = tuple(_build(item_cls, item, f"{where}[{i}]", env, None) for i, item in enumerate(items))
            continue
        if sub_prefix and sub_prefix in env:
            kwargs[name] = _convert(env[sub_prefix], tp, f"{where} (from ${sub_prefix})")
        elif name in data:
            kwargs[name] = _convert(data[name], tp, where)
        else:
            continue
        choices = _CHOICES.get((section.split("[")[0], name))
        if choices and kwargs[name] not in choices:
            raise ConfigError(f"{where}: {kwargs[name]!r} is not one of {', '.join(choices)}")
    return cls(**kwargs)


def load_config(path: str | os.PathLike | None = None, env: dict[str, str] | None = None) -> Config:
    """Load the configuration; ``path`` None means the search order of this module's docstring."""
    env = dict(os.environ if env is None else env)
    if path is None:
        path = env.get("GATEWAY_CONFIG") or (Path("config.toml") if Path("config.toml").is_file() else None)
    data: dict = {}
    base_dir = Path.cwd()
    if path is not None:
        path = Path(path)
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        base_dir = path.resolve().parent
    # An absolute data dir from the environment is the usual way to move everything at once.
    config = _build(Config, data, "", env, "GATEWAY")
    config = dataclasses.replace(config, base_dir=str(base_dir))
    _check(config)
    _check_environment(config, env)
    return config


def _env_names(cls, prefix: str):
    """Every GATEWAY_<SECTION>_<KEY> name of the keys of ``cls`` (arrays of tables, such as
    [[mailboxes]], have none)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == "base_dir":
            continue
        tp, name = hints[f.name], f"{prefix}_{f.name.upper()}"
        if dataclasses.is_dataclass(tp):
            yield from _env_names(tp, name)
        elif not (typing.get_origin(tp) is tuple and dataclasses.is_dataclass(typing.get_args(tp)[0])):
            yield name


def _check_environment(config: Config, env: dict[str, str]) -> None:
    """An unknown GATEWAY_* variable is refused by name: a misspelt override would
    otherwise be ignored without a word, and the default used instead.  Variables the
    config names for a password (password_env) are the operator's choice of name."""
    import difflib

    known = set(_env_names(Config, "GATEWAY")) | set(NOT_KEYS)
    known |= {config.outbound.smtp.password_env, *(box.password_env for box in config.mailboxes)}
    for name in sorted(env):
        if name.startswith("GATEWAY_") and name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            raise ConfigError(f"{name}: unknown environment variable, no key of the config"
                              + (f" (did you mean {close[0]}?)" if close else ""))


def check_secrets(config: Config, env: dict[str, str] | None = None) -> None:
    """At the start of the service: every password the config names can be read.  A
    mailbox whose password variable is unset would otherwise only fail at its first
    login, in a log line, while the service looks up."""
    env = os.environ if env is None else env

    def readable(where: str, password_env: str, password_file: Path | None, what: str) -> None:
        # As the pollers and the relay read them (gateway.ingest.imap.secret_for,
        # SmtpTransport._password).
        if password_env:
            if not env.get(password_env):
                raise ConfigError(f"{where}.password_env: the environment variable {password_env} ({what}) "
                                  f"is not set")
        elif password_file is not None:
            try:
                password_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"{where}.password_file: {password_file} ({what}) cannot be read: "
                                  f"{exc.strerror}") from None

    for i, box in enumerate(config.mailboxes):
        if not box.oauth2_token_command:
            readable(f"mailboxes[{i}]", box.password_env,
                     Path(box.password_file).expanduser() if box.password_file else None,
                     f"password of mailbox {box.name!r}")
    relay = config.outbound.smtp
    if config.outbound.transport == "smtp" and relay.username:
        readable("outbound.smtp", relay.password_env, config.path(relay.password_file) if relay.password_file else None,
                 "the relay's password")


# Secrets that a document of ours has shown (the old default of config.toml and README):
# known to anyone who read them, so they sign nothing.
DOCUMENTED_SECRETS = frozenset({"change-me"})
MIN_SECRET_BYTES = 32


def secret_until(value: str) -> datetime:
    """previous_secret_until as a time: an ISO 8601 date (its midnight) or date-time,
    UTC unless it names its offset.  ValueError when it is neither."""
    when = datetime.fromisoformat(value.strip())
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def check_secret(value: str, key: str) -> None:
    """ConfigError, naming ``key``, for a secret that must not sign anything."""
    if value.strip().lower() in DOCUMENTED_SECRETS:
        raise ConfigError(f"{key}: {value!r} is the example of the documentation, known to anyone: set a long random "
                          f"value (or leave gateway.secret empty to have one made)")
    if len(value.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(f"{key}: {len(value.encode())} bytes, at least {MIN_SECRET_BYTES} are needed: set a long "
                          f"random value (or leave gateway.secret empty to have one made)")


# complex: a flat list of independent checks across sections, each naming the setting it refuses
def _check(config: Config) -> None:
    gateway = config.gateway
    if gateway.secret:
        check_secret(gateway.secret, "gateway.secret")
    if gateway.previous_secret:
        check_secret(gateway.previous_secret, "gateway.previous_secret")
        if not gateway.previous_secret_until:
            raise ConfigError("gateway.previous_secret_until: needed with gateway.previous_secret (the date after "
                              "which the previous secret is no longer accepted)")
        if gateway.previous_secret == gateway.secret:
            raise ConfigError("gateway.previous_secret: the same as gateway.secret")
    if gateway.previous_secret_until:
        try:
            secret_until(gateway.previous_secret_until)
        except ValueError:
            raise ConfigError(f"gateway.previous_secret_until: {gateway.previous_secret_until!r} is not an ISO 8601 "
                              f"date or date-time (e.g. 2027-01-31 or 2027-01-31T12:00:00+01:00)") from None
    if config.limits.new_tickets_per_sender < 0 or config.limits.new_tickets_window <= 0:
        raise ConfigError("limits.new_tickets_per_sender must be 0 (no limit) or more, "
                          "and limits.new_tickets_window more than 0 seconds")
    if config.limits.loop_window < 0:
        raise ConfigError("limits.loop_window must be 0 (off) or more seconds")
    if not 0 <= config.service.worker_nice <= 19:
        raise ConfigError(f"service.worker_nice: {config.service.worker_nice} is not between 0 and 19")
    if not config.gateway.addresses:
        raise ConfigError("gateway.addresses: at least one address is needed")
    for addr in config.gateway.addresses:
        if "@" not in addr:
            raise ConfigError(f"gateway.addresses: {addr!r} is not an e-mail address")
    for addr, process in config.routing.routes.items():
        if process not in PROCESSES:
            raise ConfigError(f"routing.routes.{addr}: {process!r} is not one of {', '.join(PROCESSES)}")
    names = [b.name for b in config.mailboxes]
    for i, box in enumerate(config.mailboxes):
        if not box.name:
            raise ConfigError(f"mailboxes[{i}].name: every mailbox needs a name")
        if names.count(box.name) > 1:
            raise ConfigError(f"mailboxes[{i}].name: {box.name!r} is used twice")
        if box.process and box.process not in PROCESSES:
            raise ConfigError(f"mailboxes[{i}].process: {box.process!r} is not one of {', '.join(PROCESSES)}")
        if box.poll_interval < 1:
            raise ConfigError(f"mailboxes[{i}].poll_interval: at least 1 second")
        if not (box.folder and box.processed_folder and box.failed_folder):
            raise ConfigError(f"mailboxes[{i}]: folder, processed_folder and failed_folder must not be empty")
        if box.folder in (box.processed_folder, box.failed_folder):
            # The folder is the queue: moving a message into it would read it forever.
            raise ConfigError(f"mailboxes[{i}]: folder {box.folder!r} cannot also be the processed or failed folder")
    for where, port, lowest in (("smtp.port", config.smtp.port, 0), ("http.port", config.http.port, 0),
                                ("outbound.smtp.port", config.outbound.smtp.port, 1),
                                *((f"mailboxes[{i}].port", b.port, 1) for i, b in enumerate(config.mailboxes))):
        # 0 for a listener: any free port (the log says which).
        if not lowest <= port <= 65535:
            raise ConfigError(f"{where}: {port} is not a port number ({lowest}-65535)")
    if config.store.reserve_mb < 0 or config.limits.max_worker_deaths < 1 or config.limits.max_wait_delay < 1:
        raise ConfigError("store.reserve_mb must be at least 0, limits.max_worker_deaths and max_wait_delay at least 1")
    monitoring = config.monitoring
    if monitoring.max_wait < 1 or monitoring.relay_failures < 1 or monitoring.heartbeat_interval < 1:
        raise ConfigError("monitoring.max_wait, relay_failures and heartbeat_interval must be at least 1")
    try:
        mode = config.lmtp.mode
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise ConfigError(f"lmtp.socket_mode: {config.lmtp.socket_mode!r} is not a file mode in octal, such as \"0660\"")
    if not config.lmtp.socket and not 0 <= config.lmtp.port <= 65535:
        raise ConfigError(f"lmtp.port: {config.lmtp.port} is not a port number (0-65535)")
    _check_webhooks(config)
    if not config.outbound.retry_schedule:
        raise ConfigError("outbound.retry_schedule: at least one delay is needed")


WEBHOOK_EVENTS = ("ticket.created", "ticket.status_changed", "ticket.comment_added", "mail.quarantined",
                  "notification.failed")


def _check_webhooks(config: Config) -> None:
    import base64
    import binascii
    from urllib.parse import urlsplit

    urls = [hook.url for hook in config.webhooks]
    for i, hook in enumerate(config.webhooks):
        where = f"webhooks[{i}]"
        parts = urlsplit(hook.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{where}.url: {hook.url!r} is not an http:// or https:// URL")
        if urls.count(hook.url) > 1:
            raise ConfigError(f"{where}.url: {hook.url!r} is listed twice")
        if not hook.events:
            raise ConfigError(f"{where}.events: name at least one of {', '.join(WEBHOOK_EVENTS)}")
        for event in hook.events:
            if event not in WEBHOOK_EVENTS:
                raise ConfigError(f"{where}.events: {event!r} is not one of {', '.join(WEBHOOK_EVENTS)}")
        try:
            key = base64.b64decode(hook.secret.removeprefix("whsec_"), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if not hook.secret.startswith("whsec_") or not 24 <= len(key) <= 64:
            raise ConfigError(f"{where}.secret: whsec_ and the base64 of 24 to 64 random bytes is needed, e.g. the "
                              f"output of: python3 -c \"import base64,os; "
                              f"print('whsec_' + base64.b64encode(os.urandom(32)).decode())\"")
        if not hook.retry_schedule or any(delay < 1 for delay in hook.retry_schedule):
            raise ConfigError(f"{where}.retry_schedule: at least one delay, each at least 1 second")
