"""Every message of the shared corpus (965 files from ten public projects) goes through
``parse()`` and ``classify()`` without an exception, and our results are compared with
the expectations the corpus carries.

Each source's mismatches must be exactly the explained ones listed below: a fix makes
the test fail until the entry is removed, a regression makes it fail at once.  Where a
source's own expectation is wrong, the entry says so and a test pins the right value.
talon's reply texts belong to reply stripping and are not checked here.
A sample of the corpus also runs through the whole Processor (tests/test_properties.py
and the last test here).
"""

from __future__ import annotations

import hashlib

import pytest
from harness.corpus import (
    check_django_helpdesk,
    check_flufl,
    check_mail_parser,
    check_otobo,
    check_sisimai,
    check_zammad,
    message_files,
    parse_all,
)

from gateway.errors import Quarantine
from gateway.ingest.automatic import classify
from gateway.ingest.parse import parse

# Reasons, reused below.
_INLINE_NAME = "unnamed inline image: we name it after its Content-ID, Zammad calls it image.*"
_DSN_NAME = "DSN part: we name it delivery-status.txt / rfc822-headers.txt, Zammad 'Delivery report.txt' / 'file'"
_CRLF = "we keep the bytes as sent (CRLF); Zammad converted the line endings of this part"
_PREFER_PLAIN = "our rule takes text/plain over HTML; here the two alternatives differ in content"

KNOWN_ZAMMAD = {
    ("mail008.box", "attachment-name:image.gif"): _INLINE_NAME,
    ("mail080.box", "attachment-name:image.jpg"): _INLINE_NAME,
    ("mail100.box", "attachment-name:image.jpg"): _INLINE_NAME,
    ("mail100.box", "attachment-name:32497.1617621278.2"): "name from the Content-ID: we add the .bin extension",
    ("mail016.box", "from_email"): "no From header at all; Zammad takes Reply-To, we quarantine as no sender",
    ("mail019.box", "from_email"): "From is '\"我\" <>' (empty address); Zammad takes Reply-To, we do not guess",
    ("mail035.box", "from_email"): "Zammad keeps the quotes around the address; we give the bare address",
    ("mail053.box", "from_email"): "From is 'MAILER-DAEMON' without a domain: not an address (it is a bounce anyway)",
    ("mail053.box", "from_display_name"): "same From as above: no address, so no display name",
    ("mail076.box", "from_email"): "broken From ('\"Millions Lottery Spain transfer\"@example.com>'); "
                                   "Zammad keeps the stray '>', we give the parsed address",
    ("mail076.box", "from_display_name"): "same broken From: Zammad invents a display name from the address",
    ("mail087.box", "from_display_name"): "From 'Test test@example.com' (no brackets): Zammad repeats it as name",
    ("mail092.box", "from_display_name"): "From 'MAILER-DAEMON <postmaster@…> (Mail Delivery System)': we keep "
                                          "the comment in the name",
    ("mail017.box", "quarantined"): "two From fields (one '[??????]', one an address): an ambiguous sender is "
                                    "quarantined, never guessed (reliability bar item 21); Zammad takes the second",
    ("mail058.box", "quarantined"): "From holds two addresses (a company name with an unquoted comma) and no "
                                    "Sender: ambiguous, quarantined (item 21); Zammad takes the first",
    ("mail026.box", "body"): _PREFER_PLAIN,
    ("mail085.box", "body"): _PREFER_PLAIN,
    ("mail085.box", "attachment-name:document.html"): "the second HTML fragment of the HTML alternative is "
                                                      "body to us, an attachment to Zammad",
    ("mail085.box", "attachment-content:document.html"): "same part as above",
    ("mail054.box", "body"): "Zammad's expectation is wrong: a header continued on unindented lines broke "
                             "its parse ('no visible content'); we repair the header and give the text",
    ("mail060.box", "body"): "Zammad's expectation is wrong (mojibake of UTF-8 labelled iso-gb2312); we give "
                             "'äöü - 差出人' (tested below)",
    ("mail087.box", "body"): "Zammad shows 'no visible content'; we give the fax notice text of the unnamed "
                             "text part",
    ("mail087.box", "attachment-name:file"): "same text part: body to us, an attachment 'file' to Zammad",
    ("mail087.box", "attachment-content:file"): "same part as above",
    ("mail099.box", "body"): "the corpus copy lost the ESC bytes of its ISO-2022-JP text; it cannot be decoded",
    ("mail064.box", "attachment-name:Capture d’eìcran 2017-12-27 aÌ 12.22.38.jpg"):
        "Zammad's expectation is wrong (decomposed UTF-8 read as Latin-1); we give "
        "'Capture d’écran 2017-12-27 à 12.22.38.jpg' (tested below)",
    ("mail033-undelivered-mail-returned-to-sender.box", "attachment-name:Delivery report.txt"): _DSN_NAME,
    ("mail053.box", "attachment-name:Delivery report.txt"): _DSN_NAME,
    ("mail053.box", "attachment-name:file"): _DSN_NAME,
    ("mail055.box", "attachment-name:Delivery report.txt"): _DSN_NAME,
    ("mail063.box", "attachment-name:Delivery report.txt"): _DSN_NAME,
    ("mail092.box", "attachment-name:Delivery report.txt"): _DSN_NAME,
    ("mail033-undelivered-mail-returned-to-sender.box", "attachment-content:Delivery report.txt"): _CRLF,
    ("mail092.box", "attachment-content:Delivery report.txt"): _CRLF,
    ("mail033-undelivered-mail-returned-to-sender.box", "attachment-content:test [Ticket#10010].eml"): _CRLF,
    ("mail038.box", "attachment-content:signature.asc"): _CRLF,
    ("mail039.box", "attachment-content:signature.asc"): _CRLF,
    ("mail042.box", "attachment-content:encrypted.asc"): _CRLF,
    ("mail042.box", "attachment-content:file"): _CRLF,
    ("mail042.box", "attachment-name:file"): "unnamed application/pgp-encrypted part: we call it attachment-1.bin",
}

