"""persons add|import|list|company|grant|revoke: the people tickets are about, their companies, and
who may see a whole company's tickets on the customers' pages."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlmodel import col, select

from gateway.app import App
from gateway.errors import CommandError
from gateway.outbound.render import LANGUAGES
from store.addresses import key as address_key
from store.db import session_for
from store.models import Company, Person

CSV_COLUMNS = ("email", "name", "language", "company", "timezone")


def register(sub, common) -> None:
    p = sub.add_parser("persons", parents=[common], help="people and companies (language, time zone)")
    psub = p.add_subparsers(dest="persons_command", metavar="ACTION")
    psub.required = True

    s = psub.add_parser("add", parents=[common], help="add a person, or update one")
    s.add_argument("email")
    s.add_argument("--name", default=None)
    s.add_argument("--language", default=None, help=f"one of {', '.join(LANGUAGES)}; empty: the company's")
    s.add_argument("--company", default=None)
    s.add_argument("--timezone", default=None, help="e.g. Europe/Brussels")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_add)

    s = psub.add_parser("import", parents=[common],
                        help="add or update people from a CSV file with columns " + ",".join(CSV_COLUMNS))
    s.add_argument("path", metavar="CSV")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_import)

    s = psub.add_parser("list", parents=[common], help="every person, with the bounce state of their address")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_list)

    s = psub.add_parser("company", parents=[common], help="set a company's language (the fallback of its people)")
    s.add_argument("name")
    s.add_argument("--language", required=True, choices=LANGUAGES)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_company)

    for name, text in (("grant", "let a person see every ticket of a company or division on the customers' pages"),
                       ("revoke", "take back what grant gave")):
        s = psub.add_parser(name, parents=[common], help=text)
        s.add_argument("email")
        s.add_argument("--company", required=True, help="the company or division (its name)")
        s.add_argument("--json", action="store_true")
        s.set_defaults(func=cmd_grant, revoke=name == "revoke")


class BadRow(ValueError):
    pass


def _checked(email: str, name, language, company, timezone) -> dict:
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


def _upsert(session, row: dict) -> tuple[Person, bool]:
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


def cmd_add(config, args) -> int:
    try:
        row = _checked(args.email, args.name, args.language, args.company, args.timezone)
    except BadRow as exc:
        raise CommandError(str(exc)) from None
    app = App(config)
    with session_for(app.engine) as session:
        person, created = _upsert(session, row)
        session.commit()
        data = person_json(person)
    if args.json:
        print(json.dumps({**data, "created": created}, ensure_ascii=False, indent=2))
    else:
        print(f"{'added' if created else 'updated'} {data['email']}")
    return 0


def cmd_import(config, args) -> int:
    """Every good row is imported in one transaction; bad rows are listed with their line
    number and nothing of them is kept, so the file can be fixed and imported again."""
    path = Path(args.path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read {path}: {exc}") from None
    reader = csv.DictReader(text.splitlines())
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    if "email" not in header:
        raise CommandError(f"{path}: the first line must name the columns ({','.join(CSV_COLUMNS)}); no 'email'")
    unknown = [h for h in header if h not in CSV_COLUMNS]
    if unknown:
        raise CommandError(f"{path}: unknown column {unknown[0]!r}; columns are {','.join(CSV_COLUMNS)}")
    reader.fieldnames = header
    app = App(config)
    added, updated, errors = 0, 0, []
    with session_for(app.engine) as session:
        for line, raw in enumerate(reader, start=2):
            try:
                # An empty cell leaves the stored value as it is.
                cell = {k: (v if isinstance(v, str) and v.strip() else None) for k, v in raw.items()}
                row = _checked(cell.get("email") or "", cell.get("name"), cell.get("language"),
                               cell.get("company"), cell.get("timezone"))
            except BadRow as exc:
                errors.append({"line": line, "error": str(exc)})
                continue
            _person, created = _upsert(session, row)
            added += created
            updated += not created
        session.commit()
    result = {"added": added, "updated": updated, "errors": errors}
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
    else:
        print(f"{added} added, {updated} updated, {len(errors)} refused")
        for e in errors:
            print(f"  {path}:{e['line']}: {e['error']}")
    return 1 if errors else 0


def cmd_list(config, args) -> int:
    app = App(config)
    with session_for(app.engine) as session:
        rows = [person_json(p) for p in session.exec(select(Person).order_by(col(Person.email)))]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    if not rows:
        print("no persons")
    for r in rows:
        state = f"UNDELIVERABLE ({r['hard_bounces']} hard bounces)" if r["undeliverable"] else (
            f"{r['hard_bounces']} hard bounces" if r["hard_bounces"] else "")
        print(f"{r['email']:<32} {r['name']:<24} {r['language'] or '-':<3} {r['company'] or '-':<20} "
              f"{r['timezone']:<18} {state}".rstrip())
    return 0


def cmd_company(config, args) -> int:
    app = App(config)
    with session_for(app.engine) as session:
        company = session.get(Company, args.name) or Company(name=args.name)
        company.language = args.language
        session.add(company)
        session.commit()
    if args.json:
        print(json.dumps({"company": args.name, "language": args.language}))
    else:
        print(f"{args.name}: {args.language}")
    return 0


def cmd_grant(config, args) -> int:
    import getpass

    from gateway.actions import portal
    from gateway.errors import Refused

    app = App(config)
    try:
        action = portal.revoke if args.revoke else portal.grant
        changed = action(app, args.email, args.company, by=f"cli:{getpass.getuser()}")
    except Refused as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        print(json.dumps({"email": args.email, "company": args.company, "granted": not args.revoke,
                          "changed": changed}))
    elif args.revoke:
        print(f"{args.email} no longer sees the tickets of {args.company}" if changed
              else f"{args.email} had no grant for {args.company}")
    else:
        print(f"{args.email} now sees the tickets of {args.company}" if changed
              else f"{args.email} already saw the tickets of {args.company}")
    return 0
