"""An admin's overrides of the notification templates, as the console saves them.

One event's override in one language is two files in the override folder
(``[templates] override_dir``): ``<lang>/<event>.txt.j2`` (whose ``subject`` block is the
mail's Subject) and ``<lang>/<event>.html.j2``; the renderer looks there before the
folder's own files and the shipped ones (gateway.outbound.render.Renderer).

- ``check``: render the draft before it is saved, for every waiting reason when the
  event is ``waiting``, with undefined variables as errors; each failure names the
  file (as it will be saved) and the line;
- ``save``: write atomically (a temporary file in the same folder, fsync, rename over),
  every version kept under ``.history/<lang>/<event>.<kind>.j2/`` (never read by the
  renderer), so any earlier one can be restored;
- ``revert``: back to an earlier version (saved again as the newest) or to the shipped
  template (the override removed, its last version kept in the history).
"""

from __future__ import annotations

import difflib
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from gateway.outbound.render import EVENTS, LANGUAGES, Renderer, check_templates
from store.lifecycle import WAITING_REASONS
from store.models import utcnow

KINDS = ("txt", "html")
HISTORY = ".history"


class OverrideError(Exception):
    """What an admin asked cannot be done (no override folder, unknown event or version)."""


@dataclass(frozen=True)
class Version:
    """A saved version of one file: its name in the history (its time of saving)."""

    name: str
    saved_at: datetime
    text: str


def name(event: str, kind: str) -> str:
    return f"{event}.{kind}.j2"


def _checked(event: str, lang: str, kind: str | None = None) -> None:
    if event not in EVENTS:
        raise OverrideError(f"unknown event {event!r}")
    if lang not in LANGUAGES:
        raise OverrideError(f"unknown language {lang!r}")
    if kind is not None and kind not in KINDS:
        raise OverrideError(f"unknown part {kind!r}")


def path(folder: Path, event: str, lang: str, kind: str) -> Path:
    _checked(event, lang, kind)
    return Path(folder) / lang / name(event, kind)


def source(renderer: Renderer, event: str, lang: str, kind: str) -> tuple[str, str]:
    """The text of the file in use for ``event``/``lang``/``kind`` and where it comes
    from: "override" (this language's), "override-all" (the folder's, every language)
    or "shipped"."""
    _checked(event, lang, kind)
    candidates = []
    if renderer.override_dir is not None:
        candidates += [(renderer.override_dir / lang, "override"), (renderer.override_dir, "override-all")]
    candidates.append((renderer.shipped_dir, "shipped"))
    for folder, origin in candidates:
        found = folder / name(event, kind)
        if found.is_file():
            return found.read_text(encoding="utf-8"), origin
    raise OverrideError(f"{name(event, kind)} is not shipped")


def shipped(renderer: Renderer, event: str, kind: str) -> str:
    return (renderer.shipped_dir / name(event, kind)).read_text(encoding="utf-8")


def overridden(renderer: Renderer, event: str, lang: str) -> bool:
    """Whether this language's mail of ``event`` uses an admin's file."""
    if renderer.override_dir is None:
        return False
    return any((folder / name(event, kind)).is_file() for kind in KINDS
               for folder in (renderer.override_dir / lang, renderer.override_dir))


def write_draft(folder: Path, event: str, lang: str, texts: dict[str, str]) -> Path:
    """The draft's files in ``folder`` (a layer of a Renderer for its preview)."""
    _checked(event, lang)
    target = Path(folder) / lang
    target.mkdir(parents=True, exist_ok=True)
    for kind in KINDS:
        (target / name(event, kind)).write_text(_normal(texts[kind]), encoding="utf-8")
    return Path(folder)


