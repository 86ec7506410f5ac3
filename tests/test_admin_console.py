"""The admin console (issue 23) in a real headless Chromium (tests/harness/browser.py)
against a real `gateway serve` subprocess, and its security over real HTTP.

Browser: sign in, a wrong password, a form posted without its CSRF token; the French
"waiting" mail for reason customer-feedback edited beside its preview, saved, then the
next real mail of that kind (a customer's mail over SMTP, the agent's move to Waiting)
carries the new sentence in the delivered .eml; a template with an undefined variable
refused with its line; revert; a quarantined mail reprocessed.  Every page's screenshot
is kept (pytest's temporary folder, or $CONSOLE_SCREENSHOTS).

Security: every /admin URL answers 302 to the sign-in page (GET) or 401 without a
session; a session cookie replayed after sign-out is worth nothing; a preview whose
HTML holds <script> runs nothing (its frame is sandboxed, under its own CSP)."""

from __future__ import annotations

import email
import email.policy
import html
import json
import os
import re
import signal
import smtplib
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from email.message import EmailMessage
from pathlib import Path

import pytest

from conftest import ROOT, free_port, run_gateway, wait_for_port
from harness.browser import browser, shot
from harness.service import wait_until

PASSWORD = "a console password, long enough"
ADMIN = "ann.admin@example.com"
OTHER = "bob.admin@example.com"
SENTENCE = "Merci de nous envoyer la référence imprimée sous votre écran."


class Console:
    """`gateway serve` in a subprocess, its SMTP door and HTTP server on ports of their own."""

    def __init__(self, folder: Path, smtp_port: int, http_port: int):
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("GATEWAY_CONFIG", None)
        env.pop("GATEWAY_HTTP_PORT", None)  # the config's port (conftest sets a free one for other tests)
        self.folder, self.smtp_port, self.http_port = folder, smtp_port, http_port
        self.log = open(folder / "service.out", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(folder / "config.toml"),
                                      "serve"], cwd=folder, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_for_port(smtp_port, timeout=120, proc=self.proc)
        wait_for_port(http_port, timeout=120, proc=self.proc)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/readyz", timeout=30) as answer:
                return answer.status == 200
        except (OSError, urllib.error.HTTPError):  # 503, or a busy machine's late answer: ask again
            return False

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    folder = tmp_path_factory.mktemp("console")
    smtp_port, http_port = free_port(), free_port()
    (folder / "config.toml").write_text(f"""
[gateway]
addresses = ["helpdesk@desk.example.com"]
secret = "test-secret-of-at-least-32-bytes-0123456789"
unknown_senders = "quarantine"

[smtp]
port = {smtp_port}

[http]
port = {http_port}

[outbound]
transport = "file"
outbox_dir = "sent"

[templates]
override_dir = "overrides"

[admin]
attempts_per_minute = 100

[monitoring]
heartbeat_interval = 1
""")
    run_gateway("admins", "add", ADMIN, "--language", "en", cwd=folder, input=(PASSWORD + "\n").encode())
    run_gateway("admins", "add", OTHER, cwd=folder, input=(PASSWORD + "\n").encode())
    run_gateway("persons", "add", "marie.dupont@example.fr", "--name", "Marie Dupont", "--language", "fr",
                cwd=folder)
    service = Console(folder, smtp_port, http_port)
    try:
        wait_until(service.ready, timeout=240, interval=0.5)
        yield service
    finally:
        service.kill()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    named = os.environ.get("CONSOLE_SCREENSHOTS")
    return Path(named) if named else tmp_path_factory.mktemp("console-screenshots")


@pytest.fixture(scope="module")
def chromium():
    with browser() as launched:
        yield launched


@pytest.fixture
def page(chromium):
    context = chromium.new_context(viewport={"width": 1400, "height": 1000}, locale="en-GB")
    opened = context.new_page()
    yield opened
    context.close()


def url(console, path: str) -> str:
    return f"http://127.0.0.1:{console.http_port}{path}"


def sign_in(page, console, email: str = ADMIN, password: str = PASSWORD, then: str = "/admin/notifications"):
    page.goto(url(console, then))
    assert "/admin/sign-in" in page.url
    page.fill("#email", email)
    page.fill("#password", password)
    with page.expect_navigation():
        page.click("#sign-in")


