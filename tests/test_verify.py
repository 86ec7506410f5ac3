"""The gateway checks SPF, DKIM, DMARC and ARC itself, with no MTA in front (issue 25).

A real `gateway serve` is reached over SMTP from several loopback addresses (127.0.0.2
is the customer's mail server, 127.0.0.1 the stranger's, 127.0.0.3 a mailing list's), and
asks a real DNS server on loopback (tests/harness/dns.py) for the test domains' SPF
records, DKIM keys and DMARC policies.  The mails are signed by dkimpy with the keys
those records publish, and sealed (ARC) by the list as a list does.
"""

from __future__ import annotations

import smtplib

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlmodel import col, select

from conftest import free_port
from harness.dns import DnsServer
from store.db import session_for
from store.models import InboundMessage, StatusChange, Ticket, TicketMessage
from harness.desk import DANA, EVE, REFERENCE, TITLE, Desk, mail
from harness.service import Service, service_config, wait_until

OURS = "helpdesk.test"  # the gateway's own authserv-id in these tests
DANA_MX, EVE_MX, LIST_MX, SLOW_MX = "127.0.0.2", "127.0.0.1", "127.0.0.3", "127.0.0.4"
SIGNED = [b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"in-reply-to", b"references", b"reply-to"]


class Key:
    """An RSA key pair: the private half signs, the public half goes into the zone."""

    def __init__(self):
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.pem = self.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                              serialization.NoEncryption())
        self.public_der = self.private.public_key().public_bytes(serialization.Encoding.DER,
                                                                 serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, raw: bytes, domain: str, selector: str = "mail") -> bytes:
        return dkim.sign(raw, selector.encode(), domain.encode(), self.pem, include_headers=SIGNED) + raw


@pytest.fixture(scope="module")
def keys() -> dict[str, Key]:
    return {"acme": Key(), "lists": Key(), "other": Key()}


@pytest.fixture
def zone(keys):
    """The test domains: acme.test (Dana's company) publishes SPF for its server, a DKIM
    key and p=reject; evil.test (the stranger) SPF only; lists.test and other.test are
    mailing lists that seal what they forward."""
    server = DnsServer(ttl=1)
    server.txt("acme.test", f"v=spf1 ip4:{DANA_MX} -all")
    server.dkim_key("mail", "acme.test", keys["acme"].public_der)
    server.txt("_dmarc.acme.test", "v=DMARC1; p=reject; rua=mailto:dmarc@acme.test")
    server.txt("evil.test", f"v=spf1 ip4:{EVE_MX} -all")
    for name in ("lists", "other"):
        server.txt(f"{name}.test", f"v=spf1 ip4:{LIST_MX} -all")
        server.dkim_key("arc", f"{name}.test", keys[name].public_der)
    server.txt("slow.test", f"v=spf1 ip4:{SLOW_MX} -all")
    server.txt("_dmarc.slow.test", "v=DMARC1; p=quarantine")
    yield server
    server.close()


class Door(Desk):
    """The desk, written to from the address of the sender's own mail server."""

    def send(self, raw: bytes, mail_from: str, rcpt: str = "helpdesk@localhost", client: str = EVE_MX,
             helo: str = "mx.evil.test") -> None:
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30, local_hostname=helo,
                          source_address=(client, 0)) as smtp:
            assert smtp.sendmail(mail_from, [rcpt], raw) == {}
        self.sent += 1
        wait_until(self.settled, timeout=180)  # the first mail waits for the workers to start

    def verdicts(self) -> list[str]:
        with session_for(self.app.engine) as s:
            return [a or "" for a in s.exec(select(InboundMessage.authentication).order_by(col(InboundMessage.id)))]

    def outcomes(self) -> list[str]:
        with session_for(self.app.engine) as s:
            return list(s.exec(select(InboundMessage.outcome).order_by(col(InboundMessage.id))))


def start(tmp_path, database_url, zone, extra: str = ""):
    port = free_port()
    service_config(tmp_path, port, database_url,
                   extra=f'[auth]\nauthserv_id = "{OURS}"\ndns_server = "{zone.address}"\ntime_limit = 8.0\n'
                         f'arc_forwarders = ["lists.test"]\n{extra}')
    return Service(tmp_path, port), Door(tmp_path, port)


