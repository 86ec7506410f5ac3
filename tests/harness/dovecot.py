"""A real Dovecot IMAP server for the tests, in a temporary folder on a free loopback port.

Debian's ``dovecot-imapd`` is run in the foreground (``dovecot -F -c CONFIG``) with a
configuration of its own: base_dir and state_dir under the temporary folder, one
passwd-file user, maildirs owned by an unprivileged account, plain-text login over
loopback without TLS.  Nothing of the system's Dovecot configuration is read.

``Dovecot.problem()`` says why a server cannot be started here (not installed, not
root); the fixture fails the run on that when ``CI`` is set and skips elsewhere.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


USER = "helpdesk"
PASSWORD = "s3cret-imap"


def dovecot_binary() -> str | None:
    return shutil.which("dovecot") or ("/usr/sbin/dovecot" if os.path.exists("/usr/sbin/dovecot") else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Dovecot:
    """One Dovecot instance.  ``extra`` is appended to the configuration (e.g. a
    ``protocol imap { imap_capability = ... }`` block to hide MOVE or IDLE)."""

    def __init__(self, extra: str = "", tls: bool = False, oauth2_tokeninfo_url: str = ""):
        self.binary = dovecot_binary()
        self.port = _free_port()
        # With tls: STARTTLS on ``port`` and implicit TLS on ``tls_port``, with a
        # self-signed certificate for 127.0.0.1 (``cert``, to trust it or not).
        self.tls = tls
        self.tls_port = _free_port() if tls else 0
        # With a token-info URL: XOAUTH2 logins, each token checked by a GET of URL+token
        # (the test serves that URL); the JSON answer's "email" must be the user.
        self.oauth2_tokeninfo_url = oauth2_tokeninfo_url
        # Not under pytest's tmp_path: that folder is private to root, and the mail
        # processes run as an unprivileged user that must reach the maildirs.
        self.root = Path(tempfile.mkdtemp(prefix="dovecot-"))
        os.chmod(self.root, 0o755)
        self.extra = extra
        self.proc: subprocess.Popen | None = None
        account = pwd.getpwnam("nobody")
        self.uid, self.gid = account.pw_uid, account.pw_gid
        self.home = self.root / "home" / USER
        self.config = self.root / "dovecot.conf"
        self.log = self.root / "dovecot.log"

    @staticmethod
    def problem() -> str | None:
        if dovecot_binary() is None:
            return "Dovecot is not installed (Debian package dovecot-imapd; scripts/test installs it)"
        if os.geteuid() != 0:
            return "the test Dovecot runs as root (it switches to an unprivileged user for mail)"
        try:
            pwd.getpwnam("dovenull")
            pwd.getpwnam("nobody")
        except KeyError as exc:
            return f"a system account Dovecot needs is missing: {exc}"
        return None

    def write_config(self) -> None:
        for sub in ("run", "state"):
            (self.root / sub).mkdir(exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        for path in (self.root / "home", self.home):
            os.chown(path, self.uid, self.gid)
        ssl_conf = "ssl = no"
        if self.tls:
            self.make_certificate()
            ssl_conf = f"ssl = yes\nssl_cert = <{self.cert}\nssl_key = <{self.root / 'key.pem'}"
        oauth2 = ""
        if self.oauth2_tokeninfo_url:
            ext = self.root / "oauth2.conf.ext"
            ext.write_text(f"tokeninfo_url = {self.oauth2_tokeninfo_url}\nusername_attribute = email\n")
            oauth2 = f"passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {ext}\n}}\n"
        passwd = self.root / "passwd"
        passwd.write_text(f"{USER}:{{PLAIN}}{PASSWORD}:{self.uid}:{self.gid}::{self.home}::\n")
        self.config.write_text(f"""\
