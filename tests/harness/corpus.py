"""Comparisons of our parse with the expectations that the corpus sources carry.

Each ``check_<source>`` returns the pass count and the set of mismatches, as
``(file, field)`` pairs; tests/test_corpus.py compares that set with the list of known,
explained mismatches, so a fix and a regression both show.
"""

from __future__ import annotations

import difflib
import email.utils
import hashlib
import json
import re
from pathlib import Path

import yaml

from gateway.errors import Quarantine
from gateway.ingest.automatic import classify
from gateway.ingest.htmltext import html_to_text
from gateway.ingest.parse import ParsedMail, clean_filename, parse

MESSAGE_SUFFIXES = (".box", ".eml", ".txt", ".msg", "")


def message_files(corpus: Path) -> list[Path]:
    """Every message of the corpus (not the expectation files nor the README)."""
    out = []
    for path in sorted(corpus.rglob("*")):
        if not path.is_file() or path.name == "README.md" or path.suffix in (".json", ".yml"):
            continue
        if path.name.endswith("_reply_text"):
            continue
        out.append(path)
    return out


def parse_all(corpus: Path) -> dict[str, ParsedMail | Quarantine]:
    """Parse every message: a ParsedMail or the Quarantine raised; nothing else escapes."""
    return {str(p.relative_to(corpus)): _parse(p) for p in message_files(corpus)}


def _parse(path: Path) -> ParsedMail | Quarantine:
    try:
        return parse(path.read_bytes())
    except Quarantine as exc:
        return exc


def _words(text: str) -> list[str]:
    # Chinese and Japanese have no spaces: one character is one word.
    return re.findall(r"[\u3040-\u9fff\uac00-\ud7af]|[^\W_]+", text.lower())[:3000]


def similar(a: str, b: str) -> float:
    wa, wb = _words(a), _words(b)
    if not wa and not wb:
        return 1.0
    return difflib.SequenceMatcher(None, wa, wb, autojunk=False).ratio()


def _space(text: str) -> str:
    return " ".join((text or "").split())


class _RubyLoader(yaml.SafeLoader):
    pass


def _ruby_map(loader, suffix, node):
    return loader.construct_mapping(node, deep=True)


def _binary(loader, node):
    import base64

    return base64.b64decode(loader.construct_scalar(node))


_RubyLoader.add_constructor("!binary", _binary)
_RubyLoader.add_multi_constructor("!ruby/hash:", _ruby_map)
_RubyLoader.add_multi_constructor("!ruby/hash-with-ivars:", _ruby_map)
_RubyLoader.add_multi_constructor("!ruby/object:", _ruby_map)


def load_zammad(path: Path) -> dict:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_RubyLoader) or {}


def _md5(data) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.md5(data).hexdigest()


def check_zammad(corpus: Path, parsed: dict) -> tuple[int, set[tuple[str, str]]]:
    passed, bad = 0, set()
    for yml in sorted((corpus / "zammad").glob("*.yml")):
        name = yml.with_suffix(".box").name
        mail = parsed[f"zammad/{name}"]
        exp = load_zammad(yml)
        fails = set()
        if isinstance(mail, Quarantine):
            bad.add((name, "quarantined"))
            continue
        if "subject" in exp and _space(str(exp["subject"] or "")) != _space(mail.subject):
            fails.add("subject")
        if exp.get("from_email") and str(exp["from_email"]).lower() != mail.from_addr.lower():
            fails.add("from_email")
        if exp.get("from_display_name") is not None and \
                _space(str(exp["from_display_name"])).strip("'\"") != _space(mail.from_name).strip("'\""):
            fails.add("from_display_name")
        if "body" in exp:
            body = str(exp["body"] or "")
            if exp.get("content_type") == "text/html":
                body = html_to_text(body)
            if body.strip() == "no visible content":  # Zammad's placeholder for an empty body
                body = ""
            if similar(body, mail.text) < 0.8:
                fails.add("body")
        md5s = {hashlib.md5(a.data).hexdigest() for a in mail.attachments}
        names = {a.filename for a in mail.attachments}
        for att in exp.get("attachments") or []:
            prefs = att.get("preferences") or {}
            if att.get("filename") == "message.html" or prefs.get("content-alternative"):
                continue  # Zammad's copy of the HTML body, not an attachment
            if _md5(att.get("data") or b"") not in md5s:
                fails.add(f"attachment-content:{att.get('filename')}")
            if clean_filename(str(att.get("filename"))) not in names:
                fails.add(f"attachment-name:{att.get('filename')}")
        if fails:
            bad |= {(name, f) for f in fails}
        else:
            passed += 1
    return passed, bad


