"""The HTTP API (/api/v1, issue 22) over real HTTP against a `gateway serve` subprocess,
on SQLite and PostgreSQL: tokens made by the command line, each role refused where it
must be, a revoked token refused at once, guessing limited; a mail sent by SMTP appears
in the API, a status change by API mails the customer as the command line's does; each
error a problem document; comments with files; pages of tickets by cursor; the OpenAPI
document and its page, with nothing from elsewhere."""

from __future__ import annotations

import json
import uuid

import pytest

from conftest import free_port
from harness.api import Api, answers, send_mail, service_config
from harness.http import HttpService as Service
from harness.relay import running_relay
from harness.service import wait_until

HELPDESK = "helpdesk@desk.example.com"


@pytest.fixture
def api(tmp_path, database_url):
    with running_relay() as relay:
        smtp_port, http_port = free_port(), free_port()
        service_config(tmp_path, database_url, smtp_port, http_port, relay.port)
        service = Service(tmp_path, smtp_port, http_port)
        try:
            client = Api(service, tmp_path, relay)
            wait_until(lambda: answers(service), timeout=180, interval=0.5)
            yield client
        finally:
            service.kill()


def is_problem(answer, status: int) -> dict:
    got_status, headers, body = answer
    assert got_status == status, (got_status, body)
    assert headers["Content-Type"].startswith("application/problem+json"), headers["Content-Type"]
    assert body["status"] == status and body["title"] and body["detail"], body
    return body


def test_tokens_roles_revocation_and_guessing(api):
    reader, agent = api.token("dashboard", "read"), api.token("chatbot", "agent")
    admin = api.token("ops", "admin")
    # Only the hash is kept: no token in the list, nor anywhere in the database's answer.
    listed = api.gateway("tokens", "list", "--json").stdout.decode()
    assert "dashboard" in listed and reader not in listed and reader[8:] not in listed

    # Without a token, with a wrong one: 401 with the scheme named.
    body = is_problem(api.call("GET", "/tickets"), 401)
    assert "Bearer" in body["detail"]
    assert api.call("GET", "/tickets")[1]["WWW-Authenticate"].startswith("Bearer")
    is_problem(api.call("GET", "/tickets", "gwt_" + "x" * 43), 401)
    # Each role where it may and may not.
    for token in (reader, agent, admin):
        assert api.call("GET", "/tickets", token)[0] == 200
    new = {"process": "incident", "reporter": "jan.peeters@example.be", "title": "VPN drops",
           "description": "The VPN drops every ten minutes."}
    body = is_problem(api.call("POST", "/tickets", reader, new), 403)
    assert "read" in body["detail"] and "agent" in body["detail"]
    assert api.call("POST", "/tickets", agent, new)[0] == 201
    is_problem(api.call("GET", "/inbound", reader), 403)
    is_problem(api.call("GET", "/inbound", agent), 403)
    assert api.call("GET", "/inbound", admin)[0] == 200
    is_problem(api.call("POST", "/outbox/retry", agent, {"failed": True}), 403)

    # A revoked token is refused from its next request on.
    assert api.call("GET", "/tickets", agent)[0] == 200
    api.gateway("tokens", "revoke", "chatbot")
    is_problem(api.call("GET", "/tickets", agent), 401)
    assert "revoked" in api.gateway("tokens", "list").stdout.decode()

    # Guessing: after ten failures in a minute this client is refused (429) even with a
    # good token, told when to come back.
    for _ in range(8):  # 2 failures above, the revoked one makes 3... up to the limit
        api.call("GET", "/tickets", "gwt_guess")
    status, headers, body = api.call("GET", "/tickets", reader)
    assert status == 429 and int(headers["Retry-After"]) >= 1, (status, body)
    assert body["status"] == 429


