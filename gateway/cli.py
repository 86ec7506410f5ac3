"""The ``gateway`` command line.  Every command takes ``--config PATH``; ``--json`` gives
machine-readable output where a script may want it."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from gateway.config import ConfigError, load_config
from gateway.errors import CommandError
from store.schema import SchemaError

# Command groups, each a module of gateway.commands with register(subparsers).
# Commands that take mail in, process it, make tickets or deliver: they add to the
# service's metrics (gateway.metrics) as its own processes do.
COUNTED = ("ingest", "process", "ticket", "outbox", "imap", "close-solved")
COMMAND_MODULES = ("core", "status", "inbound", "tickets", "outbox", "persons", "templates", "imap", "db", "admins")


def build_parser() -> argparse.ArgumentParser:
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
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"gateway.commands.{name}")
        module.register(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
    except SchemaError as exc:
        # The database is newer than this code, or its old tables are not the baseline's:
        # no command (and no start-up) may go on.
        print(f"gateway: database: {exc}", file=sys.stderr)
        return 1
