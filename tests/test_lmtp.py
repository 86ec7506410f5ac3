"""Issue 16, item 3: the LMTP door (RFC 2033), on a TCP port and on a UNIX socket.

A real `gateway serve` with `[lmtp] enabled`, spoken to by a real LMTP client
(smtplib.LMTP, and a raw socket for pipelining): LHLO only, one reply per recipient
after the data, the SMTP door's refusals, and a recipient's 250 only once the mail is on
disk (a SIGKILL right after it loses nothing).  Postfix handing mail over LMTP:
tests/test_postfix.py.
"""

from __future__ import annotations

import json
import smtplib
import socket
import stat
import time
from pathlib import Path

import pytest

from conftest import free_port, run_gateway
from harness.service import Service, french_mail, wait_until

HELPDESK = "helpdesk@example.com"
REQUESTS = "requests@example.com"


def lmtp_config(folder: Path, lmtp: str, extra: str = "") -> int:
    """A config with the LMTP door on (``lmtp``: its keys) beside SMTP; the SMTP port."""
    folder.mkdir(parents=True, exist_ok=True)
    smtp_port = free_port()
    (folder / "config.toml").write_text(
        f'[gateway]\naddresses = ["{HELPDESK}"]\n[routing]\nroutes = {{ "{REQUESTS}" = "service-request" }}\n'
        f"[smtp]\nport = {smtp_port}\n{extra}\n[lmtp]\nenabled = true\n{lmtp}\n")
    return smtp_port


def inbound(folder: Path) -> list[dict]:
    return json.loads(run_gateway("--config", str(folder / "config.toml"), "inbound", "list", "--json",
                                  cwd=folder).stdout)


def tickets(folder: Path) -> list[dict]:
    return json.loads(run_gateway("--config", str(folder / "config.toml"), "ticket", "list", "--json",
                                  cwd=folder).stdout)


