"""Every received mail can be seen with its outcome; quarantined mail shows its reason and
is replayed once the cause is fixed (here: a limit raised in the config)."""

from __future__ import annotations

import json

from conftest import run_gateway

MAIL = ("From: Sofie Maes <sofie.maes@example.be>\r\nTo: helpdesk@localhost\r\n"
        "Subject: Scanner ##PO77##\r\nMessage-ID: <scan-1@example.be>\r\n"
        "Content-Type: multipart/mixed; boundary=b0\r\n\r\n"
        "--b0\r\nContent-Type: text/plain\r\n\r\nDe scanner werkt niet.\r\n"
        + "".join(f"--b0\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; "
                  f"filename=p{n}.bin\r\n\r\nx{n}\r\n" for n in range(30))
        + "--b0--\r\n").encode()


def test_quarantined_mail_is_listed_with_its_reason_and_reprocessed_after_a_fix(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text("[limits]\nmax_parts = 10\n")
    (tmp_path / "m.eml").write_bytes(MAIL)
    out = json.loads(run_gateway("--config", str(cfg), "ingest", "--json", "m.eml", cwd=tmp_path).stdout)
    assert out["outcome"] == "quarantined"
    listed = json.loads(run_gateway("--config", str(cfg), "inbound", "list", "--state", "quarantined", "--json",
                                    cwd=tmp_path).stdout)
    assert [(r["message_id"], r["state"]) for r in listed] == [("scan-1@example.be", "quarantined")]
    assert "10" in listed[0]["detail"] and "part" in listed[0]["detail"]
    raw = run_gateway("--config", str(cfg), "inbound", "show", str(listed[0]["id"]), "--raw", cwd=tmp_path).stdout
    assert raw == MAIL  # kept byte for byte

    # A processed mail is never replayed: it would act twice.
    refused = run_gateway("--config", str(cfg), "inbound", "reprocess", "999", cwd=tmp_path, check=False)
    assert refused.returncode != 0 and "no received mail" in refused.stderr.decode()

    cfg.write_text("[limits]\nmax_parts = 100\n")
    again = run_gateway("--config", str(cfg), "inbound", "reprocess", "--quarantined", "--json", cwd=tmp_path)
    result = json.loads(again.stdout)
    assert result["outcome"] == "created" and result["ticket"] == "INC-000001"
    shown = json.loads(run_gateway("--config", str(cfg), "ticket", "show", "INC-000001", "--json",
                                   cwd=tmp_path).stdout)
    assert shown["personal_reference"] == "PO77"
    assert len(shown["messages"][0]["attachments"]) == 30
    second = run_gateway("--config", str(cfg), "inbound", "reprocess", str(listed[0]["id"]), cwd=tmp_path,
                         check=False)
    assert second.returncode != 0 and "processed, not quarantined" in second.stderr.decode()
