"""Issue 16, item 1: what the package ships, and the gateway installed from it.

The sdist is built from a copy of the checkout, and the wheel from the sdist (``python
-m build``, as a release is made), so each must carry the templates, the catalogs and the
schema revisions.  The wheel is installed with its dependencies from the package index
into a fresh virtual environment outside the checkout; `gateway serve` runs from it in
an empty folder with no config file, with no PYTHONPATH and nothing of the checkout
importable (checked), takes a mail over SMTP, and makes its ticket and confirmation.
The README's systemd unit runs that installation too.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import shutil
import signal
import smtplib
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ROOT, free_port, wait_for_port
from harness.readme import readme_block
from harness.service import french_mail, wait_until

from gateway.outbound.render import SHIPPED_DIR, missing_shipped, shipped_files

# Not part of the package, and large or private: left out of the copy the sdist is made from.
NOT_SHIPPED = shutil.ignore_patterns(".git", "var", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                     ".hypothesis", ".venv", "tests", "bench")
UNIT = "# /etc/systemd/system/helpdesk-gateway.service"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that would lead Python or the gateway to the
    checkout or to another configuration."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP") and not k.startswith("GATEWAY_")}
    env.update(extra)
    return env


def run(*command, cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in command], cwd=cwd, env=env or clean_env(), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, command))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@dataclass(frozen=True)
class Installed:
    sdist: Path
    wheel: Path
    venv: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def gateway(self) -> Path:
        return self.venv / "bin" / "gateway"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    """The sdist and wheel of this checkout, the wheel installed in a fresh venv."""
    base = tmp_path_factory.mktemp("packaging")
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SHIPPED)
    dist = base / "dist"
    run(sys.executable, "-m", "build", "--outdir", dist, source, cwd=base)  # the sdist, then the wheel from it
    [sdist] = dist.glob("*.tar.gz")
    [wheel] = dist.glob("*.whl")
    venv = base / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=base)
    run(venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel, cwd=base)
    return Installed(sdist, wheel, venv)


def migration_files() -> list[str]:
    folder = ROOT / "store" / "migrations"
    return sorted(str(p.relative_to(ROOT)) for p in [folder / "env.py", folder / "script.py.mako",
                                                     *(folder / "versions").glob("*.py")])


def test_every_shipped_file_is_listed_and_found_in_the_checkout():
    """``shipped_files`` is the closed list the start-up checks: every template and
    catalog of templates/mail is on it, and this checkout has them all."""
    on_disk = {str(p.relative_to(SHIPPED_DIR)) for p in SHIPPED_DIR.rglob("*")
               if p.is_file() and p.suffix in (".j2", ".po")}
    assert on_disk == set(shipped_files())
    assert missing_shipped(SHIPPED_DIR) == []


def test_missing_shipped_names_each_missing_file(tmp_path):
    copy = tmp_path / "mail"
    shutil.copytree(SHIPPED_DIR, copy)
    (copy / "solved.html.j2").unlink()
    (copy / "locale" / "de" / "LC_MESSAGES" / "mail.po").unlink()
    assert missing_shipped(copy) == ["solved.html.j2", "locale/de/LC_MESSAGES/mail.po"]


@pytest.mark.slow
def test_the_sdist_and_the_wheel_carry_templates_catalogs_and_migrations(installed):
    with tarfile.open(installed.sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        in_sdist = {name.removeprefix(f"{top}/") for name in tar.getnames()}
    with zipfile.ZipFile(installed.wheel) as whl:
        in_wheel = set(whl.namelist())
    for name in shipped_files():
        assert f"templates/mail/{name}" in in_sdist, name
        assert f"gateway/templates/mail/{name}" in in_wheel, name
    assert "templates/mail/locale/mail.pot" in in_sdist and "gateway/templates/mail/locale/mail.pot" in in_wheel
    for name in migration_files():
        assert name in in_sdist and name in in_wheel, name
    # Nothing of the checkout that is not the gateway's.
    assert not [n for n in in_wheel if n.startswith(("tests/", "bench/", "templates/"))]


@pytest.mark.slow
def test_the_installed_gateway_serves_from_an_empty_folder(installed, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    # The wheel, and only it, provides the code, the templates and the migrations.
    probe = run(installed.python, "-c", "import json, sys, gateway, store.schema, gateway.outbound.render as r; "
                "print(json.dumps([gateway.__file__, store.schema.__file__, str(r.SHIPPED_DIR), "
                "str(store.schema.MIGRATIONS_DIR), sys.path]))", cwd=site)
    gateway_file, schema_file, templates, migrations, path = json.loads(probe.stdout)
    venv = installed.venv.resolve()
    for found in (gateway_file, schema_file, templates, migrations):
        assert Path(found).resolve().is_relative_to(venv), found
    assert not [p for p in path if p and Path(p).resolve().is_relative_to(ROOT)], path

    port = free_port()
    env = clean_env(GATEWAY_SMTP_PORT=str(port))  # no config file: the embedded defaults, this port
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen([installed.gateway, "serve"], cwd=site, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            wait_for_port(port, timeout=60, proc=proc)
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                assert client.send_message(french_mail()) == {}
            [confirmation] = wait_until(lambda: list((site / "var" / "outbox").glob("*.eml")), timeout=90)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
    assert code == 0, (tmp_path / "serve.log").read_text()
    assert sorted(p.name for p in site.iterdir()) == ["var"]  # it wrote no config of its own

    def cli(*args: str):
        return json.loads(run(installed.gateway, *args, "--json", cwd=site).stdout)

    [listed] = cli("ticket", "list")
    assert (listed["number"], listed["status"]) == ("INC-000001", "New")
    ticket = cli("ticket", "show", "INC-000001")
    assert ticket["title"] == "Nouvel utilisateur" and ticket["personal_reference"] == "PO1234"
    [notification] = cli("outbox", "list")
    assert (notification["event"], notification["state"]) == ("new", "sent")
    sent = email.message_from_bytes(confirmation.read_bytes(), policy=email.policy.default)
    assert sent["Subject"].startswith("[INC-000001]") and sent["Content-Language"] == "fr"
    assert "INC-000001" in sent.get_body(("plain",)).get_content()


@pytest.mark.slow
def test_an_installation_without_a_template_or_catalog_refuses_to_start(installed, tmp_path):
    shipped = Path(json.loads(run(installed.python, "-c", "import json, gateway.outbound.render as r; "
                                  "print(json.dumps(str(r.SHIPPED_DIR)))", cwd=tmp_path).stdout))
    gone = [shipped / "new.txt.j2", shipped / "locale" / "nl" / "LC_MESSAGES" / "mail.po"]
    for path in gone:
        path.rename(path.with_name(path.name + ".away"))
    try:
        proc = subprocess.run([installed.gateway, "serve"], cwd=tmp_path, env=clean_env(GATEWAY_SMTP_PORT="0"),
                              capture_output=True, text=True, timeout=120)
    finally:
        for path in gone:
            path.with_name(path.name + ".away").rename(path)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("gateway: cannot start:") and "new.txt.j2" in err and "locale/nl/LC_MESSAGES/mail.po" in err
    assert not (tmp_path / "var").exists()  # refused before touching anything


@pytest.mark.slow
def test_the_readmes_systemd_unit_is_valid_and_runs_the_installation(installed, tmp_path):
    """The README's unit, its folders replaced by this test's: systemd-analyze finds nothing
    to say about it, and its ExecStart, run as the unit would (folder, environment),
    serves until SIGTERM stops it cleanly within TimeoutStopSec."""
    etc, lib = tmp_path / "etc", tmp_path / "lib"
    etc.mkdir()
    lib.mkdir()
    text = readme_block(UNIT)
    for folder, here in (("/opt/helpdesk-gateway", installed.venv), ("/etc/helpdesk-gateway", etc),
                         ("/var/lib/helpdesk-gateway", lib)):
        assert folder in text
        text = text.replace(folder, str(here))
    unit = tmp_path / "helpdesk-gateway.service"
    unit.write_text(text)
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing (Debian package systemd): the unit cannot be verified")
    else:
        verify = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
        assert verify.returncode == 0 and not verify.stdout.strip() and not verify.stderr.strip(), verify

    service = {}
    environment = {}
    section = None
    for line in text.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line and not line.startswith("#") and section == "Service":
            key, value = line.split("=", 1)
            if key == "Environment":
                environment.update([value.split("=", 1)])
            else:
                service[key] = value
    port = free_port()
    config = Path(environment["GATEWAY_CONFIG"])
    config.write_text(f'[gateway]\ndata_dir = "{lib}"\n[smtp]\nport = {port}\n')
    (etc / "secrets.env").write_text("GATEWAY_GATEWAY_SECRET=a-long-random-value-of-at-least-32-bytes\n")
    for line in (etc / "secrets.env").read_text().splitlines():
        environment.update([line.split("=", 1)])
    with open(tmp_path / "unit.log", "wb") as log:
        proc = subprocess.Popen(service["ExecStart"].split(), cwd=service["WorkingDirectory"],
                                env=clean_env(**environment), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            wait_for_port(port, timeout=60, proc=proc)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=int(service["TimeoutStopSec"]))
    assert code == 0, (tmp_path / "unit.log").read_text()
    assert (lib / "gateway.db").is_file()
