"""The ticket lifecycle in the store: every status with its data, refused moves, the
history, conversion to a Change, automatic closing, and the status change and its mail
committed or rolled back together.  On SQLite and on PostgreSQL (the ``gw`` fixture)."""

from __future__ import annotations

import re
import shutil
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text
from sqlmodel import col, select

from gateway import actions
from gateway.outbound.outbox import deliver_pending, render_pending
from gateway.outbound.notify import Notifier
from gateway.outbound.render import SHIPPED_DIR, Renderer, RenderError
from store.db import session_for
from store.lifecycle import LifecycleError, StatusData
from store.models import Outbox, StatusChange, Ticket, TicketMessage
from store.tickets import get_ticket

T0 = datetime(2026, 11, 2, 8, 0, tzinfo=timezone.utc)


def new_ticket(app, process="incident", **kw) -> str:
    args = dict(process=process, reporter="anna.reporter@example.com", affected="bob.affected@example.com",
                title="Cannot print", description="The printer on floor 3 shows E52.", now=T0)
    args.update(kw)
    return actions.create_ticket(app, **args).number


def move(app, number, status, minutes, **data):
    return actions.set_status(app, number, status, StatusData(**data), by="agent.smith",
                              now=T0 + timedelta(minutes=minutes))


def ticket(app, number) -> Ticket:
    with session_for(app.engine) as session:
        return get_ticket(session, number)


def history(app, number) -> list[StatusChange]:
    with session_for(app.engine) as session:
        t = get_ticket(session, number)
        return list(session.exec(select(StatusChange).where(StatusChange.ticket_id == t.id)
                                 .order_by(col(StatusChange.id))))


def outbox_events(app, number) -> list[str]:
    """The notifications of the ticket, in order, once each (a copy a recipient)."""
    with session_for(app.engine) as session:
        t = get_ticket(session, number)
        copies = session.exec(select(Outbox).where(Outbox.ticket_id == t.id).order_by(col(Outbox.id)))
        return [event for event, _at in dict.fromkeys((o.event, o.created_at) for o in copies)]


def test_an_incident_walks_through_every_status_with_its_data(gw):
    number = new_ticket(gw)
    assert number == "INC-000001"
    move(gw, number, "Postponed", 1, reason="The serial number of the printer is missing.")
    move(gw, number, "Classification", 2)
    move(gw, number, "in-progress", 3)
    at = datetime(2026, 11, 4, 14, 30, tzinfo=ZoneInfo("Europe/Brussels"))
    move(gw, number, "Planned", 4, at=at, place="Floor 3")
    t = ticket(gw, number)
    assert t.status == "Planned" and t.appointment_place == "Floor 3"
    # Kept in UTC whatever the database: 14:30 in Brussels is 13:30 UTC.
    assert t.appointment_at.replace(tzinfo=timezone.utc) == at.astimezone(timezone.utc)
    move(gw, number, "Waiting", 5, waiting_reason="third-party", note="Spare part ordered from the vendor.")
    t = ticket(gw, number)
    assert (t.waiting_reason, t.status_reason) == ("third-party", "Spare part ordered from the vendor.")
    move(gw, number, "In progress", 6)
    assert ticket(gw, number).waiting_reason is None
    move(gw, number, "Solved", 7, solution="Fuser unit replaced.")
    move(gw, number, "In progress", 8, note="It prints again but every page is blank.")
    assert ticket(gw, number).solved_at is None
    move(gw, number, "Solved", 9, solution="Toner cartridge replaced too.")
    closed = actions.close_solved(gw, now=T0 + timedelta(days=14, minutes=9))
    assert closed == [number]

    steps = [(h.from_status, h.to_status) for h in history(gw, number)]
    assert steps == [(None, "New"), ("New", "Postponed"), ("Postponed", "Classification"),
                     ("Classification", "In progress"), ("In progress", "Planned"), ("Planned", "Waiting"),
                     ("Waiting", "In progress"), ("In progress", "Solved"), ("Solved", "In progress"),
                     ("In progress", "Solved"), ("Solved", "Closed")]
    h = history(gw, number)
    assert h[1].note == "The serial number of the printer is missing." and h[1].by == "agent.smith"
    assert h[1].at.replace(tzinfo=timezone.utc) == T0 + timedelta(minutes=1)
    assert h[8].note == "It prints again but every page is blank."
    assert h[-1].by == "system" and "14 days" in h[-1].note
    # Mails: only the statuses the manual names, each in the transaction of its change.
    assert outbox_events(gw, number) == ["new", "postponed", "planned", "waiting", "solved", "solved"]
    # The reopening comment is on the ticket, public: the customer sees why.
    with session_for(gw.engine) as session:
        notes = session.exec(select(TicketMessage).where(TicketMessage.direction == "note")).all()
        assert [(n.body_text, n.internal) for n in notes] == [("It prints again but every page is blank.", False)]


