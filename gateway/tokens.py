"""Signed reply addresses: ``helpdesk+INC-000001.k3j9f2ab@example.com``.

The token is an HMAC-SHA256 of the ticket number under the configured secret, cut to
20 hex digits (80 bits): guessing one is hopeless for a mail-borne attacker, and the
address stays within the 64 characters a local part may have.  A token alone is never
authority: the sender must also be allowed on the ticket (gateway.ingest.threads).
A token that does not verify counts for nothing.

An approval request carries the request's place among the ticket's requests in its
address (``helpdesk+CHG-000001.a2.<token>@…``, the token signing ``CHG-000001.a2``): an
answer, even one whose mail program dropped In-Reply-To, says which request it decides,
and only the open one can be decided (gateway.ingest.gather, ``_stale_request``).

The secret is never the documentation's example (gateway.config), and made at random
when none is set (gateway.secret).  Verifying takes the secrets still accepted
(``GatewaySection.verifying_secrets``: the secret, and during a rotation the previous
one); signing always uses the first.
"""

from __future__ import annotations

import hashlib
import hmac
import re

# A secret, or the secrets a token may verify with (the one that signs first).
Secrets = str | tuple[str, ...]


def _each(secrets: Secrets) -> tuple[str, ...]:
    found = (secrets,) if isinstance(secrets, str) else tuple(secrets)
    if not all(found) or not found:
        # An empty key would sign with a value anyone can compute: never silently.
        raise ValueError("no secret to sign or verify with")
    return found


_TOKEN_LEN = 20
_TAGGED = re.compile(r"^(?P<local>[^+@]+)\+(?P<number>(?:INC|SR|CHG)-\d{6})(?:\.a(?P<request>[1-9]\d{0,3}))?"
                     r"\.(?P<token>[0-9a-f]+)@(?P<domain>.+)$", re.IGNORECASE)


def token_for(secret: str, number: str, request: int | None = None) -> str:
    signed = number.upper() if request is None else f"{number.upper()}.a{request}"
    return hmac.new(_each(secret)[0].encode(), signed.encode(), hashlib.sha256).hexdigest()[:_TOKEN_LEN]


def reply_address(secret: str, helpdesk: str, number: str, request: int | None = None) -> str:
    """The signed reply address of ticket ``number``; of its ``request``-th approval
    request (1, 2, ...) when given."""
    local, _, domain = helpdesk.rpartition("@")
    tag = number if request is None else f"{number}.a{request}"
    return f"{local}+{tag}.{token_for(secret, number, request)}@{domain}"


def verified_reply(secret: Secrets, address: str) -> tuple[str, int | None] | None:
    """(ticket number, approval request or None) of a signed reply address; None if it
    is not one or does not verify with any of the secrets."""
    m = _TAGGED.match(address.strip())
    if not m:
        return None
    number = m.group("number").upper()
    request = int(m.group("request")) if m.group("request") else None
    token = m.group("token").lower()
    if any(hmac.compare_digest(token_for(key, number, request), token) for key in _each(secret)):
        return number, request
    return None


def verify_reply_address(secret: Secrets, address: str) -> str | None:
    """The ticket number of a signed reply address, or None if it is not one or does not verify."""
    found = verified_reply(secret, address)
    return found[0] if found else None


# VERP ([outbound] verp): each notification's envelope sender names its outbox row,
# ``helpdesk+b42.<token>@example.com``, so a bounce finds the notification it returns
# by the address it was sent to, even when it quotes nothing of it.
_BOUNCE = re.compile(r"^(?P<local>[^+@]+)\+b(?P<id>[1-9]\d{0,11})\.(?P<token>[0-9a-f]+)@(?P<domain>.+)$",
                     re.IGNORECASE)


def bounce_address(secret: str, helpdesk: str, outbox_id: int) -> str:
    """The envelope sender of outbox mail ``outbox_id``."""
    local, _, domain = helpdesk.rpartition("@")
    return f"{local}+b{outbox_id}.{token_for(secret, f'bounce:{outbox_id}')}@{domain}"


def verified_bounce(secret: Secrets, address: str) -> int | None:
    """The outbox id of a bounce address (``bounce_address``); None if it is not one or
    does not verify with any of the secrets."""
    m = _BOUNCE.match(address.strip())
    if not m:
        return None
    outbox_id = int(m.group("id"))
    token = m.group("token").lower()
    if any(hmac.compare_digest(token_for(key, f"bounce:{outbox_id}"), token) for key in _each(secret)):
        return outbox_id
    return None


# The signed reply address, hidden at the end of our HTML (as osTicket and FreeScout do):
# a client that drops In-Reply-To and References, a customer who changes the subject and
# writes to the plain address still quote it, and the reply finds its ticket by it.
_MARKER = "gw-ref:"
_MARKED = re.compile(re.escape(_MARKER) + r"\s*([^\s<>\"']+@[^\s<>\"']+)")


def html_marker(address: str) -> str:
    """The hidden element carrying ``address`` (a reply address) in our HTML."""
    return ('<div style="display:none;max-height:0;overflow:hidden;font-size:0;line-height:0;mso-hide:all" '
            f'aria-hidden="true">{_MARKER}{address}</div>')


def with_marker(html: str, address: str) -> str:
    """``html`` with the marker of ``address`` just before its end (``</body>``)."""
    marker = html_marker(address)
    end = html.lower().rfind("</body>")
    return html[:end] + marker + html[end:] if end >= 0 else html + marker


def marked_addresses(html: str) -> list[str]:
    """The addresses of the markers in ``html`` (a reply quoting our mails), first first."""
    return list(dict.fromkeys(m.group(1).rstrip(".,;") for m in _MARKED.finditer(html)))
