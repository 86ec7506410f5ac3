"""Delivery reports: bounces (standard DSNs and the common non-standard ones), abuse
and complaint reports (ARF), and delivery notifications of mail services.

``analyse`` is pure: it reads a parsed mail and says whether a mail system wrote it to
report on an earlier mail, which recipients failed, whether the failure is permanent,
and which Message-IDs the returned mail carried, so the caller can find the outbox row
that bounced.  Nothing it recognises may become a ticket.

The rules follow what the mail systems really send (the sisimai and flufl.bounce
sample sets): a standard report is recognised by its structure; a non-standard one
needs two signals out of three (a mail-system sender, a bounce subject, a bounce text),
so that a customer who merely writes "not delivered" still gets a ticket.  A customer
who forwards a bounce under its own subject ("Fwd: Returned mail: ...") is taken for a
bounce, as sisimai expects (lhost-sendmail-14); the mail is stored and reported, so an
agent can still see it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from gateway.ingest.parse import ParsedMail
from store.addresses import normalize, normalize_message_id


@dataclass(frozen=True)
class Report:
    kind: str  # bounce | feedback | delivery
    detail: str
    hard: bool = False
    recipients: tuple[str, ...] = ()
    original_message_ids: tuple[str, ...] = ()
    # Outbox mails named by the bounce address the report was sent to (VERP).
    outbox_ids: tuple[int, ...] = ()


# Senders that are mail systems, not people.
_DAEMON_LOCAL = re.compile(
    r"^(mailer[-_.]?daemon|postmaster|post_master|poostmaster|mail\.delivery\.system|double-bounce|mdaemon"
    r"|mail[-_.]?delivery(?:[-_.]?(?:system|subsystem))?|mail[-_.]?administrator|bounces?)$",
    re.IGNORECASE)
_DAEMON_NAME = re.compile(r"mail delivery (?:sub)?system|mail administrator|mailer[-_ ]daemon|postmaster",
                          re.IGNORECASE)

_SUBJECT = re.compile(
    r"undeliver|undelivered mail|delivery status notification|delivery (?:status|failure|notification|failed|"
    r"has failed|problem|report)|failure (?:notice|delivery)|failed delivery|returned mail|mail delivery "
    r"(?:failed|failure|system)|message delivery has failed|could not be delivered|"
    r"mail system error|delayed mail|delivery warning|permanent delivery failure|mail failed|"
    r"returning (?:message )?to sender|non[- ]delivery|non remis|non distribuable|unzustellbar|nicht zustellbar|"
    r"zustellung fehlgeschlagen|onbestelbaar|"
    r"niet bezorgd|kan niet worden bezorgd|[ée]chec de (?:la )?(?:remise|distribution)|non recapitabile|"
    r"warning: could not send|errors from localhost|loop alert|are not member|"
    r"\u30e1\u30c3\u30bb\u30fc\u30b8\u3092\u914d\u4fe1\u3067\u304d\u307e\u305b\u3093|"  # Japanese: cannot deliver
    r"\u30e1\u30fc\u30eb\u30a8\u30e9\u30fc\u901a\u77e5",  # Japanese: mail error notice
    re.IGNORECASE)

_BODY = re.compile(
    r"this is the mail system at host|(?:could ?not|couldn't|can ?not|cannot) be delivered|trouble delivering|"
    r"has been returned because|returned permanent errors?|incorrectly constructed|"
    r"\u043d\u0435 \u043c\u043e\u0436\u0435\u0442 \u0431\u044b\u0442\u044c \u0434\u043e\u0441\u0442\u0430\u0432\u043b\u0435\u043d\u043e|"  # Russian: cannot be delivered
    r"delivery to the following "
    r"recipients? (?:failed|has been delayed|was unsuccessful)|created automatically by mail delivery software|"
    r"transcript of session follows|this is the qmail-send program|did not reach (?:some or all of )?the "
    r"intended recipients?|delivery has failed to these recipients|unable to deliver|permanent fatal errors?|"
    r"could not deliver|undeliverable|returned to (?:the )?sender|delivery failed|failed to deliver|"
    r"was not delivered|message (?:could not|cannot) be delivered|user unknown|unknown user|no such user|"
    r"mailbox (?:is )?(?:full|unavailable)|recipient address rejected|delivery (?:is |has been )?delayed|"
    r"still being retried|has not yet been delivered|not been delivered|original message follows|"
    r"returned message|delivery status notification|failed recipient|invalid recipient|"
    r"mail delivery failed|message not delivered|did not reach the following recipient|not a member of this "
    r"mailing list|duplicated message-id|postponed due to|your message (?:to|was)|sorry,? (?:we|I) (?:were|was|could)",
    re.IGNORECASE)

_TEMPORARY = re.compile(r"\(delay\)|delayed|still being retried|will (?:continue|keep) trying|"
                        r"has not yet been delivered|warning|notification: (?:warning|delayed)|postponed|"
                        r"attempts will continue|will continue to try|will retry|temporar", re.IGNORECASE)
# A failure that no retry will cure, even when the subject says "warning".
_PERMANENT = re.compile(r"user unknown|unknown user|no such user|does not exist|invalid recipient|"
                        r"\b5\.[0-7]\.\d{1,3}\b|^5\d\d[ -]", re.IGNORECASE | re.MULTILINE)

_FEEDBACK_SUBJECT = re.compile(r"^complaint about message from|abuse report", re.IGNORECASE)

_MID_LINE = re.compile(r"^[ \t>]*message-id:[ \t]*<?([^\s<>]+@[^\s<>]+?)>?[ \t\r]*$", re.IGNORECASE | re.MULTILINE)
_FIELD = re.compile(r"^([A-Za-z-]+):[ \t]*(.*)$", re.MULTILINE)


def _is_daemon(mail: ParsedMail) -> bool:
    if not mail.from_addr:
        return True
    local = mail.from_addr.rpartition("@")[0]
    if _DAEMON_LOCAL.match(local) or _DAEMON_NAME.search(mail.from_name or ""):
        return True
    return_path = (mail.header("return-path") or "").strip()
    return return_path == "<>" or "mailer-daemon" in return_path.lower()


def _status_fields(mail: ParsedMail) -> tuple[list[str], list[str], list[str]]:
    """Recipients, actions and statuses from the machine-readable part of a DSN."""
    originals, finals, actions, statuses = [], [], [], []
    for att in mail.attachments:
        if att.content_type not in ("message/delivery-status", "message/global-delivery-status"):
            continue
        text = att.data.decode("utf-8", "replace")
        for name, value in _FIELD.findall(text):
            name = name.lower()
            if name in ("final-recipient", "original-recipient"):
                addr = normalize(value.split(";", 1)[-1].strip().strip("<>"))
                if "@" in addr:
                    (originals if name == "original-recipient" else finals).append(addr)
            elif name == "action":
                actions.append(value.strip().lower())
            elif name == "status":
                statuses.append(value.strip())
    # The original recipient is the address we wrote to; the final one may be an alias.
    recipients = list(dict.fromkeys(originals or finals))
    return recipients, actions, statuses


def original_message_ids(mail: ParsedMail) -> tuple[str, ...]:
    """Message-IDs of the returned mail: from a returned message or header part, else
    from the quoted headers in the text.  The report's own ID is not one of them."""
    found: list[str] = []
    for att in mail.attachments:
        if att.content_type in ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers",
                                "message/global", "message/global-headers"):
            head = att.data[:65536]
            if att.content_type == "message/rfc822":
                head = re.split(rb"\r?\n\r?\n", head, maxsplit=1)[0]
            found += _MID_LINE.findall(head.decode("utf-8", "replace"))
    found += _MID_LINE.findall(mail.text[:200_000])
    own = mail.message_id
    out: list[str] = []
    for mid in found:
        mid = normalize_message_id(mid)
        if mid and mid != own and mid not in out:
            out.append(mid)
    return tuple(out)


