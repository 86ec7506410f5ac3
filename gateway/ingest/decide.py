"""Pure decisions: given a parsed mail and what the store knows about it, what to do.

Nothing here touches the database or the network: ``gateway.ingest.gather`` gathers the
facts into a ``Facts``, ``decide`` turns them into a ``Decision``, and
``gateway.ingest.apply`` writes what it says in one transaction.  Read top to bottom:

- ``decide``/``_decide``: duplicate, automatic mail (and what a bounce does:
  ``bounce``), no sender, our own address, a reply to a ticket (``decide_reply``; a
  Closed one opens a new ticket titled by ``title_from_closed``), unknown senders, a
  stranger's reference, a new ticket; then loop (``Repeat``) and flood.
- ``reply_effects``: the status change and the notification a reply causes.
- ``rate_exceeded``, ``unanswerable_sender``: when a notification is withheld.
- ``undeliverable``: when an address's hard bounces make it one not to send to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.ingest import answers
from gateway.ingest.answers import first_statement, read_decision
from gateway.ingest.automatic import Automatic, out_of_office_text
from gateway.ingest.parse import ParsedMail
from gateway.ingest.quotes import new_text
from gateway.ingest.references import TAG, Reference, title_from_subject
from store import lifecycle
from store.addresses import key as address_key
from store.lifecycle import StatusData
from store.vocabulary import FAILED


@dataclass(frozen=True)
class ThreadHit:
    """A ticket the mail refers to, and how it was found."""

    number: str
    status: str
    via: str  # message-id | token | tag | marker (the reply address hidden in our HTML)
    sender_allowed: bool
    waiting_reason: str | None = None
    # Reporting or Affected Person: the people whose approval a ticket waits for.
    sender_is_approver: bool = False
    why: str = ""  # reporting | affected | thread | company | own | stranger
    # Our MTA says the From fails DMARC: anyone may have written it.
    dmarc_failed: bool = False
    # The mail answers an approval request of this ticket that is not the open one (an
    # earlier request, or one already decided): why, as the agents will read it.  Its
    # answer was for another question, or has been used.
    stale_request: str | None = None
    # Read when the ticket is Closed (a reply to it opens a new one): its title and the
    # subjects of our mails on it (title_from_closed).
    title: str = ""
    our_subjects: tuple[str, ...] = ()


@dataclass(frozen=True)
class BouncedMail:
    """One of our outbox mails a delivery report names (gathered by its outbox id or
    Message-ID)."""

    outbox_id: int
    message_id: str
    recipient: str  # an address key (store.addresses.key)
    state: str
    ticket: str | None


@dataclass(frozen=True)
class Repeat:
    """The sender said the same thing a moment ago (gateway.ingest.gather, ``repeat``):
    a robot answering our answers, which would otherwise get a ticket and a confirmation
    each time.  ``number``: the ticket of what it repeats; ``why``, as the agents read it."""

    number: str
    why: str


@dataclass(frozen=True)
class Facts:
    process: str
    duplicate_of: str | None  # ticket that already holds this Message-ID
    automatic: Automatic | None
    thread: ThreadHit | None
    reference: Reference | None
    # The sender is a known Person, and the policy for unknown ones (create, reject, quarantine).
    sender_known: bool = True
    unknown_senders: str = "create"
    # The sender opened [limits] new_tickets_per_sender tickets in the window already:
    # why another one is held (None: under the limit, or no limit).
    flood: str | None = None
    # The same text from the same sender within [limits] loop_window, or a mail naming
    # the Message-ID of one of our mails to them (None: neither, or not looked for).
    repeat: Repeat | None = None
    # A bounce naming mails of ours: those mails (None: not a bounce that names any).
    bounced: tuple[BouncedMail, ...] | None = None


@dataclass(frozen=True)
class NewTicket:
    process: str
    title: str
    reference: Reference | None
    refers_to: str | None = None  # a ticket the sender referred to but may not write into
    linked_to: str | None = None  # the Closed ticket this reply came to (a new problem, a new ticket)
    description: str | None = None  # None: the whole text of the mail
    refers_via: str | None = None  # how the mail referred to ``refers_to``: message-id | token | tag | marker

    @property
    def outcome(self) -> str:
        return "new-from-closed" if self.linked_to else "created"


# What a reply does to its ticket.
APPEND = "append"  # added as a comment, nothing else
RESUME = "resume"  # Waiting for the customer -> In progress
REOPEN = "reopen"  # Solved -> In progress, the new text being the required comment
NEEDS_COMMENT = "needs-comment"  # Solved, no new text: stays Solved, the customer is told
APPROVE = "approve"  # Approval -> In progress
REFUSE = "refuse"  # Approval -> Rejected, the text being the reason
UNCLEAR = "unclear"  # Approval, no clear decision: a comment, and the customer is told how to answer
HOLD = "hold"  # kept for the agents (internal), changes nothing: the sender is not proven


@dataclass(frozen=True)
class FollowUp:
    number: str
    via: str
    comment: str = ""  # the new text of the mail (quotes and signature off)
    action: str = APPEND
    detail: str = ""
    cut_by: str | None = None  # the rule that cut the quoted history, for the agent

    @property
    def outcome(self) -> str:
        return {REOPEN: "reopened", APPROVE: "approval", REFUSE: "approval",
                NEEDS_COMMENT: "needs-comment", HOLD: "held"}.get(self.action, "appended")


@dataclass(frozen=True)
class BounceEffects:
    """What a delivery report does to the mails of ours it names."""

    answer: str  # written as each named mail's last answer
    outbox_ids: tuple[int, ...]  # the mails it names (for this recipient, when it says)
    failed: tuple[int, ...] = ()  # those it fails for good (a hard bounce, not failed yet)
    hard_bounced: tuple[str, ...] = ()  # a recipient's address for each of those: one more hard bounce


@dataclass(frozen=True)
class Ignore:
    outcome: str  # duplicate | auto-reply | bounce | rejected | loop | ignored | receipt
    detail: str
    ticket: str | None = None
    # Kept on ``ticket`` as an internal message, for the agents: no answer, no change.
    note: bool = False
    bounce: BounceEffects | None = None


@dataclass(frozen=True)
class QuarantineIt:
    reason: str


Decision = NewTicket | FollowUp | Ignore | QuarantineIt


# A reply that only says thanks does not reopen a Solved ticket: the customer agrees.
_THANKS = re.compile(
    r"^(?:(?:merci|thanks?|thank\s+you|thx|bedankt|dank\s*(?:je|u)(?:wel)?|dankjewel|danke|vielen\s+dank"
    r"|parfait|perfect|super|top|great|prima|ok|okay)(?:\s+(?:beaucoup|bien|a\s+lot|very\s+much|so\s+much"
    r"|schön|sehr|veel|wel|à\s+vous|voor\s+de\s+hulp|for\s+your\s+help|pour\s+votre\s+aide|für\s+ihre\s+hilfe))*"
    r"[\s!.,:;)(👍🙂😊]*)+(?:[A-Z][\w.-]*)?[\s!.]*$",
    re.IGNORECASE | re.UNICODE,
)


def only_thanks(text: str) -> bool:
    return bool(text) and len(text) <= 80 and bool(_THANKS.match(" ".join(text.split())))


_PREFIXES = re.compile(r"^(?:\s*(?:(?:re|aw|tr|wg|antw|fwd?|sv|vs|réf)\s*:|\[external\]|\[extern\]))+",
                       re.IGNORECASE)


def clean_title(subject: str) -> str:
    """A subject for a new ticket: without other tickets' tags, reply prefixes or reference."""
    title = TAG.sub(" ", title_from_subject(subject))
    prev = None
    while prev != title:
        prev = title
        title = _PREFIXES.sub("", title).strip()
    return " ".join(title.split())


