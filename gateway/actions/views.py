"""What the faces show of the gateway's data: a ticket with its mails, comments,
attachments and history, as the command line's --json and the HTTP API give it."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, col, select

from store.models import Attachment, Person, StatusChange, Ticket, TicketMessage


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def person_json(person: Person | None) -> dict | None:
    if person is None:
        return None
    return {"email": person.email, "name": person.name, "language": person.language}


def ticket_json(session: Session, ticket: Ticket) -> dict:
    messages = []
    for msg in session.exec(select(TicketMessage).where(TicketMessage.ticket_id == ticket.id)
                            .order_by(col(TicketMessage.created_at), col(TicketMessage.id))):
        atts = session.exec(select(Attachment).where(Attachment.message_id == msg.id).order_by(col(Attachment.id)))
        messages.append({
            "id": msg.id,
            "direction": msg.direction,
            "internal": msg.internal,
            "from": msg.from_addr,
            "to": [a for a in msg.to_addrs.split(",") if a],
            "subject": msg.subject,
            "body_text": msg.body_text,
            "message_id": msg.message_id,
            "created_at": iso(msg.created_at),
            "attachments": [{"id": a.id, "filename": a.filename, "content_type": a.content_type, "size": a.size,
                             "sha256": a.sha256, "inline": a.inline} for a in atts],
        })
    history = [{"at": iso(h.at), "from_status": h.from_status, "to_status": h.to_status, "by": h.by, "note": h.note}
               for h in session.exec(select(StatusChange).where(StatusChange.ticket_id == ticket.id)
                                     .order_by(col(StatusChange.at), col(StatusChange.id)))]
    linked = session.get(Ticket, ticket.linked_ticket_id) if ticket.linked_ticket_id else None
    from gateway.actions.portal import assessments

    judged = [{"at": iso(a.created_at), "by": (session.get(Person, a.person_id) or Person(email="?")).email,
               "solved": a.solved, "level": a.level, "comment": a.comment} for a in assessments(session, ticket)]
    return {
        "number": ticket.number,
        "process": ticket.process,
        "status": ticket.status,
        "waiting_reason": ticket.waiting_reason,
        "title": ticket.title,
        "description": ticket.description,
        "personal_reference": ticket.personal_reference,
        "reference_source": ticket.reference_source,
        "status_reason": ticket.status_reason,
        "appointment_at": iso(ticket.appointment_at),
        "appointment_place": ticket.appointment_place,
        "solution": ticket.solution,
        "approval_text": ticket.approval_text,
        "linked_ticket": linked.number if linked else None,
        "reporting_person": person_json(session.get(Person, ticket.reporting_person_id)),
        "affected_person": person_json(session.get(Person, ticket.affected_person_id)),
        "created_at": iso(ticket.created_at),
        "updated_at": iso(ticket.updated_at),
        "messages": messages,
        "assessments": judged,
        "history": history,
    }
