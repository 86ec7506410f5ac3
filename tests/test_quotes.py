"""The new text of a reply: the corpora of talon and email-reply-parser, and replies as
our customers' mail programs write them in French, Dutch, English and German."""

from __future__ import annotations

import json

import pytest

from conftest import CORPUS
from gateway.ingest.parse import Limits, parse
from gateway.ingest.quotes import new_text

# The shared corpus sits next to the repository; a worktree is one folder deeper.
_CORPUS = next((c for c in (CORPUS, CORPUS.parent.parent.parent / "shared" / "corpus") if c.is_dir()), CORPUS)
TALON = _CORPUS / "talon"
ERP = _CORPUS / "email-reply-parser"


def _talon_cases():
    expected = json.loads((TALON / "expected-reply-text.json").read_text())["files"]
    return sorted(expected.items())


@pytest.mark.parametrize("name,expected", _talon_cases())
def test_talon_standard_replies(name, expected):
    mail = parse((TALON / name).read_bytes(), Limits())
    got = new_text(mail.text)
    # talon keeps signatures (sparrow's "-- " block); we take them off as well.
    assert got.text == expected.split("\n\n-- ")[0].strip()
    assert got.cut_by is not None


@pytest.mark.parametrize("name,expected", [
    ("email_1_2.txt", None),  # answer written between quotes: kept, quotes gone
    ("email_1_4.txt", "Awesome! I haven't had another problem with it."),
    ("email_1_7.txt", ":+1:"),  # "...<notifications@github.com>wrote:" wrapped over two lines
    ("email_1_8.txt", "I will reply under this one\n\nand under this."),
    ("email_2_1.txt", "Outlook with a reply"),  # *From:* / *Sent:* bold block under a rule
    ("email_2_2.txt", "Outlook with a reply directly above line"),
    ("email_2_3.txt", "Outlook with a reply above headers using unusual format"),
    ("email_BlackBerry.txt", "Here is another email"),
    ("email_iPhone.txt", "Here is another email"),
    ("email_multi_word_sent_from_my_mobile_device.txt", "Here is another email"),
    ("email_sent_from_my_not_signature.txt",
     "Here is another email\n\nSent from my desk, is much easier then my mobile phone."),
    ("email_sig_delimiter_in_middle_of_line.txt",
     "Hi there!\n\nStuff happened.\n\nAnd here is a fix -- this is not a signature.\n\nkthxbai"),
    ("email_gmail.txt", "This is a test for inbox replying to a github message."),
    ("email_headers_no_delimiter.txt", "And another reply!"),
    ("correct_sig.txt", "this is an email with a correct -- signature."),
    ("pathological.txt",
     "I think you're onto something. I will try to fix the problem as soon as I\nget back to a computer."),
])
def test_email_reply_parser_bodies(name, expected):
    got = new_text((ERP / name).read_text(encoding="utf-8"))
    if expected is None:
        assert got.text.startswith("Hi,\n\nYou can list the keys for the bucket")
        assert ">" not in got.text and "Abhishek Kona wrote" not in got.text
        assert "would do it." in got.text  # the answer below the quote is kept
    else:
        assert got.text == expected


def test_list_footer_below_the_quote_is_not_the_senders_but_the_quote_goes():
    got = new_text((ERP / "email_1_3.txt").read_text())
    assert got.text.startswith("Oh thanks.\n\nHaving the function would be great.\n\n-Abhishek Kona\n")
    assert "Russell Brown wrote" not in got.text and ">" not in got.text


def test_greedy_on_keeps_text_that_starts_with_on():
    got = new_text((ERP / "greedy_on.txt").read_text())
    assert got.text.startswith("On your remote host you can run:")
    assert got.text.endswith("If that\nfails, the tunnel is not working.")


OUTLOOK_FR = """Bonjour,

L'imprimante fonctionne de nouveau, merci.

Cordialement,
Marie

De : Helpdesk <helpdesk+INC-000001.abcdef0123@example.com>
Envoyé : vendredi 27 novembre 2026 10:00
À : Marie Dupont <marie@client.be>
Objet : [INC-000001] Imprimante en panne

Bonjour Marie,
Nous avons enregistré votre demande.
"""

OUTLOOK_NL = """Het werkt nog steeds niet.

Van: Helpdesk <helpdesk@example.com>
Verzonden: vrijdag 27 november 2026 10:00
Aan: Jan Peeters <jan@klant.be>
Onderwerp: [INC-000002] Printer kapot

Beste Jan,
"""

OUTLOOK_DE = """Bitte noch einmal prüfen.

-----Ursprüngliche Nachricht-----
Von: Helpdesk <helpdesk@example.com>
Gesendet: Freitag, 27. November 2026 10:00
An: Hans <hans@kunde.de>
Betreff: [INC-000003] Drucker
"""

OUTLOOK_EN_SEPARATOR = """Still broken.

________________________________
From: Helpdesk <helpdesk@example.com>
Sent: Friday, November 27, 2026 10:00 AM
To: Bob <bob@client.com>
Subject: [INC-000004] Printer
"""

