"""The SMTP dialogue under hostile input (reliability-security.md, part (b), SMTP dialogue,
items 5, 6, 7 and 9): a real door on loopback, spoken to over a raw socket, so the bytes
on the wire are exactly the test's (smtplib would refuse a non-ASCII address itself)."""

from __future__ import annotations

import socket
import time
from contextlib import contextmanager

from harness.ingest import inbound_rows
from harness.door import start

MAIL = (b"From: Jos\xc3\xa9 <jos\xc3\xa9@exemple.be>\r\nTo: helpdesk@localhost\r\nSubject: Imprimante\r\n"
        b"Message-ID: <dialogue-1@exemple.be>\r\n\r\nL'imprimante ne marche plus.\r\n")


class Client:
    """One connection: a command as raw bytes, its (last) reply line."""

    def __init__(self, port: int, timeout: float = 10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.reader = self.sock.makefile("rb")
        self.greeting = self.reply()

    def reply(self) -> bytes:
        while True:
            line = self.reader.readline()
            if line[3:4] != b"-":  # the last line of a multi-line reply, or b"" at EOF
                return line

    def send(self, command: bytes) -> bytes:
        self.sock.sendall(command + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@contextmanager
def dialogue(tmp_path, extra: str = "", timeout: float = 10):
    """A real door on loopback (test_smtp_caps.start) and one raw connection to it; on
    leaving, the connection is closed, the door stopped and the database let go."""
    app, controller = start(tmp_path, extra)
    try:
        client = Client(controller.port, timeout)
        try:
            yield app, client
        finally:
            client.close()
    finally:
        controller.stop()
        app.engine.dispose()


# Item 9: 8-bit in MAIL FROM / RCPT TO without SMTPUTF8 -----------------------------------
def test_non_ascii_mail_from_needs_smtputf8(tmp_path):
    with dialogue(tmp_path) as (app, client):
        assert client.send(b"EHLO client.example").startswith(b"250")
        # UTF-8 and a raw Latin-1 byte alike: not ASCII, and SMTPUTF8 was not declared.
        for sender in (b"jos\xc3\xa9@exemple.be", b"jos\xe9@exemple.be"):
            reply = client.send(b"MAIL FROM:<" + sender + b">")
            assert reply.startswith(b"553 5.6.7 ") and b"SMTPUTF8" in reply, reply
        # The refused MAIL opened no transaction: nothing to add recipients or data to.
        assert client.send(b"RCPT TO:<helpdesk@localhost>").startswith(b"503")
        assert client.send(b"DATA").startswith(b"503")
        assert inbound_rows(app) == []
        # SMTPUTF8 declared, but the bytes are not UTF-8: no address, refused for good
        # (storing it could only fail, at every retry of the sender).
        reply = client.send(b"MAIL FROM:<jos\xe9@exemple.be> SMTPUTF8")
        assert reply.startswith(b"553 5.6.7 ") and b"not valid UTF-8" in reply, reply
        assert inbound_rows(app) == []
        # The same address in UTF-8 with SMTPUTF8 (any case) on MAIL: accepted, and stored
        # at the end of DATA.
        assert client.send(b"MAIL FROM:<jos\xc3\xa9@exemple.be> smtputf8") == b"250 OK\r\n"
        assert client.send(b"RCPT TO:<helpdesk@localhost>") == b"250 OK\r\n"
        assert client.send(b"DATA").startswith(b"354")
        assert client.send(MAIL + b".").startswith(b"250 2.0.0 Stored as #")
        assert client.send(b"QUIT").startswith(b"221")
        (row,) = inbound_rows(app)
        assert (row.mail_from, row.rcpt_to) == ("josé@exemple.be", "helpdesk@localhost")


def test_non_ascii_rcpt_to_needs_smtputf8_on_mail(tmp_path):
    """With catch_all the door would take any local part at its domain: a non-ASCII one
    is refused for the missing SMTPUTF8 (553 5.6.7), not as an unknown mailbox (550)."""
    with dialogue(tmp_path, "[gateway]\ncatch_all = true\n") as (_app, client):
        client.send(b"EHLO client.example")
        assert client.send(b"MAIL FROM:<alice@example.com>") == b"250 OK\r\n"
        assert client.send(b"RCPT TO:<s\xc3\xa9cretariat@localhost>").startswith(b"553 5.6.7 ")
        assert client.send(b"RCPT TO:<helpdesk@localhost>") == b"250 OK\r\n"
        assert client.send(b"RSET").startswith(b"250")
        assert client.send(b"MAIL FROM:<alice@example.com> SMTPUTF8") == b"250 OK\r\n"
        assert client.send(b"RCPT TO:<s\xc3\xa9cretariat@localhost>") == b"250 OK\r\n"


# Item 6: too many recipients ----------------------------------------------------------
def test_recipients_past_the_cap_get_452_and_the_mail_keeps_the_first_50(tmp_path):
    with dialogue(tmp_path) as (app, client):
        assert app.config.smtp.max_recipients == 50
        client.send(b"EHLO client.example")
        assert client.send(b"MAIL FROM:<alice@example.com>") == b"250 OK\r\n"
        replies = [client.send(b"RCPT TO:<helpdesk@localhost>") for _ in range(60)]
        assert replies[:50] == [b"250 OK\r\n"] * 50
        assert replies[50:] == [b"452 4.5.3 Too many recipients\r\n"] * 10
        # A 452 is for that recipient only: the transaction goes on with the others.
        assert client.send(b"DATA").startswith(b"354")
        assert client.send(MAIL + b".").startswith(b"250 2.0.0 Stored as #")
        (row,) = inbound_rows(app)
        assert row.rcpt_to.split(",") == ["helpdesk@localhost"] * 50


# Item 5: a 1 MB command line ----------------------------------------------------------
def test_a_one_megabyte_command_line_gets_500_and_the_connection_stays_usable(tmp_path):
    with dialogue(tmp_path) as (app, client):
        client.send(b"EHLO client.example")
        reply = client.send(b"MAIL FROM:<" + b"a" * (1 << 20) + b"@example.com>")
        assert reply == b"500 Command line too long\r\n"
        # The whole line was read and dropped: the next command is answered as such.
        assert client.send(b"NOOP") == b"250 OK\r\n"
        assert client.send(b"MAIL FROM:<alice@example.com>") == b"250 OK\r\n"
        assert inbound_rows(app) == []


# Item 7: idle and slow clients --------------------------------------------------------
def _closed_after(client: Client) -> float:
    """Seconds until the server closes the connection; its last words must be a 421 or
    nothing (aiosmtpd 1.4 closes the transport at its timeout without a reply)."""
    began = time.monotonic()
    last = client.reply()
    while last:
        assert last.startswith(b"421"), last
        last = client.reply()
    return time.monotonic() - began


def test_an_idle_connection_is_closed_at_the_timeout(tmp_path):
    # A hang fails with socket.timeout.
    with dialogue(tmp_path, "[smtp]\ntimeout = 1\n", timeout=5) as (_app, client):
        assert client.send(b"EHLO client.example").startswith(b"250")
        waited = _closed_after(client)
        assert 0.5 <= waited < 3, waited  # the timer started at EHLO


def test_a_command_dribbled_a_byte_at_a_time_does_not_hold_the_connection(tmp_path):
    """Slowloris: bytes that never make a whole command do not reset the timer (aiosmtpd
    resets it on a valid command only), so the connection still closes at the timeout."""
    with dialogue(tmp_path, "[smtp]\ntimeout = 1\n") as (_app, client):
        assert client.send(b"EHLO client.example").startswith(b"250")
        client.sock.settimeout(0.2)  # one byte every 0.2 s: 29 bytes would take 5.8 s
        began, closed = time.monotonic(), False
        for byte in b"MAIL FROM:<alice@example.com>":
            try:
                client.sock.sendall(bytes([byte]))
                seen = client.sock.recv(1, socket.MSG_PEEK)
            except socket.timeout:
                continue  # still open, nothing said
            except OSError:  # reset: the server is gone
                seen = b""
            assert seen in (b"", b"4"), seen  # EOF, or the start of a 421
            closed = True
            break
        assert closed and 0.5 <= time.monotonic() - began < 3


# Issue 15, item 6: line endings, control characters, the answer's words ----------------
def _data(client: Client, mail_from: bytes, body: bytes) -> bytes:
    """One transaction whose DATA is ``body`` exactly as given, then <CR><LF>.<CR><LF>."""
    assert client.send(b"MAIL FROM:<" + mail_from + b">") == b"250 OK\r\n"
    assert client.send(b"RCPT TO:<helpdesk@localhost>") == b"250 OK\r\n"
    assert client.send(b"DATA").startswith(b"354")
    client.sock.sendall(body + b"\r\n.\r\n")
    return client.reply()


def test_a_mail_written_with_bare_lf_line_endings_is_stored_whole(tmp_path):
    """A client that writes LF line endings (a script, a Unix mailer piping a file): a
    mail of 5 kB in lines of 70 characters is stored as it came, not refused as one line
    too long (it was: a permanent 500, and the mail was lost)."""
    lines = [b"From: Script <cron@server.example.com>", b"To: helpdesk@localhost",
             b"Subject: Nightly backup report", b"Message-ID: <bare-lf-1@server.example.com>", b""]
    lines += [b"Backup of /srv/share%03d finished without error, 1234 files copied." % i for i in range(80)]
    body = b"\n".join(lines)  # the <CR><LF> of the end of DATA ends its last line
    assert len(body) > 5000 and b"\r" not in body
    with dialogue(tmp_path) as (app, client):
        client.send(b"EHLO client.example")
        reply = _data(client, b"cron@server.example.com", body)
        assert reply.startswith(b"250 2.0.0 Stored as #"), reply
        assert client.send(b"NOOP") == b"250 OK\r\n"  # the session goes on
        (row,) = inbound_rows(app)
        assert app.blobs.get(row.sha256) == body + b"\r\n"  # as it came: the LF line endings kept
        assert row.message_id == "bare-lf-1@server.example.com"
        outcome = app.processor.process(row.id)
        assert outcome.outcome == "created", outcome


def test_bare_lf_dot_lines_still_never_end_data(tmp_path):
    """Bare LF as a line end for the length only: <LF>.<LF> and <LF>.<CR><LF> are text
    (SMTP smuggling), and a dot after a bare LF is not unstuffed; one mail is stored,
    the smuggled command inside it."""
    body = (b"From: Eve <eve@evil.example>\nTo: helpdesk@localhost\nSubject: smuggle\n"
            b"Message-ID: <smuggle-1@evil.example>\n\nfirst\n.\nMAIL FROM:<x@evil.example>\n.\r\n"
            b"RCPT TO:<helpdesk@localhost>\n..\nlast")
    with dialogue(tmp_path) as (app, client):
        client.send(b"EHLO client.example")
        assert _data(client, b"eve@evil.example", body).startswith(b"250 2.0.0 Stored as #")
        (row,) = inbound_rows(app)
        assert app.blobs.get(row.sha256) == body + b"\r\n"


def test_a_line_too_long_without_any_line_end_is_still_refused(tmp_path):
    with dialogue(tmp_path) as (app, client):
        client.send(b"EHLO client.example")
        reply = _data(client, b"alice@example.com", b"Subject: x\n\n" + b"y" * 3000)
        assert reply.startswith(b"500 Line too long"), reply
        assert inbound_rows(app) == []


def test_a_nul_or_a_line_break_in_an_address_is_refused_with_501(tmp_path):
    with dialogue(tmp_path, "[gateway]\ncatch_all = true\n") as (app, client):
        client.send(b"EHLO client.example")
        for sender in (b"a\x00b@example.com", b"a\x01b@example.com", b"a\x7fb@example.com"):
            reply = client.send(b"MAIL FROM:<" + sender + b">")
            assert reply.startswith(b"501 5.1.7 ") and b"sender" in reply, reply
        assert client.send(b"MAIL FROM:<alice@example.com>") == b"250 OK\r\n"
        reply = client.send(b"RCPT TO:<help\x00desk@localhost>")
        assert reply.startswith(b"501 5.1.3 ") and b"recipient" in reply, reply
        # The transaction goes on with a good recipient, and nothing with a NUL is kept.
        assert client.send(b"RCPT TO:<helpdesk@localhost>") == b"250 OK\r\n"
        assert client.send(b"DATA").startswith(b"354")
        assert client.send(MAIL + b".").startswith(b"250 2.0.0 Stored as #")
        (row,) = inbound_rows(app)
        assert (row.mail_from, row.rcpt_to) == ("alice@example.com", "helpdesk@localhost")


def test_the_refusal_of_a_non_ascii_recipient_names_the_recipient_not_mail_from(tmp_path):
    with dialogue(tmp_path, "[gateway]\ncatch_all = true\n") as (_app, client):
        client.send(b"EHLO client.example")
        assert client.send(b"MAIL FROM:<alice@example.com>") == b"250 OK\r\n"
        reply = client.send(b"RCPT TO:<s\xc3\xa9cretariat@localhost>")
        assert reply.startswith(b"553 5.6.7 ") and b"recipient" in reply, reply
        # (MAIL FROM was plain ASCII: an answer naming it would send the sender's
        # postmaster after the wrong address.)
        assert b"MAIL FROM" not in reply and b"sender" not in reply, reply
