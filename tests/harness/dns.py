"""A real DNS server for the tests: UDP on a free loopback port, answering from a zone
the test writes (dnslib encodes and decodes the packets; the sockets are real).

``Zone.txt(name, text)`` publishes a TXT record (SPF, a DKIM key, a DMARC policy);
``Zone.silent(name)`` makes the server never answer for a name, as a DNS server that
times out.  ``DnsServer.address`` is the ``[auth] dns_server`` value to configure.
Every question asked is kept in ``asked`` (name, type), for a test that counts them.
"""

from __future__ import annotations

import base64
import socket
import threading

from dnslib import QTYPE, RCODE, RR, TXT, A, DNSRecord


class DnsServer:
    def __init__(self, ttl: int = 300):
        self.ttl = ttl
        self.records: dict[tuple[str, str], list] = {}
        self.quiet: set[str] = set()
        self.asked: list[tuple[str, str]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._stop = False
        self.thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # The zone ------------------------------------------------------------------------
    def txt(self, name: str, text: str) -> None:
        self.records.setdefault((name.lower().rstrip("."), "TXT"), []).append(text)

    def a(self, name: str, address: str) -> None:
        self.records.setdefault((name.lower().rstrip("."), "A"), []).append(address)

    def silent(self, name: str) -> None:
        self.quiet.add(name.lower().rstrip("."))

    def dkim_key(self, selector: str, domain: str, public_der: bytes) -> None:
        """A DKIM key record (RFC 6376 §3.6.1) for a public key in DER (SubjectPublicKeyInfo)."""
        self.txt(f"{selector}._domainkey.{domain}", "v=DKIM1; k=rsa; p=" + base64.b64encode(public_der).decode())

    # Serving -------------------------------------------------------------------------
    def _serve(self) -> None:
        while not self._stop:
            try:
                data, client = self.sock.recvfrom(4096)
            except OSError:
                return
            try:
                request = DNSRecord.parse(data)
            except Exception:  # noqa: BLE001 - not DNS: ignored, as a server would
                continue
            name = str(request.q.qname).lower().rstrip(".")
            qtype = QTYPE[request.q.qtype]
            self.asked.append((name, qtype))
            if name in self.quiet:
                continue  # never answered: the client times out
            reply = request.reply()
            found = self.records.get((name, qtype), [])
            for value in found:
                if qtype == "TXT":
                    # Split into strings of at most 255 bytes, as a zone file would.
                    raw = value.encode()
                    parts = [raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""]
                    reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(parts), ttl=self.ttl))
                elif qtype == "A":
                    reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(value), ttl=self.ttl))
            if not found and not any(k[0] == name for k in self.records):
                reply.header.rcode = RCODE.NXDOMAIN
            self.sock.sendto(reply.pack(), client)

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        self.thread.join(timeout=5)
