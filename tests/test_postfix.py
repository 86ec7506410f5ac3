"""Issue 16, items 2 and 3: a real Postfix in front of the gateway, configured with the
README's own lines (tests/harness/readme.py reads them from README.md; only the ports and
the folder of /etc/postfix/ are this test's), handing the helpdesk's mail over LMTP and,
as the README's other way, over SMTP.

Through Postfix: a new mail, a reply to the signed plus address of its confirmation
(only that address ties it to the ticket), a VERP bounce to the plus address that names
the confirmation, and a 10 MB attachment (over Postfix's default size limit) all arrive;
with the gateway stopped, Postfix defers, and once it is back delivers the mail once.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import json
import os
import shutil
import smtplib
import socket
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from conftest import free_port, run_gateway
from harness.postfix import Postfix, postfix  # noqa: F401 (postfix: fixture)
from harness.readme import readme_block
from harness.service import Service, wait_until
from harness.ingest import dsn

from gateway.tokens import bounce_address

HELPDESK = "helpdesk@example.com"
REQUESTS = "requests@example.com"
SECRET = "postfix-test-secret-of-32-bytes-or-more"
CUSTOMER = "jeanne.dupont@example.be"

GATEWAY_TOML = "# config.toml: the LMTP door, for Postfix on this machine"
MAIN_CF = "# /etc/postfix/main.cf: the gateway's part"
TRANSPORT = {
    "lmtp": "# /etc/postfix/transport: the helpdesk's addresses over LMTP",
    "smtp": "# /etc/postfix/transport: the helpdesk's addresses over SMTP",
}


def the_readmes_postfix(postfix: Postfix, door: str, lmtp_port: int, smtp_port: int) -> None:
    """Configure ``postfix`` with the README's main.cf lines and transport map for ``door``,
    its ports and /etc/postfix/ replaced by this test's."""
    main_cf = readme_block(MAIN_CF)
    transport = readme_block(TRANSPORT[door])
    assert "127.0.0.1:2424" in transport or "[127.0.0.1]:2525" in transport  # what is replaced below
    transport = transport.replace("127.0.0.1:2424", f"127.0.0.1:{lmtp_port}")
    transport = transport.replace("[127.0.0.1]:2525", f"[127.0.0.1]:{smtp_port}")
    postfix.configure(main_cf.replace("/etc/postfix/", f"{postfix.config_dir}/"),
                      files={"transport": transport}, maps=("transport",))
    # What the README's lines set, as Postfix reads them.
    assert postfix.postconf("recipient_delimiter") == "+"
    assert int(postfix.postconf("message_size_limit")) == 26214400


