"""The ``gateway`` command line.  Every command takes ``--config PATH``; ``--json`` gives
machine-readable output where a script may want it."""

from __future__ import annotations

import argparse
import importlib
import sys

from gateway.config import ConfigError, load_config
from gateway.errors import CommandError

# Command groups, each a module of gateway.commands with register(subparsers).
# Commands that take mail in, process it, make tickets or deliver: they add to the
# service's metrics (gateway.metrics) as its own processes do.
COUNTED = ("ingest", "process", "ticket", "outbox", "imap", "close-solved")
COMMAND_MODULES = ("core", "status", "inbound", "tickets", "outbox", "persons", "templates", "imap", "db",
                   "api_tokens", "webhooks", "admins")

# Every command: the module that registers it, and its line in ``gateway --help``.  Only
# the module of the command being run is imported (a command module imports the
# database, the templates or the SMTP server: ~1.5 s of CPU for all of them), so
# ``gateway --help`` lists the others from here; tests/test_cli_startup.py checks that
# this table says what the modules register.
COMMANDS = {
    "serve": ("core", "run the SMTP listener and the worker"),
    "ingest": ("core", "feed raw messages from files or stdin (-)"),
    "process": ("core", "process stored mail that is waiting, now"),
    "status": ("status", "is mail flowing: what came in and went out last, what waits; exit 1 if stuck"),
    "inbound": ("inbound", "mail received: outcome, quarantine, replay"),
    "ticket": ("tickets", "show and work on tickets"),
    "close-solved": ("tickets", "close Solved tickets older than lifecycle.close_after_days, now"),
    "outbox": ("outbox", "notifications waiting, sent or failed"),
    "persons": ("persons", "people and companies (language, time zone)"),
    "templates": ("templates", "list, preview, check and compile the mail templates"),
    "imap": ("imap", "mailboxes read over IMAP"),
    "db": ("db", "the database's schema: upgrade, current, check"),
    "tokens": ("api_tokens", "tokens of the HTTP API (/api/v1)"),
    "webhooks": ("webhooks", "webhook events: pending, delivered, failed"),
    "admins": ("admins", "accounts of the admin console (/admin)"),
}
_VALUED = ("--config", "--log-level")  # the top-level options that take a value


def command_in(argv: list[str]) -> str | None:
    """The command named in ``argv`` (the first word that is neither an option nor an
    option's value), or None."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            return argv[i + 1] if i + 1 < len(argv) else None
        if word in _VALUED:
            i += 2
            continue
        if not word.startswith("-"):
            return word
        i += 1
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv``: the full parser of the command it names (its module
    imported), a one-line entry for every other command.  Without ``argv``, every
    command's module is imported and registered (the whole parser)."""
    # The options are accepted before and after the command; SUPPRESS keeps a
    # subcommand from overwriting a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help="config file (default: $GATEWAY_CONFIG, ./config.toml, or the embedded defaults)")
    common.add_argument("--log-level", default=argparse.SUPPRESS, help="DEBUG, INFO, WARNING or ERROR")
    parser = argparse.ArgumentParser(prog="gateway", description="E-mail gateway for IT service desks")
    # Separate actions from ``common``'s: argparse shares action objects between parents.
    parser.add_argument("--config", metavar="PATH", default=None, help="config file")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    if argv is None:
        wanted = set(COMMAND_MODULES)
    else:
        command = command_in(argv)
        wanted = {COMMANDS[command][0]} if command in COMMANDS else set()
    registered: set[str] = set()
    for name, (module_name, help_text) in COMMANDS.items():
        if module_name in wanted:
            if module_name not in registered:
                importlib.import_module(f"gateway.commands.{module_name}").register(sub, common)
                registered.add(module_name)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command != "serve":
        from gateway import logs, metrics

        # A command prints its result; its log says only what went wrong, unless asked.
        level = str(args.log_level) if str(args.log_level).upper() != "INFO" else "WARNING"
        logs.setup(level, config.logging, role="cli", base_dir=config.base_dir)
        if args.command in COUNTED:
            metrics.enable(metrics.folder(config.data_dir), "cli")
    try:
        return int(args.func(config, args) or 0)
    except KeyboardInterrupt:
        return 130
    except CommandError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return exc.status
    except ConfigError as exc:
        # Found once the command ran: the database cannot be opened, a port is in use,
        # a password the config names is not there, the secret kept in the data folder.
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        # The database is newer than this code, or its old tables are not the baseline's:
        # no command (and no start-up) may go on.  (store.schema is imported by what opens
        # a database: not before, for a command that needs none.)
        schema = sys.modules.get("store.schema")
        if schema is None or not isinstance(exc, schema.SchemaError):
            raise
        print(f"gateway: database: {exc}", file=sys.stderr)
        return 1
