"""The new text of a reply: quoted history and signatures taken off.

``new_text(body)`` is pure and works line by line on the text/plain body (or the text made
from the HTML).  The full body is always stored as well (``TicketMessage.body_full``), so a
wrong cut never loses anything; the rule that cut is returned so that an agent can see why.

What is taken off, in the languages of our customers (French, Dutch, English, German):

- Outlook's header block (``From:/Sent:``, ``De :/Envoyé :``, ``Van:/Verzonden:``,
  ``Von:/Gesendet:``) and the ``-----Original Message-----`` family of separators: Outlook
  puts the whole history below them without quoting it, so everything from there down goes.
- Gmail's and Apple Mail's attribution line ("On … wrote:", "Le … a écrit :",
  "Op … schreef …:", "Am … schrieb …:"), also when the client wrapped it over two or three
  lines, and the ``>`` quoted block below it.  Text that follows a quoted block (an answer
  written between the quotes, or below them) is kept.
- A signature after a ``-- `` line, and the "Sent from my iPhone" family of mobile footers.
- A closing formula ("Cordialement,", "Met vriendelijke groeten,", "Kind regards,",
  "Mit freundlichen Grüßen") near the end of the new text, with the few short lines of
  name and title below it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Separators that Outlook, Lotus, Yahoo and others put above the forwarded or replied-to mail.
_SEPARATOR = re.compile(
    r"^\s*-{2,}\s*(?:Original Message|Message d'origine|Oorspronkelijk bericht|Ursprüngliche Nachricht"
    r"|Originalnachricht|Forwarded message|Message transféré|Doorgestuurd bericht"
    r"|Weitergeleitete Nachricht)\s*-{2,}\s*$",
    re.IGNORECASE,
)
# Outlook's header block: a From line followed closely by a Sent/Date line.  The field
# names may be bold in text made from HTML (``*From:*``) and French puts a space before
# the colon ("De :").
_FIELD = r"^\s*\*?\s*(?:{names})\s*:\s*\*?(?:\s|$)"
_FROM = re.compile(_FIELD.format(names="From|De|Van|Von|Da"), re.IGNORECASE)
_SENT = re.compile(_FIELD.format(names="Sent|Envoyé|Envoye|Verzonden|Verstuurd|Gesendet|Date|Datum"),
                   re.IGNORECASE)
_OTHER_FIELD = re.compile(_FIELD.format(names="To|À|A|Aan|An|Cc|Subject|Objet|Onderwerp|Betreff"),
                          re.IGNORECASE)
# Lines that Outlook puts above its header block.
_RULE = re.compile(r"^\s*(?:_{5,}|-{5,})\s*$")
# Attribution lines, as one string (a wrapped attribution is joined before matching).
_ATTRIBUTION = re.compile(
    r"^\s*-*\s*(?:"
    r"On\s.+\s?wrote\s*:"
    r"|Le\s.+\sa\s+écrit\s*:"
    r"|Op\s.+\sschreef\s.*:"
    r"|Am\s.+\sschrieb\s.*:"
    r")\s*$",
    re.IGNORECASE,
)
# A date and an address ending with a colon ("02.04.2012 14:20 <bob@x> написал:"): an
# attribution in any language, but only trusted when a quoted block follows it.
_LOOSE_ATTRIBUTION = re.compile(r"^\s*\d{1,4}[./-]\d{1,2}[./-]\d{1,4}\b.*\S+@\S+.*:\s*$")
_QUOTED = re.compile(r"^\s*>")
_SIGNATURE = re.compile(r"^--\s?$")
_MOBILE = re.compile(
    r"^\s*(?:Sent from my(?:\s+[\w-]+){1,4}"
    r"|Sent from (?:Mail|Outlook) for \S+"
    r"|Sent from Outlook|Get Outlook for \S+|Sent with Sparrow.*|Sent from Yahoo Mail.*"
    r"|Envoyé de mon \S+|Envoyé depuis mon \S+|Envoyé à partir de \S+.*"
    r"|Verzonden (?:vanaf|met) mijn \S+|Verstuurd vanaf mijn \S+"
    r"|Von meinem \S+ gesendet|Gesendet von meinem \S+)\s*\.?\s*$",
    re.IGNORECASE,
)


# A closing formula on a line of its own; what follows it (name, title, phone) is the
# signature when it is short.  Only cut at the end of the new text, so a closing in the
# middle of a mail never loses what comes after it.
_CLOSING = re.compile(
    r"^\s*(?:(?:bien\s+)?cordialement|bien\s+à\s+vous|salutations(?:\s+distinguées)?|sincères\s+salutations"
    r"|(?:met\s+)?(?:vriendelijke|beste)\s+groet(?:en)?|groeten|mvg"
    r"|(?:kind|best|warm)\s+regards|regards|best\s+wishes|cheers|sincerely"
    r"|mit\s+freundlichen\s+grüßen|(?:viele|beste|liebe)\s+grüße|mfg|gruß)\s*[,.!]?\s*$",
    re.IGNORECASE,
)
_MAX_SIGNATURE_LINES = 6
_MAX_SIGNATURE_LINE = 72


def _strip_closing(kept: list[str]) -> tuple[list[str], bool]:
    for i in range(len(kept) - 1, -1, -1):
        if _CLOSING.match(kept[i]):
            tail = [line for line in kept[i + 1:] if line.strip()]
            if len(tail) <= _MAX_SIGNATURE_LINES and all(len(line) <= _MAX_SIGNATURE_LINE for line in tail):
                if any(line.strip() for line in kept[:i]):  # never leave a mail without its text
                    return kept[:i], True
            return kept, False
    return kept, False


@dataclass(frozen=True)
class ReplyText:
    """The new text of a mail, and the rule that cut the rest (None: nothing was cut)."""

    text: str
    cut_by: str | None


def _attribution_at(lines: list[str], i: int, quote_follows: bool) -> int | None:
    """If an attribution ends at line ``i``, the index of its first line (wrapped up to 3 lines)."""
    if not lines[i].rstrip().endswith(":"):
        return None
    for start in (i, i - 1, i - 2):
        if start < 0 or (start < i and (not lines[start].strip() or _QUOTED.match(lines[start]))):
            break
        joined = " ".join(line.strip() for line in lines[start: i + 1])
        if _ATTRIBUTION.match(joined) or (quote_follows and _LOOSE_ATTRIBUTION.match(joined)):
            return start
    return None


def _next_nonblank(lines: list[str], i: int) -> int | None:
    while i < len(lines):
        if lines[i].strip():
            return i
        i += 1
    return None


def _header_block_at(lines: list[str], i: int) -> bool:
    """Outlook's block: a From line, then a Sent/Date line and another field within 6 lines."""
    if not _FROM.match(lines[i]):
        return False
    window = lines[i + 1: i + 7]
    return any(_SENT.match(line) for line in window) and any(_OTHER_FIELD.match(line) for line in window)


