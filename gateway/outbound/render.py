"""Rendering notifications: named Jinja2 templates, Babel catalogs, an override order.

Search order for a template: the admin's ``templates.override_dir``, then the shipped
``templates/mail/``.  Wordings come from gettext catalogs: the shipped
``templates/mail/locale/<lang>/LC_MESSAGES/mail.po``, with the same file under the
override folder winning message by message.  The ``.po`` files are compiled in memory
when first used (``gateway templates compile`` writes ``.mo`` files for tools that want
them): nobody edits a ``.mo`` by hand.

The set of events is closed and listed once, in ``EVENTS``.
"""

from __future__ import annotations

import functools
import importlib.resources
import io
import logging
import re
import threading
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import jinja2
from babel import Locale
from babel.dates import format_date, format_datetime
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.units import format_unit
from babel.support import Translations

from gateway.outbound.labels import DATE_AT_TIME
from store.vocabulary import FALLBACK_LANGUAGE, LANGUAGES

log = logging.getLogger("gateway.outbound")


def shipped_dir() -> Path:
    """The shipped ``templates/mail/``: inside the installed gateway package (a wheel puts
    it there, see setup.py), else at the root of the checkout this code runs from (an
    editable install, or the checkout on PYTHONPATH)."""
    installed = importlib.resources.files("gateway") / "templates" / "mail"
    if installed.is_dir():
        return Path(str(installed))
    return Path(__file__).resolve().parent.parent.parent / "templates" / "mail"


SHIPPED_DIR = shipped_dir()

# Every mail the gateway can send, by template name.
EVENTS = (
    "new",  # the ticket is registered (confirmation)
    "rejected",  # the reasoned refusal
    "waiting",  # waiting, one wording per reason, with the latest update
    "postponed",  # postponed, with the reason and the latest update
    "planned",  # the appointment
    "solved",  # the solution, and how to reopen by replying
    "approval",  # what is to be approved, and how to answer
    "approval-recorded",  # the customer's approval or refusal was recorded
    "approval-unclear",  # an answer to an approval request decided nothing: how to answer (gateway.ingest.answers)
    "reopen-needs-comment",  # a reply to a Solved ticket without text cannot reopen it
    "closed-new-ticket",  # a reply to a Closed ticket opened a new one
    "too-large",  # a mail read from a mailbox was above the size limit: no ticket (gateway.ingest.imap)
)
# Events about no ticket (Notifier.enqueue_notice): no [number] tag, no reply token.
TICKETLESS = ("too-large",)
# Events sent in answer to a customer's mail (gateway.ingest.process: In-Reply-To their
# mail, Auto-Submitted: auto-replied); "new" too when the ticket came by mail.  The
# others follow an agent's move (auto-generated).
ANSWERS = ("closed-new-ticket", "reopen-needs-comment", "approval-recorded", "approval-unclear", "too-large")
# What the events' templates extend or include.
LAYOUTS = ("base.txt.j2", "base.html.j2", "waiting-reason.j2", "waiting-action.j2", "approval-how.j2",
           "approval-recorded-text.j2")


def shipped_files() -> tuple[str, ...]:
    """Every file of the shipped templates/mail/ a mail can need, relative to it: each
    event's text and HTML, the layouts, and each language's catalog."""
    return (*(f"{event}.{kind}.j2" for event in EVENTS for kind in ("txt", "html")), *LAYOUTS,
            *(f"locale/{lang}/LC_MESSAGES/mail.po" for lang in LANGUAGES))


def missing_shipped(folder: Path) -> list[str]:
    """The shipped files (``shipped_files``) that ``folder`` lacks.  Without them every
    mail would be quarantined ("template not found") or told in English only: the
    service refuses to start instead (gateway serve)."""
    return [name for name in shipped_files() if not (Path(folder) / name).is_file()]


@dataclass(frozen=True)
class RenderedMail:
    event: str
    language: str
    subject: str
    text: str
    html: str
    # What the mail asks of the customer ("Action required: ..."), "" when nothing: the
    # template's ``action`` block.  It opens both parts (the line inbox lists preview,
    # whatever the Subject) and flags the mail in Outlook (compose: X-Message-Flag).
    action: str = ""


