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
COMMAND_MODULES = ("core", "status", "inbound", "tickets", "outbox", "persons", "templates", "imap", "db")


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
        logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO) if args.log_level != "INFO"
                            else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(config, args) or 0)
    except KeyboardInterrupt:
        return 130
    except CommandError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return exc.status
    except ConfigError as exc:
        # Found at start-up after the file was read (the secret kept in the data folder).
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    except SchemaError as exc:
        # The database is newer than this code, or its old tables are not the baseline's:
        # no command (and no start-up) may go on.
        print(f"gateway: database: {exc}", file=sys.stderr)
        return 1