def _normal(text: str) -> str:
    """A browser's textarea sends CRLF: the files keep LF, ending with one."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text if text.endswith("\n") else text + "\n"


def check(renderer: Renderer, context_for, event: str, lang: str, texts: dict[str, str]) -> list[str]:
    """Render the draft ``texts`` of ``event`` in ``lang`` (every waiting reason for
    ``waiting``) with undefined variables as errors; the failures, each as
    ``<lang>/<file>:<line>: <what>`` (the file as it will be saved)."""
    _checked(event, lang)
    with tempfile.TemporaryDirectory(prefix="gateway-draft-") as tmp:
        write_draft(Path(tmp), event, lang, texts)
        layered = Renderer(renderer.shipped_dir, renderer.override_dir, strict=True, layers=(Path(tmp),))
        failures = check_templates(layered, context_for, events=(event,), languages=(lang,),
                                   waiting_reasons=WAITING_REASONS)
        prefix = re.escape(str(Path(tmp) / lang)) + "/"
        grouped: dict[str, list[str]] = {}
        for failure in failures:
            error = re.sub(prefix, f"{lang}/", failure.error)
            grouped.setdefault(error, []).extend([failure.waiting_reason] if failure.waiting_reason else [])
        return [f"{error} ({', '.join(reasons)})" if reasons else error for error, reasons in grouped.items()]


def _history_dir(folder: Path, event: str, lang: str, kind: str) -> Path:
    return Path(folder) / HISTORY / lang / name(event, kind)


def _atomic_write(target: Path, text: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with _quiet():
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


class _quiet:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _keep(folder: Path, event: str, lang: str, kind: str, text: str, now: datetime) -> str:
    history = _history_dir(folder, event, lang, kind)
    history.mkdir(parents=True, exist_ok=True)
    stamp = now.strftime("%Y%m%dT%H%M%S%fZ")
    existing = sorted(history.glob(f"{stamp}*.j2"))
    version = f"{stamp}-{len(existing)}.j2" if existing else f"{stamp}.j2"
    _atomic_write(history / version, text)
    return version


def save(folder: Path, event: str, lang: str, texts: dict[str, str], now: datetime | None = None) -> dict[str, str]:
    """Write this language's override of ``event`` (already checked), each file kept as a
    version of its history; the texts before (None where there was no override)."""
    if folder is None:
        raise OverrideError("no override folder: set [templates] override_dir")
    _checked(event, lang)
    now = now or utcnow()
    before = {}
    for kind in KINDS:
        target = path(folder, event, lang, kind)
        before[kind] = target.read_text(encoding="utf-8") if target.is_file() else None
        text = _normal(texts[kind])
        _keep(folder, event, lang, kind, text, now)
        _atomic_write(target, text)
    return before


def versions(folder: Path | None, event: str, lang: str, kind: str) -> list[Version]:
    """The saved versions of one file, newest first."""
    if folder is None:
        return []
    history = _history_dir(folder, event, lang, kind)
    found = []
    for item in sorted(history.glob("*.j2"), reverse=True):
        stamp = item.stem.split("-")[0]
        try:
            when = datetime.strptime(stamp, "%Y%m%dT%H%M%S%fZ")
        except ValueError:
            continue
        found.append(Version(item.name, when, item.read_text(encoding="utf-8")))
    return found


def version(folder: Path, event: str, lang: str, kind: str, version_name: str) -> str:
    if not re.fullmatch(r"[0-9T]+Z(-[0-9]+)?\.j2", version_name or ""):
        raise OverrideError(f"no version {version_name!r}")
    found = _history_dir(folder, event, lang, kind) / version_name
    if not found.is_file():
        raise OverrideError(f"no version {version_name!r} of {lang}/{name(event, kind)}")
    return found.read_text(encoding="utf-8")


def revert_to_shipped(folder: Path, event: str, lang: str) -> dict[str, str | None]:
    """Remove this language's override of ``event`` (its versions stay in the history);
    the texts removed."""
    if folder is None:
        raise OverrideError("no override folder: set [templates] override_dir")
    before = {}
    for kind in KINDS:
        target = path(folder, event, lang, kind)
        before[kind] = target.read_text(encoding="utf-8") if target.is_file() else None
        if target.is_file():
            target.unlink()
            _fsync_dir(target.parent)
    return before


def diff(renderer: Renderer, event: str, lang: str, kind: str, text: str) -> list[tuple[str, str]]:
    """``text`` against the shipped file, as (kind of line, line): "add", "del", "hunk",
    "same" (unified, 3 lines of context)."""
    lines = difflib.unified_diff(shipped(renderer, event, kind).splitlines(), _normal(text).splitlines(),
                                 f"shipped/{name(event, kind)}", f"{lang}/{name(event, kind)}", lineterm="")
    out = []
    for line in lines:
        if line.startswith(("+++", "---")):
            out.append(("file", line))
        elif line.startswith("@@"):
            out.append(("hunk", line))
        elif line.startswith("+"):
            out.append(("add", line))
        elif line.startswith("-"):
            out.append(("del", line))
        else:
            out.append(("same", line))
    return out
