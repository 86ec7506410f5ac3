"""ticket show|list|create|set-status|comment|convert-to-change, and close-solved."""

from __future__ import annotations

import json
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlmodel import Session, col, select

from gateway.app import App
from gateway.errors import CommandError
from store.db import session_for
from store.models import Attachment, Person, StatusChange, Ticket, TicketMessage
from store.lifecycle import STATUSES, WAITING_REASONS, LifecycleError, StatusData
from store.vocabulary import PROCESSES
from store.tickets import NotFound, get_ticket, search_tickets


def register(sub, common) -> None:
    p = sub.add_parser("ticket", parents=[common], help="show and work on tickets")
    tsub = p.add_subparsers(dest="ticket_command", metavar="ACTION")
    tsub.required = True

    s = tsub.add_parser("show", parents=[common], help="one ticket with its mails and history")
    s.add_argument("number")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_show)

    s = tsub.add_parser("list", parents=[common], help="open tickets (all but Closed), or a search")
    s.add_argument("--status", help="only this status (Closed included when asked for)")
    s.add_argument("--search", metavar="TEXT", help="number, title, status, name or personal reference")
    s.add_argument("--all", action="store_true", help="include Closed tickets")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_list)

    s = tsub.add_parser("create", parents=[common], help="register a ticket (phone channel) and confirm it by mail")
    s.add_argument("--process", required=True, choices=PROCESSES)
    s.add_argument("--reporter", required=True, metavar="EMAIL", help="the Reporting Person")
    s.add_argument("--affected", metavar="EMAIL", help="the Affected Person (default: the reporter)")
    s.add_argument("--title", required=True)
    s.add_argument("--description", required=True)
    s.add_argument("--reference", metavar="REF", help="the customer's personal reference, e.g. PO1234")
    s.add_argument("--by", default="agent", help="who does it (kept in the history)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_create)

    s = tsub.add_parser("set-status", parents=[common], help="move a ticket to another status (mails the customer "
                                                            "when the manual says so)")
    s.add_argument("number")
    s.add_argument("status", help=", ".join(STATUSES) + " (in-progress etc. accepted)")
    s.add_argument("--reason", help="Rejected, Postponed: the reason")
    s.add_argument("--waiting-reason", choices=WAITING_REASONS, help="Waiting: why")
    s.add_argument("--at", metavar="ISO-DATETIME", help="Planned: the appointment, e.g. 2026-12-01T14:00+01:00")
    s.add_argument("--tz", metavar="ZONE", help="time zone of --at when it has no offset, e.g. Europe/Brussels")
    s.add_argument("--place", help="Planned: where (optional)")
    s.add_argument("--solution", help="Solved: the solution")
    s.add_argument("--approval-text", help="Approval: what is to be approved")
    s.add_argument("--note", help="a note for the history; Waiting: shown in the mail; Solved -> In progress: "
                                  "the mandatory comment")
    s.add_argument("--by", default="agent", help="who does it (kept in the history)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_set_status)

    s = tsub.add_parser("comment", parents=[common], help="add a public comment (or an --internal note)")
    s.add_argument("number")
    s.add_argument("--text", required=True)
    s.add_argument("--internal", action="store_true", help="never shown to the customer")
    s.add_argument("--by", default="agent")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_comment)

    s = tsub.add_parser("convert-to-change", parents=[common],
                        help="create a linked CHG- ticket and put this one in Waiting (rfc)")
    s.add_argument("number")
    s.add_argument("--note", help="note for the history (default: 'converted to CHG-...')")
    s.add_argument("--by", default="agent")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_convert)

    p = sub.add_parser("close-solved", parents=[common],
                       help="close Solved tickets older than lifecycle.close_after_days, now")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_close_solved)


def _iso(value: datetime | None) -> str | None:
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
            "direction": msg.direction,
            "internal": msg.internal,
            "from": msg.from_addr,
            "to": [a for a in msg.to_addrs.split(",") if a],
            "subject": msg.subject,
            "body_text": msg.body_text,
            "message_id": msg.message_id,
            "created_at": _iso(msg.created_at),
            "attachments": [{"filename": a.filename, "content_type": a.content_type, "size": a.size,
                             "sha256": a.sha256, "inline": a.inline} for a in atts],
        })
    history = [{"at": _iso(h.at), "from_status": h.from_status, "to_status": h.to_status, "by": h.by, "note": h.note}
               for h in session.exec(select(StatusChange).where(StatusChange.ticket_id == ticket.id)
                                     .order_by(col(StatusChange.at), col(StatusChange.id)))]
    linked = session.get(Ticket, ticket.linked_ticket_id) if ticket.linked_ticket_id else None
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
        "appointment_at": _iso(ticket.appointment_at),
        "appointment_place": ticket.appointment_place,
        "solution": ticket.solution,
        "approval_text": ticket.approval_text,
        "linked_ticket": linked.number if linked else None,
        "reporting_person": person_json(session.get(Person, ticket.reporting_person_id)),
        "affected_person": person_json(session.get(Person, ticket.affected_person_id)),
        "created_at": _iso(ticket.created_at),
        "updated_at": _iso(ticket.updated_at),
        "messages": messages,
        "history": history,
    }


