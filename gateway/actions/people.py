"""People and companies: add or update a person (language, time zone, company), import
many from CSV, set a company's language.  The checks live here, once, for the command
line (gateway persons) and the API (/api/v1/people)."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from sqlmodel import Session, col, select

from gateway.errors import NotFound, Refused
from gateway.outbound.render import LANGUAGES
from store import audit
from store.addresses import key as address_key
from store.db import session_for
from store.models import Company, Person

CSV_COLUMNS = ("email", "name", "language", "company", "timezone")


class BadRow(Refused):
    """A person's fields that cannot be kept, saying what is wrong."""


def checked(email: str, name=None, language=None, company=None, timezone=None) -> dict:
    """The fields given (None: leave as is), checked; raises BadRow saying what is wrong."""
    email = (email or "").strip()
    local, _, domain = email.rpartition("@")
    if not local or not domain:
        raise BadRow(f"{email!r} is not an e-mail address")
    if language is not None:
        language = language.strip().lower()
        if language and language not in LANGUAGES:
            raise BadRow(f"language {language!r} is not one of {', '.join(LANGUAGES)} (or empty)")
    if timezone is not None:
        timezone = timezone.strip()
        if timezone:
            try:
                ZoneInfo(timezone)
            except Exception:
                raise BadRow(f"unknown time zone {timezone!r}") from None
    fields = {"name": name, "language": language, "company": company, "timezone": timezone}
    return {"email": email, **{k: v.strip() if isinstance(v, str) else v for k, v in fields.items()}}


def upsert(session: Session, row: dict) -> tuple[Person, bool]:
    person = session.exec(select(Person).where(Person.email == address_key(row["email"]))).first()
    created = person is None
    if created:
        # A person entered without a language takes their company's (then the default).
        person = Person(email=address_key(row["email"]), language="")
    for key in ("name", "language", "company", "timezone"):
        if row[key] is not None and (row[key] or key != "timezone"):  # an empty zone keeps the default
            setattr(person, key, row[key])
    session.add(person)
    if person.company and session.get(Company, person.company) is None:
        session.add(Company(name=person.company))
    session.flush()
    return person, created


def person_json(p: Person) -> dict:
    return {"email": p.email, "name": p.name, "language": p.language, "company": p.company,
            "timezone": p.timezone, "undeliverable": p.undeliverable, "hard_bounces": p.hard_bounces}


def _audit(session, actor, action: str, target: str, after=None) -> None:
    if actor is not None:
        audit.record(session, actor.name, action, target, after=after, client=actor.client)


def save(app, email: str, *, name=None, language=None, company=None, timezone=None,
         actor=None) -> tuple[dict, bool]:
    """Add a person, or update the fields given; (the person, created)."""
    row = checked(email, name, language, company, timezone)
    with session_for(app.engine) as session:
        person, created = upsert(session, row)
        _audit(session, actor, "person.add" if created else "person.update", f"person:{person.email}",
               after={k: v for k, v in row.items() if v is not None})
        session.commit()
        return person_json(person), created


def get(app, email: str) -> dict:
    with session_for(app.engine) as session:
        person = session.exec(select(Person).where(Person.email == address_key(email))).first()
        if person is None:
            raise NotFound(f"no person {email!r}")
        return person_json(person)


def listing(app, *, text: str | None = None, company: str | None = None, after: str | None = None,
            limit: int | None = None) -> list[dict]:
    """People by e-mail address; ``text`` part of the address or name."""
    with session_for(app.engine) as session:
        query = select(Person)
        if text:
            like = f"%{text.strip().lower()}%"
            query = query.where(col(Person.email).ilike(like) | col(Person.name).ilike(like))
        if company:
            query = query.where(Person.company == company)
        if after:
            query = query.where(col(Person.email) > after)
        query = query.order_by(col(Person.email))
        if limit:
            query = query.limit(limit)
        return [person_json(p) for p in session.exec(query)]


@dataclass(frozen=True)
class Imported:
    added: int
    updated: int
    errors: list[dict] = field(default_factory=list)  # {"line": n, "error": "..."}

    def as_dict(self) -> dict:
        return {"added": self.added, "updated": self.updated, "errors": self.errors}


def import_csv(app, text: str, *, source: str = "CSV", actor=None) -> Imported:
    """Every good row is imported in one transaction; bad rows are listed with their line
    number and nothing of them is kept, so the file can be fixed and imported again.
    Refused (nothing imported) when the header is not one this takes."""
    reader = csv.DictReader(text.splitlines())
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    if "email" not in header:
        raise Refused(f"{source}: the first line must name the columns ({','.join(CSV_COLUMNS)}); no 'email'")
    unknown = [h for h in header if h not in CSV_COLUMNS]
    if unknown:
        raise Refused(f"{source}: unknown column {unknown[0]!r}; columns are {','.join(CSV_COLUMNS)}")
    reader.fieldnames = header
    added, updated, errors = 0, 0, []
    with session_for(app.engine) as session:
        for line, raw in enumerate(reader, start=2):
            try:
                # An empty cell leaves the stored value as it is.
                cell = {k: (v if isinstance(v, str) and v.strip() else None) for k, v in raw.items()}
                row = checked(cell.get("email") or "", cell.get("name"), cell.get("language"),
                              cell.get("company"), cell.get("timezone"))
            except BadRow as exc:
                errors.append({"line": line, "error": str(exc)})
                continue
            _person, created = upsert(session, row)
            added += created
            updated += not created
        _audit(session, actor, "person.import", source, after={"added": added, "updated": updated})
        session.commit()
    return Imported(added, updated, errors)


def set_company_language(app, name: str, language: str, actor=None) -> dict:
    if language not in LANGUAGES:
        raise BadRow(f"language {language!r} is not one of {', '.join(LANGUAGES)}")
    with session_for(app.engine) as session:
        company = session.get(Company, name) or Company(name=name)
        company.language = language
        session.add(company)
        _audit(session, actor, "company.language", f"company:{name}", after={"language": language})
        session.commit()
    return {"company": name, "language": language}


def companies(app) -> list[dict]:
    with session_for(app.engine) as session:
        return [{"name": c.name, "language": c.language}
                for c in session.exec(select(Company).order_by(col(Company.name)))]
