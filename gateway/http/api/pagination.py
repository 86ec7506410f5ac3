"""Cursor pagination: a page ends with ``next_cursor``, opaque to the caller (the id of
its last row), given back as ``cursor`` for the next page; null on the last page.
Rows added meanwhile never shift a page, as offsets would."""

from __future__ import annotations

import base64

from gateway.http.api.problems import Problem

MAX_LIMIT = 500


def encode(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"after:{last_id}".encode()).decode().rstrip("=")


def decode(cursor: str | None) -> int | None:
    if not cursor:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, value = text.partition(":")
        if kind == "after" and value.isdigit():
            return int(value)
    except (ValueError, UnicodeDecodeError):
        pass
    raise Problem(422, "cursor: not a cursor this API gave (use next_cursor of the previous page)", field="cursor")


def page(items: list, ids: list[int], limit: int) -> dict:
    """The answer for a page fetched with ``limit + 1`` rows (one more tells that another
    page follows)."""
    more = len(items) > limit
    items, ids = items[:limit], ids[:limit]
    return {"items": items, "next_cursor": encode(ids[-1]) if more and ids else None}