def test_a_service_request_goes_through_approval_and_a_rejected_ticket_closes(gw):
    number = new_ticket(gw, process="service-request", title="New colour printer")
    assert number == "SR-000001"
    move(gw, number, "Classification", 1)
    move(gw, number, "Approval", 2, approval_text="Buy a colour printer for EUR 450.")
    assert ticket(gw, number).approval_text == "Buy a colour printer for EUR 450."
    move(gw, number, "In progress", 3)
    move(gw, number, "Rejected", 4, reason="The budget was not granted.")
    assert ticket(gw, number).status_reason == "The budget was not granted."
    move(gw, number, "Closed", 5)
    assert outbox_events(gw, number) == ["new", "approval", "rejected"]


@pytest.mark.parametrize("current_path, target, data, words", [
    ((), "Rejected", {}, "needs a reason"),
    ((), "Rejected", {"reason": "   "}, "needs a reason"),
    ((), "Waiting", {}, "waiting reason is needed"),
    ((), "Waiting", {"waiting_reason": "holiday"}, "unknown waiting reason 'holiday'"),
    ((), "Postponed", {}, "postponing needs a reason"),
    ((), "Planned", {}, "appointment date and time is needed"),
    ((), "Planned", {"at": datetime(2026, 12, 1, 14, 0)}, "needs a time zone"),
    ((), "Solved", {}, "solution description is needed"),
    ((), "Approval", {"approval_text": "x"}, "only Service Requests and Changes"),
    (("In progress",), "New", {}, "not an allowed transition"),
    (("Solved",), "Waiting", {"waiting_reason": "rfc"}, "not an allowed transition"),
    (("Solved",), "In progress", {}, "needs a comment"),
    (("Solved", "Closed"), "In progress", {"note": "still broken"}, "Closed ticket is final"),
])
def test_refused_moves_name_both_statuses_and_change_nothing(gw, current_path, target, data, words):
    number = new_ticket(gw)
    for i, status in enumerate(current_path):
        move(gw, number, status, i + 1, solution="Fixed." if status == "Solved" else None)
    before = ticket(gw, number)
    mails = outbox_events(gw, number)
    with pytest.raises(LifecycleError) as err:
        move(gw, number, target, 50, **data)
    message = str(err.value)
    assert f"from {before.status} to {target}" in message and words in message
    after = ticket(gw, number)
    assert (after.status, after.updated_at) == (before.status, before.updated_at)
    assert outbox_events(gw, number) == mails
    assert len(history(gw, number)) == len(current_path) + 1


def test_approval_needs_the_text_of_what_is_to_be_approved(gw):
    number = new_ticket(gw, process="change", title="Move the branch office")
    with pytest.raises(LifecycleError, match="from New to Approval: say what is to be approved"):
        move(gw, number, "Approval", 1)


