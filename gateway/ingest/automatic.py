"""Mail that a machine wrote: auto-replies, bounces, reports and our own mail coming back.

``classify`` is pure: it looks at a parsed mail and says what it is, or None for mail
a person wrote.  Nothing it recognises may make a ticket or a notification.

The order matters: our own mail first (a loop is never processed again), then delivery
and abuse reports (many bounces also carry ``Auto-Submitted``, and they must be linked
to the mail that bounced), then read receipts, then the auto-reply headers of RFC 3834
and of the common mail programs and a mailing list's List-Id, then the subjects of
out-of-office replies in our four languages.

Two kinds of machine mail are not recognised by ``classify`` alone, because a person's
mail may look the same: an out-of-office text under a plain "Re:" subject
(``out_of_office_text``: the reply is kept, but resumes, reopens or decides nothing),
and a robot that answers every mail with the same text (``text_key``: the facts are
gathered in gateway.ingest.gather and the rule is gateway.ingest.decide's).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

from gateway.ingest.bounces import Report, analyse
from gateway.ingest.parse import ParsedMail
from store.vocabulary import LOOP_HEADER

# kind -> the outcome reported for the inbound mail.
OUTCOMES = {"loop": "loop", "auto-reply": "auto-reply", "bounce": "bounce", "feedback": "feedback",
            "delivery": "auto-reply", "receipt": "receipt"}


@dataclass(frozen=True)
class Automatic:
    kind: str  # loop | auto-reply | bounce | feedback | delivery | receipt
    detail: str
    report: Report | None = None

    @property
    def outcome(self) -> str:
        return OUTCOMES[self.kind]

    @property
    def noted(self) -> bool:
        """Kept on the ticket it names, as an internal message for the agents (a read
        receipt says when the customer read our mail); the others on no ticket."""
        return self.kind == "receipt"


# Headers whose mere presence marks an automatic answer (osTicket, FreeScout, Microsoft).
_PRESENCE = ("x-autoreply", "x-autorespond", "x-autoresponse", "x-autoreply-from", "x-mail-autoreply",
             "x-auto-response-suppress", "x-ms-exchange-generated-message-source")

# Out-of-office subjects in English, French, Dutch and German, as the common mail
# programs write them; matched at the start of the subject, after any "Re:"/"AW:".
_OOO = re.compile(
    r"^(?:(?:re|aw|antw|réf|ref|sv|vs)\s*:\s*)*(?:"
    r"out of (?:the )?office|automatic reply|auto(?:matic)?[- ]?(?:reply|response)|autoreply|"
    r"away from (?:the |my )?office|on vacation|on holiday|vacation (?:reply|notice|message)|"
    r"r[ée]ponse automatique|absence du bureau|message d'absence|absent du bureau|absent(?:e)?\s*:|"
    r"automatisch antwoord|automatisch bericht|afwezig|niet aanwezig|buiten kantoor|"
    r"automatische antwort|abwesenheitsnotiz|abwesenheit|nicht im b[üu]ro|automatische r[üu]ckantwort"
    r")", re.IGNORECASE)


# Read receipts (message disposition notifications).  RFC 3798's is a multipart/report
# with report-type=disposition-notification and a message/disposition-notification part,
# as Exchange, Outlook and Thunderbird send it; some Outlook versions send a plain mail
# instead, known by its subject and its sentence together.
_RECEIPT_SUBJECT = re.compile(
    r"^\s*(?:lu|non lu|read|not read|gelezen|niet gelezen|gelesen|ungelesen)\s*:"
    r"|^\s*(?:return receipt|accusé de (?:lecture|réception)|lesebestätigung|leesbevestiging)\b",
    re.IGNORECASE)
_RECEIPT_TEXT = re.compile(
    r"\bwas read on\b|\bwas deleted without being read\b|\ba été lu le\b|\ba été supprimé sans avoir été lu\b"
    r"|\b(?:is|werd) gelezen op\b|\bis verwijderd zonder te zijn gelezen\b|\bwurde am\b.{0,120}\bgelesen\b"
    r"|\bwurde\b.{0,120}\bungelesen gelöscht\b",
    re.IGNORECASE | re.DOTALL)


def read_receipt(mail: ParsedMail) -> str | None:
    """Why ``mail`` is a read receipt, or None."""
    if mail.report_type == "disposition-notification" or "message/disposition-notification" in mail.part_types:
        return "read receipt (disposition notification)"
    if _RECEIPT_SUBJECT.search(mail.subject) and _RECEIPT_TEXT.search(mail.text[:3000]):
        return f"read receipt: {mail.subject[:80]}"
    return None


# Out-of-office texts in English, French, Dutch and German, as people set them up: a
# plain mail under the "Re:" of what it answers, with no header that says it is automatic.
# Two signals, in the first words of the new text: being away, and until when (or when
# back), so that "I am away tomorrow, the office is 2.14" still answers the question.
_OOO_AWAY = re.compile(
    r"\bI(?:'m|’m| am| will be)(?: currently| now)? (?:out of (?:the |my )?office|away|absent"
    r"|on (?:vacation|holiday|leave|annual leave|parental leave|sick leave))\b"
    r"|\bje (?:suis|serai)(?: actuellement| en ce moment)? (?:absente?|en congé|en vacances|hors du bureau"
    r"|en déplacement)\b"
    r"|\bik (?:ben|zal)\b.{0,50}?\b(?:afwezig|niet (?:aanwezig|op kantoor|bereikbaar)|met (?:vakantie|verlof)"
    r"|op vakantie|buiten kantoor)\b"
    r"|\bich (?:bin|befinde mich)\b.{0,70}?\b(?:nicht im b(?:ü|ue)ro|abwesend|im urlaub|außer haus"
    r"|nicht erreichbar)",
    re.IGNORECASE)
_OOO_UNTIL = re.compile(
    r"\b(?:until|till|returning|return(?:ing)? on|back (?:on|in the office)|from .{1,40}? to)\b"
    r"|\bjusqu|\b(?:de )?retour\b|\bà partir d|\bdu .{1,30}? au\b"
    r"|\b(?:tot|terug|vanaf)\b"
    r"|\b(?:bis|zurück|ab dem|ab)\b",
    re.IGNORECASE)
_OOO_SAID = re.compile(r"\bautomatic reply\b|\breponse automatique\b|\bréponse automatique\b"
                       r"|\bautomatisch antwoord\b|\bautomatische antwort\b", re.IGNORECASE)
_OOO_LOOK = 400  # characters of the new text where an out-of-office message says what it is


def out_of_office_text(text: str) -> bool:
    """True when the new text of a reply is an out-of-office message ("Je suis absent
    jusqu'au 4 janvier", "Ich bin bis Montag nicht im Büro"): kept on its ticket, it
    answers nothing."""
    head = " ".join(unicodedata.normalize("NFC", text[:_OOO_LOOK]).split())
    if _OOO_SAID.search(head):
        return True
    away = _OOO_AWAY.search(head)
    return away is not None and _OOO_UNTIL.search(head) is not None


# The same text again (a robot answering every mail alike): subject and text compared
# without what changes from one answer to the next, our ticket numbers, addresses and
# Message-IDs, dates and times, quoting and white space.
_PREFIX = re.compile(r"^(?:\s*(?:re|aw|tr|wg|antw|fwd?|sv|vs|réf)\s*:|\s*\[[^\]]{0,40}\])+", re.IGNORECASE)
_VARYING = re.compile(
    r"\b(?:inc|sr|chg)-\d{6}\b"  # our ticket numbers
    r"|<?[^\s<>@]+@[^\s<>@]+>?"  # addresses and Message-IDs
    r"|\b\d{1,4}[./-]\d{1,2}[./-]\d{1,4}\b"  # dates
    r"|\b\d{1,2}:\d{2}(?::\d{2})?\b",  # times
    re.IGNORECASE)
TEXT_KEY_CHARS = 20_000


def _said(text: str) -> str:
    said = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.sub(r"[\W_]+", " ", _VARYING.sub(" 0 ", said)).split())


def subject_key(subject: str) -> str:
    """The subject as ``text_key`` compares it (cheap: compared first)."""
    return _said(_PREFIX.sub("", unicodedata.normalize("NFKC", subject or "")))


def text_key(subject: str, text: str) -> str:
    """A digest of what a mail says, equal for two mails that say the same thing but for
    the ticket number, the date or the address they quote."""
    said = f"{subject_key(subject)}\n{_said((text or '')[:TEXT_KEY_CHARS])}"
    return hashlib.sha256(said.encode()).hexdigest()


def classify(mail: ParsedMail, own_addresses: tuple[str, ...], own_domain: str = "") -> Automatic | None:
    """What machine wrote ``mail``, or None for mail from a person: our own mail coming
    back, a delivery report, a read receipt, an auto-reply (in that order)."""
    precedence = (mail.header("precedence") or mail.header("x-precedence") or "").strip().lower()
    loop = _our_own(mail, own_addresses, own_domain, precedence)
    if loop is not None:
        return loop
    report = analyse(mail)
    if report is not None:
        return Automatic(report.kind, report.detail, report)
    receipt = read_receipt(mail)
    if receipt is not None:
        return Automatic("receipt", receipt)
    return _auto_reply(mail, precedence)


def _our_own(mail: ParsedMail, own_addresses: tuple[str, ...], own_domain: str, precedence: str) -> Automatic | None:
    """Our own mail coming back: our loop header, our address, our Message-ID in bulk."""
    own = {a.lower() for a in own_addresses}
    if mail.header(LOOP_HEADER) is not None:
        return Automatic("loop", f"carries our loop header {LOOP_HEADER}")
    if mail.from_addr and mail.from_addr.lower() in own:
        return Automatic("loop", f"sent from our own address {mail.from_addr}")
    if own_domain and mail.message_id.lower().endswith("@" + own_domain.lower()) and precedence == "bulk":
        return Automatic("loop", "our own Message-ID with Precedence: bulk")
    return None


def _auto_reply(mail: ParsedMail, precedence: str) -> Automatic | None:
    """An answering machine: Auto-Submitted, a presence header, Precedence, a list's
    copy, an out-of-office subject."""
    auto = (mail.header("auto-submitted") or "").strip().lower()
    if auto and not auto.startswith("no"):
        return Automatic("auto-reply", f"Auto-Submitted: {auto[:80]}")
    for name in _PRESENCE:
        value = mail.header(name)
        if value is not None:
            return Automatic("auto-reply", f"{name}: {value.strip()[:80]}")
    if precedence.split(";")[0].strip() in ("bulk", "junk", "list", "auto_reply"):
        return Automatic("auto-reply", f"Precedence: {precedence[:40]}")
    # A mailing list's copy (RFC 2919), with or without Precedence: list: answering it
    # would answer the whole list.
    list_id = mail.header("list-id")
    if list_id is not None and list_id.strip():
        return Automatic("auto-reply", f"mailing-list mail, List-Id: {list_id.strip()[:80]}")
    if _OOO.search(mail.subject):
        return Automatic("auto-reply", f"out-of-office subject: {mail.subject[:80]}")
    return None
