"""tokens create|list|revoke: the HTTP API's tokens (gateway.actions.api_tokens)."""

from __future__ import annotations

import json

from gateway.app import App
from gateway.actions import api_tokens
from store import audit
from store.db import session_for


def register(sub, common) -> None:
    p = sub.add_parser("tokens", parents=[common], help="tokens of the HTTP API (/api/v1)")
    tsub = p.add_subparsers(dest="tokens_command", metavar="ACTION")
    tsub.required = True
    s = tsub.add_parser("create", parents=[common], help="make a token and print it, once (only its hash is kept)")
    s.add_argument("name", help="who or what uses it, e.g. chatbot (written in the audit log)")
    s.add_argument("--role", required=True, choices=api_tokens.ROLES,
                   help="read: look only; agent: work on tickets and people; admin: everything")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_create)
    s = tsub.add_parser("list", parents=[common], help="every token: name, role, made, last used, revoked")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_list)
    s = tsub.add_parser("revoke", parents=[common], help="refuse a token from its next request on")
    s.add_argument("name")
    s.set_defaults(func=cmd_revoke)


def _iso(value) -> str | None:
    return value.isoformat() if value else None


def cmd_create(config, args) -> int:
    app = App(config)
    with session_for(app.engine) as session:
        row, token = api_tokens.create(session, args.name, args.role)
        audit.record(session, "cli", "token.create", f"token:{row.name}", after={"role": row.role})
        session.commit()
    if args.json:
        print(json.dumps({"name": args.name, "role": args.role, "token": token}))
    else:
        print(token)
        print(f"(token {args.name!r}, role {args.role}: keep it now, it is not shown again)")
    return 0


def cmd_list(config, args) -> int:
    app = App(config)
    with session_for(app.engine) as session:
        rows = [{"name": r.name, "role": r.role, "prefix": r.prefix, "created_at": _iso(r.created_at),
                 "revoked_at": _iso(r.revoked_at)} for r in api_tokens.listing(session)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no tokens")
    for r in rows:
        state = f"revoked {r['revoked_at']}" if r["revoked_at"] else "active"
        print(f"{r['name']:<24} {r['role']:<6} {r['prefix']}…  made {r['created_at']}  {state}")
    return 0


def cmd_revoke(config, args) -> int:
    app = App(config)
    with session_for(app.engine) as session:
        row = api_tokens.revoke(session, args.name)
        audit.record(session, "cli", "token.revoke", f"token:{row.name}")
        session.commit()
    print(f"token {args.name!r} revoked")
    return 0
