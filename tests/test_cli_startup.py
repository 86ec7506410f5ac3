"""Start-up: a command imports what it needs when it runs (issue 20).

``gateway --help`` imports no database, template or SMTP library, and a ``gateway ingest``
no template library; the help lists every command from gateway.cli.COMMANDS, which must
say what the command modules register.  (How long start-up takes is a figure of
bench.run, not a test.)"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, run_gateway, write_config

HEAVY = ("sqlalchemy", "sqlmodel", "pydantic", "jinja2", "babel", "aiosmtpd", "imapclient", "nh3", "psycopg",
         "fastapi", "uvicorn", "alembic", "gateway.app", "gateway.ingest.process", "store.models")
TEMPLATES = ("jinja2", "babel", "gateway.outbound.render", "gateway.outbound.compose", "aiosmtpd", "imapclient",
             "fastapi", "uvicorn")

# Runs the real gateway.cli.main in a fresh interpreter and prints the modules it loaded.
PROBE = """
import json, sys
from gateway.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as exc:
    status = exc.code
print(json.dumps({"status": status, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def probe(*args: str, cwd: Path) -> tuple[int, set[str], str]:
    env = dict(os.environ)
    env.pop("GATEWAY_CONFIG", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, env=env, capture_output=True, timeout=120)
    report = json.loads(proc.stderr.decode().strip().splitlines()[-1])
    return report["status"], set(report["modules"]), proc.stdout.decode()


def test_help_imports_no_heavy_library(tmp_path):
    status, modules, out = probe("--help", cwd=tmp_path)
    assert status == 0
    assert not {m for m in modules if m.split(".")[0] in HEAVY or m in HEAVY}, sorted(
        m for m in modules if m.split(".")[0] in HEAVY or m in HEAVY)
    assert not any(m.startswith("gateway.commands.") for m in modules)
    # Every command is listed, with its line.
    from gateway.cli import COMMANDS

    for name, (_module, help_text) in COMMANDS.items():
        assert name in out
        assert help_text.split()[0] in out


def test_ingest_imports_no_template_library(tmp_path):
    write_config(tmp_path, "")
    mail = tmp_path / "m.eml"
    mail.write_bytes(b"From: Ann <ann@client.example>\r\nTo: helpdesk@example.com\r\nSubject: printer\r\n"
                     b"Message-ID: <startup-1@client.example>\r\n\r\nThe printer is out of paper.\r\n")
    status, modules, out = probe("--config", "config.toml", "ingest", "--no-deliver", "--json", str(mail), cwd=tmp_path)
    assert status == 0
    assert json.loads(out)["outcome"] == "created"
    assert not {m for m in modules if m.split(".")[0] in TEMPLATES or m in TEMPLATES}
    assert not any(m.startswith("gateway.commands.") and m != "gateway.commands.core" for m in modules)


def test_the_table_says_what_the_modules_register():
    """gateway.cli.COMMANDS (what --help lists without importing) against each module's
    register(): the same commands, in the same modules, with the same help line."""
    from gateway.cli import COMMAND_MODULES, COMMANDS

    registered = {}
    for module_name in COMMAND_MODULES:
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        importlib.import_module(f"gateway.commands.{module_name}").register(sub, argparse.ArgumentParser(add_help=False))
        for action in sub._choices_actions:
            registered[action.dest] = (module_name, action.help)
    assert registered == COMMANDS
    assert list(registered) == list(COMMANDS)  # the help's order


def test_a_command_gets_its_full_parser_wherever_the_options_are(tmp_path):
    from gateway.cli import build_parser, command_in

    assert command_in(["--config", "x.toml", "--log-level", "DEBUG", "ingest", "a.eml"]) == "ingest"
    assert command_in(["--config=x.toml", "ticket", "show", "INC-1"]) == "ticket"
    assert command_in(["--help"]) is None
    args = build_parser(["--config", "x.toml", "ingest", "--json", "a.eml"]).parse_args(
        ["--config", "x.toml", "ingest", "--json", "a.eml"])
    assert args.command == "ingest" and args.json and args.paths == ["a.eml"]
    # A command's own help, through the real command line.
    out = run_gateway("ingest", "--help", cwd=tmp_path).stdout.decode()
    assert "--no-deliver" in out
    out = run_gateway("ticket", "--help", cwd=tmp_path).stdout.decode()
    assert "show" in out
    # An unknown command is a clear error, not a traceback.
    proc = run_gateway("nonsense", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and b"invalid choice" in proc.stderr and b"Traceback" not in proc.stderr
