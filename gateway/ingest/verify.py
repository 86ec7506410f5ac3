"""Who sent a mail, checked by the gateway itself when no MTA in front does (issue 25).

SPF (RFC 7208) on the connecting address, MAIL FROM and HELO the door kept; DKIM (RFC
6376) on every signature; DMARC (RFC 7489): the From domain's policy and whether an SPF
or DKIM pass is aligned with it; ARC (RFC 8617) where a forwarder we trust
(``[auth] arc_forwarders``) sealed a dmarc=pass before it broke the signature.  The
libraries do the protocols (pyspf, dkimpy; authheaders' copy of the public suffix list
for the organisational domain); this module asks the DNS for them, within a time limit
per mail, and writes the outcome as the gateway's own ``Authentication-Results`` header.

It runs in processing, after the door's 250, before the mail is parsed: the header is put
on top of the raw mail (ours is the topmost, so a forged one with our authserv-id below it
counts for nothing, gateway.ingest.threading) and kept on the inbound row, so that a mail
processed again is judged as it was received.  A DNS server that does not answer in time
makes the checks it was needed for ``temperror``, which is never a pass: a reply is held
from acting as one with ``dmarc=fail`` is.
"""

from __future__ import annotations

import contextvars
import importlib.resources
import logging
import re
import time
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.utils import getaddresses

import dkim
import dns.exception
import dns.resolver
import spf
from publicsuffix2 import PublicSuffixList
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import select

from gateway.config import Config
from gateway.ingest.statements import sender_facts
from store.db import session_for
from store.models import InboundMessage
from store.vocabulary import DOOR_SOURCES

log = logging.getLogger("gateway.verify")


_END_OF_HEAD = re.compile(rb"\r?\n\r?\n")


def _head(raw: bytes) -> bytes:
    """The header block of ``raw``, up to and with the empty line that ends it."""
    end = _END_OF_HEAD.search(raw)
    return raw[:end.end()] if end else raw


def _named(head: bytes, name: bytes) -> bool:
    """Whether the header block ``head`` has a field ``name`` (any case)."""
    return re.search(rb"(?im)^" + re.escape(name) + rb"[ \t]*:", head) is not None


class DnsTrouble(Exception):
    """The DNS did not answer (time-out, SERVFAIL, no server): the check is temperror."""


class Lookups:
    """One mail's DNS questions, all within one deadline, through the shared resolver
    (whose cache keeps answers for their TTL)."""

    def __init__(self, resolver: dns.resolver.Resolver, time_limit: float):
        self.resolver = resolver
        self.deadline = time.monotonic() + time_limit
        self.troubled: set[str] = set()  # names the DNS did not answer for

    def answer(self, name: str, qtype: str) -> list:
        """The records of ``name`` (empty when there are none); DnsTrouble when the DNS
        does not say in the time left."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.troubled.add(name)
            raise DnsTrouble(f"no time left for {name} {qtype}")
        try:
            return list(self.resolver.resolve(name, qtype, lifetime=left, search=False))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.resolver.LifetimeTimeout) as exc:
            self.troubled.add(name)
            raise DnsTrouble(f"{name} {qtype}: {type(exc).__name__}") from None
        except dns.exception.DNSException as exc:  # a name that is no name: no record
            log.debug("%s %s: %s", name, qtype, exc)
            return []

    def txt(self, name: str) -> list[bytes]:
        return [b"".join(r.strings) for r in self.answer(name, "TXT")]

    def dkim_key(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        """dkimpy's ``dnsfunc``: the key record's text, None when there is none."""
        found = self.txt(name.decode() if isinstance(name, bytes) else name)
        return found[0] if found else None

    def spf_lookup(self, name: str, qtype: str, strict=True, timeout=None) -> list:
        """pyspf's ``DNSLookup``, in its shape: ((name, qtype), value) pairs."""
        try:
            records = self.answer(name, qtype)
        except DnsTrouble as exc:
            raise spf.TempError(f"DNS {exc}") from None
        found = []
        for r in records:
            if qtype in ("A", "AAAA"):
                found.append(((name, qtype), r.address))
            elif qtype == "MX":
                found.append(((name, qtype), (r.preference, r.exchange)))
            elif qtype == "PTR":
                found.append(((name, qtype), r.target.to_text(True)))
            elif qtype in ("TXT", "SPF"):
                found.append(((name, qtype), r.strings))
        return found


# pyspf asks the DNS through its module's DNSLookup; while a mail is checked it goes to
# that mail's Lookups (a context variable: each worker thread its own), else as before.
_CURRENT: contextvars.ContextVar[Lookups | None] = contextvars.ContextVar("gateway_verify_lookups", default=None)
_SPF_DEFAULT = spf.DNSLookup