base_dir = {self.root}/run
state_dir = {self.root}/state
log_path = {self.log}
protocols = imap
listen = 127.0.0.1
{ssl_conf}
disable_plaintext_auth = no
auth_mechanisms = plain login{" xoauth2 oauthbearer" if self.oauth2_tokeninfo_url else ""}
first_valid_uid = 1
mail_location = maildir:~/Maildir
default_login_user = dovenull
default_internal_user = dovenull
{oauth2}passdb {{
  driver = passwd-file
  mechanisms = plain login
  args = scheme=PLAIN username_format=%u {passwd}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {passwd}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.tls_port}
  }}
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
{self.extra}
""")

    @property
    def cert(self) -> Path:
        return self.root / "cert.pem"

    def make_certificate(self) -> None:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                        "-keyout", str(self.root / "key.pem"), "-out", str(self.cert)],
                       check=True, capture_output=True)

    def start(self, timeout: float = 15.0) -> None:
        if self.proc is None:
            self.write_config()
        self.proc = subprocess.Popen([self.binary, "-F", "-c", str(self.config)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Dovecot exited with {self.proc.returncode}: "
                                   f"{self.proc.stdout.read().decode(errors='replace')}\n{self.log_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.settimeout(2)
                    if s.recv(100).startswith(b"* OK"):
                        return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"Dovecot did not answer on port {self.port}:\n{self.log_text()}")

    def _descendants(self) -> list[int]:
        """The master's child processes (login, imap, auth...), read from /proc."""
        parents: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry.name))
        out, todo = [], [self.proc.pid]
        while todo:
            for child in parents.get(todo.pop(), []):
                out.append(child)
                todo.append(child)
        return out

    def stop(self) -> None:
        """Stop the server as a crash or restart would: the master and every imap
        process, so that the clients' connections are cut (an imap process otherwise
        outlives its master and keeps serving its client)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        children = self._descendants()
        self.proc.send_signal(signal.SIGTERM)
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        # The listener is gone once the master exits; wait until the port is free.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    time.sleep(0.05)
            except OSError:
                return

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def cleanup(self) -> None:
        self.stop()
        if self.proc is not None and self.proc.stdout:
            self.proc.stdout.close()
        shutil.rmtree(self.root, ignore_errors=True)

    # Helpers for the tests -------------------------------------------------------------
    def client(self):
        from imapclient import IMAPClient

        c = IMAPClient("127.0.0.1", port=self.port, ssl=False, timeout=30)
        c.login(USER, PASSWORD)
        return c

    def append(self, folder: str, messages: list[bytes], msg_time=None) -> None:
        with self.client() as c:
            if not c.folder_exists(folder):
                c.create_folder(folder)
            for raw in messages:
                c.append(folder, raw, msg_time=msg_time)

    def message_ids(self, folder: str) -> list[str]:
        """The Message-ID headers of the (undeleted) messages in ``folder``."""
        from email.parser import BytesHeaderParser

        with self.client() as c:
            if not c.folder_exists(folder):
                return []
            c.select_folder(folder, readonly=True)
            uids = c.search(["UNDELETED"])
            if not uids:
                return []
            data = c.fetch(uids, ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
            out = []
            for item in data.values():
                header = next(v for k, v in item.items() if k.startswith(b"BODY["))
                out.append((BytesHeaderParser().parsebytes(header)["Message-ID"] or "").strip())
            return sorted(out)


@pytest.fixture(scope="session")
def dovecot_ok() -> None:
    problem = Dovecot.problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem + " (CI is set: the IMAP tests must run)")
        pytest.skip(problem)


@pytest.fixture
def make_dovecot(dovecot_ok):
    servers: list[Dovecot] = []

    def make(extra: str = "", tls: bool = False, oauth2_tokeninfo_url: str = "") -> Dovecot:
        if tls and shutil.which("openssl") is None:
            pytest.skip("openssl is needed to make the test certificate")
        server = Dovecot(extra, tls=tls, oauth2_tokeninfo_url=oauth2_tokeninfo_url)
        servers.append(server)
        try:
            server.start()
        except Exception as exc:  # noqa: BLE001
            if os.environ.get("CI"):
                pytest.fail(f"Dovecot could not be started (CI is set): {exc}")
            pytest.skip(f"Dovecot could not be started: {exc}")
        return server

    yield make
    for server in servers:
        server.cleanup()


@pytest.fixture
def dovecot(make_dovecot) -> Dovecot:
    return make_dovecot()