def send_mail(console, sender: str, subject: str, body: str) -> None:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "helpdesk@desk.example.com"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<console-{time.time_ns()}@example.org>"
    msg.set_content(body)
    with smtplib.SMTP("127.0.0.1", console.smtp_port, timeout=30) as client:
        client.send_message(msg)


def gateway(console, *args: str) -> str:
    return run_gateway(*args, cwd=console.folder).stdout.decode()


# -- browser ----------------------------------------------------------------------------


def test_sign_in_with_a_wrong_password_then_the_right_one(page, console, shots):
    page.goto(url(console, "/admin/quarantine"))
    assert page.url.startswith(url(console, "/admin/sign-in?next="))
    shot(page, shots, "sign-in")
    page.fill("#email", ADMIN)
    page.fill("#password", "not the password at all")
    with page.expect_navigation() as answer:
        page.click("#sign-in")
    assert answer.value.status == 401
    assert page.text_content("#error").strip() == "Wrong address or password."
    shot(page, shots, "sign-in-wrong-password")
    page.fill("#password", PASSWORD)
    with page.expect_navigation():
        page.click("#sign-in")
    assert page.url == url(console, "/admin/quarantine")  # where it was going
    cookie = next(c for c in page.context.cookies() if c["name"] == "gw_admin")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/admin"
    assert not cookie["secure"]  # plain HTTP on loopback, no proxy: [admin] secure_cookies = "auto"
    page.goto(url(console, "/admin/notifications"))
    assert page.locator("#cell-waiting-customer-feedback-fr").text_content() == "shipped"
    shot(page, shots, "notifications")


def test_a_form_posted_without_its_csrf_token_is_refused(page, console, shots):
    sign_in(page, console)
    # The language form, its token taken out before it is sent, as a forged form would be.
    page.evaluate("document.querySelector('form[action=\"/admin/language\"] input[name=csrf]').remove()")
    page.select_option("#console-language", "fr")
    with page.expect_navigation() as answer:
        page.click("form[action='/admin/language'] button")
    assert answer.value.status == 403
    shot(page, shots, "csrf-refused")
    page.goto(url(console, "/admin/notifications"))
    assert page.get_attribute("html", "lang") == "en"  # nothing changed


def _edit_waiting_fr(page, console):
    page.goto(url(console, "/admin/notifications"))
    page.click("#cell-waiting-customer-feedback-fr")
    page.wait_for_load_state()
    page.click("#edit")
    page.wait_for_load_state()
    assert page.url.endswith("/admin/notifications/waiting/fr/edit?reason=customer-feedback")