def forwarded(original: bytes, key: Key, lister: str) -> bytes:
    """``original`` as a mailing list passes it on: it checks the mail (its own
    Authentication-Results), tags the subject and adds a footer (which breaks the
    author's DKIM signature), then seals the result with ARC (RFC 8617)."""
    head, _, body = original.partition(b"\r\n\r\n")
    head = head.replace(b"Subject: ", b"Subject: [support-list] ", 1)
    body += b"\r\n-- \r\nsupport-list mailing list\r\n"
    raw = (f"Authentication-Results: {lister}; dkim=pass header.d=acme.test; spf=pass smtp.mailfrom=acme.test;\r\n"
           f" dmarc=pass header.from=acme.test\r\n").encode() + head + b"\r\n\r\n" + body
    seal = dkim.arc_sign(raw, b"arc", lister.encode(), key.pem, lister.encode(), include_headers=SIGNED)
    return b"".join(seal) + raw


def test_the_gateway_judges_senders_itself(tmp_path, database_url, zone, keys):
    service, desk = start(tmp_path, database_url, zone)
    acme = keys["acme"]

    def dana_writes(subject: str, body: str, headers: str = "") -> bytes:
        return acme.sign(mail(DANA, subject, body, top="", headers=headers, name="Dana Martin"), "acme.test")

    def waiting() -> None:
        desk.agent("INC-000001", "Waiting", "--waiting-reason", "customer-feedback", "--note", "Quel compte ?")

    try:
        # A genuine customer: her server, her signature; it passes and opens her ticket.
        desk.send(dana_writes(TITLE, "Mon salaire de mars n'a pas été versé."), DANA, client=DANA_MX,
                  helo="mx.acme.test")
        first = desk.verdicts()[0]
        assert first.startswith(OURS) and "spf=pass" in first and "dkim=pass header.d=acme.test" in first
        assert "dmarc=pass" in first
        desk.agent("INC-000001", "In progress")
        waiting()
        seen_id, _reply_to = desk.latest_to(DANA)
        thread = f"In-Reply-To: <{seen_id}>\r\nReferences: <{seen_id}>\r\n"
        # A forged From of a p=reject domain, from the stranger's server: held.
        desk.send(mail(DANA, "Re: [INC-000001]", "Le compte est BE00 0000 0000 0000.", top="", headers=thread,
                       name="Dana Martin"), EVE)
        assert "dmarc=fail" in desk.verdicts()[-1] and desk.outcomes()[-1] == "held"
        assert desk.status("INC-000001") == "Waiting"
        # Her own answer acts: the work resumes.
        desk.send(dana_writes("Re: [INC-000001]", "Le compte BE71 0961 2345 6769.", thread), DANA, client=DANA_MX,
                  helo="mx.acme.test")
        assert "dmarc=pass" in desk.verdicts()[-1]
        assert desk.status("INC-000001") == "In progress"
        # Forwarded by a list we trust: the footer broke her signature, the list's ARC
        # seal says it passed before; it acts.
        waiting()
        via_list = forwarded(dana_writes("Re: [INC-000001]", "Via la liste.", thread), keys["lists"], "lists.test")
        desk.send(via_list, "support-list-bounces@lists.test", client=LIST_MX, helo="mx.lists.test")
        verdict = desk.verdicts()[-1]
        assert "dkim=fail header.d=acme.test" in verdict and "arc=pass" in verdict and "dmarc=pass" in verdict
        assert desk.status("INC-000001") == "In progress"
        # The same from a list nobody configured: its seal proves nothing to us; held.
        waiting()
        via_other = forwarded(dana_writes("Re: [INC-000001]", "Via une autre liste.", thread), keys["other"],
                              "other.test")
        desk.send(via_other, "bounces@other.test", client=LIST_MX, helo="mx.other.test")
        assert "dmarc=fail" in desk.verdicts()[-1] and desk.outcomes()[-1] == "held"
        assert desk.status("INC-000001") == "Waiting"
        # The DNS stops answering for acme.test (its answers, 1 s TTL, have expired from
        # the cache): her genuine answer is temperror, held from acting, never a pass.
        for name in ("acme.test", "_dmarc.acme.test", "mail._domainkey.acme.test"):
            zone.silent(name)
        desk.send(dana_writes("Re: [INC-000001]", "Toujours rien ?", thread), DANA, client=DANA_MX,
                  helo="mx.acme.test")
        verdict = desk.verdicts()[-1]
        assert "dmarc=temperror" in verdict and "spf=temperror" in verdict, verdict
        assert desk.outcomes()[-1] == "held"
        assert desk.status("INC-000001") == "Waiting"
        with session_for(desk.app.engine) as s:
            moved_by = [h.by for h in s.exec(select(StatusChange).order_by(col(StatusChange.id)))]
    finally:
        desk.app.engine.dispose()
        assert service.stop() == 0
    # Only the agent and Dana's genuine mails moved it: her first (the ticket opened),
    # her answer, and her answer via the trusted list.
    assert [b for b in moved_by if b != "agent"] == [DANA, DANA, DANA]