class RenderError(Exception):
    """A template failed; the message names the file and line."""


# Dates and times as each language writes them in a sentence (CLDR patterns), not as
# Babel's named formats print them ("27 nov. 2026, 10:30:00 +0100"): «le 27 novembre
# 2026 à 10 h 30», «op 27 november 2026 om 10.30 uur», «on 27 November 2026 at 10:30»,
# «am 27. November 2026 um 10:30 Uhr».  The words around them ("à", "om … uur", "um …
# Uhr") are the catalogs' (gateway.outbound.labels.DATE_AT_TIME).  French writes the
# first day of a month «1er» and keeps "10 h 30" on one line.
WRITTEN_DATE = {"fr": "d MMMM y", "nl": "d MMMM y", "en": "d MMMM y", "de": "d. MMMM y"}
WRITTEN_DAY = {"fr": "EEEE d MMMM y", "nl": "EEEE d MMMM y", "en": "EEEE d MMMM y", "de": "EEEE, d. MMMM y"}
WRITTEN_TIME = {"fr": "H\u00a0'h'\u00a0mm", "nl": "H.mm", "en": "HH:mm", "de": "HH:mm"}


def _written_pattern(kind: str, lang: str, day: int) -> str:
    pattern = (WRITTEN_DAY if kind == "full" else WRITTEN_DATE).get(lang, WRITTEN_DATE["en"])
    if lang == "fr" and day == 1:
        pattern = pattern.replace("d MMMM", "d'er' MMMM")
    return pattern


@functools.lru_cache(maxsize=512)
def _written(value: datetime, tz: str | None, kind: str, lang: str, with_time: bool, at: str) -> str:
    """``value`` in the time zone ``tz`` as ``lang`` writes it: the date ("long"; with its
    weekday: "full"), then the time joined by ``at`` (the catalog's "%(date)s at
    %(time)s").  Remembered: the mails of one busy second show the same text."""
    local = (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).astimezone(_tz(tz))
    locale = Locale.parse(lang)
    day = format_date(local, _written_pattern(kind, lang, local.day), locale=locale)
    if not with_time:
        return day
    time = format_datetime(local, WRITTEN_TIME.get(lang, WRITTEN_TIME["en"]), tzinfo=local.tzinfo, locale=locale)
    return at % {"date": day, "time": time}


def _tz(name: str | None):
    try:
        return ZoneInfo(name or "UTC")
    except Exception:
        return ZoneInfo("UTC")