_OTOBO_BODY_MD5 = "OTOBO's MD5 is of its own body string (Perl's line endings and charset handling)"
KNOWN_OTOBO = {
    ("EmailParser/EmptyEmail.eml", "filename:file-1"): "unnamed part: OTOBO calls it file-1, we attachment-N.ext",
    ("EmailParser/UTF8Filename.box", "filename:file-2"): "unnamed part: OTOBO calls it file-2, we attachment-N.ext",
    ("EmailParser/FilenameWithNewline.box",
     "filename:Test_testtestt_1231234_34_Testtesttes_testes_testtesttestt_-_testtesttes_dokumentów_Sprzedaż__"
     "testTE__...___TE#123123123_.eml"): "forwarded message named after its subject; OTOBO cuts and "
                                         "substitutes differently",
    ("EmailParser/PostMaster-Test10.box", "md5:#10 md5 body check:4e269fc57c9aa7861ad432607e660ae9"): _OTOBO_BODY_MD5,
    ("EmailParser/PostMaster-Test10.box", "md5:#10 md5 check:4e269fc57c9aa7861ad432607e660ae9"): _OTOBO_BODY_MD5,
    ("EmailParser/PostMaster-Test11.box", "md5:#11 md5 body check:52f20c90a1f0d8cf3bd415e278992001"): _OTOBO_BODY_MD5,
    ("EmailParser/PostMaster-Test14.box", "md5:#14 md5 body check:b8b01a1acd8fe7efeff8351bf48d8f63"): _OTOBO_BODY_MD5,
    ("EmailParser/PostMaster-Test16.box", "md5:#15 md5 check:9a7c5ce111d1ec69e1625d51abba0442"): _OTOBO_BODY_MD5,
}

KNOWN_MAIL_PARSER = {
    ("mail_malformed_1", "attachments:0!=1"): "mail-parser counts the HTML fragment as an attachment; it is body",
    ("mail_test_1", "body_md5"): "mail-parser's body MD5 is of its own joining of the parts",
    ("mail_test_10", "filename:<_1_0B4E24640B4E1564005C1243C12580DD>"): "unnamed part: mail-parser uses the "
                                                                        "raw Content-ID with <>, we a file name",
    ("mail_test_10", "filename:<_1_0B4E420C0B4E3DD0005C1243C12580DD>"): "same as above",
    ("mail_test_10", "filename:<_1_0B4E44A80B15F6FC005C1243C12580DD>"): "same as above",
}


@pytest.fixture(scope="module")
def parsed(corpus):
    return parse_all(corpus)


