"""Every address that leaves was checked, and one address is one envelope recipient.

A legal address may hold commas, semicolons, angle brackets and "@" in its quoted local
part: "x,victim1@victim1.test,victim2@victim2.test"@evil.test is one mailbox at
evil.test.  The outbox used to keep a mail's recipients joined by commas and split them
again when sending, so that sender's subject went to victim1 and victim2 as well.  A
notification is now one outbox row for one checked address, and the relay is given that
address and no other (store.addresses.mailbox, store.notifications, the transport's RCPT).
These tests go the whole way: a mail stored and processed as the door hands it over, the
confirmation delivered through the SMTP transport to a real aiosmtpd relay on loopback,
and what the relay got as RCPT TO read back.
"""

from __future__ import annotations

import itertools
import re
from contextlib import contextmanager
from email import message_from_bytes, message_from_string
from email.policy import default as default_policy

from hypothesis import HealthCheck, given, settings, strategies as st
from sqlmodel import select

from gateway.app import App
from gateway.config import load_config
from gateway.outbound.outbox import deliver_pending
from harness.ingest import receive
from store.addresses import InvalidAddress, key as address_key, mailbox, quote_local
from store.db import session_for
from store.models import Outbox, Person, Ticket
from harness.relay import DroppingSMTP, RelayController, RelayHandler, relay_config

from conftest import free_port


class RecordingSMTP(DroppingSMTP):
    """The relay, keeping each RCPT command's argument as the client wrote it (the
    handler's ``rcpt_tos`` hold aiosmtpd's own reading of it, which re-quotes)."""

    async def smtp_RCPT(self, arg: str) -> None:
        self.event_handler.rcpt_args.append(arg)
        await super().smtp_RCPT(arg)


class RecordingController(RelayController):
    def factory(self):
        return RecordingSMTP(self.handler, **self.SMTP_kwargs)


@contextmanager
def running_relay():
    handler = RelayHandler()
    handler.rcpt_args = []
    handler.port = free_port()
    controller = RecordingController(handler, hostname="127.0.0.1", port=handler.port)
    controller.start()
    try:
        yield handler
    finally:
        controller.stop()

ATTACKER = '"x,victim1@victim1.test,victim2@victim2.test"@evil.test'


def mail_from(address: str, n: int, subject: str = "Your invoice is ready: pay at https://evil.test/pay") -> bytes:
    head = (f"From: {address}\r\nTo: helpdesk@desk.example.com\r\nSubject: {subject}\r\n"
            f"Message-ID: <m{n}@sender.example>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
    return head.encode("utf-8") + b"Please pay now.\r\n"


def deliver(app: App) -> None:
    deliver_pending(app.engine, app.config, app.transport(), notifier=app.notifier)


def test_a_quoted_local_part_with_commas_is_one_recipient(tmp_path, database_url):
    with running_relay() as relay:
        app = App(load_config(relay_config(tmp_path, relay.port, database_url), env={}))
        try:
            out = receive(app, mail_from(ATTACKER, 1), rcpt=("helpdesk@desk.example.com",))
            assert out.outcome == "created", out
            deliver(app)
            with session_for(app.engine) as session:
                [row] = session.exec(select(Outbox)).all()
                [person] = session.exec(select(Person)).all()
        finally:
            app.engine.dispose()
    assert person.email == ATTACKER
    assert (row.recipient, row.state) == (ATTACKER, "sent")
    # One RCPT TO, the attacker's own mailbox; neither victim got anything.
    [(_sender, rcpts, raw)] = relay.received
    assert rcpts == [ATTACKER] and relay.rcpt_args == [f"TO:<{ATTACKER}>"]
    [to] = message_from_bytes(raw, policy=default_policy)["To"].addresses
    assert to.addr_spec == ATTACKER
    assert b'To: "x,victim1@victim1.test,victim2@victim2.test"@evil.test' in raw


def test_an_address_that_does_not_check_is_never_mailed(tmp_path):
    """A sender whose address is no deliverable mailbox still gets a ticket, but no mail
    goes anywhere: not to a part of the address, not to a guess."""
    with running_relay() as relay:
        app = App(load_config(relay_config(tmp_path, relay.port), env={}))
        try:
            out = receive(app, mail_from("alice@-bad-.example", 1), rcpt=("helpdesk@desk.example.com",))
            assert out.outcome == "created", out
            deliver(app)
            with session_for(app.engine) as session:
                assert session.exec(select(Outbox)).all() == []
        finally:
            app.engine.dispose()
    assert relay.received == []


# Addresses as an attacker (or an odd mail program) writes them ----------------------------
_ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
_atom = st.text(alphabet=_ATEXT, min_size=1, max_size=12)
_dot_atom = st.lists(_atom, min_size=1, max_size=3).map(".".join)
# Quoted local parts: the characters that split or confuse address lists, an encoded word
# that a careless reader decodes, and letters outside ASCII.
_quoted = st.lists(st.one_of(
    st.sampled_from([",", ";", "<", ">", "@", " ", ":", "(", ")", "[", "]", '"', "\\", ".",
                     "=?utf-8?Q?admin?=", "victim@victim.test", "a@b.test, c@d.test", "é", "ü"]),
    st.text(alphabet=_ATEXT, min_size=1, max_size=6)), min_size=1, max_size=6).map("".join)
_encoded_word = st.sampled_from(["=?utf-8?Q?attacker?Q?agent?=", "=?UTF-8?B?dmljdGlt?=", "=?iso-8859-1?q?a?="])
_local = st.one_of(_dot_atom, _quoted, _encoded_word)
_label = st.one_of(st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True),
                   st.sampled_from(["bücher", "müller", "例え", "café", "xn--mller-kva"]))