def cmd_show(config, args) -> int:
    app = App(config)
    with session_for(app.engine) as session:
        try:
            ticket = get_ticket(session, args.number)
        except NotFound as exc:
            raise CommandError(str(exc)) from None
        data = ticket_json(session, ticket)
    if args.json:
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return 0
    rp, ap = data["reporting_person"], data["affected_person"]
    print(f"{data['number']}  {data['process']}  {data['status']}"
          + (f" ({data['waiting_reason']})" if data["waiting_reason"] else ""))
    print(f"Title:      {data['title']}")
    if data["personal_reference"]:
        print(f"Reference:  {data['personal_reference']} (from {data['reference_source']})")
    print(f"Reporting:  {rp['name']} <{rp['email']}> [{rp['language']}]")
    if ap != rp:
        print(f"Affected:   {ap['name']} <{ap['email']}> [{ap['language']}]")
    print(f"Created:    {data['created_at']}   Updated: {data['updated_at']}")
    if data["linked_ticket"]:
        print(f"Linked:     {data['linked_ticket']}")
    print()
    print(data["description"])
    print()
    for m in data["messages"]:
        label = {"in": "mail in", "out": "mail out", "note": "internal note" if m["internal"] else "comment"}
        print(f"--- {label.get(m['direction'], m['direction'])} {m['created_at']} {m['from']} -> "
              f"{', '.join(m['to'])}  {m['subject']}")
        for a in m["attachments"]:
            print(f"    [attachment] {a['filename']} {a['content_type']} {a['size']} bytes sha256={a['sha256']}")
    print()
    print("History:")
    for h in data["history"]:
        note = f" - {h['note']}" if h["note"] else ""
        print(f"  {h['at']}  {h['from_status'] or '-'} -> {h['to_status']}  by {h['by'] or '-'}{note}")
    return 0


def cmd_list(config, args) -> int:
    app = App(config)
    with session_for(app.engine) as session:
        try:
            tickets = search_tickets(session, status=args.status, text=args.search, include_closed=args.all)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        rows = []
        for t in tickets:
            person = session.get(Person, t.affected_person_id)
            rows.append({"number": t.number, "process": t.process, "status": t.status, "title": t.title,
                         "personal_reference": t.personal_reference, "affected_person": person.email if person else None,
                         "updated_at": _iso(t.updated_at)})
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    if not rows:
        print("no tickets")
    for r in rows:
        ref = f" ##{r['personal_reference']}##" if r["personal_reference"] else ""
        print(f"{r['number']:<11} {r['status']:<14} {r['affected_person'] or '':<30} {r['title']}{ref}")
    return 0


def _print_done(done, as_json: bool, text: str) -> None:
    if as_json:
        print(json.dumps(done.as_dict(), ensure_ascii=False, indent=2))
        return
    mailed = f"; mailed {', '.join(done.mails)} to {', '.join(done.recipients)}" if done.mails else ""
    print(text + mailed)


def _run(action, *args, **kwargs):
    """Run an agent operation, turning a refusal into a message without a traceback."""
    try:
        return action(*args, **kwargs)
    except (LifecycleError, NotFound) as exc:
        raise CommandError(str(exc)) from None


def _parse_at(value: str | None, zone: str | None) -> datetime | None:
    if not value:
        return None
    try:
        at = datetime.fromisoformat(value.strip().replace(" ", "T", 1))
    except ValueError:
        raise CommandError(f"--at: {value!r} is not an ISO date and time (e.g. 2026-12-01T14:00+01:00)") from None
    if at.tzinfo is None and zone:
        try:
            at = at.replace(tzinfo=ZoneInfo(zone))
        except Exception:
            raise CommandError(f"--tz: unknown time zone {zone!r}") from None
    return at


def cmd_create(config, args) -> int:
    from gateway import actions

    done = _run(actions.create_ticket, App(config), process=args.process, reporter=args.reporter,
                affected=args.affected, title=args.title, description=args.description,
                reference=args.reference, by=args.by)
    _print_done(done, args.json, f"{done.number} created ({done.status})")
    return 0


def cmd_set_status(config, args) -> int:
    from gateway import actions

    data = StatusData(reason=args.reason, waiting_reason=args.waiting_reason, at=_parse_at(args.at, args.tz),
                      place=args.place, solution=args.solution, approval_text=args.approval_text, note=args.note)
    done = _run(actions.set_status, App(config), args.number, args.status, data, by=args.by)
    _print_done(done, args.json, f"{done.number} is now {done.status}")
    return 0


def cmd_comment(config, args) -> int:
    from gateway import actions

    done = _run(actions.comment, App(config), args.number, args.text, internal=args.internal, by=args.by)
    _print_done(done, args.json, f"{done.number}: {'internal note' if args.internal else 'comment'} added")
    return 0


def cmd_convert(config, args) -> int:
    from gateway import actions

    done = _run(actions.convert_to_change, App(config), args.number, note=args.note, by=args.by)
    _print_done(done, args.json, f"{done.number} is now {done.status} (rfc); change {done.linked} created")
    return 0


def cmd_close_solved(config, args) -> int:
    from gateway import actions

    closed = actions.close_solved(App(config))
    if args.json:
        print(json.dumps({"closed": closed}))
    else:
        print(f"{len(closed)} closed" + (f": {', '.join(closed)}" if closed else ""))
    return 0