def _addresses(text: str) -> list[str]:
    return [a.lower() for _, a in email.utils.getaddresses([text]) if "@" in a]


def _otobo_name(name: str) -> str:
    return re.sub(r"[^\w.\-]", "_", clean_filename(name))


def check_otobo(corpus: Path, parsed: dict) -> tuple[int, set[tuple[str, str]], int]:
    """Checks that map onto our parse: attachment file names (OTOBO counts body parts as
    attachments, so a name must be among ours), attachment and body MD5s, Subject, From,
    To, Cc.  Checks of OTOBO internals (GetCharset, ContentAlternative, ticket IDs) are
    counted as not applicable."""
    data = json.loads((corpus / "otobo" / "expected-otobo.json").read_text())["files"]
    passed, bad, skipped = 0, set(), 0
    for file, records in sorted(data.items()):
        mail = parsed.get(f"otobo/{file}")
        if isinstance(records, dict):
            records = [records]
        fails = set()
        for i, rec in enumerate(records):
            check, expected = str(rec.get("check", "")), rec.get("expected")
            if isinstance(mail, Quarantine) or mail is None:
                fails.add("quarantined")
                break
            if re.match(r"\$Attachments\[\d+\]->\{'?Filename'?\}", check) and isinstance(expected, str):
                # OTOBO replaces spaces and brackets in file names by "_"; compare alike.
                if expected and _otobo_name(expected) not in {_otobo_name(a.filename) for a in mail.attachments}:
                    fails.add(f"filename:{expected}")
            elif check == "$MD5":
                ours = {hashlib.md5(a.data).hexdigest() for a in mail.attachments}
                ours.add(hashlib.md5(mail.text.encode()).hexdigest())
                if expected not in ours:
                    fails.add(f"md5:{rec.get('description')}:{expected}")
            elif "WHAT => 'Subject'" in check:
                if _space(expected) != _space(mail.subject):
                    fails.add("subject")
            elif "WHAT => 'From'" in check:
                if _addresses(expected)[:1] != [mail.from_addr]:
                    fails.add("from")
            elif "WHAT => 'To'" in check or "WHAT => 'Cc'" in check:
                field = "to" if "'To'" in check else "cc"
                if set(_addresses(expected)) != set(getattr(mail, field)):
                    fails.add(field)
            elif check == "?" and isinstance(expected, dict) and "Body" in expected:
                if similar(expected["Body"], mail.text) < 0.9:
                    fails.add("body")
            else:
                skipped += 1
        if fails:
            bad |= {(file, f) for f in fails}
        else:
            passed += 1
    return passed, bad, skipped


def check_mail_parser(corpus: Path, parsed: dict) -> tuple[int, set[tuple[str, str]]]:
    data = json.loads((corpus / "spamscope-mail-parser" / "expected-mail-parser.json").read_text())["files"]
    passed, bad = 0, set()
    for file, exp in sorted(data.items()):
        mail = parsed[f"spamscope-mail-parser/{file}"]
        fails = set()
        if file == "mail_outlook_1":
            if not isinstance(mail, Quarantine):
                fails.add("garbage accepted")
        elif isinstance(mail, Quarantine):
            fails.add("quarantined")
        else:
            real = [a for a in mail.attachments]
            if "attachments" in exp and len(real) != exp["attachments"]:
                fails.add(f"attachments:{len(real)}!={exp['attachments']}")
            for d in exp.get("defects") or []:
                if d not in mail.defects:
                    fails.add(f"defect:{d}")
            if exp.get("has_defects") and not mail.defects:
                fails.add("has_defects")
            if "subject" in exp and _space(exp["subject"]) != _space(mail.subject):
                fails.add("subject")
            if "message_id" in exp and exp["message_id"].strip("<>").lower() != mail.message_id.lower():
                fails.add("message_id")
            if "from_address" in exp and str(exp["from_address"]).lower() != mail.from_addr:
                fails.add("from_address")
            if "to_count" in exp and len(mail.to) != exp["to_count"]:
                fails.add("to_count")
            if "to_first_address" in exp and (mail.to[:1] or ("",))[0] != str(exp["to_first_address"]).lower():
                fails.add("to_first_address")
            if "body_md5_utf8" in exp and hashlib.md5(mail.text.encode()).hexdigest() != exp["body_md5_utf8"]:
                fails.add("body_md5")
            for name in exp.get("attachment_filenames") or []:
                if clean_filename(name) not in {a.filename for a in mail.attachments}:
                    fails.add(f"filename:{name}")
        if fails:
            bad |= {(file, f) for f in fails}
        else:
            passed += 1
    return passed, bad


