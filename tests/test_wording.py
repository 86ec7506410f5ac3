"""The mails as a native service desk writes them, in French, Dutch, English and German.

- Every string of the catalogs follows its language's glossary (templates/mail/glossary/):
  the manual's terms and statuses, one register, none of the words to avoid, French
  typography.
- The templates hold no word and no mark of punctuation of their own: all of it is in the
  catalogs, where a translator can write « Statut : » with its non-breaking space.
- Every event x language x waiting reason, rendered for two recipients in two time zones:
  each is greeted by name, dates are written as the language writes them in the
  recipient's time zone, French has its non-breaking spaces, no English is left in the
  other languages.
"""

from __future__ import annotations

import html as htmlmod
import re
import tomllib
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import jinja2
import pytest
from babel.messages.pofile import read_po

from gateway.outbound.notify import SAMPLE_NOW, sample_context, sample_texts
from gateway.outbound.render import EVENTS, LANGUAGES, SHIPPED_DIR, Renderer
from store.lifecycle import WAITING_REASONS
from store.models import Person

GLOSSARY = SHIPPED_DIR / "glossary"
PLACEHOLDER = re.compile(r"%\(\w+\)s")


def catalog(lang):
    with open(SHIPPED_DIR / "locale" / lang / "LC_MESSAGES" / "mail.po", "rb") as fh:
        return {m.id: m.string for m in read_po(fh, locale=lang) if m.id}


def glossary(lang):
    with open(GLOSSARY / f"{lang}.toml", "rb") as fh:
        return tomllib.load(fh)


# The glossaries ---------------------------------------------------------------------
@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_catalog_string_follows_the_glossary(lang):
    words, strings = glossary(lang), catalog(lang)
    assert words["language"] == lang and words["register"]
    for status, shown in words["statuses"].items():
        assert strings[status] == shown, f"{lang}: status {status!r}"
    terms = sorted(words["terms"].items(), key=lambda kv: -len(kv[0]))
    for msgid, text in strings.items():
        for pattern, why in words["avoid"].items():
            found = re.search(pattern, text)
            assert not found, f"{lang}: {text!r} has {found.group(0)!r}: {why}"
        # The manual's term wherever the English string has it (the longest term first:
        # "financial approval" is not also "approval").
        rest = PLACEHOLDER.sub(" ", msgid)
        for term, local in terms:
            hit = re.search(rf"\b{re.escape(term)}\b", rest, re.IGNORECASE)
            if hit:
                rest = rest[:hit.start()] + " " + rest[hit.end():]
                assert re.search(local, text, re.IGNORECASE), f"{lang}: {msgid!r} -> {text!r} lacks {local!r}"


# The templates ----------------------------------------------------------------------
TEMPLATES = sorted(p.name for p in SHIPPED_DIR.glob("*.j2"))


@pytest.mark.parametrize("name", TEMPLATES)
def test_templates_hold_no_words_or_punctuation_of_their_own(name):
    """Outside the catalogs' strings a template holds markup and variables, nothing a
    reader would read: no ":" after a label, no "(" around a value, no word."""
    env = jinja2.Environment(extensions=["jinja2.ext.i18n"])
    source = (SHIPPED_DIR / name).read_text()
    literal, in_output, previous = [], False, []
    for _line, kind, value in env.lex(source):
        if kind == "data":
            literal.append(value)
        elif kind == "variable_begin":
            in_output, previous = True, []
            literal.append("\0")
        elif kind == "variable_end":
            in_output = False
        elif in_output and kind != "whitespace":
            if kind == "string":
                # A msgid (the first argument of _) or a filter's format name ("long").
                assert previous[-2:] == ["_", "("] or re.fullmatch(r"[a-z]+", value[1:-1]), (name, value)
            assert not (kind == "operator" and value == "~"), (name, "text joined outside the catalogs")
            previous.append(value)
    text = "".join(literal)
    if name.endswith(".html.j2"):
        text = re.sub(r"<[^>]*>", "", text)
        text = text.replace("&nbsp;", "")
    assert not re.search(r"[^\s\0]", text), f"{name}: {text.strip()!r} is outside the catalogs"


