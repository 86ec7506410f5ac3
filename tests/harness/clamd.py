"""A real ClamAV daemon for the tests, in a temporary folder, on a UNIX socket.

Debian's ``clamav-daemon`` is run in the foreground (``clamd -c CONFIG``) with a
configuration of its own and a signature database the test writes: the signature
updater cannot reach the internet here, and a test needs no more than one signature,
for the EICAR test file (an .ndb body signature, so it matches inside a decoded
attachment).  Nothing of the system's ClamAV is read or started.

The EICAR test file is put together at run time (``eicar()``): a copy of it in the
repository would be flagged by the scanners of anyone who checks it out.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

CLAMD = "/usr/sbin/clamd"
SIGNATURE = "Test.EICAR-Local"


def eicar() -> bytes:
    """The EICAR anti-virus test file (68 bytes)."""
    return b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-" + b"TEST-FILE!$H+H*"


class Clamd:
    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="clamd-"))
        self.socket = self.dir / "clamd.sock"
        (self.dir / "db").mkdir()
        body = b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE".hex()
        (self.dir / "db" / "test.ndb").write_text(f"{SIGNATURE}:0:*:{body}\n")
        (self.dir / "clamd.conf").write_text(
            f"LocalSocket {self.socket}\nDatabaseDirectory {self.dir / 'db'}\nForeground yes\n"
            f"LogFile {self.dir / 'clamd.log'}\nPidFile {self.dir / 'clamd.pid'}\n")
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def problem() -> str | None:
        if not os.path.exists(CLAMD):
            return f"{CLAMD} is not installed (Debian's clamav-daemon; scripts/test installs it)"
        return None

    def start(self, timeout: float = 60.0) -> None:
        self.proc = subprocess.Popen([CLAMD, "-c", str(self.dir / "clamd.conf")], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"clamd exited {self.proc.returncode}: {self.log()[-2000:]}")
            if self.ping():
                return
            time.sleep(0.1)
        raise RuntimeError(f"clamd did not answer PING in {timeout} s: {self.log()[-2000:]}")

    def ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(2)
                s.connect(str(self.socket))
                s.sendall(b"zPING\0")
                return s.recv(16).startswith(b"PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.proc = None

    def log(self) -> str:
        path = self.dir / "clamd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