_domain = st.lists(_label, min_size=1, max_size=2).map(lambda labels: ".".join([*labels, "example"]))


# An encoded word by RFC 2047's grammar: the gateway may read one inside an address
# (gateway.ingest.parse.address_as_written); anything else in an address stays literal.
ENCODED_WORD = re.compile(r"=\?[^\s()<>@,;:\"/\[\]?.=]+\?[QqBb]\?[^\s?]+\?=")


def reporter_of(app: App, number: str | None) -> str | None:
    """The address the gateway keeps for the Reporting Person of ticket ``number``."""
    if number is None:
        return None
    with session_for(app.engine) as session:
        ticket = session.exec(select(Ticket).where(Ticket.number == number)).one()
        return session.get(Person, ticket.reporting_person_id).email


def test_envelope_recipients_are_exactly_the_checked_addresses(tmp_path):
    counter = itertools.count(1)
    with running_relay() as relay:
        app = App(load_config(relay_config(tmp_path, relay.port), env={}))

        @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(local=_local, domain=_domain)
        def one_address(local: str, domain: str) -> None:
            n = next(counter)
            domain = f"d{n}.{domain}"  # a new person each time (addresses are compared case-folded)
            written = f"{quote_local(local)}@{domain}"
            before, commands = len(relay.received), len(relay.rcpt_args)
            out = receive(app, mail_from(written, n, subject=f"Invoice {n}"), rcpt=("helpdesk@desk.example.com",))
            deliver(app)
            got = relay.rcpt_args[commands:]
            sender = reporter_of(app, out.ticket)
            if sender is not None and not ENCODED_WORD.search(written):
                # The address as written (but for its case) is the sender's address.
                assert sender == address_key(written), (written, sender)
            try:
                checked = mailbox(sender) if sender is not None else None
            except InvalidAddress:
                checked = None
            if checked is None:
                assert got == [], f"{written!r} (read as {sender!r}) does not check, yet mail went to {got}"
                return
            # The checked address, and only it, once, in the envelope and the To.
            envelope = f"{quote_local(checked.local)}@{checked.ascii_domain}"
            assert got == [f"TO:<{envelope}>"] and len(relay.received) == before + 1, (written, got)
            # RFC 6532: a local part outside ASCII travels in UTF-8 headers.
            [to] = message_from_string(relay.received[-1][2].decode("utf-8"), policy=default_policy)["To"].addresses
            assert (to.username, to.domain) == (checked.local, checked.ascii_domain), written

        try:
            one_address()
        finally:
            app.engine.dispose()
