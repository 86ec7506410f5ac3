"""The mail templates and catalogs: complete translations, the check an admin runs, the
override folder, preview, list and compile."""

from __future__ import annotations

import gettext
import json
import re
import shutil

import pytest
from babel.messages.pofile import read_po
from sqlmodel import select

from conftest import run_gateway
from gateway import actions
from gateway.outbound.outbox import render_pending
from gateway.app import App
from gateway.config import load_config
from gateway.outbound.render import EVENTS, LANGUAGES, SHIPPED_DIR, compile_catalogs
from gateway.commands.templates import run_check
from store.db import session_for
from store.lifecycle import StatusData
from store.models import Outbox, Person

MANUAL_EVENTS = ("new", "rejected", "waiting", "postponed", "planned", "solved", "approval")
LOCALE = SHIPPED_DIR / "locale"
# Words that are the same in the other language.
SAME_WORD = {"fr": {"Incident", "Classification"}, "nl": {"Ticket:", "Incident", "Status:"},
             "de": {"Ticket:", "Status:"}}
# Only placeholders and marks that every language writes alike.
SAME_EVERYWHERE = {"%(number)s (%(process)s)"}
PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def catalog(lang):
    with open(LOCALE / lang / "LC_MESSAGES" / "mail.po", "rb") as fh:
        return read_po(fh, locale=lang)


def template_ids():
    with open(LOCALE / "mail.pot", "rb") as fh:
        return {m.id for m in read_po(fh) if m.id}


@pytest.mark.parametrize("lang", ["fr", "nl", "de", "en"])
def test_catalogs_are_complete_translations(lang):
    cat = catalog(lang)
    ids = {m.id for m in cat if m.id}
    assert ids == template_ids(), "catalog out of step with mail.pot: run pybabel update"
    for m in cat:
        if not m.id:
            continue
        assert m.string and not m.fuzzy, f"{lang}: {m.id!r} is not translated"
        # Word order may change; the placeholders may not.
        assert sorted(PLACEHOLDER.findall(m.string)) == sorted(PLACEHOLDER.findall(m.id)), f"{lang}: {m.id!r}"
        if lang == "en":
            assert m.string == m.id
        elif m.id not in SAME_WORD[lang] | SAME_EVERYWHERE:
            assert m.string != m.id, f"{lang}: {m.id!r} is still English"


def test_shipped_templates_pass_the_check_for_the_manual_events(sqlite_gw):
    assert run_check(sqlite_gw, events=MANUAL_EVENTS) == []


def _stub_missing_events(override):
    """Templates of the events another part of the gateway ships, when they are not here yet."""
    for event in EVENTS:
        for kind in ("txt", "html"):
            if not (SHIPPED_DIR / f"{event}.{kind}.j2").exists():
                (override / f"{event}.{kind}.j2").write_text(
                    f'{{% extends "base.{kind}.j2" %}}\n{{% block subject %}}{event}{{% endblock %}}\n'
                    f'{{% block body %}}{{{{ ticket.number }}}}{{% endblock %}}\n')


def _config(tmp_path, override):
    (tmp_path / "config.toml").write_text(f'[templates]\noverride_dir = "{override.name}"\n')
    return tmp_path / "config.toml"


def test_templates_check_passes_on_shipped_and_fails_on_a_broken_override_naming_file_and_line(tmp_path):
    override = tmp_path / "mail-override"
    override.mkdir()
    _stub_missing_events(override)
    cfg = _config(tmp_path, override)
    ok = run_gateway("--config", str(cfg), "templates", "check", "--json", cwd=tmp_path)
    report = json.loads(ok.stdout)
    assert report["failures"] == [] and report["cases"] == (len(EVENTS) + 6) * len(LANGUAGES)

    # A syntax error on line 3 of an override.
    (override / "solved.txt.j2").write_text('{% extends "base.txt.j2" %}\n{% block body %}\n{% if solution %}\n'
                                            '{{ solution }}\n{% endblock %}\n')
    bad = run_gateway("--config", str(cfg), "templates", "check", cwd=tmp_path, check=False)
    assert bad.returncode == 1
    err = bad.stderr.decode()
    assert str(override / "solved.txt.j2") + ":" in err
    assert re.search(r"solved\.txt\.j2:\d+: ", err)
    assert "FAIL solved/fr" in err and "FAIL solved/de" in err and "FAIL planned" not in err

    # An undefined variable on line 4 of an override is an error too (not an empty string).
    (override / "solved.txt.j2").unlink()
    (override / "planned.html.j2").write_text('{% extends "base.html.j2" %}\n{% block body %}\n<p>\n'
                                              '{{ appointmnet|datetime(recipient.timezone) }}\n</p>\n'
                                              '{% endblock %}\n')
    bad = run_gateway("--config", str(cfg), "templates", "check", "--json", cwd=tmp_path, check=False)
    assert bad.returncode == 1
    failures = json.loads(bad.stdout)["failures"]
    assert {f["event"] for f in failures} == {"planned"} and len(failures) == 4
    assert all(f"{override / 'planned.html.j2'}:4: " in f["error"] and "appointmnet" in f["error"] for f in failures)


