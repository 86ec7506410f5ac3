"""The cost per mail of the sender checks and of virus scanning (issue 25):
python3 -m bench.checks [--mails N]

For the small and the mixed set of bench/mailset.py, each mail signed (DKIM, RSA 2048)
for its From domain, whose SPF record and DMARC policy a DNS server on loopback
publishes (the tests' dnslib server, tests/harness/dns.py), and sent from an address
SPF allows:
 - parse: ``gateway.ingest.parse.parse`` of the mail, the peer in the same run;
 - verify, cold: SPF, DKIM, DMARC, ARC with the resolver's cache emptied before each
   mail (every question goes to the DNS server);
 - verify, warm: the same with the cache kept (a sender seen before, answers within
   their TTL);
 - scan: the whole mail through a real clamd's INSTREAM (tests/harness/clamd.py; its
   database holds one test signature: a full signature database makes clamd's start
   slower and its scans somewhat slower, see BENCHMARKS.md).
Prints medians and p99 in milliseconds, and each as a multiple of parse.  The DNS
server answers over loopback in well under a millisecond: a real resolver adds its
round trips to the cold figure (the warm one does not wait on the network).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import dkim  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from bench.mailset import generate  # noqa: E402
from gateway.config import AuthSection, Config, ScanSection  # noqa: E402
from gateway.ingest.parse import Limits, parse  # noqa: E402
from gateway.ingest.scan import Scanner  # noqa: E402
from gateway.ingest.verify import Verifier  # noqa: E402
from harness.clamd import Clamd  # noqa: E402
from harness.dns import DnsServer  # noqa: E402

PEER = "127.0.0.2"


def pct(values: list[float], p: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, round(p / 100 * (len(v) - 1)))]


def signed_set(mails, key_pem: bytes) -> list[tuple[bytes, str]]:
    out = []
    for m in mails:
        domain = m.sender.rpartition("@")[2]
        sig = dkim.sign(m.raw, b"bench", domain.encode(), key_pem,
                        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
        out.append((sig + m.raw, m.sender))
    return out


def measure(name: str, mails, verifier: Verifier, scanner: Scanner | None) -> dict:
    limits = Limits(500, 20, 64 * 1024)
    figures: dict[str, list[float]] = {"parse": [], "verify_cold": [], "verify_warm": [], "scan": []}
    results: dict[str, int] = {}
    for raw, sender in mails:
        t = time.perf_counter()
        parse(raw, limits)
        figures["parse"].append(time.perf_counter() - t)
        verifier.resolver.cache.flush()
        t = time.perf_counter()
        verdict = verifier.verify(raw, PEER, "mx.bench.example", sender)
        figures["verify_cold"].append(time.perf_counter() - t)
        results[verdict.dmarc] = results.get(verdict.dmarc, 0) + 1
        t = time.perf_counter()
        verifier.verify(raw, PEER, "mx.bench.example", sender)
        figures["verify_warm"].append(time.perf_counter() - t)
        if scanner is not None:
            t = time.perf_counter()
            said = scanner.answer(raw)
            figures["scan"].append(time.perf_counter() - t)
            assert said.endswith("OK"), said
    row = {"set": name, "mails": len(mails), "bytes": sum(len(r) for r, _s in mails), "dmarc": results}
    base = statistics.median(figures["parse"])
    for key, values in figures.items():
        if values:
            row[key] = {"p50_ms": statistics.median(values) * 1000, "p99_ms": pct(values, 99) * 1000,
                        "x_parse": statistics.median(values) / base}
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mails", type=int, default=200, help="mails in each set (default 200)")
    args = ap.parse_args(argv)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    small = generate(args.mails, small_only=True)
    mixed = generate(args.mails)
    dns = DnsServer(ttl=3600)
    for domain in {m.sender.rpartition("@")[2] for m in small + mixed}:
        dns.txt(domain, f"v=spf1 ip4:{PEER} -all")
        dns.dkim_key("bench", domain, der)
        dns.txt(f"_dmarc.{domain}", "v=DMARC1; p=reject")
    clamd = Clamd() if Clamd.problem() is None else None
    try:
        scanner = None
        if clamd is not None:
            clamd.start()
            scanner = Scanner(dataclasses.replace(Config(), scan=ScanSection(clamd=str(clamd.socket))))
        config = dataclasses.replace(Config(), auth=AuthSection(verify="on", dns_server=dns.address, time_limit=10.0))
        verifier = Verifier(config, engine=None)
        rows = [measure("small", signed_set(small, pem), verifier, scanner),
                measure("mixed", signed_set(mixed, pem), verifier, scanner)]
    finally:
        dns.close()
        if clamd is not None:
            clamd.cleanup()
    print("| set | mails | MB | parse p50 / p99 ms | verify cold p50 / p99 ms (× parse) | "
          "verify warm p50 / p99 ms (× parse) | scan p50 / p99 ms (× parse) | DMARC |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        def cell(k: str) -> str:
            f = r.get(k)
            return f"{f['p50_ms']:.2f} / {f['p99_ms']:.2f} ({f['x_parse']:.1f}×)" if f else "no clamd"
        print(f"| {r['set']} | {r['mails']} | {r['bytes'] / 1e6:.1f} | {r['parse']['p50_ms']:.2f} / "
              f"{r['parse']['p99_ms']:.2f} | {cell('verify_cold')} | {cell('verify_warm')} | {cell('scan')} | "
              f"{', '.join(f'{k} {v}' for k, v in sorted(r['dmarc'].items()))} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