def decide_reply(mail: ParsedMail, thread: ThreadHit) -> FollowUp:
    """What an allowed sender's reply does to the ticket, from its status."""
    reply = new_text(mail.text)
    text = reply.text

    def follow(action: str, detail: str) -> FollowUp:
        return FollowUp(thread.number, thread.via, text, action, detail, reply.cut_by)

    if thread.dmarc_failed:
        # A forged From could otherwise reopen, approve or refuse in someone's name.
        return follow(HOLD, "DMARC failed: kept for the agents, no action taken")
    if out_of_office_text(text):
        # An out-of-office message under a plain "Re:" (no header says it is automatic):
        # the agents see it, but it answers no question, reopens and decides nothing.
        return follow(APPEND, "out-of-office text: added as a comment, changes nothing")

    if thread.status == lifecycle.SOLVED:
        if not text:
            return follow(NEEDS_COMMENT, "no new text: a comment is needed to reopen")
        if only_thanks(text):
            return follow(APPEND, "only thanks: the ticket stays Solved")
        return follow(REOPEN, "reopened by the customer's comment")
    if thread.status == lifecycle.APPROVAL:
        reading = read_decision(text)
        word = {answers.APPROVE: APPROVE, answers.REFUSE: REFUSE}.get(reading.decision)
        if word and thread.stale_request:
            # A ticket asked for approval twice (a new quote, say): "yes" to the first
            # request must not decide the second; nor may an answer be used twice.
            return follow(APPEND, f"{thread.stale_request}: added as a comment, approval pending")
        if word and thread.sender_is_approver:
            return follow(word, ("approved by mail" if word == APPROVE else "refused by mail")
                          + f", read in: {reading.statement[:200]!r}")
        if word:
            return follow(APPEND, f"not an approver ({thread.why}): added as a comment, approval pending")
        if thread.sender_is_approver and not thread.stale_request:
            # They may think they decided ("Bonjour, je pense que c'est bon"): tell them.
            return follow(UNCLEAR, "no clear approval or refusal: added as a comment, approval pending, "
                                   "the customer is told how to answer")
        return follow(APPEND, "no clear approval or refusal: added as a comment, approval pending")
    if (thread.status == lifecycle.WAITING and thread.waiting_reason in lifecycle.CUSTOMER_WAITING_REASONS
            and (text or mail.attachments)):
        return follow(RESUME, f"the customer answered ({thread.waiting_reason})")
    return follow(APPEND, f"found by {thread.via}")