def test_edit_the_french_waiting_mail_preview_save_and_the_next_real_mail_says_it(page, console, shots):
    sign_in(page, console)
    _edit_waiting_fr(page, console)
    before = page.text_content("#text")
    assert "Nous avons besoin d" in before and SENTENCE not in before
    shot(page, shots, "edit-before")

    text = page.input_value("#txt")
    html_source = page.input_value("#html-source")
    assert '{% include "waiting-reason.j2" %}' in text
    changed = '{% if waiting_reason == "customer-feedback" %}' + SENTENCE + '{% else %}{% include "waiting-reason.j2" %}{% endif %}'
    page.fill("#txt", text.replace('{% include "waiting-reason.j2" %}', changed))
    page.fill("#html-source", html_source.replace('{% include "waiting-reason.j2" %}', changed))
    with page.expect_navigation():
        page.click("#preview")
    assert SENTENCE in page.text_content("#text")  # the preview changed, nothing saved yet
    assert SENTENCE in page.frame_locator("#html").locator("body").text_content()
    assert page.locator("#cell-waiting-customer-feedback-fr").count() == 0
    shot(page, shots, "edit-preview")
    assert not (console.folder / "overrides" / "fr" / "waiting.txt.j2").exists()

    with page.expect_navigation():
        page.click("#save")
    assert page.text_content("#notice").strip() == "Saved: the next mail uses it."
    assert SENTENCE in page.text_content("#diff-txt")
    shot(page, shots, "edit-saved")
    assert SENTENCE in (console.folder / "overrides" / "fr" / "waiting.txt.j2").read_text()
    listed = {(r["event"], r["kind"]): r["overridden_in"]
              for r in json.loads(gateway(console, "templates", "list", "--json"))}
    assert listed[("waiting", "txt")] == ["fr"] and listed[("waiting", "html")] == ["fr"]
    assert listed[("new", "txt")] == []
    # "Send me a test": through the outbox and the configured transport, to the admin.
    with page.expect_navigation():
        page.click("#send-test")
    assert page.text_content("#notice").strip() == f"A test mail is queued to {ADMIN}."

    def test_mail():
        for path in (console.folder / "sent").glob("*.eml"):
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            if ADMIN in str(message["To"]):
                return message
        return None

    sample = wait_until(test_mail, timeout=60, interval=0.3)
    assert SENTENCE in sample.get_body(("plain",)).get_content() and sample["Content-Language"] == "fr"
    page.goto(url(console, "/admin/notifications"))
    assert page.text_content("#cell-waiting-customer-feedback-fr") == "overridden"
    assert page.text_content("#cell-waiting-customer-feedback-nl") == "shipped"

    # The next real mail: a French customer writes, the agent moves the ticket to Waiting.
    send_mail(console, "marie.dupont@example.fr", "Écran noir", "Mon écran reste noir depuis ce matin.")

    def ticket():
        listed = json.loads(gateway(console, "ticket", "list", "--json"))
        return next((t["number"] for t in listed if t["title"] == "Écran noir"), None)

    number = wait_until(ticket, timeout=60, interval=0.3)
    gateway(console, "ticket", "set-status", number, "waiting", "--waiting-reason", "customer-feedback")

    def delivered():
        for path in sorted((console.folder / "sent").glob("*.eml")):
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            if number in str(message["Subject"]) and message["Content-Language"] == "fr":
                text_part = message.get_body(("plain",)).get_content()
                if "attente" in text_part or SENTENCE in text_part:
                    return message
        return None

    message = wait_until(delivered, timeout=60, interval=0.3)
    assert SENTENCE in message.get_body(("plain",)).get_content()
    assert SENTENCE in html.unescape(message.get_body(("html",)).get_content())


def test_a_template_with_an_undefined_variable_is_refused_with_its_line(page, console, shots):
    sign_in(page, console)
    _edit_waiting_fr(page, console)
    text = page.input_value("#txt")
    lines = text.split("\n")
    body = next(i for i, line in enumerate(lines) if line.startswith("{% block body %}"))
    lines.insert(body + 1, "{{ customer_shoe_size }}")  # inside a block: outside, a child's text is never rendered
    page.fill("#txt", "\n".join(lines))
    with page.expect_navigation() as answer:
        page.click("#save")
    assert answer.value.status == 422
    errors = page.text_content("#errors")
    assert f"fr/waiting.txt.j2:{body + 2}: UndefinedError: 'customer_shoe_size' is undefined" in errors
    assert "customer-feedback" in errors and "third-party" in errors  # every waiting reason was rendered
    assert "customer_shoe_size" not in (console.folder / "overrides" / "fr" / "waiting.txt.j2").read_text() \
        if (console.folder / "overrides" / "fr" / "waiting.txt.j2").exists() else True
    shot(page, shots, "edit-refused")


def test_revert_to_an_earlier_version_and_to_the_shipped_template(page, console, shots):
    sign_in(page, console)
    _edit_waiting_fr(page, console)
    override = console.folder / "overrides" / "fr" / "waiting.txt.j2"
    if not override.exists():  # this test alone: save a first version
        page.fill("#txt", page.input_value("#txt").replace('{% include "waiting-reason.j2" %}', SENTENCE))
        with page.expect_navigation():
            page.click("#save")
    first = override.read_text()
    page.fill("#txt", page.input_value("#txt").replace("{% block body %}", "{% block body %}\nVersion deux.", 1))
    with page.expect_navigation():
        page.click("#save")
    assert "Version deux." in override.read_text()
    # The earlier version of the text part (the second row: the newest is the current one).
    with page.expect_navigation():
        page.locator("form[action$='/revert']:has(input[name=kind][value=txt]) button").nth(1).click()
    assert page.text_content("#notice").strip() == "Restored."
    assert override.read_text() == first
    shot(page, shots, "edit-versions")
    with page.expect_navigation():
        page.click("#revert-shipped")
    assert not override.exists()
    assert "Nous avons besoin d" in page.text_content("#text")
    page.goto(url(console, "/admin/notifications"))
    assert page.text_content("#cell-waiting-customer-feedback-fr") == "shipped"
    kept = list((console.folder / "overrides" / ".history" / "fr" / "waiting.txt.j2").glob("*.j2"))
    assert len(kept) >= 3  # every version saved is kept


