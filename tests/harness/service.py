"""`gateway serve` in a subprocess on a free port, its config, a French mail, waiting for a
condition, and the service's child processes as /proc lists them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

from conftest import ROOT, wait_for_port


def service_config(folder: Path, port: int, database_url: str | None = None, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    db = f'[database]\nurl = "{database_url}"\n' if database_url else ""
    path = folder / "config.toml"
    path.write_text(f"[smtp]\nport = {port}\n{db}{extra}")
    return path


class Service:
    """`gateway serve` in a subprocess."""

    def __init__(self, folder: Path, port: int, *args: str, env: dict[str, str] | None = None):
        extra, env = env or {}, dict(os.environ)
        env["PYTHONPATH"] = str(ROOT)
        env.pop("GATEWAY_CONFIG", None)
        env.update(extra)
        self.port = port
        self.log = open(folder / "service.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(folder / "config.toml"),
                                      "serve", *args], cwd=folder, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port(port, proc=self.proc)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self.log.close()
        return code

    def kill(self) -> None:
        # SIGKILL the whole process group: the door and its worker die at once.
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.log.close()


def french_mail(n: int = 1, attachment: bytes | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Jeanne Dupont <jeanne.dupont@example.be>"
    msg["To"] = "helpdesk@localhost"
    msg["Subject"] = "Nouvel utilisateur ##PO1234##" if n == 1 else f"Demande {n} ##PO{n}##"
    msg["Message-ID"] = f"<mail-{n}-{time.time_ns()}@example.be>"
    msg["Date"] = "Fri, 27 Nov 2026 10:00:00 +0100"
    msg.set_content("Bonjour,\n\nMerci de créer un compte pour Marc Janssens, qui arrive lundi.\n\nJeanne\n")
    if attachment is not None:
        msg.add_attachment(attachment, maintype="application", subtype="pdf", filename="formulaire d'accès.pdf")
    msg["Content-Language"] = "fr-BE"  # as Outlook writes it; after the content, which clears Content-*
    return msg


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not met in time")


def children(pid: int) -> dict[str, int]:
    """The service's processes by name (gw-worker-N, gw-deliverer), their nice value."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            name = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if int(fields[1]) == pid:  # the parent's pid
            out[name] = int(fields[16])  # nice
    return out
