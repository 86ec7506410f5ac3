"""`gateway templates preview` shows what the customer gets: the same mail as the outbox
sends, but for its Date and Message-ID (and the time Outlook's Thread-Index carries, and
the end of validity of the link to the customers' pages, counted from when the mail is
written), in both forms of the Subject; and mails that ask something show it in the
inbox without leaving their ticket's thread."""

from __future__ import annotations

import base64
import email
import email.policy
import re

import pytest
from sqlmodel import col, select

from conftest import run_gateway, write_config
from gateway.app import App
from gateway.config import load_config
from gateway.outbound.outbox import render_pending
from store.db import session_for
from store.models import Outbox

CUSTOMER_MAIL = (
    "From: Marie Dupont <marie.dupont@client.be>\r\nTo: Helpdesk <helpdesk@localhost>\r\n"
    "Message-ID: <first-1@client.be>\r\nDate: Fri, 27 Nov 2026 08:00:00 +0100\r\n"
    "Subject: =?utf-8?q?Imprimante_du_2e_=C3=A9tage_en_panne?=\r\nContent-Language: fr-BE\r\n"
    "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    "Bonjour,\r\n\r\nL'imprimante du 2e étage affiche « erreur 49 ».\r\n\r\nMarie\r\n").encode()
VARYING = re.compile(rb"^(Date|Message-ID|Thread-Index): .*\r\n", re.M)
LINK_VALIDITY = re.compile(r"(/portal/t/[A-Z]+-\d{6}\.\d+)\.\d+\.[0-9a-f]{32}")


def but_for_the_moment(raw: bytes) -> tuple[bytes, list[tuple[str, str]]]:
    """A mail's headers but those that say when it was written (the boundary, a digest of
    the content, aside too), and its parts, decoded, the links' end of validity aside."""
    head = VARYING.sub(b"", raw.split(b"\r\n\r\n", 1)[0] + b"\r\n")
    head = re.sub(rb'boundary="[^"]+"', b'boundary=""', head)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    parts = [(part.get_content_type(), LINK_VALIDITY.sub(r"\1.UNTIL.SIG", part.get_content()))
             for part in msg.walk() if not part.is_multipart()]
    return head, parts


def gateway_in(tmp_path, database_url: str, stable: bool):
    write_config(tmp_path, f'[database]\nurl = "{database_url}"\n[outbound]\nstable_subject = {str(stable).lower()}\n')

    def run(*args: str, **kw):
        return run_gateway(*args, cwd=tmp_path, **kw)
    return run


def sent(tmp_path, event: str) -> list[Outbox]:
    """The copies of ``event`` in the outbox, rendered as the deliverer renders them."""
    app = App(load_config(tmp_path / "config.toml", env={}))
    try:
        render_pending(app.engine, app.notifier)
        with session_for(app.engine) as s:
            rows = list(s.exec(select(Outbox).where(Outbox.event == event).order_by(col(Outbox.id))))
            for r in rows:
                s.expunge(r)
            return rows
    finally:
        app.engine.dispose()


def thread_index_conversation(raw: bytes) -> bytes:
    """Outlook's conversation: the first 22 bytes of Thread-Index (the rest is the time of
    this mail in the conversation, a Date of its own)."""
    value = re.search(rb"^Thread-Index: (\S+)\r\n", raw, re.M).group(1)
    return base64.b64decode(value)[:22]


@pytest.mark.parametrize("stable", [True, False])
def test_the_preview_is_the_mail_the_customer_gets(tmp_path, database_url, stable):
    gateway = gateway_in(tmp_path, database_url, stable)
    (tmp_path / "mail.eml").write_bytes(CUSTOMER_MAIL)
    gateway("ingest", "mail.eml")
    ask = ("ticket", "set-status", "INC-000001", "Waiting", "--waiting-reason", "customer-feedback",
           "--note", "Quel bac papier est bloqué ?")
    gateway(*ask)
    preview = gateway("templates", "preview", "waiting", "--ticket", "INC-000001", "--raw").stdout
    gateway(*ask)  # the agent asks again: the mail the preview showed
    first, again = sent(tmp_path, "waiting")
    assert but_for_the_moment(preview) == but_for_the_moment(again.raw)
    assert len(but_for_the_moment(preview)[1]) == 2 and "/portal/t/INC-000001.1.UNTIL.SIG" in but_for_the_moment(preview)[1][0][1]
    assert thread_index_conversation(preview) == thread_index_conversation(again.raw)
    for name in (b"Date", b"Message-ID", b"Thread-Index"):
        assert re.search(rb"^" + name + rb": ", preview, re.M)
    msg = email.message_from_bytes(preview, policy=email.policy.default)
    assert msg["Auto-Submitted"] == "auto-generated" and msg["In-Reply-To"] == f"<{first.message_id}>"
    assert msg["Subject"] == ("[INC-000001] Imprimante du 2e étage en panne" if stable else
                              "[INC-000001] Votre ticket est en attente : Imprimante du 2e étage en panne")

    # The confirmation answered the customer's mail; its preview says so as it was sent.
    (new,) = sent(tmp_path, "new")
    shown = email.message_from_bytes(gateway("templates", "preview", "new", "--ticket", "INC-000001", "--raw").stdout,
                                     policy=email.policy.default)
    real = email.message_from_bytes(new.raw, policy=email.policy.default)
    assert shown["Auto-Submitted"] == real["Auto-Submitted"] == "auto-replied"
    assert shown["Subject"] == real["Subject"] and shown["In-Reply-To"] == real["In-Reply-To"] == "<first-1@client.be>"


def test_the_sample_preview_is_composed_as_sent_and_reads_true(tmp_path):
    """On sample data: the Subject and Auto-Submitted a real mail of the event has, and
    a ticket in the status the mail speaks of."""
    def preview(event: str, *args: str) -> email.message.EmailMessage:
        raw = run_gateway("templates", "preview", event, "--lang", "fr", "--raw", *args, cwd=tmp_path).stdout
        return email.message_from_bytes(raw, policy=email.policy.default)

    reopen = preview("reopen-needs-comment")
    text = reopen.get_body(("plain",)).get_content()
    assert "le ticket reste donc résolu" in text and "Statut\u00a0: Résolu" in text
    assert reopen["Subject"] == "[INC-000123] L'imprimante du 3e étage est en panne"
    assert reopen["Auto-Submitted"] == "auto-replied" and reopen["In-Reply-To"] == "<sample-3@client.example>"
    waiting = preview("waiting", "--waiting-reason", "third-party")
    assert waiting["Auto-Submitted"] == "auto-generated" and waiting["X-Message-Flag"] is None
    assert "Statut\u00a0: En attente" in waiting.get_body(("plain",)).get_content()
    recorded = preview("approval-recorded").get_body(("plain",)).get_content()
    assert "Statut\u00a0: En cours" in recorded and "votre approbation a bien été enregistrée" in recorded


# Mails that ask something ------------------------------------------------------------
ASKS = {  # event: how the agent gets there, and the line the customer sees first
    "waiting": (("Waiting", "--waiting-reason", "customer-feedback", "--note", "Quel bac ?"),
                "Action requise : nous attendons votre réponse"),
    "postponed": (("Postponed", "--reason", "Quel est le numéro de série ?"),
                  "Action requise : il nous manque des informations"),
}


@pytest.mark.parametrize("stable", [True, False])
def test_a_mail_that_asks_something_shows_it_in_the_inbox_and_stays_in_its_thread(tmp_path, stable):
    """The line inbox lists show under the Subject (Gmail, Outlook and Apple Mail take the
    first text of the mail) says what is asked, and Outlook flags the mail for follow-up
    (X-Message-Flag); the Subject, Thread-Topic, Thread-Index and References stay the
    ticket's, so Gmail and Outlook keep it in the thread."""
    gateway = gateway_in(tmp_path, f"sqlite:///{tmp_path / 'var' / 'gateway.db'}", stable)
    (tmp_path / "mail.eml").write_bytes(CUSTOMER_MAIL)
    gateway("ingest", "mail.eml")
    (new,) = sent(tmp_path, "new")
    first = email.message_from_bytes(new.raw, policy=email.policy.default)
    assert first["X-Message-Flag"] is None  # a confirmation asks nothing
    assert first.get_body(("plain",)).get_content().startswith("Votre ticket a été enregistré")
    for event, (move, line) in ASKS.items():
        gateway("ticket", "set-status", "INC-000001", *move)
        (row,) = sent(tmp_path, event)
        msg = email.message_from_bytes(row.raw, policy=email.policy.default)
        assert msg["X-Message-Flag"] == line
        text = msg.get_body(("plain",)).get_content().replace("\r\n", "\n")
        html = msg.get_body(("html",)).get_content()
        assert text.startswith(line.replace(" :", "\u00a0:") + "\n")
        body = re.sub(r"(?s)<head>.*?</head>", "", html)
        assert re.sub(r"<[^>]*>", "", body).strip().startswith(line.replace(" :", "\u00a0:"))
        # The same conversation as the confirmation, in every client.
        assert msg["Thread-Topic"] == first["Thread-Topic"]
        assert thread_index_conversation(row.raw) == thread_index_conversation(new.raw)
        assert f"<{new.message_id}>" in msg["References"]
        if stable:
            assert msg["Subject"] == first["Subject"] == "[INC-000001] Imprimante du 2e étage en panne"
        else:
            assert msg["Subject"].startswith("[INC-000001] ") and msg["Subject"] != first["Subject"]
        gateway("ticket", "set-status", "INC-000001", "In progress")
