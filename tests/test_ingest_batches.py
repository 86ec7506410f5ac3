"""`gateway ingest` takes several mails a commit, as the worker does (issue 20): what
each mail comes to is what it came to one mail a transaction, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

from conftest import run_gateway
from gateway.ingest.inbound import header_message_id


def mail(n: int, *, reply_to: int | None = None, body: str = "") -> bytes:
    head = (f"From: Ann Peeters <ann@client.example>\r\nTo: helpdesk@example.com\r\n"
            f"Subject: {'RE: ' if reply_to is not None else ''}printer {reply_to if reply_to is not None else n}\r\n"
            f"Message-ID: <batch-{n}@client.example>\r\n")
    if reply_to is not None:
        head += f"In-Reply-To: <batch-{reply_to}@client.example>\r\n"
    return (head + f"\r\n{body or f'Mail number {n}.'}\r\n").encode()


def test_a_batch_keeps_order_duplicates_and_errors(tmp_path, database_url):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[database]\nurl = "{database_url}"\n')
    paths = []
    for n in range(20):  # more than a batch (16): two batches
        path = tmp_path / f"{n:02d}.eml"
        # Every third mail answers the mail before it, which is in the same batch or,
        # for the 16th, in the batch before.
        path.write_bytes(mail(n, reply_to=n - 1 if n % 3 == 1 else None))
        paths.append(path.name)
    paths.insert(5, "missing.eml")  # an unreadable path among them
    paths.insert(9, "03.eml")       # a mail twice in one batch
    proc = run_gateway("--config", str(cfg), "ingest", "--json", "--no-deliver", *paths, cwd=tmp_path, check=False)
    assert proc.returncode == 1  # one path could not be read; the others were stored
    lines = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert [line["source"] for line in lines] == paths
    by_source = {}
    for line in lines:
        by_source.setdefault(line["source"], []).append(line)
    assert by_source["missing.eml"][0]["outcome"] == "error"
    assert "cannot read" in by_source["missing.eml"][0]["detail"]
    first, again = by_source["03.eml"]
    assert first["outcome"] == "created"
    assert again["outcome"] == "duplicate" and again["ticket"] == first["ticket"]
    for n in range(20):
        (line,) = by_source[f"{n:02d}.eml"][:1]
        if n % 3 == 1:
            original = by_source[f"{n - 1:02d}.eml"][0]
            assert line["outcome"] == "appended", line
            assert line["ticket"] == original["ticket"]
        else:
            assert line["outcome"] == "created", line
    tickets = {line["ticket"] for line in lines if line["outcome"] == "created"}
    assert len(tickets) == 20 - 7  # 7 replies among 0..19 (n % 3 == 1)


def test_header_message_id_reads_the_header_block_only():
    """A CRLF mail's header ends at CRLF CRLF: a Message-ID line in its body (a forwarded
    mail) is not its own, and a large body is not searched."""
    raw = (b"From: a@client.example\r\nTo: helpdesk@example.com\r\nSubject: fwd\r\n\r\n"
           b"Forwarded:\r\nMessage-ID: <not-mine@elsewhere.example>\r\n" + b"x" * 100_000 + b"\r\n")
    assert header_message_id(raw) == ""
    raw = b"Message-ID: <mine@client.example>\r\nSubject: s\r\n\r\nMessage-ID: <other@x.example>\r\n"
    assert header_message_id(raw) == "mine@client.example"
    raw = b"Subject: s\nMessage-ID:\n <folded@client.example>\n\nbody\n"
    assert header_message_id(raw) == "folded@client.example"


def test_ingest_delivers_every_confirmation_it_queued(tmp_path):
    """More confirmations than one delivery run's hundred: `gateway ingest` delivers them
    all (it delivered only the first hundred; the rest waited for another command)."""
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "gw.db"}"\n'
                   f'[outbound]\ntransport = "file"\noutbox_dir = "{tmp_path / "sent"}"\n')
    paths = []
    for n in range(105):
        path = tmp_path / f"{n:03d}.eml"
        path.write_bytes(mail(n).replace(b"ann@", f"user{n}@".encode()))
        paths.append(path.name)
    proc = run_gateway("--config", str(cfg), "ingest", "--json", *paths, cwd=tmp_path)
    outcomes = [json.loads(line)["outcome"] for line in proc.stdout.decode().splitlines()]
    assert outcomes == ["created"] * 105
    assert len(list((tmp_path / "sent").glob("*.eml"))) == 105