# Every event, language, waiting reason and recipient -----------------------------------
MONTHS = {
    "fr": "janvier février mars avril mai juin juillet août septembre octobre novembre décembre",
    "nl": "januari februari maart april mei juni juli augustus september oktober november december",
    "en": "January February March April May June July August September October November December",
    "de": "Januar Februar März April Mai Juni Juli August September Oktober November Dezember",
}
WEEKDAYS = {
    "fr": "lundi mardi mercredi jeudi vendredi samedi dimanche",
    "nl": "maandag dinsdag woensdag donderdag vrijdag zaterdag zondag",
    "en": "Monday Tuesday Wednesday Thursday Friday Saturday Sunday",
    "de": "Montag Dienstag Mittwoch Donnerstag Freitag Samstag Sonntag",
}
ON = {"fr": "le", "nl": "op", "en": "on", "de": "am"}


def written(moment: datetime, tz: str, lang: str, *, weekday: bool = False, time: bool = True) -> str:
    """How a person writes ``moment`` in ``tz``: «le 27 novembre 2026 à 10 h 30»."""
    local = moment.astimezone(ZoneInfo(tz))
    month = MONTHS[lang].split()[local.month - 1]
    day = "1er" if lang == "fr" and local.day == 1 else str(local.day)
    date = f"{day}. {month} {local.year}" if lang == "de" else f"{day} {month} {local.year}"
    if weekday:
        name = WEEKDAYS[lang].split()[local.weekday()]
        date = f"{name}, {date}" if lang == "de" else f"{name} {date}"
    if not time:
        return date
    return {"fr": f"{date} à {local.hour}\u00a0h\u00a0{local.minute:02d}",
            "nl": f"{date} om {local.hour}.{local.minute:02d} uur",
            "en": f"{date} at {local.hour:02d}:{local.minute:02d}",
            "de": f"{date} um {local.hour:02d}:{local.minute:02d} Uhr"}[lang]


# Two recipients of the same mail, each in their own time zone: Brussels, and Honolulu
# where 09:30 UTC is still the day before.
RECIPIENTS = (Person(id=1, email="marie.dupont@example.com", name="Marie Dupont", timezone="Europe/Brussels"),
              Person(id=2, email="kai.nakoa@example.com", name="Kai Nakoa", timezone="Pacific/Honolulu"))
# The English a mail in another language must not hold: the catalog's sentences, cut at
# their placeholders, and the words that give English away.
ENGLISH_SENTENCES = sorted({piece.strip() for msgid in catalog("en") for piece in PLACEHOLDER.split(msgid)
                            if len(piece.strip()) >= 12 and " " in piece.strip()})
ENGLISH_WORDS = re.compile(r"\b(?:the|your|you|please|with|and|been|have|this|which|our|reply|ticket has)\b")
MACHINE_DATES = re.compile(r"\d{1,2}:\d{2}:\d{2}|[+-]\d{4}\b|\bUTC\b|\bGMT\b|\b[AP]M\b|heure|Zeit|\d{4}-\d{2}-\d{2}")


def ctx_title(event: str, texts: dict) -> str:
    """The sample ticket's title: a Service Request for the approval events."""
    return texts["request"] if event.startswith("approval") else texts["title"]


def cases():
    for event in EVENTS:
        for reason in (WAITING_REASONS if event == "waiting" else (None,)):
            yield event, reason


def visible(html: str) -> str:
    """The text of an HTML part as a reader sees it."""
    return htmlmod.unescape(re.sub(r"<[^>]*>", " ", re.sub(r"(?s)<head>.*?</head>", "", html)))


