"""The notice to the sender of a mail too large to be read (an IMAP mailbox's mail over
the size limit: only its header was fetched): no ticket, and why."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlmodel import col, select

from gateway.errors import Quarantine
from gateway.ingest.automatic import classify
from gateway.ingest.decide import unanswerable_sender
from gateway.ingest.parse import parse
from store.addresses import key as address_key
from store.db import session_for
from store.models import Outbox, Person, utcnow
from store.notifications import language_for, queue_notice


class TooLarge:
    """A part of ``gateway.ingest.process.Processor`` (it reads ``self.config``,
    ``self.engine``, ``self.limits``, ``self.own``, ``self.notices``)."""

    def notify_too_large(self, header: bytes, size: int, limit: int, now: datetime | None = None) -> str:
        """Tell the sender of a mail too large to be read (gateway.ingest.imap: only its
        header was fetched) that no ticket was made and why: one notice, committed here.
        Returns what was done, for the inbound row's detail.

        Never to a machine (auto-replies, bounces, lists, our own mail), a no-reply or
        null return path, or an undeliverable person; and at most one such notice a
        sender a day, so a sender that keeps sending huge mails gets one answer."""
        try:
            mail = parse(header.rstrip(b"\r\n") + b"\r\n\r\n", self.limits)
        except Quarantine as exc:  # an ambiguous sender, say: nobody to answer
            return f"no notice: {exc.reason}"
        except Exception as exc:  # noqa: BLE001 - a header we cannot read is not answered
            return f"no notice: header unreadable ({type(exc).__name__})"
        automatic = classify(mail, self.own, self.config.message_id_domain)
        if automatic is not None:
            return f"no notice: {automatic.kind} ({automatic.detail})"
        unanswerable = unanswerable_sender(mail)
        if unanswerable:
            return f"no notice: {unanswerable}"
        if "@" not in mail.from_addr:
            return "no notice: no sender address"
        address = address_key(mail.from_addr)
        now = now or utcnow()
        with session_for(self.engine) as session:
            person = session.exec(select(Person).where(Person.email == address)).first()
            if person is not None and person.undeliverable:
                return f"no notice: {address} is undeliverable"
            recent = session.exec(select(Outbox.id).where(Outbox.event == "too-large", Outbox.recipient == address,
                                                          col(Outbox.created_at) >= now - timedelta(days=1))
                                  .limit(1)).first()
            if recent is not None:
                return f"no notice: {address} was told of a too-large mail in the last 24 hours"
            lang = (language_for(session, person, self.config.gateway.default_language) if person is not None
                    else self.language_of(mail))
            row = queue_notice(
                session, self.notices, "too-large", to=(mail.from_name, address), language=lang,
                in_reply_to=mail.message_id or None,
                extra={"original_subject": mail.subject, "size": size, "limit": limit}, now=now)
            if row is None:
                return f"no notice: {address} is not an address to send to"
            session.commit()
        return f"notice <{row.message_id}> queued for {address}"
