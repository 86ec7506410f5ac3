"""`gateway ingest`: raw messages from files or stdin, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest

from conftest import run_gateway

MAIL = b"""From: Pieter Peeters <pieter.peeters@example.be>
To: helpdesk@localhost
Subject: Printer op de tweede verdieping ##REF-77##
Message-ID: <printer-77@example.be>
Date: Fri, 27 Nov 2026 09:12:00 +0100
Content-Language: nl-BE
Content-Type: text/html; charset=utf-8

<html><head><style>p {color: red}</style><script>alert(1)</script></head>
<body><p>Goedemorgen,</p><p>De printer <b>HP-2F</b> drukt niet meer af.</p>
<ul><li>Foutcode 49</li><li>Sinds gisteren</li></ul>
<p>Zie <a href="https://intranet.example.be/printers">de lijst</a>.</p></body></html>
"""


def config_for(tmp_path, database_url: str):
    path = tmp_path / "config.toml"
    path.write_text(f'[database]\nurl = "{database_url}"\n')
    return path


def ingest(tmp_path, cfg, *args, input=None, check=True):
    proc = run_gateway("--config", str(cfg), "ingest", "--json", *args, cwd=tmp_path, input=input, check=check)
    return proc, [json.loads(line) for line in proc.stdout.decode().splitlines()]


def test_same_file_twice_is_created_then_duplicate(tmp_path, database_url):
    cfg = config_for(tmp_path, database_url)
    (tmp_path / "m.eml").write_bytes(MAIL)
    _, first = ingest(tmp_path, cfg, "m.eml")
    _, second = ingest(tmp_path, cfg, "m.eml")
    assert first == [{"source": "m.eml", "message_id": "printer-77@example.be", "outcome": "created",
                      "ticket": "INC-000001", "detail": None}]
    assert second[0]["outcome"] == "duplicate" and second[0]["ticket"] == "INC-000001"
    tickets = json.loads(run_gateway("--config", str(cfg), "ticket", "list", "--json", cwd=tmp_path).stdout)
    assert [t["number"] for t in tickets] == ["INC-000001"]
    outbox = json.loads(run_gateway("--config", str(cfg), "outbox", "list", "--json", cwd=tmp_path).stdout)
    assert len(outbox) == 1 and outbox[0]["language"] == "nl"


def test_html_only_mail_becomes_readable_text(tmp_path, database_url):
    cfg = config_for(tmp_path, database_url)
    _, out = ingest(tmp_path, cfg, "-", input=MAIL)
    assert out[0]["source"] == "stdin" and out[0]["outcome"] == "created"
    ticket = json.loads(run_gateway("--config", str(cfg), "ticket", "show", "INC-000001", "--json",
                                    cwd=tmp_path).stdout)
    assert ticket["personal_reference"] == "REF-77"
    assert ticket["title"] == "Printer op de tweede verdieping"
    text = ticket["description"]
    assert "Goedemorgen," in text and "drukt niet meer af" in text
    assert "- Foutcode 49" in text and "https://intranet.example.be/printers" in text
    assert "alert" not in text and "color" not in text
    assert ticket["reporting_person"]["language"] == "nl"


def test_numbers_are_per_process(tmp_path, database_url):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[database]\nurl = "{database_url}"\n[routing]\n'
                   f'routes = {{ "requests@localhost" = "service-request", "changes@localhost" = "change" }}\n'
                   f'[gateway]\naddresses = ["helpdesk@localhost"]\n')
    outcomes = []
    for n, to in enumerate(["helpdesk@localhost", "requests@localhost", "requests@localhost", "changes@localhost",
                            "helpdesk@localhost"]):
        # Five requests, each its own (the same text again from the same sender would be
        # a repeat, kept on the first ticket: test_trust.py).
        raw = MAIL.replace(b"To: helpdesk@localhost", b"To: " + to.encode()).replace(
            b"printer-77@", f"m{n}@".encode()).replace(b"tweede verdieping", f"verdieping {n}".encode())
        _, out = ingest(tmp_path, cfg, "-", input=raw)
        outcomes.append(out[0]["ticket"])
    assert outcomes == ["INC-000001", "SR-000001", "SR-000002", "CHG-000001", "INC-000002"]


def test_garbage_is_quarantined_with_a_reason_and_kept(tmp_path, database_url):
    cfg = config_for(tmp_path, database_url)
    (tmp_path / "junk.bin").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 600)
    proc, out = ingest(tmp_path, cfg, "junk.bin")
    assert proc.returncode == 0  # stored, whatever its outcome
    assert out[0]["outcome"] == "quarantined" and out[0]["ticket"] is None
    assert "not an e-mail" in out[0]["detail"]
    # kept raw: ingesting it again finds it already stored
    _, again = ingest(tmp_path, cfg, "junk.bin")
    assert again[0]["outcome"] == "duplicate"


def test_unreadable_file_exits_non_zero(tmp_path):
    proc, out = ingest(tmp_path, config_for(tmp_path, f"sqlite:///{tmp_path}/g.db"), "missing.eml", check=False)
    assert proc.returncode != 0
    assert out[0]["outcome"] == "error" and "cannot read" in out[0]["detail"]