@pytest.mark.parametrize("event, reason", list(cases()))
@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_mail_reads_as_written(sqlite_gw, event, reason, lang):
    notifier, tr = sqlite_gw.notifier, sqlite_gw.renderer.translations(lang)
    texts = sample_texts(lang)
    for recipient in RECIPIENTS:
        recipient.language = lang
        mail = sqlite_gw.renderer.render(event, lang, sample_context(notifier, event, lang, reason, recipient))
        seen = visible(mail.html)
        for part in (mail.text, seen):
            # Greeted by name, in each copy.
            assert tr.gettext("Dear %(name)s,") % {"name": recipient.name} in part
            assert not MACHINE_DATES.search(part), MACHINE_DATES.search(part).group(0)
            if lang == "fr":
                # A link is no French text: its "http:" keeps its colon.
                words = re.sub(r"https?://\S+", "", part)
                bad = re.search(r"[^\u00a0\u202f][:;?!]|«[^\u00a0]|[^\u00a0]»", words)
                assert not bad, f"{event}/{reason}: {bad.group(0)!r} without its non-breaking space"
            if lang != "en":
                left = [s for s in ENGLISH_SENTENCES if s in part] + ENGLISH_WORDS.findall(part)
                assert not left, f"{event}/{reason}/{lang}: English left: {left}"
            # Dates in the recipient's time zone, as the language writes them.
            tz = recipient.timezone
            if event == "new":
                assert f"{ON[lang]} {written(SAMPLE_NOW, tz, lang)}" in part
            if event == "planned":
                assert written(SAMPLE_NOW + timedelta(days=4, hours=4), tz, lang, weekday=True) in part
            if event == "solved":
                assert f"{ON[lang]} {written(SAMPLE_NOW + timedelta(days=14), tz, lang, time=False)}" in part
        if event == "new":
            # Not the other recipient's time: Honolulu is still on the 26th.
            other = next(r for r in RECIPIENTS if r is not recipient)
            assert written(SAMPLE_NOW, other.timezone, lang) not in mail.text
        if event != "sign-in":  # about no ticket: "Your sign-in link"
            assert ctx_title(event, texts) in mail.subject


@pytest.mark.parametrize("event, reason", list(cases()))
def test_no_text_outside_the_catalogs_once_rendered(tmp_path, sqlite_gw, event, reason):
    """Rendered with every catalog string marked ⟦…⟧, a mail holds nothing else than
    those strings and the ticket's own data: no colon, parenthesis or word added by a
    template."""
    locale = tmp_path / "locale" / "en" / "LC_MESSAGES"
    locale.mkdir(parents=True)
    entries = ['msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=utf-8\\n"\n']
    for msgid in catalog("en"):
        quoted = msgid.replace("\\", "\\\\").replace('"', '\\"')
        entries.append(f'msgid "{quoted}"\nmsgstr "⟦{quoted}⟧"\n')
    (locale / "mail.po").write_text("\n".join(entries), encoding="utf-8")
    marked = Renderer(SHIPPED_DIR, tmp_path)
    notifier = type(sqlite_gw.notifier)(sqlite_gw.config, marked)
    for recipient in RECIPIENTS:  # the approval-recorded mail differs for its author and the other
        ctx = sample_context(notifier, event, "en", reason, recipient)
        mail = marked.render(event, "en", ctx)
        data = [ctx["ticket"].number, ctx["ticket"].title, ctx["ticket"].personal_reference or "", ctx["reason"],
                ctx["latest_update"], ctx["solution"], ctx["approval_text"], ctx["place"], ctx["change_number"],
                ctx["helpdesk"]["name"], recipient.name, *(str(v) for v in ctx.values() if isinstance(v, str))]
        for part in (mail.text, visible(mail.html), mail.subject, mail.action):
            while re.search(r"⟦[^⟦⟧]*⟧", part):
                part = re.sub(r"⟦[^⟦⟧]*⟧", " ", part)
            for value in sorted(filter(None, data), key=len, reverse=True):
                part = part.replace(value, " ")
            assert not part.strip(), f"{event}/{reason}: {part.strip()!r} is not from the catalogs"