def test_every_message_parses_without_an_exception(corpus, parsed, capsys):
    files = message_files(corpus)
    assert len(files) == 965
    counts: dict[str, dict[str, int]] = {}
    for rel, result in parsed.items():
        source = rel.split("/", 1)[0]
        if isinstance(result, Quarantine):
            kind = "quarantined"
            assert result.reason
        else:
            auto = classify(result, ("helpdesk@localhost",))
            kind = auto.kind if auto else "mail"
        counts.setdefault(source, {}).setdefault(kind, 0)
        counts[source][kind] += 1
    with capsys.disabled():
        print()
        for source, kinds in sorted(counts.items()):
            print(f"  {source:24} " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    # What must be quarantined: bodies without headers, a binary Outlook .msg file,
    # flanker's "endless" mail of 3,043 parts (over limits.max_parts), and two Zammad
    # mails whose From names two people (an ambiguous sender).
    quarantined = sorted(r for r, m in parsed.items() if isinstance(m, Quarantine))
    assert all(r.startswith(("email-reply-parser/", "spamscope-mail-parser/mail_outlook_1",
                             "cpython-test_email/msg_", "flanker/enclosed-endless.eml",
                             "zammad/mail017.box", "zammad/mail058.box")) for r in quarantined), \
        quarantined
    assert "spamscope-mail-parser/mail_outlook_1" in quarantined
    assert parsed["flanker/enclosed-endless.eml"].reason == "more than 500 MIME parts"


def _report(name: str, passed: int, bad: set, known: dict, capsys) -> None:
    with capsys.disabled():
        print(f"\n  {name}: {passed} files pass, {len(bad)} known mismatches")
    unexplained = sorted(bad - set(known))
    fixed = sorted(set(known) - bad)
    assert not unexplained, f"new mismatches: {unexplained}"
    assert not fixed, f"these now pass; remove them from the known list: {fixed}"


def test_zammad_expectations(corpus, parsed, capsys):
    passed, bad = check_zammad(corpus, parsed)
    _report("zammad", passed, bad, KNOWN_ZAMMAD, capsys)
    assert passed >= 73


def test_otobo_expectations(corpus, parsed, capsys):
    passed, bad, not_applicable = check_otobo(corpus, parsed)
    _report(f"otobo ({not_applicable} checks of OTOBO internals not applicable)", passed, bad, KNOWN_OTOBO, capsys)
    assert passed >= 19


def test_mail_parser_expectations(corpus, parsed, capsys):
    passed, bad = check_mail_parser(corpus, parsed)
    _report("mail-parser", passed, bad, KNOWN_MAIL_PARSER, capsys)


def test_django_helpdesk_expectations(corpus, parsed, capsys):
    passed, bad = check_django_helpdesk(corpus, parsed)
    _report("django-helpdesk", passed, bad, {}, capsys)
    assert passed == 3


def test_sisimai_bounces_auto_replies_and_reports_are_recognised(corpus, parsed, capsys):
    passed, bad = check_sisimai(corpus, parsed)
    _report("sisimai", passed, bad, {}, capsys)
    assert passed == 584


def test_flufl_bounces_are_recognised(corpus, parsed, capsys):
    passed, bad = check_flufl(corpus, parsed)
    _report("flufl.bounce", passed, bad, {}, capsys)
    assert passed == 100


# The right values where a source's expectation is wrong --------------------------------
def test_utf8_labelled_wrongly_is_read_as_utf8(corpus):
    mail = parse((corpus / "zammad" / "mail060.box").read_bytes())
    assert "Here it goes - äöü - 差出人" in mail.text
    assert "hi \xad" in mail.text  # the stray Latin-1 soft hyphen stays readable


def test_decomposed_utf8_file_name(corpus):
    mail = parse((corpus / "zammad" / "mail064.box").read_bytes())
    import unicodedata

    names = [unicodedata.normalize("NFC", a.filename) for a in mail.attachments]
    assert "Capture d’écran 2017-12-27 à 12.22.38.jpg" in names


def test_header_continued_without_indentation(corpus):
    mail = parse((corpus / "zammad" / "mail054.box").read_bytes())
    assert mail.from_addr.lower() == "karoline.smith@example.com"
    assert mail.text.strip() == "some text"


def test_text_line_before_the_headers(corpus):
    mail = parse((corpus / "zammad" / "mail068.box").read_bytes())
    assert mail.from_addr == "xxxxx@xxxxx.cz"
    assert any("text before the headers" in d for d in mail.defects)


def test_zammad_attachment_hashes_for_a_real_mail(corpus):
    """The content stored is byte-identical to what the sender attached (sha256 and MD5)."""
    from harness.corpus import load_zammad

    exp = load_zammad(corpus / "zammad" / "mail028.yml")
    mail = parse((corpus / "zammad" / "mail028.box").read_bytes())
    expected = {hashlib.md5(a["data"]).hexdigest() for a in exp["attachments"]}
    assert expected <= {hashlib.md5(a.data).hexdigest() for a in mail.attachments}
    assert all(len(a.sha256) == 64 and a.size == len(a.data) for a in mail.attachments)


def test_a_sample_of_the_corpus_through_the_whole_processor(corpus, parsed, tmp_path):
    """Every 8th message (about 120, from every source) stored and processed as the
    running service does: the outcome is what parse() and classify() said, and nothing
    is left for a retry."""
    from harness.ingest import make_app, receive

    app = make_app(tmp_path)
    everything = message_files(corpus)
    # Every 8th file, and every file of the small sources, so all ten are in.
    files = [f for i, f in enumerate(everything)
             if i % 8 == 0 or f.relative_to(corpus).parts[0] in ("django-helpdesk", "talon")]
    assert len({f.relative_to(corpus).parts[0] for f in files}) == 10
    for path in files:
        rel = str(path.relative_to(corpus))
        outcome = receive(app, path.read_bytes(), source=f"corpus:{rel}")
        mail = parsed[rel]
        if isinstance(mail, Quarantine):
            assert (outcome.outcome, outcome.detail) == ("quarantined", mail.reason), rel
            continue
        auto = classify(mail, app.processor.own, app.config.message_id_domain)
        if auto is not None:
            assert outcome.outcome == auto.outcome, (rel, outcome)
            assert outcome.ticket is None, rel  # no outbox mail of ours bounced here
        elif mail.from_addr:
            assert outcome.outcome in ("created", "appended", "duplicate"), (rel, outcome)
        else:
            assert outcome.outcome == "quarantined" and "no sender" in outcome.detail, rel