def test_reprocess_a_quarantined_mail(page, console, shots):
    send_mail(console, "stranger@example.org", "Imprimante en panne <script>alert(1)</script>",
              "Bonjour, l'imprimante ne marche plus. <b>urgent</b>")

    def held():
        found = re.search(r'"id": (\d+)[^}]*"state": "quarantined"', gateway(console, "inbound", "list", "--json"))
        return found.group(1) if found else None

    inbound_id = wait_until(held, timeout=60, interval=0.3)
    sign_in(page, console, then="/admin/quarantine")
    page.click(f"#open-{inbound_id}")
    page.wait_for_load_state()
    assert "<script>alert(1)</script>" in page.text_content("#raw")  # shown as text, escaped
    assert page.locator("#raw script").count() == 0
    assert "Imprimante en panne" in page.text_content("#findings")
    shot(page, shots, "quarantined")
    gateway(console, "persons", "add", "stranger@example.org", "--language", "fr")  # the cause fixed
    with page.expect_navigation():
        page.click("#reprocess")
    assert page.text_content("#notice").strip() == f"Mail #{inbound_id} was processed again."
    shot(page, shots, "quarantine-after")
    shown = gateway(console, "inbound", "show", inbound_id, "--json")
    assert '"state": "processed"' in shown


def test_every_other_page_renders(page, console, shots):
    sign_in(page, console)
    for name, path in (("outbox", "/admin/outbox"), ("instances", "/admin/instances"),
                       ("languages", "/admin/languages"), ("wording", "/admin/wording"),
                       ("preview", "/admin/notifications/new/de")):
        answer = page.goto(url(console, path))
        assert answer.status == 200, path
        shot(page, shots, name)
        if name == "instances":
            assert page.locator("#checks").count() == 1
        if name == "wording":  # the catalogs side by side: the shipped French of a sentence
            row = page.locator("#wording tr", has_text="Kind regards,").first
            assert "Cordialement," in row.text_content()


def test_a_script_in_a_previewed_template_shows_and_runs_nothing(page, console, shots):
    sign_in(page, console)
    page.goto(url(console, "/admin/notifications/solved/nl/edit"))
    source = page.input_value("#html-source")
    hostile = ("{% block body %}<p id=shown>Opgelost.</p><script>document.getElementById('shown').textContent="
               "'RAN'; try { parent.document.title = 'owned'; } catch (e) {} "
               "fetch('/admin/outbox', {credentials: 'include'});</script>")
    page.fill("#html-source", source.replace("{% block body %}", hostile, 1))
    with page.expect_navigation():
        page.click("#preview")
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    page.reload()
    frame = page.frame_locator("#html")
    assert frame.locator("#shown").text_content() == "Opgelost."  # shown, never run
    assert "owned" not in page.title()
    assert page.get_attribute("#html", "sandbox") == ""
    assert not any(u.endswith("/admin/outbox") for u in requests)
    shot(page, shots, "script-preview")
    frame_url = url(console, page.get_attribute("#html", "src"))
    answer = page.request.get(frame_url)
    policy = answer.headers["content-security-policy"]
    assert policy.startswith("sandbox;") and "default-src 'none'" in policy and "script-src" not in policy


# -- security over plain HTTP ----------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def http(console, path: str, *, data: dict | None = None, cookie: str = "") -> tuple[int, dict, str]:
    request = urllib.request.Request(url(console, path), data=urllib.parse.urlencode(data).encode()
                                     if data is not None else None)
    if cookie:
        request.add_header("Cookie", cookie)
    opener = urllib.request.build_opener(_NoRedirect())
    try:
        with opener.open(request, timeout=30) as answer:
            return answer.status, dict(answer.headers), answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


def admin_routes(console) -> list[tuple[str, str]]:
    """(method, path) of every route under /admin, from the application itself."""
    from types import SimpleNamespace

    from gateway.config import load_config
    from gateway.http import create_app

    found = []

    def walk(routes):
        for route in routes:
            if hasattr(route, "effective_route_contexts"):  # FastAPI's included routers
                for context in route.effective_route_contexts():
                    found.extend((m, context.path) for m in context.methods)
            elif getattr(route, "path", None):
                found.extend((m, route.path) for m in (getattr(route, "methods", None) or ()))

    walk(create_app(SimpleNamespace(config=None), config=load_config(console.folder / "config.toml")).routes)
    return sorted({(m, p) for m, p in found if p.startswith("/admin") and m != "HEAD"})


