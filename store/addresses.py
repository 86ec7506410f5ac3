"""Addresses compared as mail compares them."""

from __future__ import annotations

from email.utils import getaddresses, parseaddr
from functools import lru_cache

import idna


# Pure, and called several times a mail with the same few addresses (the sender's is
# compared in the duplicate check, the rate limit and the permission check); parseaddr
# costs ~50 µs each.
@lru_cache(maxsize=4096)
def normalize(address: str) -> str:
    """``Jane <Jane.Doe@Example.COM>`` -> ``Jane.Doe@example.com``.

    The local part keeps its case (RFC 5321 says it may matter) but the comparison
    key below folds it, as every real mail system does.  An internationalised domain
    takes one form, its Unicode one, however it was written (``domain``).
    """
    _name, addr = parseaddr(address or "")
    addr = addr.strip().strip("<>")
    if "@" not in addr:
        return addr.lower()
    local, _, dom = addr.rpartition("@")
    return f"{local}@{domain(dom)}"


@lru_cache(maxsize=1024)
def domain(name: str) -> str:
    """A domain in the one form addresses are compared and stored in: lower case and, when
    internationalised, its Unicode form (IDNA 2008 with UTS 46 mapping), whether it came as
    ``Müller.DE`` or as ``xn--mller-kva.de``.  A name IDNA refuses stays as written, lowered."""
    name = name.lower()
    if name.isascii() and "xn--" not in name:
        return name
    try:
        return idna.decode(idna.encode(name, uts46=True))
    except (idna.IDNAError, UnicodeError):
        return name


def key(address: str) -> str:
    """Comparison key: case-folded address."""
    return normalize(address).lower()


def strip_tag(address: str) -> str:
    """``helpdesk+INC-000001.xyz@example.com`` -> ``helpdesk@example.com``."""
    addr = key(address)
    local, _, domain = addr.rpartition("@")
    return f"{local.split('+', 1)[0]}@{domain}"


def all_addresses(*header_values: str | None) -> list[str]:
    """Every address in the given header values, as comparison keys, in order, once."""
    seen: list[str] = []
    for _name, addr in getaddresses([v for v in header_values if v]):
        k = key(addr)
        if "@" in k and k not in seen:
            seen.append(k)
    return seen


def normalize_message_id(value: str | None) -> str:
    """``<abc@host>`` -> ``abc@host``; empty for none."""
    if not value:
        return ""
    value = value.strip()
    if value.startswith("<") and ">" in value:
        value = value[1 : value.index(">")]
    return value.strip()