def test_templates_check_reports_a_missing_template_as_a_failure(tmp_path):
    override = tmp_path / "mail-override"
    override.mkdir()
    cfg = _config(tmp_path, override)
    app = App(load_config(cfg, env={}))
    failures = run_check(app)
    missing = {f.event for f in failures}
    shipped = {e for e in EVENTS if (SHIPPED_DIR / f"{e}.txt.j2").exists()}
    assert missing == set(EVENTS) - shipped
    assert all("template not found" in f.error for f in failures)


def test_an_override_replaces_a_template_and_a_catalog_overrides_wordings(tmp_path):
    override = tmp_path / "mail-override"
    (override / "locale" / "fr" / "LC_MESSAGES").mkdir(parents=True)
    (override / "new.txt.j2").write_text('{% extends "base.txt.j2" %}\n{% block subject %}Merci !{% endblock %}\n'
                                         '{% block body %}Bien reçu, {{ ticket.number }}.{% endblock %}\n')
    (override / "locale" / "fr" / "LC_MESSAGES" / "mail.po").write_text(
        'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=utf-8\\n"\n\n'
        'msgid "Kind regards,"\nmsgstr "Bien à vous,"\n', encoding="utf-8")
    cfg = _config(tmp_path, override)
    out = run_gateway("--config", str(cfg), "templates", "preview", "new", "--lang", "fr", cwd=tmp_path).stdout.decode()
    assert "Bien reçu, INC-000123." in out and "Bien à vous," in out and "Cordialement" not in out
    # The Subject is the ticket's own, as sent (threading); the override's headline opens the text.
    assert "Subject: [INC-000123] L'imprimante du 3e étage est en panne" in out
    assert "--- text/plain ---\nMerci !\n" in out
    # The shipped wordings the override does not touch are still there, in the HTML too.
    assert "Titre" in out and "<p>Bien à vous,<br>" in out
    listing = json.loads(run_gateway("--config", str(cfg), "templates", "list", "--json", cwd=tmp_path).stdout)
    origin = {(r["event"], r["kind"]): r["origin"] for r in listing}
    assert origin[("new", "txt")] == "override" and origin[("new", "html")] == "shipped"
    assert len(listing) == 2 * len(EVENTS)


def test_preview_with_sample_data_and_with_a_real_ticket(tmp_path):
    out = run_gateway("templates", "preview", "waiting", "--lang", "de", "--waiting-reason", "rfc",
                      cwd=tmp_path).stdout.decode()
    assert "Content-Language: de" in out and "--- text/plain ---" in out and "--- text/html ---" in out
    assert "CHG-000042" in out and "Für Ihr Ticket ist eine Nicht-Standard-Änderung nötig" in out
    run_gateway("ticket", "create", "--process", "incident", "--reporter", "jan@example.com", "--title",
                "Scherm zwart", "--description", "Het scherm blijft zwart.", cwd=tmp_path)
    run_gateway("persons", "add", "jan@example.com", "--language", "nl", "--name", "Jan", cwd=tmp_path)
    run_gateway("ticket", "set-status", "INC-000001", "Solved", "--solution", "Kabel vervangen.", cwd=tmp_path)
    data = json.loads(run_gateway("templates", "preview", "solved", "--ticket", "INC-000001", "--json",
                                  cwd=tmp_path).stdout)
    assert data["language"] == "nl" and "Kabel vervangen." in data["text"] and "Beste Jan," in data["text"]
    assert data["headers"]["To"] == "Jan <jan@example.com>"
    # The ticket's own subject (threading); the event's headline opens the text.
    assert data["subject"] == "[INC-000001] Scherm zwart"
    assert data["text"].startswith("Uw ticket is opgelost")
    # A preview queues nothing: only the two mails of the two moves are in the outbox.
    outbox = json.loads(run_gateway("outbox", "list", "--json", cwd=tmp_path).stdout)
    assert [r["event"] for r in outbox] == ["new", "solved"]