def test_every_admin_url_needs_a_session(console):
    routes = admin_routes(console)
    assert len(routes) >= 15
    public = {("GET", "/admin/sign-in"), ("POST", "/admin/sign-in"), ("GET", "/admin/static/{name}")}
    assert public <= set(routes)
    values = {"event": "waiting", "lang": "fr", "inbound_id": "1", "outbox_id": "1", "name": "console.css"}
    for method, path in routes:
        if (method, path) in public:
            continue
        concrete = re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)
        status, headers, _ = http(console, concrete, data={"csrf": "x"} if method == "POST" else None)
        if method == "GET":
            assert status == 302, (method, path, status)
            assert headers["location"].startswith("/admin/sign-in?next="), (path, headers["location"])
        else:
            assert status == 401, (method, path, status)


def _signed_in(console, email: str) -> tuple[str, str]:
    status, headers, body = http(console, "/admin/sign-in")
    token = re.search(r'name="csrf" value="([^"]+)"', body).group(1)
    pre = re.search(r"gw_admin_pre=([^;]+)", headers["set-cookie"]).group(1)
    status, headers, _ = http(console, "/admin/sign-in", data={"csrf": token, "email": email, "password": PASSWORD},
                              cookie=f"gw_admin_pre={pre}")
    assert status == 303, status
    cookie = "gw_admin=" + re.search(r"gw_admin=([^;]+)", headers["set-cookie"]).group(1)
    _, _, page_body = http(console, "/admin/notifications", cookie=cookie)
    csrf = html.unescape(re.search(r'name="csrf" value="([^"]+)"', page_body).group(1))
    return cookie, csrf


def test_a_session_cannot_be_replayed_after_sign_out(console):
    cookie, csrf = _signed_in(console, OTHER)
    assert http(console, "/admin/notifications", cookie=cookie)[0] == 200
    status, headers, _ = http(console, "/admin/sign-out", data={"csrf": csrf}, cookie=cookie)
    assert status == 303 and 'gw_admin=""' in headers["set-cookie"] or "Max-Age=0" in headers["set-cookie"]
    # The same cookie, sent again as an attacker who kept it would.
    status, headers, _ = http(console, "/admin/notifications", cookie=cookie)
    assert status == 302 and headers["location"].startswith("/admin/sign-in")
    assert http(console, "/admin/language", data={"csrf": csrf, "language": "de"}, cookie=cookie)[0] == 401
    # Another admin's session is untouched by it.
    other, _ = _signed_in(console, ADMIN)
    assert http(console, "/admin/notifications", cookie=other)[0] == 200


def test_the_sign_in_form_needs_its_own_token_and_pages_carry_a_strict_policy(console):
    status, _, body = http(console, "/admin/sign-in", data={"email": ADMIN, "password": PASSWORD})
    assert status == 403 and "gw_admin=" not in body
    cookie, _ = _signed_in(console, OTHER)
    status, headers, _ = http(console, "/admin/notifications", cookie=cookie)
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY" and headers["cache-control"] == "no-store"


def test_the_console_speaks_the_admins_language_and_needs_no_mouse(page, console, shots):
    page.goto(url(console, "/admin/notifications"))
    # The keyboard alone: the address field has the focus, Tab to the password, Enter.
    page.keyboard.type(OTHER)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.url == url(console, "/admin/notifications")
    page.focus("#console-language")
    page.select_option("#console-language", "fr")
    page.keyboard.press("Tab")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.get_attribute("html", "lang") == "fr"
    assert page.text_content("#sign-out").strip() == "Se déconnecter"
    assert page.text_content("#cell-waiting-customer-feedback-de") in ("d'origine", "personnalisé")
    shot(page, shots, "notifications-fr")
    for lang, word in (("nl", "Afmelden"), ("de", "Abmelden"), ("en", "Sign out")):
        page.select_option("#console-language", lang)
        with page.expect_navigation():
            page.click("form[action='/admin/language'] button")
        assert page.text_content("#sign-out").strip() == word