def test_convert_to_change_links_a_chg_ticket_and_waits_for_the_rfc(gw):
    number = new_ticket(gw, reference="PO1234")
    move(gw, number, "In progress", 1)
    done = actions.convert_to_change(gw, number, by="agent.smith", now=T0 + timedelta(minutes=2))
    assert done.linked == "CHG-000001" and done.status == "Waiting"
    assert set(done.mails) == {"waiting", "new"}
    original, change = ticket(gw, number), ticket(gw, "CHG-000001")
    assert (original.status, original.waiting_reason) == ("Waiting", "rfc")
    assert change.process == "change" and change.linked_ticket_id == original.id
    assert change.personal_reference == "PO1234" and change.title == original.title
    assert change.reporting_person_id == original.reporting_person_id
    assert change.affected_person_id == original.affected_person_id
    assert history(gw, number)[-1].note == "converted to CHG-000001"
    render_pending(gw.engine, gw.notifier)
    with session_for(gw.engine) as session:
        waiting = session.exec(select(Outbox).where(Outbox.event == "waiting")).first()
    assert b"CHG-000001" in waiting.raw
    # A Change is not converted again, and a ticket that may not wait is not converted.
    with pytest.raises(LifecycleError, match="only an Incident or a Service Request"):
        actions.convert_to_change(gw, "CHG-000001")
    other = new_ticket(gw)
    move(gw, other, "Solved", 1, solution="Done.")
    with pytest.raises(LifecycleError, match="from Solved to Waiting"):
        actions.convert_to_change(gw, other)
    with session_for(gw.engine) as session:
        assert session.exec(select(Ticket).where(Ticket.process == "change")).all() == [change]


def test_close_solved_closes_only_what_is_due_and_closed_is_final(gw):
    old, recent, reopened = new_ticket(gw), new_ticket(gw), new_ticket(gw)
    move(gw, old, "Solved", 0, solution="Done.")
    actions.set_status(gw, recent, "Solved", StatusData(solution="Done."), now=T0 + timedelta(days=2))
    move(gw, reopened, "Solved", 0, solution="Done.")
    move(gw, reopened, "In progress", 5, note="Not solved after all.")
    now = T0 + timedelta(days=14, minutes=1)
    assert actions.close_solved(gw, now=now) == [old]
    assert actions.close_solved(gw, now=now) == []
    assert [ticket(gw, n).status for n in (old, recent, reopened)] == ["Closed", "Solved", "In progress"]
    with pytest.raises(LifecycleError, match="from Closed to In progress: a Closed ticket is final"):
        move(gw, old, "In progress", 99, note="please reopen")
    with pytest.raises(LifecycleError, match="Closed ticket is final"):
        actions.comment(gw, old, "hello?")
    # The running service's periodic hook is this same function.
    from gateway.service import close_due

    assert close_due(gw, now=T0 + timedelta(days=16, hours=1)) == [recent]


def test_comments_public_and_internal(gw):
    number = new_ticket(gw)
    actions.comment(gw, number, "Technician on site tomorrow.", by="agent.smith")
    actions.comment(gw, number, "Customer is grumpy.", internal=True, by="agent.smith")
    with pytest.raises(LifecycleError, match="needs a text"):
        actions.comment(gw, number, "  ")
    move(gw, number, "Postponed", 5, reason="Which floor?")
    render_pending(gw.engine, gw.notifier)
    with session_for(gw.engine) as session:
        mail = session.exec(select(Outbox).where(Outbox.event == "postponed")).first().raw.decode()
    assert "Technician on site tomorrow." in mail and "grumpy" not in mail


def _refuse_outbox_inserts(app) -> None:
    """A real database failure at the outbox insert: a trigger that refuses it."""
    with app.engine.begin() as conn:
        if app.engine.dialect.name == "sqlite":
            conn.execute(text("CREATE TRIGGER outbox_refused BEFORE INSERT ON outbox "
                              "BEGIN SELECT RAISE(ABORT, 'outbox refused'); END"))
        else:
            conn.execute(text("CREATE FUNCTION refuse_outbox() RETURNS trigger AS "
                              "$$ BEGIN RAISE EXCEPTION 'outbox refused'; END $$ LANGUAGE plpgsql"))
            conn.execute(text("CREATE TRIGGER outbox_refused BEFORE INSERT ON outbox "
                              "FOR EACH ROW EXECUTE FUNCTION refuse_outbox()"))