def _ses(mail: ParsedMail) -> Report | None:
    """Amazon SES notifications arrive as JSON from SNS."""
    if not mail.from_addr.endswith("amazonaws.com") or "notificationType" not in mail.text:
        return None
    start = mail.text.find("{")
    try:
        data = json.loads(mail.text[start: mail.text.rfind("}") + 1])
        if isinstance(data, dict) and "Message" in data and isinstance(data["Message"], str):
            data = json.loads(data["Message"])
    except (ValueError, TypeError):
        data = {}
    kind = (data.get("notificationType") if isinstance(data, dict) else None) or \
        (re.search(r'notificationType\\?"\s*:\s*\\?"(\w+)', mail.text) or [None, ""])[1]
    mid = ()
    if isinstance(data, dict) and isinstance(data.get("mail"), dict) and data["mail"].get("messageId"):
        mid = (normalize_message_id(str(data["mail"]["messageId"])),)
    if kind == "Bounce":
        hard = "Permanent" in mail.text
        return Report("bounce", "Amazon SES bounce notification", hard, (), mid)
    if kind == "Complaint":
        return Report("feedback", "Amazon SES complaint notification", False, (), mid)
    if kind == "Delivery":
        return Report("delivery", "Amazon SES delivery notification", False, (), mid)
    return None


