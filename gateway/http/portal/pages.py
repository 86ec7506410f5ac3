"""The customers' pages as HTML: Jinja2 templates under ``templates/portal/`` (shipped in
the wheel beside the mail templates, setup.py), every word through the Babel catalog
``templates/portal/locale/<lang>/LC_MESSAGES/portal.po``, with the mail catalogs behind
it for the words both share (statuses, processes, waiting reasons: one translation).

Autoescaping is on for every template: what a customer or a mail wrote is shown as
text; a mail's HTML only after the sanitizer (gateway.ingest.htmltext.sanitize_html),
and the pages' Content-Security-Policy lets no script run whatever gets through.
"""

from __future__ import annotations

import importlib.resources
import io
import threading
from pathlib import Path

import jinja2
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

from gateway.outbound.labels import PROCESS_LABELS, STATUS_LABELS, WAITING_LABELS

LANGUAGES = ("fr", "nl", "en", "de")
LANGUAGE_NAMES = {"fr": "Français", "nl": "Nederlands", "en": "English", "de": "Deutsch"}


def portal_dir() -> Path:
    installed = importlib.resources.files("gateway") / "templates" / "portal"
    if installed.is_dir():
        return Path(str(installed))
    return Path(__file__).resolve().parents[3] / "templates" / "portal"


class Pages:
    """One Jinja2 environment per language, made when first asked for."""

    def __init__(self, renderer, folder: Path | None = None):
        self.renderer = renderer  # the mails' (gateway.outbound.render): its catalogs and date filters
        self.folder = folder or portal_dir()
        self._envs: dict[str, jinja2.Environment] = {}
        self._lock = threading.Lock()

    def translations(self, lang: str) -> Translations:
        path = self.folder / "locale" / lang / "LC_MESSAGES" / "portal.po"
        with open(path, "rb") as fh:
            catalog = read_po(fh, locale=lang)
        buf = io.BytesIO()
        write_mo(buf, catalog)
        buf.seek(0)
        own = Translations(buf)
        own.add_fallback(self.renderer.translations(lang))
        return own

    def environment(self, lang: str) -> jinja2.Environment:
        lang = lang if lang in LANGUAGES else "en"
        with self._lock:
            env = self._envs.get(lang)
            if env is None:
                env = self._envs[lang] = self._make(lang)
            return env

    def _make(self, lang: str) -> jinja2.Environment:
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(self.folder)), autoescape=True,
                                 undefined=jinja2.StrictUndefined, extensions=["jinja2.ext.i18n"],
                                 trim_blocks=True, lstrip_blocks=True)
        tr = self.translations(lang)
        env.install_gettext_translations(tr, newstyle=True)
        mail = self.renderer.environment(lang)
        env.filters["datetime"] = mail.filters["datetime"]
        env.filters["date"] = mail.filters["date"]
        env.filters["filesize"] = mail.filters["filesize"]
        env.globals["tr"] = tr.gettext  # for the routes' own sentences (Pages.gettext)
        env.globals.update(language=lang, languages=LANGUAGES, language_names=LANGUAGE_NAMES,
                           status_label=lambda s: tr.gettext(STATUS_LABELS.get(s, s)),
                           process_label=lambda p: tr.gettext(PROCESS_LABELS.get(p, p)),
                           waiting_label=lambda r: tr.gettext(WAITING_LABELS[r]) if r in WAITING_LABELS else "")
        return env

    def gettext(self, lang: str):
        """``lang``'s gettext, for a sentence a route says (a refusal, a problem)."""
        return self.environment(lang).globals["tr"]

    def render(self, name: str, lang: str, **context) -> str:
        return self.environment(lang).get_template(name).render(**context)

    def statuses_named(self, lang: str, text: str) -> tuple[str, ...]:
        """The statuses whose name, in ``lang`` or in English, holds ``text`` (a search)."""
        tr = self.environment(lang).globals["status_label"]
        needle = " ".join(text.split()).lower()
        if not needle:
            return ()
        return tuple(s for s in STATUS_LABELS if needle in s.lower() or needle in tr(s).lower())