def test_compiled_catalogs_are_read_by_gettext(tmp_path):
    shutil.copytree(LOCALE, tmp_path / "locale")
    written = compile_catalogs(tmp_path)
    assert sorted(p.parent.parent.name for p in written) == sorted(LANGUAGES)
    with open(tmp_path / "locale" / "de" / "LC_MESSAGES" / "mail.mo", "rb") as fh:
        assert gettext.GNUTranslations(fh).gettext("Kind regards,") == "Mit freundlichen Grüßen"


def test_a_broken_override_catalog_fails_the_check_but_never_stops_a_mail(tmp_path):
    override = tmp_path / "mail-override"
    po = override / "locale" / "fr" / "LC_MESSAGES" / "mail.po"
    po.parent.mkdir(parents=True)
    po.write_text('msgid ""\nmsgstr ""\n\nmsgid "Kind regards,"\nthis is not a catalog line\nmsgstr "Bien"\n')
    app = App(load_config(_config(tmp_path, override), env={}))
    try:
        failures = run_check(app, events=MANUAL_EVENTS)
        assert failures and {f.language for f in failures} == {"fr"}
        assert all(f"{po}:5: cannot read catalog" in f.error for f in failures)
        # The mail path falls back to the shipped wording instead of refusing the move.
        number = actions.create_ticket(app, process="incident", reporter="marie@example.com", title="Écran noir",
                                       description="L'écran reste noir.").number
        with session_for(app.engine) as session:
            marie = session.exec(select(Person)).one()
            marie.language = "fr"
            session.add(marie)
            session.commit()
        actions.set_status(app, number, "Rejected", StatusData(reason="Pas chez nous."))
        render_pending(app.engine, app.notifier)
        with session_for(app.engine) as session:
            row = session.exec(select(Outbox).where(Outbox.event == "rejected")).one()
        assert row.language == "fr" and b"Cordialement" in row.raw
    finally:
        app.engine.dispose()


@pytest.mark.parametrize("lang, size, limit", [("fr", "38,2 Mo", "25 Mo"), ("de", "38,2 MB", "25 MB"),
                                               ("en", "38.2 MB", "25 MB")])
def test_sizes_read_as_the_customers_mail_program_shows_them(sqlite_gw, lang, size, limit):
    """The too-large notice says the mail's size and the limit with the language's units
    and decimal mark (Babel), in the text and the HTML; it shows no ticket (it has none)."""
    from gateway.outbound.notify import sample_context

    mail = sqlite_gw.renderer.render("too-large", lang, sample_context(sqlite_gw.notifier, "too-large", lang))
    for part in (mail.text, mail.html):
        part = part.replace("\u00a0", " ").replace("\u202f", " ")  # no break between number and unit
        assert size in part and limit in part, part
        assert "INC-000123" not in part
    shown = sqlite_gw.renderer.environment(lang).filters["filesize"]
    assert [shown(n).replace("\u00a0", " ").replace("\u202f", " ") for n in (9019, 1)] in (
        ["9 ko", "1 ko"], ["9 kB", "1 kB"])


def test_preview_of_the_notice_about_no_ticket(tmp_path):
    """`too-large` previews as it is sent: no [number] tag, an answer (auto-replied); it
    has no ticket to preview it with."""
    data = json.loads(run_gateway("templates", "preview", "too-large", "--lang", "fr", "--json",
                                  cwd=tmp_path).stdout)
    assert data["subject"].startswith("Votre courriel est trop volumineux pour être lu : ")
    assert data["headers"]["Auto-Submitted"] == "auto-replied" and "[" not in data["subject"]
    refused = run_gateway("templates", "preview", "too-large", "--lang", "fr", "--ticket", "INC-000001",
                          cwd=tmp_path, check=False)
    assert refused.returncode != 0 and b"is about no ticket" in refused.stderr