def test_mail_in_api_status_by_api_mails_the_customer(api):
    agent, reader = api.token("agent-tool", "agent"), api.token("reports", "read")
    send_mail(api.service.smtp_port, "Printer on floor 2 jams ##PO4711##", "It jams at every page.",
              attachment=("../../etc/passwd.html", "text/html", b"<script>alert(1)</script>"))
    found = wait_until(lambda: api.call("GET", "/tickets?q=floor%202", reader)[2]["items"], timeout=60)
    assert len(found) == 1 and found[0]["personal_reference"] == "PO4711"
    number = found[0]["number"]
    assert found[0]["affected_person"] == "marie.dupont@example.be" and found[0]["status"] == "New"
    # Searched by each field alone.
    for query in ("number=" + number, "title=jams", "status=New", "person=dupont", "reference=PO4711",
                  "process=incident", "created_from=2000-01-01T00:00:00Z"):
        assert [t["number"] for t in api.call("GET", f"/tickets?{query}", reader)[2]["items"]] == [number], query
    for query in ("status=Closed", "person=nobody", "reference=PO1", "process=change",
                  "updated_to=2000-01-01T00:00:00Z"):
        assert api.call("GET", f"/tickets?{query}", reader)[2]["items"] == [], query

    status, _, ticket = api.call("GET", f"/tickets/{number}", reader)
    assert status == 200 and ticket["messages"][0]["direction"] == "in"
    assert "jams at every page" in ticket["messages"][0]["body_text"]
    assert ticket["history"][0]["to_status"] == "New"
    attachment = ticket["messages"][0]["attachments"][0]
    # Downloaded as a file: the stored HTML never shown as a page.
    status, headers, data = api.call("GET", f"/tickets/{number}/attachments/{attachment['id']}", reader)
    assert status == 200 and data == b"<script>alert(1)</script>"
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Disposition"].startswith("attachment;") and "passwd.html" in headers["Content-Disposition"]
    is_problem(api.call("GET", f"/tickets/{number}/attachments/999999", reader), 404)

    # The confirmation went out; now a status change by API mails the customer.
    wait_until(lambda: api.mails_to("marie.dupont@example.be"), timeout=60)
    before = len(api.mails_to("marie.dupont@example.be"))
    status, _, done = api.call("POST", f"/tickets/{number}/status", agent,
                               {"status": "waiting", "waiting_reason": "customer-feedback",
                                "note": "Which tray do you print from?"})
    assert status == 200 and done["status"] == "Waiting" and done["mails"] == ["waiting"], done
    assert done["recipients"] == ["marie.dupont@example.be"]
    mails = wait_until(lambda: api.mails_to("marie.dupont@example.be")[before:], timeout=60)
    assert number in mails[0]["Subject"] and "Which tray" in mails[0].get_body(("plain",)).get_content()
    history = api.call("GET", f"/tickets/{number}", reader)[2]["history"]
    assert (history[-1]["from_status"], history[-1]["to_status"], history[-1]["by"]) == \
        ("New", "Waiting", "token:agent-tool")
    # The same move by the command line gives the same history line and the same mail.
    api.gateway("ticket", "set-status", number, "in-progress", "--by", "token:agent-tool")
    api.gateway("ticket", "set-status", number, "waiting", "--waiting-reason", "customer-feedback",
                "--note", "Which tray do you print from?", "--by", "token:agent-tool")
    again = api.call("GET", f"/tickets/{number}", reader)[2]["history"]
    assert {k: again[-1][k] for k in ("from_status", "to_status", "by", "note")} == \
        {"from_status": "In progress", "to_status": "Waiting", "by": "token:agent-tool",
         "note": history[-1]["note"]}

    # Each error: a move the manual forbids (409, both statuses), a missing field (422,
    # the field), an unknown ticket (404), a bad body (422).
    body = is_problem(api.call("POST", f"/tickets/{number}/status", agent, {"status": "New"}), 409)
    assert (body["from_status"], body["to_status"]) == ("Waiting", "New")
    assert "Waiting" in body["detail"] and "New" in body["detail"]
    body = is_problem(api.call("POST", f"/tickets/{number}/status", agent, {"status": "Rejected"}), 422)
    assert body["field"] == "reason" and "reason" in body["detail"]
    body = is_problem(api.call("POST", f"/tickets/{number}/status", agent, {"status": "Solved"}), 422)
    assert body["field"] == "solution"
    body = is_problem(api.call("POST", "/tickets/INC-999999/status", agent, {"status": "Solved",
                                                                             "solution": "x"}), 404)
    assert "INC-999999" in body["detail"]
    is_problem(api.call("GET", "/tickets/INC-999999", reader), 404)
    body = is_problem(api.call("POST", f"/tickets/{number}/status", agent, {"reason": "x"}), 422)
    assert body["field"] == "status"
    is_problem(api.call("POST", f"/tickets/{number}/status", agent, raw=b"{not json", content_type="application/json"),
               422)
    body = is_problem(api.call("POST", "/tickets", agent, {"process": "incident", "reporter": "a@example.be",
                                                           "title": "x"}), 422)
    assert body["field"] == "description"
    is_problem(api.call("GET", "/tickets?cursor=garbage", reader), 422)

    # A comment with files, as multipart: names cleaned as a mail's are.
    boundary = "----gw" + uuid.uuid4().hex
    parts = [("text", None, None, b"Tray 2, the paper is A4."), ("internal", None, None, b"false"),
             ("files", "..\\..\\photo.png", "image/png", b"\x89PNG\r\n\x1a\nfake"),
             ("files", "notes\u202egpj.exe", "application/x-msdownload", b"MZ")]
    payload = b""
    for name, filename, kind, data in parts:
        payload += f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"".encode()
        if filename:
            payload += f"; filename=\"{filename}\"\r\nContent-Type: {kind}".encode()
        payload += b"\r\n\r\n" + data + b"\r\n"
    payload += f"--{boundary}--\r\n".encode()
    status, _, done = api.call("POST", f"/tickets/{number}/comments", agent, raw=payload,
                               content_type=f"multipart/form-data; boundary={boundary}")
    assert status == 201, done
    shown = api.call("GET", f"/tickets/{number}", reader)[2]
    note = shown["messages"][-1]
    assert note["direction"] == "note" and note["body_text"] == "Tray 2, the paper is A4." and not note["internal"]
    names = [a["filename"] for a in note["attachments"]]
    assert names == ["photo.png", "notesgpj.exe"], names
    png = api.call("GET", f"/tickets/{number}/attachments/{note['attachments'][0]['id']}", reader)
    assert png[1]["Content-Type"] == "image/png" and png[2].startswith(b"\x89PNG")
    exe = api.call("GET", f"/tickets/{number}/attachments/{note['attachments'][1]['id']}", reader)
    assert exe[1]["Content-Type"] == "application/octet-stream"
    body = is_problem(api.call("POST", f"/tickets/{number}/comments", agent, {"text": "  "}), 422)
    assert "text" in body["detail"]
    assert api.call("POST", f"/tickets/{number}/comments", agent, {"text": "Checked with the vendor.",
                                                                   "internal": True})[0] == 201
    assert api.call("GET", f"/tickets/{number}", reader)[2]["messages"][-1]["internal"] is True

    # Every write is in the audit log with the token's name; the access log holds no
    # ticket content (no title, no search text, no comment).
    log = (api.folder / "gateway.log").read_text()
    access = [json.loads(line) for line in log.splitlines() if '"gateway.http.access"' in line]
    assert any("/tickets/{number}/status" in a["message"] and "token:agent-tool" in a["message"] for a in access)
    for secret in ("floor", "jams", "Tray 2", "PO4711", "passwd", "dupont"):
        assert not [a for a in access if secret in a["message"]], secret


