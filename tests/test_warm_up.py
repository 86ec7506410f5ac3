"""The worker's warm-up (``Processor.warm_up``) does the first mail's one-off work and
keeps nothing: no row, no number taken, no blob; the first real mail is INC-000001."""

from __future__ import annotations

from sqlalchemy import text

from harness.ingest import customer_mail, make_app, receive


def counts(app) -> dict:
    with app.engine.connect() as conn:
        out = {t: conn.execute(text(f"select count(*) from {t}")).scalar()
               for t in ("inboundmessage", "ticket", "person", "ticketmessage", "outbox", "statuschange")}
        out["counter"] = conn.execute(text("select sum(value) from counter")).scalar()
    return out


def test_warm_up_keeps_nothing_and_the_first_mail_is_number_one(tmp_path, database_url):
    app = make_app(tmp_path, database_url=database_url)
    before = counts(app)
    blobs_before = sorted(p for p in app.blobs.root.rglob("*") if p.is_file())
    took = app.processor.warm_up()
    assert 0 < took < 30
    assert counts(app) == before == {"inboundmessage": 0, "ticket": 0, "person": 0, "ticketmessage": 0,
                                     "outbox": 0, "statuschange": 0, "counter": 0}
    assert sorted(p for p in app.blobs.root.rglob("*") if p.is_file()) == blobs_before
    outcome = receive(app, customer_mail())
    assert (outcome.outcome, outcome.ticket) == ("created", "INC-000001")
    app.engine.dispose()