def _spf_dns(name, qtype, strict=True, timeout=20):
    lookups = _CURRENT.get()
    if lookups is None:
        return _SPF_DEFAULT(name, qtype, strict, timeout)
    return lookups.spf_lookup(name, qtype, strict, timeout)


spf.DNSLookup = _spf_dns


@dataclass(frozen=True)
class Signature:
    domain: str
    selector: str
    result: str  # pass | fail | temperror | permerror


@dataclass(frozen=True)
class Verdict:
    """What the checks found, as the header says it."""

    spf: str
    spf_domain: str  # the MAIL FROM domain (or HELO) SPF was checked for
    dkim: tuple[Signature, ...]
    arc: str  # pass | fail | none
    arc_sealer: str
    dmarc: str  # pass | fail | none | temperror | permerror
    from_domain: str
    policy: str  # the domain's p= (or sp=), "" without a record
    comment: str = ""

    def header(self, authserv_id: str) -> str:
        """The Authentication-Results field's value (RFC 8601)."""
        parts = [authserv_id]
        spf_part = f"spf={self.spf}"
        if self.spf_domain:
            spf_part += f" smtp.mailfrom={self.spf_domain}"
        parts.append(spf_part)
        if self.dkim:
            parts += [f"dkim={s.result} header.d={s.domain} header.s={s.selector}" for s in self.dkim]
        else:
            parts.append("dkim=none")
        if self.arc != "none":
            parts.append(f"arc={self.arc}" + (f" (sealed by {self.arc_sealer})" if self.arc_sealer else ""))
        dmarc_part = f"dmarc={self.dmarc}"
        if self.policy:
            dmarc_part += f" (p={self.policy}{'; ' + self.comment if self.comment else ''})"
        elif self.comment:
            dmarc_part += f" ({self.comment})"
        if self.from_domain:
            dmarc_part += f" header.from={self.from_domain}"
        parts.append(dmarc_part)
        return ";\r\n\t".join(parts)


def _domain(address: str) -> str:
    return address.rpartition("@")[2].strip().strip(">").lower().rstrip(".")


_PSL: PublicSuffixList | None = None


def get_org_domain(domain: str) -> str:
    """The organisational domain (RFC 7489 §3.2): the public suffix list's (the copy
    authheaders ships, read once a process: reading it takes most of a second), and
    under a suffix the list does not know (its default rule "*", e.g. .test) one label more."""
    global _PSL
    if _PSL is None:
        with importlib.resources.as_file(importlib.resources.files("authheaders") / "public_suffix_list.txt") as path:
            with open(path, encoding="utf-8") as listed:
                _PSL = PublicSuffixList(listed)
    org = _PSL.get_public_suffix(domain) or domain
    if "." not in org:
        org = ".".join(domain.split(".")[-2:])
    return org


def _aligned(a: str, b: str, mode: str) -> bool:
    if not a or not b:
        return False
    if mode == "s":
        return a == b
    return get_org_domain(a) == get_org_domain(b)


def _dmarc_record(lookups: Lookups, domain: str) -> dict[str, str] | None:
    """The DMARC record of ``domain`` as tags (RFC 7489 §6.6.3: the From domain's, else
    its organisational domain's), None when it publishes none; DnsTrouble passes up."""
    for where in dict.fromkeys((domain, get_org_domain(domain))):
        records = [t for t in lookups.txt(f"_dmarc.{where}") if t[:8].lower() == b"v=dmarc1"]
        if len(records) != 1:  # none, or several: as none (§6.6.3)
            continue
        tags = {}
        for part in records[0].decode("utf-8", "replace").split(";"):
            key, sep, value = part.partition("=")
            if sep:
                tags[key.strip().lower()] = value.strip().lower()
        if "p" not in tags:
            continue
        if where != domain:
            tags["p"] = tags.get("sp", tags["p"])
        return tags
    return None


_AAR_DMARC = re.compile(r"(?:^|[;\s])dmarc\s*=\s*([a-z]+)", re.IGNORECASE)


