"""Answers to an approval request, read the way customers write them.

The reader (gateway.ingest.answers) on its own, then whole answers in French, Dutch,
English and German as Outlook, Gmail and Apple Mail write them: a greeting first, the
word in a sentence, a signature, and our approval mail quoted below (whose instructions
name both words, so a quote read by mistake would decide).  An answer that decides
nothing gets a mail saying so and how to answer.
"""

from __future__ import annotations

import email
import email.header
import email.policy
import quopri
from email.utils import getaddresses

import pytest
from sqlmodel import col, select

from gateway import actions
from gateway.ingest.answers import APPROVE, REFUSE, read_decision
from gateway.ingest.inbound import store_raw
from gateway.outbound.outbox import render_pending
from gateway.outbound.labels import APPROVE_WORD, REJECT_WORD
from gateway.outbound.render import LANGUAGES
from store import lifecycle
from store.db import session_for
from store.lifecycle import StatusData
from store.models import InboundMessage, Outbox, Person, TicketMessage
from store.tickets import get_ticket

HELPDESK = "helpdesk@localhost"


# The reader ---------------------------------------------------------------------------
@pytest.mark.parametrize("text, decision", [
    # French
    ("Bonjour,\n\nApprouvé, merci.", APPROVE),
    ("Bonjour Madame,\nC'est d'accord pour moi.", APPROVE),
    ("Chère Madame, chers collègues,\n\nAccepté.", APPROVE),
    ("Madame, Monsieur,\n\nJe valide le devis.", APPROVE),
    ("Bon pour accord.", APPROVE),
    ("APPROUVÉ", APPROVE),
    ("approuve", APPROVE),  # typed without its accent
    ("*Approuvé*", APPROVE),  # bold, in the text of an HTML mail
    ("Merci pour le devis.\nApprouvé.", APPROVE),  # thanks first
    ("Pas de souci, approuvé.", APPROVE),  # "pas" negates nothing in another clause
    ("Approuvé. Par contre, pas d'accord sur le délai.", APPROVE),  # only the first sentence
    ("Approuvé, pouvez-vous livrer lundi ?", APPROVE),  # the question is another clause
    ("Je ne suis pas d'accord, c'est trop cher.", REFUSE),
    ("Pas d'accord.", REFUSE),
    ("Je n'approuve pas cette dépense.", REFUSE),
    ("J'approuve pas.", REFUSE),
    ("Refusé : le budget est épuisé.", REFUSE),
    ("Approuvé, mais je refuse la livraison express.", REFUSE),  # a refusal wins
    ("Combien coûte la livraison ?", None),
    ("Est-ce approuvé ?", None),  # asked, not answered
    ("Je dois d'abord faire approuver par mon chef.", None),  # an infinitive decides nothing
    ("Le devis est valide jusqu'au 4 décembre.", None),  # "valide" is not "validé"
    ("Bonjour,\n\nMerci.", None),
    ("", None),
    # Dutch
    ("Goedemiddag,\n\nAkkoord, u mag bestellen.", APPROVE),
    ("Ik keur dit goed.", APPROVE),
    ("Goedgekeurd", APPROVE),
    ("Niet akkoord, te duur.", REFUSE),
    ("Ik ga er niet mee akkoord.", REFUSE),
    ("Ik keur het niet goed.", REFUSE),
    ("Geweigerd: te duur voor dit jaar.", REFUSE),
    ("Hoeveel kost de levering?", None),
    # English
    ("Hi,\n\nApproved, thanks.", APPROVE),
    ("I approve the purchase.", APPROVE),
    ("No problem, approved.", APPROVE),
    ("Approve", APPROVE),
    ("Not approved, sorry.", REFUSE),
    ("I don't approve this.", REFUSE),
    ("We hereby reject the quote.", REFUSE),
    ("I need my manager to approve it first.", None),
    # German
    ("Guten Tag,\n\nGenehmigt, danke.", APPROVE),
    ("Sehr geehrte Damen und Herren,\n\nich bin einverstanden.", APPROVE),
    ("Grüß Gott Frau Huber,\nAbgelehnt, leider zu teuer.", REFUSE),
    ("Nicht genehmigt, zu teuer.", REFUSE),
    ("Das genehmige ich nicht.", REFUSE),
    ("Ich bin nicht einverstanden.", REFUSE),
    ("Ich lehne das Angebot leider ab.", REFUSE),
    ("Was kostet die Lieferung?", None),
])
def test_the_decision_is_read_as_customers_write_it(text, decision):
    assert read_decision(text).decision == decision


def test_what_is_read_is_the_first_sentence_after_the_greeting():
    reading = read_decision("Bonjour Marie,\n\nMerci pour le devis. Approuvé, vous pouvez commander. Refusé sinon.")
    assert (reading.decision, reading.statement) == (APPROVE, "Approuvé, vous pouvez commander.")
    # A long line wrapped by the mail program is one sentence.
    wrapped = ("Après avoir relu le devis avec le responsable financier, je vous confirme que c'est\n"
               "approuvé pour cette année.")
    assert read_decision(wrapped).decision == APPROVE


@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_words_the_approval_mail_asks_for_are_read_in_every_language(sqlite_gw, lang):
    """The approval mail tells the customer which word to write; the reader knows it."""
    tr = sqlite_gw.renderer.translations(lang)
    approve, refuse = tr.gettext(APPROVE_WORD), tr.gettext(REJECT_WORD)
    for text, decision in [(approve, APPROVE), (refuse, REFUSE), (f"{approve.capitalize()}, merci.", APPROVE),
                           (f"{refuse.capitalize()}: too expensive.", REFUSE)]:
        assert read_decision(text).decision == decision, (lang, text)