def check_django_helpdesk(corpus: Path, parsed: dict) -> tuple[int, set[tuple[str, str]]]:
    data = json.loads((corpus / "django-helpdesk" / "expected-django-helpdesk.json").read_text())["files"]
    passed, bad = 0, set()
    for file, exp in sorted(data.items()):
        mail = parsed[f"django-helpdesk/{file}"]
        fails = set()
        title = exp.get("title", "")
        if title.endswith("..."):
            if not mail.subject.startswith(title[:-3]):
                fails.add("title")
        elif title and _space(title) != _space(mail.subject):
            fails.add("title")
        if "description" in exp and _space(exp["description"]) != _space(mail.text):
            fails.add("description")
        if "description_stripped" in exp and mail.text.strip() != exp["description_stripped"]:
            fails.add("description")
        if fails:
            bad |= {(file, f) for f in fails}
        else:
            passed += 1
    return passed, bad


SISIMAI_KIND = {"vacation": "auto-reply", "feedback": "feedback", "delivered": "delivery"}


def check_sisimai(corpus: Path, parsed: dict) -> tuple[int, set[tuple[str, str]]]:
    """Every bsd/ file is recognised as what sisimai says (bounce, auto-reply, complaint
    or delivery report); not/ stays mail."""
    data = json.loads((corpus / "sisimai" / "expected-sisimai.json").read_text())["files"]
    passed, bad = 0, set()
    for rel in sorted(k for k in parsed if k.startswith("sisimai/")):
        mail = parsed[rel]
        file = rel.removeprefix("sisimai/")
        if isinstance(mail, Quarantine):
            bad.add((file, "quarantined"))
            continue
        auto = classify(mail, ())
        if file.startswith("not/"):
            ok = auto is None
        else:
            reasons = {r["reason"] for r in data.get(file, {}).get("recipients", [])}
            wanted = {SISIMAI_KIND.get(r, "bounce") for r in reasons} or {"bounce"}
            ok = auto is not None and auto.kind in wanted
        if ok:
            passed += 1
        else:
            bad.add((file, f"classified {auto.kind if auto else 'mail'}"))
    return passed, bad


def check_flufl(corpus: Path, parsed: dict) -> tuple[int, set[tuple[str, str]]]:
    """All flufl.bounce samples are bounces (the README); where the sample table names
    the bounced addresses, our DSN reading must not report others."""
    data = json.loads((corpus / "flufl.bounce" / "expected-flufl-bounce.json").read_text())["files"]
    passed, bad = 0, set()
    for rel in sorted(k for k in parsed if k.startswith("flufl.bounce/")):
        mail = parsed[rel]
        file = rel.removeprefix("flufl.bounce/")
        if isinstance(mail, Quarantine):
            bad.add((file, "quarantined"))
            continue
        auto = classify(mail, ())
        fails = set()
        if auto is None or auto.kind != "bounce":
            fails.add(f"classified {auto.kind if auto else 'mail'}")
        else:
            expected = {a.lower() for e in data.get(file, []) for a in e["expected_addresses"]}
            temporary = any(e["temporary_failure"] for e in data.get(file, []))
            found = {a.lower() for a in auto.report.recipients} if auto.report else set()
            if found and expected and not found <= expected:
                fails.add(f"recipients {sorted(found - expected)}")
            if data.get(file) and expected and auto.report and auto.report.hard == temporary:
                fails.add("temporary" if temporary else "permanent")
        if fails:
            bad |= {(file, f) for f in fails}
        else:
            passed += 1
    return passed, bad