def _allow_outbox_inserts(app) -> None:
    with app.engine.begin() as conn:
        if app.engine.dialect.name == "sqlite":
            conn.execute(text("DROP TRIGGER outbox_refused"))
        else:
            conn.execute(text("DROP TRIGGER outbox_refused ON outbox"))


def test_status_change_and_outbox_row_roll_back_together_when_the_insert_fails(gw):
    number = new_ticket(gw)
    _refuse_outbox_inserts(gw)
    with pytest.raises(Exception, match="outbox refused"):
        move(gw, number, "Rejected", 1, reason="Not our printer.")
    assert ticket(gw, number).status == "New"
    assert len(history(gw, number)) == 1 and outbox_events(gw, number) == ["new"]
    # A move that mails nobody is not held back by the outbox.
    move(gw, number, "Classification", 2)
    _allow_outbox_inserts(gw)
    move(gw, number, "Rejected", 3, reason="Not our printer.")
    assert ticket(gw, number).status == "Rejected"
    assert outbox_events(gw, number) == ["new", "rejected"]
    assert [h.to_status for h in history(gw, number)] == ["New", "Classification", "Rejected"]


def test_a_mail_that_cannot_be_rendered_fails_with_its_line_and_the_change_stands(gw, tmp_path):
    """Rendering is the deliverer's: the agent's move is committed with its mail queued;
    a template that breaks on the ticket's data fails that mail for good, with the file
    and line in its answer, instead of going out half-written (``gateway outbox retry``
    sends it once the template is fixed)."""
    number = new_ticket(gw)
    broken = tmp_path / "shipped"
    shutil.copytree(SHIPPED_DIR, broken)
    (broken / "solved.txt.j2").write_text('{% extends "base.txt.j2" %}\n{% block body %}\n{{ solution.nope() }}\n'
                                          '{% endblock %}\n')
    renderer = Renderer(broken)
    gw.__dict__["renderer"] = renderer
    gw.__dict__["notifier"] = Notifier(gw.config, renderer)
    move(gw, number, "Solved", 1, solution="Fuser unit replaced.")
    assert ticket(gw, number).status == "Solved" and outbox_events(gw, number) == ["new", "solved"]
    deliver_pending(gw.engine, gw.config, gw.transport(), notifier=gw.notifier)
    with session_for(gw.engine) as session:
        solved = session.exec(select(Outbox).where(Outbox.event == "solved")).all()
    assert [row.state for row in solved] == ["failed", "failed"]
    assert all(re.search(r"solved\.txt\.j2:3", row.last_answer) and row.raw is None for row in solved)


def test_an_agent_and_the_automatic_close_take_turns_on_one_ticket(gw):
    """An agent reopens a ticket while the worker's close run is due: the close waits for
    the agent's transaction and then sees In progress, instead of overwriting it."""
    import threading
    import time

    from store.tickets import change_status

    number = new_ticket(gw)
    move(gw, number, "Solved", 1, solution="Done.")
    result: dict = {}
    with session_for(gw.engine) as session:
        agents_view = actions._locked(session, number)
        closer = threading.Thread(target=lambda: result.update(
            closed=actions.close_solved(gw, now=T0 + timedelta(days=15))))
        closer.start()
        time.sleep(0.5)
        assert closer.is_alive(), "the close run did not wait for the agent's transaction"
        change_status(session, agents_view, "In progress", StatusData(note="Still broken."), by="agent.smith")
        session.commit()
    closer.join(30)
    assert result["closed"] == []
    assert ticket(gw, number).status == "In progress"
