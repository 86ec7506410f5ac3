"""persons add|import|list|company|grant|revoke: the people tickets are about, their companies, and
who may see a whole company's tickets on the customers' pages."""

from __future__ import annotations

import json
from pathlib import Path

from sqlmodel import col, select

from gateway.app import App
from gateway.errors import CommandError
from gateway.outbound.render import LANGUAGES
from store.db import session_for
from store.models import Person

from gateway.actions.people import CSV_COLUMNS, BadRow, person_json  # noqa: F401 - the rules live there


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


def cmd_add(config, args) -> int:
    from gateway.actions import people

    data, created = people.save(App(config), args.email, name=args.name, language=args.language,
                                company=args.company, timezone=args.timezone)
    if args.json:
        print(json.dumps({**data, "created": created}, ensure_ascii=False, indent=2))
    else:
        print(f"{'added' if created else 'updated'} {data['email']}")
    return 0


def cmd_import(config, args) -> int:
    """Every good row is imported, bad ones listed (gateway.actions.people.import_csv)."""
    from gateway.actions import people

    path = Path(args.path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read {path}: {exc}") from None
    result = people.import_csv(App(config), text, source=str(path))
    if args.json:
        print(json.dumps(result.as_dict(), ensure_ascii=False, indent=2))
    else:
        print(f"{result.added} added, {result.updated} updated, {len(result.errors)} refused")
        for e in result.errors:
            print(f"  {path}:{e['line']}: {e['error']}")
    return 1 if result.errors else 0


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
    from gateway.actions import people

    people.set_company_language(App(config), args.name, args.language)
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