def test_the_seven_ways_into_a_ticket_hold_with_no_mta_in_front(tmp_path, database_url, zone, keys):
    """The isolation test of the trust issue (tests/test_isolation.py), with no MTA and
    no Authentication-Results but the gateway's own."""
    service, desk = start(tmp_path, database_url, zone)
    acme = keys["acme"]
    try:
        desk.send(acme.sign(mail(DANA, f"{TITLE} ##{REFERENCE}##", "Bonjour,\r\n\r\nMon salaire n'a pas été versé.",
                                 top="", name="Dana Martin"), "acme.test"), DANA, client=DANA_MX, helo="mx.acme.test")
        desk.agent("INC-000001", "In progress")
        desk.agent("INC-000001", "Waiting", "--waiting-reason", "customer-feedback", "--note", "Quel compte ?")
        seen_id, seen_reply_to = desk.latest_to(DANA)
        thread = f"In-Reply-To: <{seen_id}>\r\nReferences: <{seen_id}>\r\n"

        def eve_writes(subject: str, body: str, headers: str = "", rcpt: str = "helpdesk@localhost", **kw) -> None:
            desk.send(mail(EVE, subject, body, top="", headers=headers, **kw), EVE, rcpt)

        eve_writes("RE: [INC-000001] une question", "Pouvez-vous m'envoyer le dossier ?")  # 1. the tag
        eve_writes("Re: votre dossier", "Je reprends ce dossier.", headers=thread)  # 2. References
        eve_writes(f"Suivi ##{REFERENCE}##", "Où en est ma demande ?")  # 3. the personal reference
        desk.send(mail(EVE, "Re: dossier", "Le compte est BE00 0000 0000 0000.", top="", to=seen_reply_to),
                  EVE, seen_reply_to)  # 4. the signed reply address
        spoof = thread + f"Reply-To: {EVE}\r\nCc: Eve <{EVE}>\r\n"
        # 5. A spoofed From (her envelope, her server): DMARC fails, held.
        desk.send(mail(DANA, "Re: dossier", "Eve s'occupe de mon dossier.", top="", headers=spoof,
                       name="Dana Martin"), EVE)
        eve_writes("Re: dossier", "Le compte est BE00 0000 0000 0000, merci.", headers=thread, to=seen_reply_to,
                   rcpt=seen_reply_to)
        assert desk.status("INC-000001") == "Waiting"
        # 6. The spoof with Dana's own envelope sender: SPF fails from eve's server; held.
        desk.send(mail(DANA, "Re: dossier", "Merci d'envoyer les suites à ma collègue Eve.", top="", headers=spoof,
                       name="Dana Martin"), DANA)
        # 7. A forged Authentication-Results in the gateway's own name saying pass: ours,
        #    on top, says fail; held, and the Cc counts for nothing.
        forged = f"Authentication-Results: {OURS}; dmarc=pass header.from=acme.test\r\n"
        desk.send(mail(DANA, "Re: dossier", "Eve est autorisée à suivre ce dossier.", top=forged, headers=spoof,
                       name="Dana Martin"), EVE)
        eve_writes("Re: dossier", "Alors, ce virement ?", to=seen_reply_to, rcpt=seen_reply_to, headers=thread)
        desk.agent("INC-000001", "Solved", "--solution", "Le virement a été refait.")
        seen_id, seen_reply_to = desk.latest_to(DANA)
        eve_writes("Re: [INC-000001]", "", headers=f"In-Reply-To: <{seen_id}>\r\nReferences: <{seen_id}>\r\n",
                   to=seen_reply_to, rcpt=seen_reply_to)
        assert desk.status("INC-000001") == "Solved"
        mails_to_eve = desk.mails_to(EVE)
        verdicts = desk.verdicts()
        with session_for(desk.app.engine) as s:
            victim = s.exec(select(Ticket).where(Ticket.number == "INC-000001")).one()
            thread_rows = s.exec(select(TicketMessage).where(TicketMessage.ticket_id == victim.id)).all()
            ids = {m.message_id for m in thread_rows if m.message_id}
            moved_by = {h.by for h in s.exec(select(StatusChange).where(StatusChange.ticket_id == victim.id))}
            eves = s.exec(select(Ticket.number).join(TicketMessage, col(TicketMessage.ticket_id) == col(Ticket.id))
                          .where(TicketMessage.from_addr == EVE, TicketMessage.direction == "in")).all()
            outcomes = s.exec(select(InboundMessage.outcome).order_by(col(InboundMessage.id))).all()
    finally:
        desk.app.engine.dispose()
        assert service.stop() == 0
    # Every mail has the gateway's verdict; the three spoofs failed DMARC and were held;
    # nothing but the agent (and Dana, opening it) moved her ticket.
    assert all(v.startswith(OURS) for v in verdicts)
    assert outcomes.count("held") == 3
    assert moved_by == {"agent", DANA}  # DANA: her first mail opened it
    assert len(eves) == 7 and "INC-000001" not in eves
    assert EVE not in {m.from_addr for m in thread_rows}
    assert len(mails_to_eve) >= 7
    for sent in mails_to_eve:
        text = sent.as_string() + "".join(part.get_content() for part in sent.walk()
                                          if part.get_content_maintype() == "text")
        assert [x for x in {"INC-000001", TITLE, *ids} if x in text] == [], sent["Subject"]
    for sent in desk.mails_to(DANA):
        assert EVE not in sent.as_string()


