"""Mail that a machine wrote: auto-replies, bounces and our own mail coming back.

``classify`` is pure: it looks at a parsed mail and says what it is, or None for mail
a person wrote.  Nothing it recognises may make a ticket or a notification.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.ingest.parse import ParsedMail
from gateway.outbound.compose import LOOP_HEADER


@dataclass(frozen=True)
class Automatic:
    kind: str  # auto-reply | bounce | loop
    detail: str


def classify(mail: ParsedMail, own_addresses: tuple[str, ...]) -> Automatic | None:
    own = {a.lower() for a in own_addresses}
    if mail.header(LOOP_HEADER) is not None:
        return Automatic("loop", f"carries our loop header {LOOP_HEADER}")
    if mail.from_addr and mail.from_addr.lower() in own:
        return Automatic("loop", f"sent from our own address {mail.from_addr}")
    if mail.content_type == "multipart/report" and mail.report_type == "delivery-status":
        return Automatic("bounce", "delivery status notification")
    auto = (mail.header("auto-submitted") or "").strip().lower()
    if auto and not auto.startswith("no"):
        return Automatic("auto-reply", f"Auto-Submitted: {auto}")
    return None