GMAIL_FR = """Oui, c'est bien le bureau 2.14.

Le ven. 27 nov. 2026 à 10:00, Helpdesk <helpdesk+INC-000001.abcdef0123@example.com> a
écrit :

> Bonjour Marie,
>
> Pourriez-vous préciser le bureau ?
"""

APPLE_NL = """Akkoord, ga je gang.

Verzonden vanaf mijn iPhone

> Op 27 nov. 2026 om 10:00 heeft Helpdesk <helpdesk@example.com> het volgende geschreven:
>
> Graag uw goedkeuring.
"""

GMAIL_NL = """Dat klopt.

Op vr 27 nov. 2026 om 10:00 schreef Helpdesk <helpdesk@example.com>:

> Graag uw bevestiging.
"""

GMAIL_DE = """Genehmigt.

Am Fr., 27. Nov. 2026 um 10:00 Uhr schrieb Helpdesk <helpdesk@example.com>:
> Bitte genehmigen Sie.
"""

IPHONE_FR = """Merci !

Envoyé de mon iPhone

> Le 27 nov. 2026 à 10:00, Helpdesk <helpdesk@example.com> a écrit :
"""


@pytest.mark.parametrize("body,expected,rule", [
    (OUTLOOK_FR, "Bonjour,\n\nL'imprimante fonctionne de nouveau, merci.", "header-block"),
    (OUTLOOK_NL, "Het werkt nog steeds niet.", "header-block"),
    (OUTLOOK_DE, "Bitte noch einmal prüfen.", "separator"),
    (OUTLOOK_EN_SEPARATOR, "Still broken.", "header-block"),
    (GMAIL_FR, "Oui, c'est bien le bureau 2.14.", "quote"),
    (APPLE_NL, "Akkoord, ga je gang.", "signature"),
    (GMAIL_NL, "Dat klopt.", "quote"),
    (GMAIL_DE, "Genehmigt.", "quote"),
    (IPHONE_FR, "Merci !", "signature"),
])
def test_replies_in_our_languages(body, expected, rule):
    got = new_text(body)
    assert got.text == expected
    assert got.cut_by == rule


def test_only_quote_leaves_nothing():
    assert new_text("\n> Bonjour,\n> Votre ticket est résolu.\n").text == ""
    assert new_text("").text == ""


def test_plain_mail_is_untouched():
    body = "Le serveur de fichiers ne répond plus depuis ce matin.\nDe plus, l'imprimante est hors ligne."
    got = new_text(body)
    assert got.text == body and got.cut_by is None


def test_html_only_replies_are_cut_after_conversion_to_text():
    from gateway.ingest.htmltext import html_to_text

    outlook = (
        "<html><body><div>Bonjour,</div><div>Toujours en panne.</div><div id=\"appendonsend\"></div>"
        "<hr style=\"display:inline-block;width:98%\" tabindex=\"-1\"><div id=\"divRplyFwdMsg\" dir=\"ltr\">"
        "<font face=\"Calibri, sans-serif\" style=\"font-size:11pt\"><b>De :</b> Helpdesk &lt;helpdesk@localhost&gt;"
        "<br><b>Envoyé :</b> vendredi 27 novembre 2026 10:00<br><b>À :</b> Marie &lt;m@c.be&gt;<br>"
        "<b>Objet :</b> [INC-000001] Imprimante</font><div>&nbsp;</div></div><div>Bonjour Marie</div></body></html>"
    )
    assert new_text(html_to_text(outlook)).text == "Bonjour,\n\nToujours en panne."
    gmail = (
        "<div dir=\"ltr\">Oui, bureau 2.14.</div><br><div class=\"gmail_quote\"><div dir=\"ltr\" "
        "class=\"gmail_attr\">Le ven. 27 nov. 2026 à 10:00, Helpdesk &lt;helpdesk@localhost&gt; a écrit&nbsp;:<br>"
        "</div><blockquote class=\"gmail_quote\">Bonjour,<br>Votre ticket est résolu.</blockquote></div>"
    )
    assert new_text(html_to_text(gmail)).text == "Oui, bureau 2.14."


def test_closing_formula_and_short_signature_go_but_not_a_closing_in_the_middle():
    assert new_text("Het werkt weer.\n\nMet vriendelijke groeten,\nJan Peeters\nICT-coördinator\n+32 2 555 01 23"
                    ).text == "Het werkt weer."
    assert new_text("Bitte prüfen.\n\nMit freundlichen Grüßen\nHans Müller").text == "Bitte prüfen."
    middle = "Kind regards,\nfrom the whole team; but one more thing:\n" + "\n".join(f"step {i}: a long line of "
                                                                                       f"instructions that matter "
                                                                                       f"a lot" * 2 for i in range(8))
    assert new_text(middle).text == middle
    assert new_text("Cordialement,\nMarie").text == "Cordialement,\nMarie"  # nothing else: keep it
