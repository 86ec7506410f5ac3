"""admins add|list: the accounts of the admin console (/admin)."""

from __future__ import annotations

import getpass
import json
import sys

from gateway.app import App
from gateway.errors import CommandError, Refused


def register(sub, common) -> None:
    p = sub.add_parser("admins", parents=[common], help="accounts of the admin console (/admin)")
    asub = p.add_subparsers(dest="admins_command", metavar="ACTION")
    asub.required = True

    s = asub.add_parser("add", parents=[common],
                        help="add an admin, or set a new password (asked twice; read from standard input when it "
                             "is not a terminal); a new password ends the admin's sessions")
    s.add_argument("email")
    s.add_argument("--language", default="en", choices=("fr", "nl", "en", "de"), help="the console's language")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_add)

    s = asub.add_parser("list", parents=[common], help="every admin, locked or not")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_list)


def _password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise CommandError("the two passwords differ")
    return first


def cmd_add(config, args) -> int:
    from gateway.actions.admins import add_admin

    password = _password()
    try:
        admin = add_admin(App(config), args.email, password, language=args.language,
                          actor=f"cli:{getpass.getuser()}")
    except Refused as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        print(json.dumps({"email": admin.email, "language": admin.language}))
    else:
        print(f"admin {admin.email} can sign in at /admin")
    return 0


def cmd_list(config, args) -> int:
    from gateway.actions.admins import list_admins

    rows = [{"email": a.email, "language": a.language, "disabled": a.disabled,
             "locked_until": a.locked_until.isoformat() if a.locked_until else None}
            for a in list_admins(App(config))]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['email']:<40} {r['language']}  {'locked until ' + r['locked_until'] if r['locked_until'] else ''}")
    return 0
