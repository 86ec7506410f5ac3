"""Several ``gateway serve`` against one database, as several hosts would run them: each
with its own data folder, its own ports and its own session (process group), so that one
can be SIGKILLed whole, as a host that fails takes every process with it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Instance:
    """One ``gateway serve`` in ``folder`` (its config there, data under folder/var)."""

    def __init__(self, folder: Path, database_url: str, extra: str = "", env: dict | None = None,
                 http: bool = True):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.smtp_port = free_port()
        self.http_port = free_port()
        self.config = self.folder / "config.toml"
        self.config.write_text(f'[database]\nurl = "{database_url}"\n[smtp]\nport = {self.smtp_port}\n'
                               + (f'[http]\nport = {self.http_port}\n' if http else '[http]\nenabled = false\n')
                               + extra)
        self.env = dict(os.environ, **(env or {}))
        self.env.pop("GATEWAY_CONFIG", None)
        self.env["PYTHONPATH"] = os.pathsep.join([str(ROOT), self.env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self.proc: subprocess.Popen | None = None
        self.log = self.folder / "serve.log"
        self.starts = 0

    def start(self, wait: bool = True) -> "Instance":
        self.starts += 1
        with open(self.log, "ab") as out:
            out.write(f"\n--- start {self.starts} ---\n".encode())
            out.flush()
            self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(self.config), "serve"],
                                         cwd=self.folder, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway serve exited {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.smtp_port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"gateway serve did not listen on {self.smtp_port}:\n{self.log_text()[-4000:]}")

    def kill(self) -> None:
        """SIGKILL the whole instance (the serve and its children), as a host that dies."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        # The children are in the same group: wait until none is left.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _group_alive(self.proc.pid):
            time.sleep(0.05)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def pids(self) -> set[int]:
        """The serve's process and its children."""
        if self.proc is None:
            return set()
        found = {self.proc.pid}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                if ppid == self.proc.pid:
                    found.add(int(entry.name))
        return found

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
