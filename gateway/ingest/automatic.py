"""Mail that a machine wrote: auto-replies, bounces, reports and our own mail coming back.

``classify`` is pure: it looks at a parsed mail and says what it is, or None for mail
a person wrote.  Nothing it recognises may make a ticket or a notification.

The order matters: our own mail first (a loop is never processed again), then delivery
and abuse reports (many bounces also carry ``Auto-Submitted``, and they must be linked
to the mail that bounced), then the auto-reply headers of RFC 3834 and of the common
mail programs and a mailing list's List-Id, then the subjects of out-of-office replies
in our four languages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.ingest.bounces import Report, analyse
from gateway.ingest.parse import ParsedMail
from store.vocabulary import LOOP_HEADER

# kind -> the outcome reported for the inbound mail.
OUTCOMES = {"loop": "loop", "auto-reply": "auto-reply", "bounce": "bounce", "feedback": "feedback",
            "delivery": "auto-reply"}


@dataclass(frozen=True)
class Automatic:
    kind: str  # loop | auto-reply | bounce | feedback | delivery
    detail: str
    report: Report | None = None

    @property
    def outcome(self) -> str:
        return OUTCOMES[self.kind]


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


def classify(mail: ParsedMail, own_addresses: tuple[str, ...], own_domain: str = "") -> Automatic | None:
    """What machine wrote ``mail``, or None for mail from a person."""
    own = {a.lower() for a in own_addresses}
    if mail.header(LOOP_HEADER) is not None:
        return Automatic("loop", f"carries our loop header {LOOP_HEADER}")
    if mail.from_addr and mail.from_addr.lower() in own:
        return Automatic("loop", f"sent from our own address {mail.from_addr}")
    precedence = (mail.header("precedence") or mail.header("x-precedence") or "").strip().lower()
    if own_domain and mail.message_id.lower().endswith("@" + own_domain.lower()) and precedence == "bulk":
        return Automatic("loop", "our own Message-ID with Precedence: bulk")

    report = analyse(mail)
    if report is not None:
        return Automatic(report.kind, report.detail, report)

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
