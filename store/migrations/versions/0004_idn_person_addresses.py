"""one form for internationalised domains in persons' addresses

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28

A person is found by their address (store.addresses.key).  Until now the key only
lowered it, so ``jan@müller.de`` (imported from the customer list) and
``jan@xn--mller-kva.de`` (the same address as a mail program sends it) were two people:
the mail's sender was unknown, got the default language and was refused on the ticket.
The key now gives a domain its one Unicode form (IDNA 2008, UTS 46).  This revision
rewrites the stored addresses to that form; where both forms were stored, the two persons
become one (the one in the Unicode form stays, the other's tickets move to it, its name
and language fill what it lacks, its bounces count).  Data only, no table changes; the
downgrade leaves the addresses in their one form, which older versions read as before.
"""
from alembic import op
import idna
import sqlalchemy as sa

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _canonical(address: str) -> str:
    """store.addresses.key as this revision knows it (frozen here on purpose)."""
    local, at, domain = address.rpartition("@")
    if not at:
        return address
    domain = domain.lower()
    if not (domain.isascii() and "xn--" not in domain):
        try:
            domain = idna.decode(idna.encode(domain, uts46=True))
        except (idna.IDNAError, UnicodeError):
            pass
    return f"{local.lower()}@{domain}"


def upgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT id, email FROM person ORDER BY id")).all()
    by_email = {email: pid for pid, email in rows}
    for pid, email in rows:
        if email.isascii() and "xn--" not in email:
            continue
        canonical = _canonical(email)
        if canonical == email:
            continue
        keep = by_email.get(canonical)
        if keep is None:
            bind.execute(sa.text("UPDATE person SET email = :e WHERE id = :id"), {"e": canonical, "id": pid})
            by_email[canonical] = pid
            continue
        # Both forms were stored: one person.
        for column in ("reporting_person_id", "affected_person_id"):
            bind.execute(sa.text(f"UPDATE ticket SET {column} = :keep WHERE {column} = :gone"),
                         {"keep": keep, "gone": pid})
        gone = bind.execute(sa.text("SELECT name, language, company, timezone, hard_bounces, undeliverable "
                                    "FROM person WHERE id = :id"), {"id": pid}).one()
        kept = bind.execute(sa.text("SELECT name, language, company, timezone, hard_bounces, undeliverable "
                                    "FROM person WHERE id = :id"), {"id": keep}).one()
        bind.execute(sa.text("UPDATE person SET name = :name, language = :language, company = :company, "
                             "timezone = :timezone, hard_bounces = :hard, undeliverable = :und WHERE id = :id"),
                     {"name": kept.name or gone.name, "language": kept.language or gone.language,
                      "company": kept.company or gone.company, "timezone": kept.timezone or gone.timezone,
                      "hard": kept.hard_bounces + gone.hard_bounces,
                      "und": bool(kept.undeliverable or gone.undeliverable), "id": keep})
        bind.execute(sa.text("DELETE FROM person WHERE id = :id"), {"id": pid})


def downgrade() -> None:
    pass  # the addresses keep their one form: older versions compare them as before