def decide(mail: ParsedMail, facts: Facts) -> Decision:
    decision = _decide(mail, facts)
    if facts.repeat is not None and isinstance(decision, NewTicket):
        # A machine answering our answers with the same text, with no header that says
        # so: one ticket and one confirmation for the first, the repeats kept on that
        # ticket for the agents, unanswered; with no answer from us the loop ends.
        return Ignore("loop", facts.repeat.why, facts.repeat.number, note=True)
    if facts.flood and isinstance(decision, NewTicket):
        # A script or a loop we do not recognise opening ticket after ticket: the mails
        # are kept, quarantined with the reason, for an agent; replies still thread.
        return QuarantineIt(facts.flood)
    return decision


def _decide(mail: ParsedMail, facts: Facts) -> Decision:
    if facts.duplicate_of:
        return Ignore("duplicate", f"Message-ID already on {facts.duplicate_of}", facts.duplicate_of)
    if facts.automatic is not None:
        return decide_automatic(mail, facts)
    if not mail.from_addr:
        return QuarantineIt("no sender address (From) to answer or to file the ticket under")
    if facts.thread is not None and facts.thread.why == "own":
        return Ignore("loop", f"sent from our own address {mail.from_addr}", facts.thread.number)
    if facts.thread is not None and facts.thread.sender_allowed:
        if facts.thread.status == lifecycle.CLOSED:
            return decide_closed(mail, facts)
        return decide_reply(mail, facts.thread)
    # Never answer an unknown sender that the policy refuses: that would be backscatter.
    if not facts.sender_known and facts.unknown_senders == "reject":
        return Ignore("rejected", f"unknown sender {mail.from_addr} (gateway.unknown_senders = reject)")
    if not facts.sender_known and facts.unknown_senders == "quarantine":
        return QuarantineIt(f"unknown sender {mail.from_addr} (gateway.unknown_senders = quarantine)")
    if facts.thread is not None:
        # Whatever header, tag or token they copied: a ticket of their own.
        return NewTicket(facts.process, clean_title(mail.subject), facts.reference, facts.thread.number,
                         refers_via=facts.thread.via)
    return NewTicket(facts.process, title_from_subject(mail.subject), facts.reference)


def decide_automatic(mail: ParsedMail, facts: Facts) -> Ignore:
    """Mail a machine wrote gets no ticket and no answer."""
    automatic, thread = facts.automatic, facts.thread
    if automatic.noted and thread is not None and thread.sender_allowed:
        # A read receipt of one of our mails: the agents may like to know, nothing more.
        return Ignore(automatic.outcome, f"{automatic.detail}; noted on {thread.number}", thread.number, note=True)
    if automatic.outcome == "bounce":
        return bounce(mail.message_id, automatic, facts.bounced)
    return Ignore(automatic.outcome, automatic.detail)


def decide_closed(mail: ParsedMail, facts: Facts) -> Decision:
    """A reply to a Closed ticket: Closed is final (manual §1.4.2), a new problem needs a
    new ticket, linked to it."""
    reply = new_text(mail.text)
    if (not reply.text or only_thanks(reply.text)) and not mail.attachments:
        # "Thanks" to the closing mail is no new problem: a new ticket would be noise.
        # The mail stays in the inbound store with this outcome.
        return Ignore("ignored", f"no new text or only thanks for {facts.thread.number}, which is Closed",
                      facts.thread.number)
    return NewTicket(facts.process, title_from_closed(clean_title(mail.subject), facts.thread),
                     facts.reference, linked_to=facts.thread.number, description=reply.text or mail.text)


def title_from_closed(title: str, closed: ThreadHit) -> str:
    """The title of a ticket opened by a reply to a Closed one: a reply to one of our
    mails has our wording as its subject, so it takes the closed ticket's title (the
    customer's words); a subject of their own stays."""
    if title == closed.title or any(clean_title(subject) == title for subject in closed.our_subjects):
        return closed.title
    return title