# complex: the report formats in the order they are told apart (ARF, unsubscribe, SES, RFC 3464 DSN, X-Failed-Recipients, non-standard bounces); tested case by case against the corpus
def analyse(mail: ParsedMail) -> Report | None:
    """What kind of delivery report ``mail`` is, or None for mail that is not one."""
    types = set(mail.part_types)
    report_type = mail.report_type or ""
    ids = original_message_ids(mail)

    if report_type == "feedback-report" or "message/feedback-report" in types:
        return Report("feedback", "abuse or complaint report (ARF)", False, (), ids)
    if _FEEDBACK_SUBJECT.search(mail.subject) and "message/rfc822" in types and _is_daemon(mail) is False \
            and mail.from_addr.startswith(("staff@", "abuse@", "feedbackloop@", "fbl@")):
        return Report("feedback", "complaint report", False, (), ids)
    if "sent this email to unsubscribe" in mail.text[:2000]:
        return Report("feedback", "unsubscribe request sent by a mail program", False, (), ids)
    ses = _ses(mail)
    if ses is not None:
        return ses

    recipients, actions, statuses = _status_fields(mail)
    failed = [normalize(a) for a in (mail.header("x-failed-recipients") or "").replace(";", ",").split(",")
              if "@" in a]
    standard = report_type in ("delivery-status", "global-delivery-status") or \
        "message/delivery-status" in types or "message/global-delivery-status" in types
    if standard or failed:
        if (actions and all(a in ("delivered", "relayed", "expanded", "deliverable") for a in actions)) or \
                (statuses and all(s.startswith("2") for s in statuses)):
            return Report("delivery", f"delivery notification ({', '.join(sorted(set(actions)))})", False,
                          tuple(recipients), ids)
        if statuses or actions:
            hard = any(s.startswith("5") for s in statuses) or "failed" in actions
        else:
            hard = not _TEMPORARY.search(mail.subject)
        why = "delivery status notification" if standard else "X-Failed-Recipients"
        return Report("bounce", f"{why} ({'permanent' if hard else 'temporary'} failure)", hard,
                      tuple(dict.fromkeys(recipients + failed)), ids)

    daemon = _is_daemon(mail)
    subject = bool(_SUBJECT.search(mail.subject))
    # The body decides only together with a daemon sender or a bounce subject: ordinary
    # mail skips this search (the largest single cost of processing a small mail).
    body = (daemon or subject) and bool(_BODY.search(mail.text[:20000]))
    if (daemon and (subject or body)) or (subject and body):
        head = mail.text[:3000]
        hard = bool(_PERMANENT.search(head)) or not (_TEMPORARY.search(mail.subject) or _TEMPORARY.search(head))
        signals = ", ".join(s for s, on in (("mail-system sender", daemon), ("bounce subject", subject),
                                             ("bounce text", body)) if on)
        return Report("bounce", f"non-standard bounce ({signals}; {'permanent' if hard else 'temporary'})",
                      hard, (), ids)
    return None