class Renderer:
    def __init__(self, shipped_dir: Path = SHIPPED_DIR, override_dir: Path | None = None, strict: bool = True):
        self.shipped_dir = Path(shipped_dir)
        self.override_dir = Path(override_dir) if override_dir else None
        self.strict = strict
        self._envs: dict[tuple[str, bool], jinja2.Environment] = {}
        self._translations: dict[tuple[str, bool], Translations] = {}
        self._lock = threading.Lock()

    # Catalogs -------------------------------------------------------------------------
    def _catalog_paths(self, lang: str, use_override: bool) -> list[Path]:
        rel = Path("locale") / lang / "LC_MESSAGES" / "mail.po"
        paths = [self.shipped_dir / rel]
        if use_override and self.override_dir:
            paths.append(self.override_dir / rel)
        return [p for p in paths if p.is_file()]

    def translations(self, lang: str, use_override: bool = True) -> Translations:
        # Compiled once per language, like the environments below: compiling a .po costs
        # about 3 ms, paid on every notification before (measured by bench/run.py).
        key = (lang, use_override)
        cached = self._translations.get(key)
        if cached is None:
            cached = self._translations[key] = self._compile(lang, use_override)
        return cached

    def _compile(self, lang: str, use_override: bool) -> Translations:
        translations = Translations()
        for path in self._catalog_paths(lang, use_override):
            try:
                with open(path, "rb") as fh:
                    catalog = read_po(fh, locale=lang, abort_invalid=True)
            except Exception as exc:  # an admin's catalog that does not parse
                # babel counts lines from 0
                line = getattr(exc, "lineno", None)
                where = f"{path}:{line + 1}" if isinstance(line, int) else str(path)
                raise RenderError(f"{where}: cannot read catalog: {exc}") from exc
            buf = io.BytesIO()
            write_mo(buf, catalog)
            buf.seek(0)
            layer = Translations(buf)
            if translations._catalog:  # later layers (the override) win
                layer.add_fallback(translations)
            translations = layer
        return translations

    # Environments ---------------------------------------------------------------------
    def environment(self, lang: str, use_override: bool = True) -> jinja2.Environment:
        key = (lang, use_override)
        with self._lock:
            env = self._envs.get(key)
            if env is None:
                env = self._make_env(lang, use_override)
                self._envs[key] = env
            return env

    def _make_env(self, lang: str, use_override: bool) -> jinja2.Environment:
        search = [str(self.shipped_dir)]
        if use_override and self.override_dir:
            search.insert(0, str(self.override_dir))
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(search),
            autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2", "html"), default_for_string=False),
            undefined=jinja2.StrictUndefined if self.strict else jinja2.ChainableUndefined,
            extensions=["jinja2.ext.i18n"],
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
        )
        env.install_gettext_translations(self.translations(lang, use_override), newstyle=True)
        # ``_`` straight to the extension's gettext: its alias looks ``gettext`` up again at
        # every call, through a second context.call (~20 calls a mail: ~15 % of rendering).
        env.globals["_"] = env.globals["gettext"]
        locale = Locale.parse(lang)

        translations = self.translations(lang, use_override)

        def fmt_datetime(value: datetime | None, tz: str | None = None, fmt: str = "full") -> str:
            """``fmt`` "full" (with the weekday) or "long": as the language writes it in a
            sentence, in the time zone ``tz`` (the recipient's); any other value is a
            Babel format or pattern, for an admin's template."""
            if value is None:
                return ""
            if fmt in ("full", "long"):
                return _written(value.replace(microsecond=0), tz, fmt, lang, True,
                                translations.gettext(DATE_AT_TIME))
            return format_datetime(value, format=fmt, tzinfo=_tz(tz), locale=locale)

        def fmt_date(value: date | datetime | None, tz: str | None = None, fmt: str = "long") -> str:
            if value is None:
                return ""
            if isinstance(value, datetime) and fmt in ("full", "long"):
                return _written(value.replace(microsecond=0), tz, fmt, lang, False, "")
            if isinstance(value, datetime):
                value = value.astimezone(_tz(tz))
            if fmt in ("full", "long"):
                return format_date(value, _written_pattern(fmt, lang, value.day), locale=locale)
            return format_date(value, format=fmt, locale=locale)

        def fmt_size(value: int) -> str:
            """A size in bytes as mail programs show it: ``38,2 Mo``, ``9 kB``."""
            if value >= 2**20:
                return format_unit(round(value / 2**20, 1), "digital-megabyte", length="short", locale=locale,
                                   format="#,##0.#")
            return format_unit(max(1, round(value / 1024)), "digital-kilobyte", length="short", locale=locale,
                               format="#,##0")

        env.filters["filesize"] = fmt_size
        env.filters["datetime"] = fmt_datetime
        env.filters["date"] = fmt_date
        env.globals["language"] = lang
        return env

    # Rendering ------------------------------------------------------------------------
    def render(self, event: str, lang: str, context: dict, use_override: bool = True) -> RenderedMail:
        """Render ``event`` in ``lang``.  Raises RenderError naming file and line."""
        if event not in EVENTS:
            raise RenderError(f"unknown event {event!r}; events are: {', '.join(EVENTS)}")
        if lang not in LANGUAGES:
            lang = FALLBACK_LANGUAGE
        try:
            env = self.environment(lang, use_override)
            text_tpl = env.get_template(f"{event}.txt.j2")
            html_tpl = env.get_template(f"{event}.html.j2")
            ctx = text_tpl.new_context(dict(context))
            subject = "".join(text_tpl.blocks["subject"](ctx)) if "subject" in text_tpl.blocks else ""
            action = "".join(text_tpl.blocks["action"](ctx)) if "action" in text_tpl.blocks else ""
            text = text_tpl.render(context)
            # The HTML part opens with the same action and headline as the text part.
            html = html_tpl.render({**context, "headline": _one_line(subject), "action": _one_line(action)})
        except jinja2.TemplateSyntaxError as exc:
            raise RenderError(f"{exc.filename or exc.name}:{exc.lineno}: {exc.message}") from exc
        except jinja2.TemplateNotFound as exc:
            raise RenderError(f"template not found: {exc.name}") from exc
        except RenderError:
            raise
        except Exception as exc:
            raise RenderError(_locate(exc) + f"{type(exc).__name__}: {exc}") from exc
        subject = _one_line(subject)
        # Blocks left empty leave runs of blank lines: one blank line between paragraphs.
        text = re.sub(r"\n[ \t]*\n(?:[ \t]*\n)+", "\n\n", text)
        return RenderedMail(event=event, language=lang, subject=subject, text=text.strip() + "\n", html=html,
                            action=_one_line(action))

    def render_safe(self, event: str, lang: str, context: dict) -> RenderedMail:
        """Render with the admin's overrides, falling back to the shipped templates if an
        override is broken: a bad override must never stop a ticket from being created."""
        try:
            return self.render(event, lang, context)
        except RenderError as exc:
            if not self.override_dir:
                raise
            log.error("override for %s/%s failed, using the shipped template: %s", event, lang, exc)
            return self.render(event, lang, context, use_override=False)


