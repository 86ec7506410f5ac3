"""Personal references (``##PO1234##``) and ticket tags (``[INC-000001]``) in mail."""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass

from gateway.ingest.parse import ParsedMail

_REF = re.compile(r"##\s*([^#\r\n]{1,64}?)\s*##")
_REF_AT_END = re.compile(r"##\s*([^#\r\n]{1,64}?)\s*##\s*$")
TAG = re.compile(r"\[\s*((?:INC|SR|CHG)-\d{6})\s*\]", re.IGNORECASE)
_TEXT_TYPES = ("text/plain", "text/csv", "text/tab-separated-values", "application/csv")


@dataclass(frozen=True)
class Reference:
    value: str
    source: str  # subject-end | subject | attachment-name | attachment-text


def find_reference(mail: ParsedMail, max_scan: int = 1_000_000) -> Reference | None:
    """The manual's rule first (end of subject), then anywhere in the subject, then an
    attachment's name, then the text of a text-like attachment: the first found wins."""
    m = _REF_AT_END.search(mail.subject)
    if m:
        return Reference(m.group(1).strip(), "subject-end")
    m = _REF.search(mail.subject)
    if m:
        return Reference(m.group(1).strip(), "subject")
    for att in mail.attachments:
        m = _REF.search(att.filename)
        if m:
            return Reference(m.group(1).strip(), "attachment-name")
    for att in mail.attachments:
        if att.content_type in _TEXT_TYPES or att.filename.lower().endswith((".txt", ".csv")):
            text = att.data[:max_scan].decode("utf-8", "replace")
        elif att.content_type == "application/pdf" or att.filename.lower().endswith(".pdf"):
            # (The size first: a large stored attachment is not read back just to be skipped.)
            text = pdf_text(att.data, max_scan) if att.size <= PDF_MAX_BYTES else ""
        else:
            continue
        m = _REF.search(text)
        if m:
            return Reference(m.group(1).strip(), "attachment-text")
    return None


PDF_MAX_BYTES = 20_000_000


def pdf_text(data: bytes, max_chars: int = 1_000_000, max_pages: int = 20, max_bytes: int = PDF_MAX_BYTES) -> str:
    """The text of the first pages of a PDF, bounded; "" for what pypdf cannot read.
    A reference sits on the first page of an order form, so a few pages suffice."""
    if len(data) > max_bytes:
        return ""
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        from pypdf import PdfReader

        reader = PdfReader(io.BytesIO(data))
        out: list[str] = []
        size = 0
        for page in reader.pages[:max_pages]:
            text = page.extract_text() or ""
            out.append(text)
            size += len(text)
            if size >= max_chars:
                break
        return "\n".join(out)[:max_chars]
    except Exception:  # a broken or encrypted PDF is simply not searched
        return ""


def title_from_subject(subject: str) -> str:
    """The subject without the personal reference at its end."""
    return _REF_AT_END.sub("", subject).strip()


def ticket_tags(subject: str) -> list[str]:
    return [m.group(1).upper() for m in TAG.finditer(subject)]
