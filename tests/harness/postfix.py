"""A real Postfix for the tests, in a temporary folder, listening on a free loopback port.

Debian's ``postfix`` package is run as an instance of its own: ``postfix -c DIR
start-fg`` with a ``main.cf`` and ``master.cf`` written here (config, queue and data
directories, and the log file, all under the temporary folder; no daemon chrooted;
SMTP on 127.0.0.1:<port>).  Nothing of the system's Postfix is read or touched, and it
need not be configured (Debian's "No configuration" is enough).

The instance relays ``domains`` and delivers nothing else: every other destination,
bounces included, goes to Postfix's ``error`` transport, so no test mail leaves the
machine.  A test adds its own lines to ``main.cf`` (``configure``), typically the
README's snippet, and files such as a transport map (run through ``postmap`` when its
name is given in ``maps``).

``Postfix.problem()`` says why an instance cannot run here (not installed, not root:
Postfix's master runs as root and its daemons as the ``postfix`` user); the fixture
fails the run on that when ``CI`` is set and skips elsewhere.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

POSTFIX = "/usr/sbin/postfix"
BIN = Path(POSTFIX).parent

# The services of a Postfix that receives over SMTP and delivers over LMTP or SMTP (and
# pickup: ``postqueue -f`` takes a Postfix without it for one that is down).
# Columns: service type private unpriv chroot wakeup maxproc command.
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
lmtp      unix  - - n - - lmtp
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""

# The site around what a test configures: its own folders, loopback only, the relayed
# domains; nothing else delivered anywhere.
MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/spool
data_directory = {root}/data
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.test.example
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains = {domains}
default_transport = error:5.7.1 this test Postfix delivers only to the gateway
relay_transport = error:5.7.1 this test Postfix delivers only to the gateway
alias_maps =
alias_database =
local_recipient_maps =
biff = no
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postfix:
    """One Postfix instance relaying ``domains``; ``port`` is its SMTP listener."""

    def __init__(self, domains: str = "example.com"):
        self.domains = domains
        self.port = free_port()
        # Not under pytest's tmp_path: that folder is private to root, and Postfix's
        # daemons run as the postfix user.
        self.root = Path(tempfile.mkdtemp(prefix="postfix-"))
        os.chmod(self.root, 0o755)
        self.config_dir = self.root / "etc"
        self.log = self.root / "maillog"
        self.proc: subprocess.Popen | None = None
        self.configure()

    @staticmethod
    def problem() -> str | None:
        if not os.path.exists(POSTFIX):
            return "Postfix is not installed (Debian package postfix; scripts/test installs it)"
        if os.geteuid() != 0:
            return "the test Postfix runs as root (its master does; its daemons run as the postfix user)"
        try:
            pwd.getpwnam("postfix")
        except KeyError:
            return "the postfix system account is missing"
        return None

    # Configuration ---------------------------------------------------------------------
    def configure(self, main_cf: str = "", files: dict[str, str] | None = None, maps: tuple[str, ...] = ()) -> None:
        """The site's main.cf plus ``main_cf``; ``files`` written into the config folder
        (name -> text), ``maps`` among them compiled with postmap.  A running instance
        reloads."""
        self.config_dir.mkdir(exist_ok=True)
        for sub in ("spool", "data"):
            (self.root / sub).mkdir(exist_ok=True)
        shutil.chown(self.root / "data", "postfix")
        (self.config_dir / "master.cf").write_text(MASTER_CF.format(port=self.port))
        (self.config_dir / "main.cf").write_text(MAIN_CF.format(root=self.root, domains=self.domains) + main_cf)
        for name, text in (files or {}).items():
            (self.config_dir / name).write_text(text)
        for name in maps:
            self.run(BIN / "postmap", "-c", str(self.config_dir), f"hash:{self.config_dir / name}")
        self.run(POSTFIX, "-c", str(self.config_dir), "check")
        if self.running:
            self.run(POSTFIX, "-c", str(self.config_dir), "reload")

    def run(self, *command) -> str:
        proc = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, command))} exited {proc.returncode}: {proc.stderr}"
                               f"\n{self.log_text()[-3000:]}")
        return proc.stdout

    def postconf(self, name: str) -> str:
        return self.run(BIN / "postconf", "-c", str(self.config_dir), "-h", name).strip()

    # Running ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 20.0) -> None:
        """The master in the foreground (our child), ready once its smtpd greets."""
        self.proc = subprocess.Popen([POSTFIX, "-c", str(self.config_dir), "start-fg"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Postfix exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.settimeout(5)
                    if s.recv(100).startswith(b"220"):
                        return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"Postfix did not answer on port {self.port}:\n{self.log_text()[-3000:]}")

    def stop(self) -> None:
        """Stop the master; it stops its daemons."""
        if not self.running:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    # Mail ------------------------------------------------------------------------------
    def send(self, mail_from: str, rcpt_to: list[str], raw: bytes) -> None:
        """Hand a mail to this Postfix over SMTP, as a sending server would."""
        with smtplib.SMTP("127.0.0.1", self.port, timeout=60) as client:
            refused = client.sendmail(mail_from, rcpt_to, raw)
        assert refused == {}, refused

    def queue(self) -> list[dict]:
        """The queue as ``postqueue -j`` lists it: one dict a mail (queue_name, queue_id,
        sender, recipients with their delay_reason)."""
        out = self.run(BIN / "postqueue", "-c", str(self.config_dir), "-j")
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def flush(self) -> None:
        """Try every queued mail again now (``postqueue -f``), whatever its retry time."""
        self.run(BIN / "postqueue", "-c", str(self.config_dir), "-f")

    def wait_until_empty(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.queue():
                return
            time.sleep(0.2)
        raise TimeoutError(f"Postfix's queue is not empty: {self.queue()}\n{self.log_text()[-3000:]}")

    def wait_for_log(self, text: str, timeout: float = 60.0) -> str:
        """The first log line holding ``text``, once there is one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_text().splitlines():
                if text in line:
                    return line
            time.sleep(0.1)
        raise TimeoutError(f"no log line with {text!r}:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def postfix():
    """A Postfix instance relaying example.com (not started: configure, then start)."""
    problem = Postfix.problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem + " (CI is set: the Postfix tests must run)")
        pytest.skip(problem)
    server = Postfix()
    yield server
    server.cleanup()