class Gateway:
    """`gateway serve` with the README's config.toml; the ports, the reply secret and VERP
    from the environment (as an operator would give the secret)."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.toml").write_text(readme_block(GATEWAY_TOML))
        self.lmtp_port, self.smtp_port = free_port(), free_port()
        self.env = {"GATEWAY_LMTP_PORT": str(self.lmtp_port), "GATEWAY_SMTP_PORT": str(self.smtp_port),
                    "GATEWAY_GATEWAY_SECRET": SECRET, "GATEWAY_OUTBOUND_VERP": "true"}
        self.service: Service | None = None

    def start(self) -> None:
        socket_path = self.env.get("GATEWAY_LMTP_SOCKET")
        self.service = Service(self.folder, self.smtp_port if socket_path else self.lmtp_port, env=self.env)
        if socket_path:  # the LMTP door serves right after the SMTP one
            wait_until(lambda: _answers(Path(socket_path)), timeout=30)

    def stop(self) -> None:
        if self.service is not None:
            assert self.service.stop() == 0
            self.service = None

    def cli(self, *args: str):
        out = run_gateway("--config", str(self.folder / "config.toml"), *args, "--json", cwd=self.folder,
                          env=self.env)
        return json.loads(out.stdout)

    def inbound(self) -> list[dict]:
        return self.cli("inbound", "list")

    def outbox_files(self) -> list[Path]:
        return sorted((self.folder / "var" / "outbox").glob("*.eml"))


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


def new_mail(subject: str, attachment: bytes | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"Jeanne Dupont <{CUSTOMER}>"
    msg["To"] = HELPDESK
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{time.time_ns()}.{os.getpid()}@example.be>"
    msg["Date"] = email.utils.formatdate(localtime=True)
    msg.set_content("Bonjour,\n\nL'imprimante du deuxième étage ne répond plus.\n\nJeanne\n")
    if attachment is not None:
        msg.add_attachment(attachment, maintype="application", subtype="octet-stream", filename="trace.bin")
    return msg


def mail_of_size(size: int) -> bytes:
    """A mail of about ``size`` bytes as Postfix counts it once queued (with its Received:
    line, under 300 bytes): a base64 attachment of random bytes fills it."""
    def build(payload: int) -> bytes:
        msg = new_mail("Export de la base", attachment=os.urandom(payload))
        return msg.as_bytes(policy=email.policy.SMTP)
    target = size - 300
    overhead = len(build(57 * 1000)) - 1000 * 78  # base64: 57 bytes a 76-character line and its CRLF
    raw = build((target - overhead) // 78 * 57)
    assert target - 100 < len(raw) <= target
    return raw


def outcome_of(gateway: Gateway, message_id: str, timeout: float = 90.0) -> dict:
    """The inbound row of ``message_id`` once it is processed."""
    def done():
        rows = [r for r in gateway.inbound() if r["message_id"] == message_id.strip("<>")]
        return rows if rows and rows[0]["state"] != "received" else None
    rows = wait_until(done, timeout=timeout, interval=0.3)
    assert len(rows) == 1, rows  # stored once
    return rows[0]


@pytest.mark.slow
@pytest.mark.parametrize("door", ["lmtp", "smtp"])
def test_postfix_hands_the_helpdesks_mail_over_as_the_readme_says(tmp_path, postfix, door):  # noqa: F811
    gateway = Gateway(tmp_path / "gateway")
    the_readmes_postfix(postfix, door, gateway.lmtp_port, gateway.smtp_port)
    postfix.start()
    gateway.start()
    try:
        # A new mail: a ticket, and its confirmation with the signed reply address.
        first = new_mail("Imprimante en panne ##PO4711##")
        postfix.send(CUSTOMER, [HELPDESK], first.as_bytes(policy=email.policy.SMTP))
        row = outcome_of(gateway, first["Message-ID"])
        assert (row["source"], row["outcome"], row["ticket"], row["rcpt_to"]) == (door, "created", "INC-000001",
                                                                                  [HELPDESK])
        [confirmation] = wait_until(gateway.outbox_files, timeout=60)
        sent = email.message_from_bytes(confirmation.read_bytes(), policy=email.policy.default)
        reply_to = sent["Reply-To"].addresses[0].addr_spec
        assert reply_to.startswith("helpdesk+INC-000001.") and reply_to.endswith("@example.com")

        # A reply to that address alone: no In-Reply-To, no References, no [INC-] in the
        # subject; Postfix finds helpdesk+INC-…@ under helpdesk@ (recipient_delimiter).
        reply = new_mail("Toujours en panne")
        reply.replace_header("To", reply_to)
        postfix.send(CUSTOMER, [reply_to], reply.as_bytes(policy=email.policy.SMTP))
        row = outcome_of(gateway, reply["Message-ID"])
        assert (row["source"], row["outcome"], row["ticket"], row["rcpt_to"]) == (door, "appended", "INC-000001",
                                                                                  [reply_to])

        # A VERP bounce from a mail server, to the bounce address naming the confirmation.
        [notification] = gateway.cli("outbox", "list")
        verp = bounce_address(SECRET, HELPDESK, notification["id"])
        report = dsn(verp, recipient=CUSTOMER)
        postfix.send("", [verp], report)
        row = outcome_of(gateway, "dsn-5.1.1@mx.example.org")
        assert (row["source"], row["outcome"], row["rcpt_to"]) == (door, "bounce", [verp])
        [notification] = gateway.cli("outbox", "list")
        assert notification["state"] == "failed"

        # 10 MB attached (13.7 MB in base64): over Postfix's default limit, within the README's.
        payload = os.urandom(10 * 1024 * 1024)
        big = new_mail("Trace du pilote", attachment=payload)
        postfix.send(CUSTOMER, [HELPDESK], big.as_bytes(policy=email.policy.SMTP))
        row = outcome_of(gateway, big["Message-ID"], timeout=180)
        assert (row["source"], row["outcome"], row["ticket"]) == (door, "created", "INC-000002")
        assert row["size"] > 13_000_000
        ticket = gateway.cli("ticket", "show", "INC-000002")
        [attached] = [a for m in ticket["messages"] for a in m["attachments"]]
        assert (attached["filename"], attached["size"]) == ("trace.bin", len(payload))
        assert attached["sha256"] == hashlib.sha256(payload).hexdigest()

        numbers = ["INC-000001", "INC-000002"]
        if door == "lmtp":
            # The limits aligned: Postfix counts a mail as the gateway will (its Received:
            # line included), so one just under the limit arrives, and one just over it is
            # refused while the sender is still connected, not bounced later.
            at_limit = mail_of_size(26214400 - 2000)
            postfix.send(CUSTOMER, [HELPDESK], at_limit)
            row = outcome_of(gateway, email.message_from_bytes(at_limit)["Message-ID"], timeout=240)
            assert (row["outcome"], row["ticket"]) == ("created", "INC-000003")
            assert len(at_limit) < row["size"] <= 26214400  # as sent, and Postfix's Received: line
            numbers.append("INC-000003")
            with pytest.raises(smtplib.SMTPResponseException) as refused:  # at MAIL (SIZE=) or after DATA
                postfix.send(CUSTOMER, [HELPDESK], mail_of_size(26214400 + 2000))
            assert refused.value.smtp_code == 552

        # The gateway stopped: Postfix keeps the mail, deferred ...
        gateway.stop()
        later = new_mail("Écran noir")
        postfix.send(CUSTOMER, [HELPDESK], later.as_bytes(policy=email.policy.SMTP))

        def deferred():
            queue = postfix.queue()
            return queue if queue and queue[0]["queue_name"] == "deferred" else None
        [queued] = wait_until(deferred, timeout=60, interval=0.3)
        [recipient] = queued["recipients"]
        assert recipient["address"] == HELPDESK and "Connection refused" in recipient["delay_reason"]
        # ... and delivers it once the gateway is back: once.
        gateway.start()
        postfix.flush()
        postfix.wait_until_empty(timeout=90)
        row = outcome_of(gateway, later["Message-ID"])
        assert (row["source"], row["outcome"], row["ticket"]) == (door, "created", f"INC-{len(numbers) + 1:06d}")
        numbers.append(row["ticket"])
        sent_lines = [line for line in postfix.log_text().splitlines()
                      if line.split(": ")[1:2] == [queued["queue_id"]] and "status=sent" in line]
        assert len(sent_lines) == 1, sent_lines
        assert f"relay=127.0.0.1[127.0.0.1]:{gateway.lmtp_port if door == 'lmtp' else gateway.smtp_port}" \
            in sent_lines[0]
    finally:
        print(postfix.log_text()[-6000:])  # shown when the test fails
        gateway.stop()
    tickets = gateway.cli("ticket", "list")
    assert sorted(t["number"] for t in tickets) == numbers
    assert len(gateway.inbound()) == len(numbers) + 2  # each mail stored once (with the reply and the bounce)


@pytest.mark.slow
def test_postfix_over_the_lmtp_socket_one_reply_per_recipient(tmp_path, postfix):  # noqa: F811
    """The README's other LMTP way in: a UNIX socket with socket_mode 0660, Postfix's
    lmtp client (not chrooted here) in the socket's group.  A mail to two of the
    helpdesk's addresses goes over in one LMTP transaction: one reply for each, one
    stored mail, and Postfix counts both recipients delivered."""
    folder = postfix.root / "gateway-run"  # where the postfix user can reach it
    folder.mkdir()
    shutil.chown(folder, group="postfix")
    os.chmod(folder, 0o2750)  # set-group-ID: the socket's group is postfix's
    sock = folder / "lmtp.sock"
    gateway = Gateway(tmp_path / "gateway")
    gateway.env.update(GATEWAY_LMTP_SOCKET=str(sock), GATEWAY_LMTP_SOCKET_MODE="0660")
    postfix.configure(readme_block(MAIN_CF).replace("/etc/postfix/", f"{postfix.config_dir}/"),
                      files={"transport": f"{HELPDESK} lmtp:unix:{sock}\n{REQUESTS} lmtp:unix:{sock}\n"},
                      maps=("transport",))
    postfix.start()
    gateway.start()
    try:
        assert oct(sock.stat().st_mode & 0o777) == "0o660" and sock.stat().st_gid == folder.stat().st_gid
        both = new_mail("Imprimante et badge")
        both.replace_header("To", f"{HELPDESK}, {REQUESTS}")
        postfix.send(CUSTOMER, [HELPDESK, REQUESTS], both.as_bytes(policy=email.policy.SMTP))
        row = outcome_of(gateway, both["Message-ID"])
        assert (row["source"], row["outcome"]) == ("lmtp", "created")
        assert sorted(row["rcpt_to"]) == [HELPDESK, REQUESTS]
        postfix.wait_until_empty()
        sent = [line for line in postfix.log_text().splitlines() if "status=sent" in line]
        assert len(sent) == 2 and len({line.split(": ")[1] for line in sent}) == 1, sent  # one queued mail
        assert {line.split("to=<")[1].split(">")[0] for line in sent} == {HELPDESK, REQUESTS}
        assert all(f"[{sock}]" in line.split("relay=")[1].split(",")[0] for line in sent), sent
    finally:
        print(postfix.log_text()[-6000:])  # shown when the test fails
        gateway.stop()
    assert not sock.exists()