def mail(n: int, size: int = 0) -> bytes:
    """Mail number ``n`` to the helpdesk, with ``size`` more bytes of text."""
    msg = french_mail(n)
    del msg["To"]
    msg["To"] = HELPDESK
    raw = msg.as_bytes().replace(b"\n", b"\r\n")
    return raw + (b"x" * 78 + b"\r\n") * (size // 80)


def replies_after_data(client: smtplib.LMTP, raw: bytes, count: int) -> list[tuple[int, bytes]]:
    """DATA, then the ``count`` replies an LMTP server owes after it (smtplib reads one)."""
    first = client.data(raw)
    return [first] + [client.getreply() for _ in range(count - 1)]


def test_one_reply_per_recipient_and_the_smtp_doors_refusals(tmp_path):
    port = free_port()
    lmtp_config(tmp_path, f"port = {port}", extra="max_message_size = 200000")
    service = Service(tmp_path, port)
    try:
        with smtplib.LMTP("127.0.0.1", port) as client:
            # LMTP greets with LHLO; its server must offer PIPELINING and ENHANCEDSTATUSCODES.
            assert client.helo("mx.example.net")[0] == 500
            assert client.ehlo("mx.example.net")[0] == 250  # smtplib.LMTP sends LHLO for ehlo()
            assert client.has_extn("pipelining") and client.has_extn("enhancedstatuscodes")
            assert client.has_extn("size") and client.has_extn("8bitmime")

            client.mail("jeanne.dupont@example.be")
            assert client.rcpt(HELPDESK)[0] == 250
            assert client.rcpt("nobody@example.com")[0] == 550  # refused now, while Postfix can tell
            assert client.rcpt(REQUESTS)[0] == 250
            replies = replies_after_data(client, mail(1), 2)
            assert [code for code, _ in replies] == [250, 250], replies
            assert client.noop()[0] == 250  # and nothing more was owed

            # A refusal after the data is owed to each recipient too.
            client.mail("jeanne.dupont@example.be")
            client.rcpt(HELPDESK)
            client.rcpt(REQUESTS)
            replies = replies_after_data(client, mail(2, size=300_000), 2)
            assert [code for code, _ in replies] == [552, 552], replies
            client.mail("jeanne.dupont@example.be")
            client.rcpt(HELPDESK)
            client.rcpt(REQUESTS)
            looping = b"".join(b"Received: from hop%d.example.net by mx.example.net\r\n" % i for i in range(60))
            replies = replies_after_data(client, looping + mail(3), 2)
            assert [code for code, _ in replies] == [554, 554], replies
            assert client.noop()[0] == 250

        # Pipelined, as Postfix sends it once PIPELINING is offered: the replies come in order.
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
            reader = raw.makefile("rb")
            assert reader.readline().startswith(b"220")
            raw.sendall(b"LHLO mx.example.net\r\n")
            while not reader.readline().startswith(b"250 "):
                pass
            raw.sendall(b"MAIL FROM:<jeanne.dupont@example.be>\r\nRCPT TO:<" + HELPDESK.encode() +
                        b">\r\nRCPT TO:<nobody@example.com>\r\nRCPT TO:<" + REQUESTS.encode() + b">\r\nDATA\r\n")
            codes = [reader.readline()[:3] for _ in range(5)]
            assert codes == [b"250", b"250", b"550", b"250", b"354"]
            raw.sendall(mail(4) + b".\r\nQUIT\r\n")
            assert [reader.readline()[:3] for _ in range(3)] == [b"250", b"250", b"221"]

        wait_until(lambda: len(tickets(tmp_path)) == 2, timeout=60)
    finally:
        assert service.stop() == 0
    # Two mails stored, once each for both their recipients; the refused ones left nothing.
    rows = inbound(tmp_path)
    assert len(rows) == 2 and {r["source"] for r in rows} == {"lmtp"}
    assert all(sorted(r["rcpt_to"]) == [HELPDESK, REQUESTS] and r["outcome"] == "created" for r in rows)
    assert len([p for p in (tmp_path / "var" / "blobs").rglob("*") if p.is_file()]) == 2
    # gateway status tells when the LMTP door last brought mail.
    status = json.loads(run_gateway("--config", str(tmp_path / "config.toml"), "status", "--json", cwd=tmp_path,
                                    check=False).stdout)
    assert status["last_received"]["lmtp"][:19] == max(r["received_at"] for r in rows)[:19]


def test_a_unix_socket_with_its_mode_replaced_when_stale_refused_when_in_use(tmp_path):
    sock = tmp_path / "run" / "lmtp.sock"
    sock.parent.mkdir()
    smtp_port = lmtp_config(tmp_path, f'socket = "run/lmtp.sock"\nsocket_mode = "0620"')
    # A socket left by a gateway that died (nothing answers on it) is replaced.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock))
    stale.close()
    assert sock.is_socket()
    service = Service(tmp_path, smtp_port)
    try:
        wait_until(lambda: _answers(sock), timeout=30)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o620
        with smtplib.LMTP(str(sock)) as client:
            client.ehlo("mx.example.net")
            client.mail("jeanne.dupont@example.be")
            assert client.rcpt(HELPDESK)[0] == 250
            assert [code for code, _ in replies_after_data(client, mail(1), 1)] == [250]
        wait_until(lambda: tickets(tmp_path), timeout=60)

        # A second gateway on the same socket would take part of the mail: it refuses to start.
        other = tmp_path / "other"
        lmtp_config(other, f'socket = "{sock}"')
        refused = run_gateway("--config", str(other / "config.toml"), "serve", cwd=other, check=False)
        assert refused.returncode == 2
        err = refused.stderr.decode().strip()
        assert err.startswith("gateway: [lmtp] cannot listen on") and str(sock) in err and "another process" in err
        assert "Traceback" not in err and len(err.splitlines()) == 1
        assert sock.is_socket() and _answers(sock)  # the running gateway's socket is untouched
    finally:
        assert service.stop() == 0
    assert not sock.exists()  # removed on a clean stop
    [row] = inbound(tmp_path)
    assert row["source"] == "lmtp" and row["outcome"] == "created"


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


def test_kill_after_each_recipients_250_loses_nothing(tmp_path):
    """The 250s after the data mean the mail is on disk (the door's journal): the whole
    service SIGKILLed right after them, the next start makes every ticket, once."""
    port = free_port()
    lmtp_config(tmp_path, f"port = {port}")
    service = Service(tmp_path, port, "--accept-only")
    client = smtplib.LMTP("127.0.0.1", port)
    client.ehlo("mx.example.net")
    for n in range(1, 6):
        client.mail("jeanne.dupont@example.be")
        client.rcpt(HELPDESK)
        client.rcpt(REQUESTS)
        assert [code for code, _ in replies_after_data(client, mail(n), 2)] == [250, 250]
    service.kill()
    client.close()
    service = Service(tmp_path, port)
    try:
        wait_until(lambda: len(list((tmp_path / "var" / "outbox").glob("*.eml"))) >= 5, timeout=60)
        time.sleep(0.5)  # would a second round make more?
    finally:
        assert service.stop() == 0
    assert len(tickets(tmp_path)) == 5
    assert [r["source"] for r in inbound(tmp_path)] == ["lmtp"] * 5


@pytest.mark.parametrize("text, named", [
    ('socket_mode = "rw-rw----"', "lmtp.socket_mode"),
    ('socket_mode = "1777"', "lmtp.socket_mode"),
    ("port = 70000", "lmtp.port"),
    ("sockets = 1", "'sockets'"),
])
def test_a_wrong_lmtp_setting_is_named(tmp_path, text, named):
    (tmp_path / "config.toml").write_text(f"[lmtp]\nenabled = true\n{text}\n")
    proc = run_gateway("--config", str(tmp_path / "config.toml"), "serve", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    err = proc.stderr.decode().strip()
    assert named in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_a_port_in_use_is_named(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        lmtp_config(tmp_path, f"port = {port}")
        proc = run_gateway("--config", str(tmp_path / "config.toml"), "serve", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.decode().strip() == f"gateway: [lmtp] cannot listen on 127.0.0.1:{port}: Address already in use"