def _one_line(text: str) -> str:
    """A block's text on one line.  Only the spaces a template's layout leaves: the
    non-breaking ones of the catalogs («\u00a0:») stay where they are."""
    return re.sub(r"[ \t\r\n]+", " ", text).strip(" ")


def _locate(exc: BaseException) -> str:
    """``file:line: `` of the innermost template frame of a rendering error."""
    tb = exc.__traceback__
    where = ""
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.endswith(".j2"):
            where = f"{filename}:{tb.tb_lineno}: "
        tb = tb.tb_next
    return where


@dataclass(frozen=True)
class CheckFailure:
    event: str
    language: str
    waiting_reason: str | None
    error: str

    def __str__(self) -> str:
        case = f"{self.event}/{self.language}" + (f"/{self.waiting_reason}" if self.waiting_reason else "")
        return f"{case}: {self.error}"


def check_templates(renderer: Renderer, context_for, *, events: tuple[str, ...] = EVENTS,
                    languages: tuple[str, ...] = LANGUAGES,
                    waiting_reasons: tuple[str, ...] = ()) -> list[CheckFailure]:
    """Render every event x language (x waiting reason for ``waiting``) with the admin's
    overrides and undefined variables as errors; return the failures, each naming the
    template file and line.  ``context_for(event, lang, waiting_reason)`` gives the data."""
    strict = renderer if renderer.strict else Renderer(renderer.shipped_dir, renderer.override_dir, strict=True)
    failures = []
    for event in events:
        reasons = waiting_reasons if event == "waiting" and waiting_reasons else (None,)
        for lang in languages:
            for reason in reasons:
                try:
                    strict.render(event, lang, context_for(event, lang, reason))
                except RenderError as exc:
                    failures.append(CheckFailure(event, lang, reason, str(exc)))
    return failures


def template_files(renderer: Renderer) -> list[tuple[str, str, Path | None]]:
    """(event, kind, path in use or None when missing) for every event's text and HTML."""
    rows = []
    for event in EVENTS:
        for kind in ("txt", "html"):
            name = f"{event}.{kind}.j2"
            found = None
            for folder in ([renderer.override_dir] if renderer.override_dir else []) + [renderer.shipped_dir]:
                if (folder / name).is_file():
                    found = folder / name
                    break
            rows.append((event, kind, found))
    return rows


def compile_catalogs(folder: Path) -> list[Path]:
    """Write ``mail.mo`` beside every ``locale/<lang>/LC_MESSAGES/mail.po`` under ``folder``."""
    written = []
    for po in sorted(Path(folder).glob("locale/*/LC_MESSAGES/mail.po")):
        lang = po.parent.parent.name
        with open(po, "rb") as fh:
            catalog = read_po(fh, locale=lang)
        mo = po.with_suffix(".mo")
        with open(mo, "wb") as fh:
            write_mo(fh, catalog)
        written.append(mo)
    return written