class Verifier:
    """Checks stored mails; one a process (its resolver's cache is shared by its mails)."""

    def __init__(self, config: Config, engine: Engine):
        self.config = config
        self.engine = engine
        auth = config.auth
        self.resolver = dns.resolver.Resolver(configure=not auth.dns_server)
        if auth.dns_server:
            host, _, port = auth.dns_server.rpartition(":") if auth.dns_server.count(":") == 1 else (
                auth.dns_server, "", "")
            self.resolver.nameservers = [host]
            self.resolver.port = int(port) if port else 53
        self.resolver.cache = dns.resolver.Cache()  # answers kept for their TTL
        self.forwarders = {d.lower().rstrip(".") for d in auth.arc_forwarders}

    # The hook ------------------------------------------------------------------------
    def stamp(self, inbound_id: int, raw: bytes, session=None, keep=None, facts: tuple | None = None) -> bytes:
        """``raw`` with the gateway's Authentication-Results on top, when it verifies
        mail of this row's source: checked now (and kept on the row), or as it was the
        first time.  ``raw`` unchanged when verification is off for it.  ``session``: the
        caller's transaction, when it holds the row (processing that parses in it): read
        and kept in it, for a transaction of its own would wait for the caller's (the one
        write lock of SQLite).  ``keep``: called with a new verdict instead of keeping it
        in a transaction of its own (the worker keeps it in the batch's transaction).
        ``facts``: the row's (statements.sender_facts), read already with its batch's."""
        if not self.config.verifying:
            return raw
        row = facts if facts is not None else sender_facts(self.engine, [inbound_id], session).get(inbound_id)
        if row is None:
            return raw
        source, mail_from, peer, helo, kept = row
        if kept is None:
            if source not in DOOR_SOURCES and not self.config.auth.other_sources:
                return raw
            # LMTP's client is the MTA in front: its address says nothing of the sender.
            spf_client = (peer, helo) if source == "smtp" else ("", "")
            kept = self.verify(raw, *spf_client, mail_from).header(self.config.own_authserv_id)
            if session is not None:
                session.exec(update(InboundMessage).where(InboundMessage.id == inbound_id).values(authentication=kept))
            elif keep is not None:
                keep(kept)
            else:
                self._keep(inbound_id, kept)
        return b"Authentication-Results: " + kept.encode("utf-8", "replace") + b"\r\n" + raw

    def _keep(self, inbound_id: int, kept: str) -> None:
        """The verdict kept on the row, in a transaction of its own, unless a worker's
        transaction holds the row (PostgreSQL): then it is checked again next time.  Not
        kept when the database cannot take it (a full disk): the verdict stands for this
        reading all the same, and the transaction that applies the mail says the fault."""
        from gateway.ingest import faults

        try:
            with session_for(self.engine) as session:
                free = session.exec(select(InboundMessage.id).where(InboundMessage.id == inbound_id)
                                    .with_for_update(skip_locked=True)).first()
                if free is not None:
                    session.exec(update(InboundMessage).where(InboundMessage.id == inbound_id)
                                 .values(authentication=kept))
                    session.commit()
        except Exception as exc:  # noqa: BLE001 - only a fault of the surroundings is let go
            if faults.surroundings(exc) is None:
                raise
            log.warning("inbound %s: the verdict on its sender not kept: %s", inbound_id, faults.surroundings(exc))

    # The checks ----------------------------------------------------------------------
    def verify(self, raw: bytes, peer: str, helo: str, mail_from: str) -> Verdict:
        """SPF, DKIM, ARC and DMARC of ``raw`` within [auth] time_limit; never raises."""
        lookups = Lookups(self.resolver, self.config.auth.time_limit)
        token = _CURRENT.set(lookups)
        try:
            return self._verify(raw, peer, helo, mail_from, lookups)
        except Exception as exc:  # noqa: BLE001 - a check that broke is no pass
            log.warning("verification failed: %s: %s", type(exc).__name__, exc)
            return Verdict("temperror", "", (), "none", "", "temperror", "", "", f"{type(exc).__name__}")
        finally:
            _CURRENT.reset(token)

    def _verify(self, raw: bytes, peer: str, helo: str, mail_from: str, lookups: Lookups) -> Verdict:
        spf_result, spf_domain = self._spf(peer, helo, mail_from)
        # Only the header block is read unless a signature or a seal asks for the body
        # (dkimpy takes the whole mail apart: ~8 times a 33 MB mail's size in memory, and
        # half of a small mail's processing time, for an unsigned mail that had nothing
        # to check).
        head = _head(raw)
        signatures, (arc, sealer, arc_dmarc) = self._signed(raw, head, lookups)
        headers = BytesHeaderParser().parsebytes(head)
        froms = [a for _n, a in getaddresses([str(v) for v in headers.get_all("from", [])]) if "@" in a]
        if len({_domain(a) for a in froms}) != 1:
            # No From domain, or several: nothing to align with (the parser holds such mail).
            return Verdict(spf_result, spf_domain, signatures, arc, sealer, "permerror", "", "",
                           "no single From domain")
        from_domain = _domain(froms[0])
        try:
            record = _dmarc_record(lookups, from_domain)
        except DnsTrouble:
            return Verdict(spf_result, spf_domain, signatures, arc, sealer, "temperror", from_domain, "",
                           "the DMARC record could not be read")
        if record is None:
            return Verdict(spf_result, spf_domain, signatures, arc, sealer, "none", from_domain, "")
        policy = record["p"]
        spf_ok = spf_result == "pass" and _aligned(spf_domain, from_domain, record.get("aspf", "r"))
        dkim_ok = any(s.result == "pass" and _aligned(s.domain, from_domain, record.get("adkim", "r"))
                      for s in signatures)
        if spf_ok or dkim_ok:
            return Verdict(spf_result, spf_domain, signatures, arc, sealer, "pass", from_domain, policy)
        if arc == "pass" and sealer in self.forwarders and arc_dmarc == "pass":
            # RFC 8617 §7.2: the forwarder we trust saw it pass before it changed the mail.
            return Verdict(spf_result, spf_domain, signatures, arc, sealer, "pass", from_domain, policy,
                           f"arc override: {sealer} saw dmarc=pass")
        if spf_result == "temperror" or any(s.result == "temperror" for s in signatures) or arc == "temperror":
            return Verdict(spf_result, spf_domain, signatures, arc, sealer, "temperror", from_domain, policy,
                           "a check could not be completed")
        return Verdict(spf_result, spf_domain, signatures, arc, sealer, "fail", from_domain, policy)

    def _spf(self, peer: str, helo: str, mail_from: str) -> tuple[str, str]:
        """pyspf's result for the client and MAIL FROM (postmaster@HELO for a null sender),
        and the domain it was for; "none" without a client address."""
        domain = _domain(mail_from) if "@" in mail_from else helo.lower()
        if not peer:
            return "none", domain
        lookups = _CURRENT.get()
        querytime = max(0.1, lookups.deadline - time.monotonic()) if lookups else 20
        try:
            result, _code, _why = spf.query(i=peer, s=mail_from or f"postmaster@{helo}", h=helo or "unknown",
                                            querytime=querytime).check()
        except Exception as exc:  # noqa: BLE001 - pyspf's own bugs on odd input
            log.debug("spf: %s", exc)
            return "permerror", domain
        return result, domain

    def _signed(self, raw: bytes, head: bytes, lookups: Lookups):
        """The DKIM signatures and the ARC chain, each read only when the header block
        ``head`` has one."""
        signatures = self._dkim(raw, lookups) if _named(head, b"dkim-signature") else ()
        return signatures, (self._arc(raw, lookups) if _named(head, b"arc-seal") else ("none", "", ""))

    @staticmethod
    def _dkim(raw: bytes, lookups: Lookups) -> tuple[Signature, ...]:
        """Every DKIM-Signature, verified (dkimpy)."""
        d = dkim.DKIM(raw, minkey=1024)
        count = sum(1 for name, _v in d.headers if name.lower() == b"dkim-signature")
        found = []
        for idx in range(count):
            d.signature_fields = None
            try:
                result = "pass" if d.verify(idx=idx, dnsfunc=lookups.dkim_key) else "fail"
            except DnsTrouble:
                result = "temperror"
            except dkim.DKIMException:
                result = "permerror" if d.signature_fields is None else "fail"
            fields = d.signature_fields or {}
            found.append(Signature(fields.get(b"d", b"").decode("ascii", "replace").lower(),
                                   fields.get(b"s", b"").decode("ascii", "replace"), result))
        return tuple(found)

    @staticmethod
    def _arc(raw: bytes, lookups: Lookups) -> tuple[str, str, str]:
        """(chain result, the latest sealer's domain, the dmarc= its
        ARC-Authentication-Results says)."""
        try:
            cv, results, _comment = dkim.ARC(raw, minkey=1024).verify(dnsfunc=lookups.dkim_key)
        except DnsTrouble:
            return "temperror", "", ""
        except Exception:  # noqa: BLE001 - a malformed chain is a failed one
            return "fail", "", ""
        if cv == dkim.CV_None:
            return "none", "", ""
        latest = results[0] if results else {}
        sealer = latest.get("as-domain", b"").decode("ascii", "replace").lower()
        m = _AAR_DMARC.search(latest.get("aar-value", b"").decode("ascii", "replace"))
        return ("pass" if cv == dkim.CV_Pass else "fail"), sealer, (m.group(1).lower() if m else "")