# complex: one scan of the lines, each rule that ends the new text (quote headers of each mail program and language, signatures) tried on the line in turn
def new_text(body: str) -> ReplyText:
    """The text the sender wrote in this mail, without the quoted history or signature."""
    lines = (body or "").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    kept: list[str] = []
    cut_by: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if _SEPARATOR.match(line):
            cut_by = cut_by or "separator"
            break
        if _header_block_at(lines, i):
            # The rule line Outlook puts above the block goes too.
            while kept and (not kept[-1].strip() or _RULE.match(kept[-1])):
                kept.pop()
            cut_by = cut_by or "header-block"
            break
        if _SIGNATURE.match(line) or _MOBILE.match(line):
            cut_by = cut_by or "signature"
            break
        if _QUOTED.match(line):
            cut_by = cut_by or "quote"
            i += 1
            continue
        nxt = _next_nonblank(lines, i + 1)
        quote_follows = nxt is not None and bool(_QUOTED.match(lines[nxt]))
        start = _attribution_at(lines, i, quote_follows)
        if start is not None:
            # Drop the attribution (some of its lines may already be kept).
            del kept[len(kept) - (i - start):]
            if not quote_follows:
                # History below, unquoted (Gmail's plain text of an HTML quote): all of it goes.
                cut_by = cut_by or "attribution"
                break
            cut_by = cut_by or "quote"
            i = nxt
            continue
        kept.append(line)
        i += 1
    kept, closed = _strip_closing(kept)
    if closed:
        cut_by = cut_by or "closing"
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(line.rstrip() for line in kept)).strip()
    return ReplyText(text, cut_by)