def test_created_by_api_confirmed_and_audited_pages_by_cursor(api, database_url):
    agent, reader = api.token("phone-desk", "agent"), api.token("reporting", "read")
    numbers = []
    for n in range(5):
        status, _, done = api.call("POST", "/tickets", agent, {
            "process": "service-request", "reporter": f"user{n}@example.be", "title": f"New laptop {n}",
            "description": "A laptop for the new colleague.", "reference": f"REQ-{n}"})
        assert status == 201 and done["mails"] == ["new"] and done["recipients"] == [f"user{n}@example.be"]
        numbers.append(done["number"])
    # The same confirmation as the phone channel's.
    for n in range(5):
        mail = wait_until(lambda: api.mails_to(f"user{n}@example.be"), timeout=60)[0]
        assert numbers[n] in mail["Subject"]
    # Pages of two, by cursor, every ticket once, in order.
    seen, cursor = [], None
    while True:
        status, _, page = api.call("GET", "/tickets?limit=2" + (f"&cursor={cursor}" if cursor else ""), reader)
        assert status == 200 and len(page["items"]) <= 2
        seen += [t["number"] for t in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == numbers
    # Closed ones only when asked for.
    closing = numbers[0]
    api.gateway("ticket", "set-status", closing, "rejected", "--reason", "duplicate")
    api.gateway("ticket", "set-status", closing, "closed")
    assert closing not in [t["number"] for t in api.call("GET", "/tickets", reader)[2]["items"]]
    assert closing in [t["number"] for t in api.call("GET", "/tickets?all=true", reader)[2]["items"]]
    assert [t["number"] for t in api.call("GET", "/tickets?status=Closed", reader)[2]["items"]] == [closing]
    body = is_problem(api.call("POST", f"/tickets/{closing}/comments", agent, {"text": "late"}), 409)
    assert "Closed" in body["detail"]
    # The audit log names the token for each write, in the change's transaction.
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    with engine.connect() as conn:
        rows = conn.execute(text("select actor, action, target, client from auditentry order by id")).all()
    engine.dispose()
    writes = [(a, act, t) for a, act, t, _ in rows if a.startswith("token:")]
    assert writes == [("token:phone-desk", "ticket.create", n) for n in numbers]
    assert all(c == "127.0.0.1" for a, _, _, c in rows if a.startswith("token:"))


def test_openapi_and_its_page_need_nothing_from_elsewhere(api):
    status, headers, spec = api.call("GET", "/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.")
    paths = spec["paths"]
    for path in ("/tickets", "/tickets/{number}", "/tickets/{number}/status", "/tickets/{number}/comments",
                 "/tickets/{number}/attachments/{attachment_id}"):
        assert path in paths, path
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    status, headers, page = api.call("GET", "/docs")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    text = page.decode()
    assert "/tickets/{number}/status" in text and "openapi.json" in text
    # No script, no style sheet, no font, no image from anywhere: the page is all there is.
    assert "<script" not in text and "<link" not in text and "<img" not in text
    assert "http://" not in text and "https://" not in text and "//cdn" not in text


def test_people_inbound_outbox_templates(api):
    agent, admin, reader = api.token("crm", "agent"), api.token("admin-tool", "admin"), api.token("bi", "read")
    # People: add, update, read, import; companies.
    status, _, person = api.call("POST", "/people", agent, {"email": "Luc.Janssens@Example.be", "name": "Luc Janssens",
                                                            "language": "nl", "company": "Acme"})
    assert status == 201 and person["created"] and person["email"] == "luc.janssens@example.be"
    status, _, person = api.call("PATCH", "/people/luc.janssens@example.be", agent, {"timezone": "Europe/Amsterdam"})
    assert status == 200 and (person["timezone"], person["language"], person["company"]) == \
        ("Europe/Amsterdam", "nl", "Acme")
    body = is_problem(api.call("PATCH", "/people/luc.janssens@example.be", agent, {"timezone": "Mars/Olympus"}), 409)
    assert "Mars/Olympus" in body["detail"]
    is_problem(api.call("PATCH", "/people/nobody@example.be", agent, {"name": "X"}), 404)
    is_problem(api.call("POST", "/people", reader, {"email": "x@example.be"}), 403)
    csv_text = "email,name,language\nsofie@example.be,Sofie,fr\nnot-an-address,Bad,en\n"
    is_problem(api.call("POST", "/people/import", agent, raw=csv_text.encode(), content_type="text/csv"), 403)
    status, _, result = api.call("POST", "/people/import", admin, raw=csv_text.encode(), content_type="text/csv")
    assert status == 200 and (result["added"], result["updated"]) == (1, 0)
    assert result["errors"][0]["line"] == 3
    page = api.call("GET", "/people?limit=1", reader)[2]
    assert len(page["items"]) == 1 and page["next_cursor"]
    rest = api.call("GET", f"/people?cursor={page['next_cursor']}", reader)[2]["items"]
    assert {p["email"] for p in page["items"] + rest} == {"luc.janssens@example.be", "sofie@example.be"}
    assert api.call("GET", "/people/sofie@example.be", reader)[2]["language"] == "fr"
    assert api.call("PUT", "/companies/Acme", agent, {"language": "nl"})[0] == 200
    assert api.call("GET", "/companies", reader)[2] == [{"name": "Acme", "language": "nl"}]

    # Inbound: a mail, shown with its outcome, its raw bytes as received; only quarantined
    # mail is processed again.
    send_mail(api.service.smtp_port, "Monitor flickers", "The monitor flickers.", sender="luc.janssens@example.be")
    rows = wait_until(lambda: [r for r in api.call("GET", "/inbound", admin)[2]["items"]
                               if r["state"] == "processed"], timeout=60)
    mail = api.call("GET", f"/inbound/{rows[0]['id']}", admin)[2]
    assert mail["outcome"] == "created" and mail["ticket"]
    status, headers, raw = api.call("GET", f"/inbound/{rows[0]['id']}/raw", admin)
    assert status == 200 and b"The monitor flickers." in raw and headers["Content-Type"] == "message/rfc822"
    body = is_problem(api.call("POST", "/inbound/reprocess", admin, {"ids": [rows[0]["id"]]}), 409)
    assert "not quarantined" in body["detail"]
    is_problem(api.call("POST", "/inbound/reprocess", admin, {"ids": [999999]}), 404)
    is_problem(api.call("GET", "/inbound/999999", admin), 404)

    # Outbox: the confirmation with its attempts; sent again.
    sent = wait_until(lambda: [r for r in api.call("GET", "/outbox?state=sent", admin)[2]["items"]
                               if r["to"] == ["luc.janssens@example.be"]], timeout=60)
    shown = api.call("GET", f"/outbox/{sent[0]['id']}", admin)[2]
    assert shown["attempts_log"][0]["outcome"] == "sent" and shown["ticket"] == mail["ticket"]
    before = len(api.mails_to("luc.janssens@example.be"))
    status, _, retried = api.call("POST", "/outbox/retry", admin, {"ids": [sent[0]["id"], 999999]})
    assert status == 200 and retried == {"ids": [sent[0]["id"]], "missing": [999999]}
    wait_until(lambda: len(api.mails_to("luc.janssens@example.be")) > before, timeout=60)
    is_problem(api.call("GET", "/outbox/999999", admin), 404)
    is_problem(api.call("POST", "/outbox/retry", admin, {}), 409)

    # Templates: the list, a preview on sample data and on the ticket, the check.
    listed = api.call("GET", "/templates", reader)[2]
    assert {"new", "waiting"} <= {t["event"] for t in listed}
    status, _, preview = api.call("GET", "/templates/waiting/preview?language=fr&waiting_reason=third-party", reader)
    assert status == 200 and preview["language"] == "fr" and preview["text"] and "Subject:" in preview["raw"]
    status, _, on_ticket = api.call("GET", f"/templates/solved/preview?ticket={mail['ticket']}", reader)
    assert status == 200 and mail["ticket"] in on_ticket["subject"]
    is_problem(api.call("GET", "/templates/nonsense/preview", reader), 409)
    is_problem(api.call("GET", "/templates/new/preview?ticket=INC-999999", reader), 404)
    status, _, checked = api.call("GET", "/templates/check", reader)
    assert status == 200 and checked["cases"] > 0 and checked["failures"] == []
    # Every write above is in the audit log under the token's name.
    from sqlalchemy import create_engine, text

    engine = create_engine(api_database(api))
    with engine.connect() as conn:
        actions = {(a, act) for a, act in conn.execute(text("select actor, action from auditentry"))}
    engine.dispose()
    assert {("token:crm", "person.add"), ("token:crm", "person.update"), ("token:admin-tool", "person.import"),
            ("token:crm", "company.language"), ("token:admin-tool", "outbox.retry")} <= actions


def api_database(api: Api) -> str:
    import tomllib

    return tomllib.loads((api.folder / "config.toml").read_text())["database"]["url"]
