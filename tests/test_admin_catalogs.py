"""The console speaks fr, nl, en and de (issue 23): every sentence of its pages and of its
code (web.gettext) is in templates/admin/locale/console.pot and translated, not fuzzy,
in French, Dutch and German (English is the source)."""

from __future__ import annotations

from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from conftest import ROOT

LOCALE = ROOT / "templates" / "admin" / "locale"


def extracted() -> set[str]:
    found = set()
    for folder, method in ((ROOT / "templates" / "admin", "jinja2"), (ROOT / "gateway" / "http" / "admin", "python")):
        pattern = "**.j2" if method == "jinja2" else "**.py"
        for _, _, message, _, _ in extract_from_dir(
                str(folder), [(pattern, method)], options_map={pattern: {"extensions": "jinja2.ext.i18n"}},
                keywords={"_": None, "gettext": (2,) if method == "python" else None}):
            found.add(message if isinstance(message, str) else message[0])
    return found


def test_every_sentence_of_the_console_is_in_the_template_and_translated():
    messages = extracted()
    assert len(messages) > 80 and "Wrong address or password." in messages and "Send me a test" in messages
    with open(LOCALE / "console.pot", "rb") as fh:
        template = {m.id for m in read_po(fh) if m.id}
    assert messages == template, (messages - template, template - messages)
    for lang in ("fr", "nl", "de"):
        with open(LOCALE / lang / "LC_MESSAGES" / "console.po", "rb") as fh:
            catalog = read_po(fh, locale=lang)
        untranslated = [m.id for m in catalog if m.id and (not m.string or m.fuzzy)]
        assert untranslated == [], (lang, untranslated)
        assert {m.id for m in catalog if m.id} == template, lang
        for m in catalog:  # the placeholders survive translation
            if m.id and "%(" in m.id:
                assert sorted(__import__("re").findall(r"%\(\w+\)s", m.id)) == \
                    sorted(__import__("re").findall(r"%\(\w+\)s", m.string)), (lang, m.id)