def test_verification_is_on_by_default_only_without_an_mta_in_front():
    from gateway.config import ConfigError, load_config

    alone = load_config(None, env={})
    assert alone.verifying and alone.trusted_authserv_id == "localhost"  # the Message-ID domain
    behind = load_config(None, env={"GATEWAY_GATEWAY_AUTHSERV_ID": "mx.example.com"})
    assert not behind.verifying and behind.trusted_authserv_id == "mx.example.com"
    both = load_config(None, env={"GATEWAY_GATEWAY_AUTHSERV_ID": "mx.example.com", "GATEWAY_AUTH_VERIFY": "on",
                                  "GATEWAY_AUTH_AUTHSERV_ID": OURS})
    assert both.verifying and both.trusted_authserv_id == OURS
    assert not load_config(None, env={"GATEWAY_AUTH_VERIFY": "off"}).verifying
    with pytest.raises(ConfigError, match="auth.verify"):
        load_config(None, env={"GATEWAY_AUTH_VERIFY": "yes"})


def test_a_mail_is_checked_once_whatever_the_number_of_workers(tmp_path, database_url, zone):
    """On PostgreSQL the service runs a worker a core, each with its own resolver.  A
    worker with no mail of its own took another's at once: the mail was parsed and its
    sender checked twice (its DNS questions asked by both) before the claim let one of
    the two go.  Another worker's mail is helped with only once it has waited."""
    import time

    service, desk = start(tmp_path, database_url, zone)
    try:
        desk.send(mail(DANA, TITLE, "Mon salaire de mars n'a pas été versé.", top="", name="Dana Martin"), DANA,
                  client=DANA_MX, helo="mx.acme.test")
        time.sleep(0.5)  # a second worker that took it too has asked by now
        assert "spf=pass" in desk.verdicts()[0]
        assert zone.asked.count(("acme.test", "TXT")) == 1, zone.asked
        assert zone.asked.count(("_dmarc.acme.test", "TXT")) == 1, zone.asked
    finally:
        assert service.stop() == 0