def bounce(message_id: str, automatic: Automatic, bounced: tuple[BouncedMail, ...] | None) -> Ignore:
    """A delivery report: the mails of ours it names (by the recipient it names, when it
    names one) get it as their last answer; a hard bounce fails them for good and counts
    a hard bounce on their recipient (``undeliverable``).  The outcome names the ticket
    of the first of them."""
    if bounced is None:  # no report, or one that names no mail of ours
        return Ignore("bounce", automatic.detail)
    if not bounced:
        return Ignore("bounce", automatic.detail + "; no outbox mail of ours among the returned Message-IDs")
    report = automatic.report
    reported = {address_key(a) for a in report.recipients}
    rows = [r for r in bounced if r.recipient in reported] or list(bounced)
    failed = tuple(r for r in rows if report.hard and r.state != FAILED)
    effects = BounceEffects(f"bounce <{message_id}>: {automatic.detail}"[:2000], tuple(r.outbox_id for r in rows),
                            tuple(r.outbox_id for r in failed), tuple(r.recipient for r in failed))
    ticket = next((r.ticket for r in rows if r.ticket is not None), None)
    state = "marked failed" if report.hard else "delayed, kept"
    return Ignore("bounce", f"{automatic.detail}; outbox <{rows[0].message_id}> {state}", ticket, bounce=effects)


def undeliverable(hard_bounces: int, after: int) -> bool:
    """An address that bounced for good ``after`` times ([outbound] undeliverable_after)
    is sent nothing more."""
    return hard_bounces >= after


@dataclass(frozen=True)
class ReplyEffects:
    """What a reply does besides being added: the ticket's new status, and the
    notification it answers with (to its sender only, or as the event goes)."""

    status: str | None = None
    data: StatusData | None = None
    notice: str | None = None
    to_sender_only: bool = False
    extra: dict | None = None


def reply_effects(reply: FollowUp, by: str, name: str = "") -> ReplyEffects:
    """The status change and the notification ``reply`` causes; ``by``: its sender's
    address, ``name``: their name."""
    if reply.action == RESUME:
        return ReplyEffects(lifecycle.IN_PROGRESS, StatusData(note=f"The customer answered by mail ({by}); "
                                                                   f"the work resumes."))
    if reply.action == REOPEN:
        return ReplyEffects(lifecycle.IN_PROGRESS, StatusData(note=reply.comment))
    if reply.action == NEEDS_COMMENT:
        return ReplyEffects(notice="reopen-needs-comment", to_sender_only=True)
    if reply.action in (APPROVE, REFUSE):
        extra = {"decision": "approved" if reply.action == APPROVE else "refused", "approver": name or by,
                 "approver_address": by, "answer": reply.comment}
        if reply.action == APPROVE:
            return ReplyEffects(lifecycle.IN_PROGRESS, StatusData(note=f"Approved by {by} by mail: {reply.comment}"),
                                "approval-recorded", extra=extra)
        return ReplyEffects(lifecycle.REJECTED,
                            StatusData(reason=reply.comment, note=f"Refused by {by} by mail: {reply.comment}"),
                            "approval-recorded", extra=extra)
    if reply.action == UNCLEAR:
        # The customer may believe they decided: they are told what was read and how to answer.
        return ReplyEffects(notice="approval-unclear", to_sender_only=True,
                            extra={"statement": first_statement(reply.comment)})
    return ReplyEffects()


def rate_exceeded(recent_mails: int, rate_limit: int) -> bool:
    """More than [limits] rate_limit mails from a sender in the last rate_window seconds
    (the mail being processed among them): the sender still gets tickets but no
    notifications, so a storm (a loop with a machine we do not recognise, or a mail bomb)
    cannot make us send a storm back."""
    return recent_mails > rate_limit


_NO_REPLY = re.compile(r"^(no[-_.]?reply|do[-_.]?not[-_.]?reply|mailer[-_.]?daemon|postmaster|bounces?)([-+.].*)?$",
                       re.IGNORECASE)


def unanswerable_sender(mail: ParsedMail) -> str | None:
    """Why the sender must get no automatic answer (RFC 3834 §2), or None: the ticket is
    made, but a machine's address gets no answer ("ticket trick": a sign-up mail sent to
    us must not have its contents echoed back)."""
    return_path = mail.header("return-path")
    if return_path is not None and return_path.strip() in ("<>", ""):
        return "null return path"
    local = mail.from_addr.rpartition("@")[0]
    if _NO_REPLY.match(local):
        return f"no-reply sender {mail.from_addr}"
    return None