# Answers as mail programs write them ------------------------------------------------------
from harness.approvals import (qp, PEOPLE, FIRST_MAIL, QUOTE, OUTLOOK_FIELDS, OUTLOOK_SENT, GMAIL_ATTRIBUTION,
                              APPLE, CLOSING, ANSWERS, first_mail, outlook, gmail, apple, CLIENTS, Request,
                              deliver, service_request, ask_approval, outbox, status, body)


@pytest.mark.parametrize("client", list(CLIENTS))
@pytest.mark.parametrize("lang", LANGUAGES)
def test_an_answer_is_decided_as_the_customer_meant_it(gw, lang, client):
    number = service_request(gw, lang)
    request = ask_approval(gw, number, lang)
    # Our request, quoted below every answer, names both words: reading it would decide.
    tr = gw.renderer.translations(lang)
    assert tr.gettext(APPROVE_WORD) in request.text and tr.gettext(REJECT_WORD) in request.text
    answer, meant = ANSWERS[(lang, client)]
    out = deliver(gw, CLIENTS[client](lang, answer, request))
    assert (out.outcome, out.ticket) == ("approval", number), out.detail
    assert status(gw, number) == (lifecycle.IN_PROGRESS if meant == APPROVE else lifecycle.REJECTED)
    told = outbox(gw, number)[-1]
    assert (told.event, told.language) == ("approval-recorded", lang)
    # The sentence read is named for the agents; the comment is the new text only.
    first_sentence = answer.split("\n\n")[1].split(".")[0].split(",")[0]
    assert first_sentence in out.detail
    with session_for(gw.engine) as s:
        comment = s.exec(select(TicketMessage).where(TicketMessage.direction == "in")
                         .order_by(col(TicketMessage.id).desc())).first()
    assert comment.body_text.startswith(answer.split("\n\n")[0]) and request.subject not in comment.body_text


def test_an_unclear_answer_gets_a_mail_saying_so_and_how_to_answer(gw):
    number = service_request(gw, "fr")
    request = ask_approval(gw, number, "fr")
    before = len(outbox(gw, number))
    out = deliver(gw, gmail("fr", "Bonjour,\n\nJe pense que c'est bon, je vérifie avec mon chef.", request))
    assert (out.outcome, out.ticket) == ("appended", number)
    assert status(gw, number) == lifecycle.APPROVAL  # nothing decided
    rows = outbox(gw, number)
    assert len(rows) == before + 1
    told = rows[-1]
    assert (told.event, told.language, told.recipient) == ("approval-unclear", "fr", PEOPLE["fr"][0])
    text = body(told)
    msg = email.message_from_bytes(told.raw, policy=email.policy.default)
    # It asks for something: the first line says so, and Outlook flags it; it threads as the rest.
    assert text.startswith("Action requise\u00a0: nous attendons toujours votre décision")
    assert msg["X-Message-Flag"] == "Action requise : nous attendons toujours votre décision"
    assert msg["Subject"] == request.subject and msg["In-Reply-To"] == "<CAF-fr@mail.gmail.com>"
    assert "Nous n'avons pas pu lire votre décision" in text
    assert "Je pense que c'est bon, je vérifie avec mon chef." in text  # what was read
    assert "«\u00a0approuvé\u00a0»" in text and "«\u00a0refusé\u00a0»" in text and "première phrase" in text
    assert QUOTE["fr"] in text
    # Answered as the mail says, it decides.
    again = deliver(gw, apple("fr", "Approuvé, merci.", Request(told)))
    assert again.outcome == "approval" and status(gw, number) == lifecycle.IN_PROGRESS


def test_no_explaining_mail_to_someone_who_cannot_decide(gw):
    """Only the Reporting or Affected Person may decide: a colleague's question is a
    comment, without a mail about how to approve."""
    number = service_request(gw, "fr")
    with session_for(gw.engine) as s:
        marie = s.exec(select(Person).where(Person.email == PEOPLE["fr"][0])).one()
        marie.company = "Client SA"
        s.add(marie)
        s.add(Person(email="chef@client.be", name="Chef", company="Client SA", company_access=True, language="fr"))
        s.commit()
    request = ask_approval(gw, number, "fr")
    before = len(outbox(gw, number))
    raw = gmail("fr", "Bonjour,\n\nQuel est le délai de livraison ?", request).replace(
        b"From: Marie Dupont <marie.dupont@client.be>", b"From: Chef <chef@client.be>")
    out = deliver(gw, raw)
    assert (out.outcome, out.ticket) == ("appended", number)
    assert len(outbox(gw, number)) == before and status(gw, number) == lifecycle.APPROVAL


def test_the_approval_mail_says_what_is_read(sqlite_gw):
    """The request names the two words, says that the first sentence is read, and asks
    for an action in its first line and in Outlook's flag."""
    for lang in LANGUAGES:
        number = service_request(sqlite_gw, lang)
        request = ask_approval(sqlite_gw, number, lang)
        tr = sqlite_gw.renderer.translations(lang)
        first_sentence = {"fr": "première phrase", "nl": "eerste zin", "en": "first sentence", "de": "ersten Satz"}
        assert first_sentence[lang] in request.text
        for word in (tr.gettext(APPROVE_WORD), tr.gettext(REJECT_WORD)):
            assert word in request.text
        assert request.flag and request.text.split("\n")[0].replace("\u00a0", " ") == request.flag
