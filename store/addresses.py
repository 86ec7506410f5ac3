"""Addresses compared as mail compares them."""

from __future__ import annotations

import re
from dataclasses import dataclass
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


# Addresses that leave ------------------------------------------------------------------
# Every address the gateway sends to is one it has checked here, and it travels as one
# structured value from the outbox row to RCPT TO: a local part with commas, quotes or
# angle brackets ("x,victim@victim.test"@evil.test is one legal address) stays one
# recipient, never split into several.

class InvalidAddress(ValueError):
    """Not an address the gateway will send to; the message says why."""


_ATEXT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class Mailbox:
    """An addr-spec taken apart: the local part as it reads (unquoted) and the domain in
    the one form addresses are kept in (``domain``)."""

    local: str
    domain: str

    @property
    def addr_spec(self) -> str:
        """The address as written in RCPT TO and headers: the local part quoted when it
        is not a dot-atom (RFC 5321 4.1.2), the domain in its Unicode form (the transport
        gives the relay its IDNA form)."""
        return f"{quote_local(self.local)}@{self.domain}"

    @property
    def ascii_domain(self) -> str:
        return idna.encode(self.domain, uts46=True).decode("ascii") if not self.domain.isascii() else self.domain


def _dot_atom(local: str) -> bool:
    return bool(local) and all(part and all(c in _ATEXT or ord(c) > 127 for c in part) for part in local.split("."))


def quote_local(local: str) -> str:
    """``local`` as RFC 5321 writes it: as it is when it is a dot-atom, else a quoted
    string with ``"`` and ``\\`` escaped."""
    if _dot_atom(local):
        return local
    return '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _split(address: str) -> tuple[str, str]:
    """(local part unquoted, domain) of an addr-spec, the "@" found outside quotes."""
    if address.startswith('"'):
        local, i, escaped = [], 1, False
        while i < len(address):
            c = address[i]
            if escaped:
                local.append(c)
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                break
            else:
                local.append(c)
            i += 1
        else:
            raise InvalidAddress("unterminated quoted local part")
        rest = address[i + 1:]
        if not rest.startswith("@"):
            raise InvalidAddress("text after the quoted local part")
        return "".join(local), rest[1:]
    local, at, domain = address.rpartition("@")
    if not at:
        raise InvalidAddress("no @")
    if not _dot_atom(local):
        raise InvalidAddress(f"local part {local!r} must be quoted")
    return local, domain


def mailbox(address: str) -> Mailbox:
    """The checked parts of ``address`` (an addr-spec, as stored for a person), or
    InvalidAddress saying what is wrong: no control characters, a local part of at most
    64 octets, a domain that IDNA accepts, of labels of letters, digits and hyphens."""
    address = (address or "").strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    if not address:
        raise InvalidAddress("empty address")
    if any(ord(c) < 32 or ord(c) == 127 for c in address):
        raise InvalidAddress("control character in the address")
    local, dom = _split(address)
    if not local:
        raise InvalidAddress("empty local part")
    if len(local.encode("utf-8")) > 64:
        raise InvalidAddress("local part longer than 64 octets")
    dom = domain(dom.rstrip("."))
    try:
        ascii_dom = dom if dom.isascii() else idna.encode(dom, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise InvalidAddress(f"domain {dom!r}: {exc}") from None
    labels = ascii_dom.lower().split(".")
    if len(ascii_dom) > 253 or not all(_LABEL.match(label) for label in labels):
        raise InvalidAddress(f"domain {dom!r} is not a host name")
    return Mailbox(local, dom)
