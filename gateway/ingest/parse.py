"""parse(raw) -> ParsedMail: a pure function, defects as data, never an exception for
a merely broken mail.  Over a limit, it raises ``Quarantine`` with the reason.

The standard library's tolerant ``compat32`` parser reads the structure; headers and
bodies are decoded here with a fallback chain so that a wrong or missing charset gives
readable text and a note of what could not be decoded.
"""

from __future__ import annotations

import binascii
import codecs
import dataclasses
import email
import email.header
import email.message
import email.policy
import email.utils
import hashlib
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime

from gateway.errors import Quarantine
from gateway.ingest.htmltext import html_to_text, sanitize_html
from store.addresses import normalize, normalize_message_id


@dataclass(frozen=True)
class ParsedAttachment:
    """An attachment; ``data`` is its bytes.  A large one is decoded straight into the blob
    store while parsing (``blob`` is then its sha256), and ``data`` reads it back only
    when asked, so a 25 MB file is not held in memory along the way."""

    filename: str
    content_type: str
    content: bytes | None
    inline: bool = False
    content_id: str | None = None
    blob: str | None = None  # sha256 of the blob already holding the bytes
    stored_size: int = 0
    store: object = field(default=None, compare=False, repr=False)  # the BlobStore holding ``blob``

    @property
    def data(self) -> bytes:
        if self.content is not None:
            return self.content
        return self.store.get(self.blob)

    @property
    def size(self) -> int:
        return len(self.content) if self.content is not None else self.stored_size

    @property
    def sha256(self) -> str:
        return self.blob if self.content is None else hashlib.sha256(self.content).hexdigest()


@dataclass(frozen=True)
class Limits:
    max_parts: int = 500
    max_depth: int = 20
    max_header_length: int = 64 * 1024
    # The whole header block (Postfix's header_size_limit is 100 KB).
    max_header_block: int = 256 * 1024
    # Received headers: more means a mail loop (Postfix's hopcount_limit is 50).
    max_received: int = 50


@dataclass(frozen=True)
class ParsedMail:
    message_id: str  # normalised, without <>; "" when absent
    subject: str
    from_addr: str  # normalised address, "" when absent
    from_name: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    reply_to: tuple[str, ...]
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    date: datetime | None
    content_language: str | None
    text: str
    html: str | None  # sanitised, for display only
    attachments: tuple[ParsedAttachment, ...]
    headers: tuple[tuple[str, str], ...]  # (lower-case name, decoded value), in order
    content_type: str
    report_type: str | None
    defects: tuple[str, ...] = field(default=())
    # Content types of every MIME part, in order (for telling reports from mail).
    part_types: tuple[str, ...] = field(default=())

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k == name]


# Charset fallback: what mail really carries when the label is wrong or missing.
_ALIASES = {"iso-8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252", "us-ascii": "utf-8",
            "ascii": "utf-8", "ks_c_5601-1987": "cp949", "x-unknown": "utf-8", "unknown-8bit": "utf-8",
            "gb2312": "gb18030", "gbk": "gb18030", "windows-874": "cp874", "x-sjis": "shift_jis"}


_LATIN = {"iso-8859-1", "iso8859-1", "latin1", "latin-1", "iso-8859-15", "windows-1252", "cp1252", "us-ascii",
          "ascii"}
_UTF8_SEQUENCE = re.compile(rb"[\xc2-\xf4][\x80-\xbf]+")


def _cp1252_for_invalid(err: UnicodeDecodeError):
    """Codec error handler: bytes that are not UTF-8 are read as Windows-1252."""
    return err.object[err.start:err.end].decode("cp1252", "replace"), err.end


codecs.register_error("gateway-cp1252", _cp1252_for_invalid)


Hint = str | tuple[str, ...] | None  # a charset, or several, to read undeclared 8-bit text with


def decode_bytes(data: bytes, charset: str | None, notes: list[str] | None = None, hint: Hint = None) -> str:
    """Decode with the declared charset, then UTF-8, then ``hint`` (the charsets the rest
    of the mail declares, for undeclared 8-bit headers), then Windows-1252; note any loss.

    Two wrong labels are common enough to be handled: UTF-8 labelled ISO-8859-1 or ASCII
    (a valid UTF-8 text is taken as UTF-8: Latin-1 text is almost never valid UTF-8),
    and Windows-1252 labelled ISO-8859-1 (decoded as Windows-1252, its superset).  Text
    mixing UTF-8 with stray single-byte characters keeps both readable.

    Of the hints, a Latin one (which decodes any bytes at all) is tried after the others:
    a raw GB2312 or Shift_JIS subject in a mail that declares ISO-8859-1 for one part and
    GB2312 for another is read in GB2312, not as Latin-1 mojibake.
    """
    declared = (charset or "").strip().strip('"').lower()
    candidates = []
    if declared in _LATIN and _UTF8_SEQUENCE.search(data):
        candidates.append("utf-8")
    if declared:
        candidates.append(_ALIASES.get(declared, declared))
    candidates.append("utf-8")
    hints = [h.strip().strip('"').lower() for h in ((hint,) if isinstance(hint, str) else hint or ()) if h]
    candidates += [_ALIASES.get(h, h) for h in hints if h not in _LATIN]
    candidates += [_ALIASES.get(h, h) for h in hints if h in _LATIN]
    for cs in candidates:
        try:
            return data.decode(cs)
        except (LookupError, ValueError):  # unknown, malformed ("utf-8\0") or wrong label
            continue
    if notes is not None:
        notes.append(f"text not decodable as {declared or 'any declared charset'}: read as UTF-8 and Windows-1252")
    if _UTF8_SEQUENCE.search(data):
        return data.decode("utf-8", errors="gateway-cp1252")
    return data.decode("cp1252", errors="gateway-cp1252")


def decode_header_value(value, notes: list[str] | None = None, hint: Hint = None) -> str:
    """Decode RFC 2047 encoded words (and raw 8-bit) in a header value to text."""
    if value is None:
        return ""
    if isinstance(value, email.header.Header):
        chunks = email.header.decode_header(value)
    else:
        value = str(value)
        if "=?" not in value:
            return _unfold(_fix_surrogates(value, notes, hint))
        try:
            chunks = email.header.decode_header(value)
        except Exception:
            return _unfold(_fix_surrogates(value, notes, hint))
    out = []
    prev_encoded = False
    for chunk, cs in chunks:
        if isinstance(chunk, bytes):
            text = decode_bytes(chunk, cs, notes) if cs else _fix_surrogates(chunk.decode("ascii", "surrogateescape"), notes, hint)
            encoded = cs is not None
        else:
            text, encoded = _fix_surrogates(chunk, notes, hint), False
        # decode_header drops the whitespace between an encoded word and plain text.
        if out and not (encoded and prev_encoded) and not text.startswith((" ", "\t")) and not out[-1].endswith(" "):
            text = " " + text
        out.append(text)
        prev_encoded = encoded
    return _unfold("".join(out))


def _fix_surrogates(text: str, notes: list[str] | None, hint: Hint = None) -> str:
    """Raw 8-bit header bytes arrive as surrogates: decode them as UTF-8, the mail's own
    charset, or Windows-1252."""
    if not _SURROGATE.search(text):
        return text
    raw = text.encode("utf-8", "surrogateescape")
    return decode_bytes(raw, None, notes, hint)


def raw_header(msg: email.message.Message, name: str) -> str | None:
    """A header as it came (8-bit bytes as surrogates), not the lossy Header object that
    the compat32 policy makes of non-ASCII values."""
    name = name.lower()
    for key, value in msg.raw_items():
        if key.lower() == name:
            return value if isinstance(value, str) else str(value)
    return None


def raw_headers(msg: email.message.Message, name: str) -> list[str]:
    name = name.lower()
    return [v if isinstance(v, str) else str(v) for k, v in msg.raw_items() if k.lower() == name]


_SURROGATE = re.compile("[\udc80-\udcff]")
_FOLD = re.compile(r"\r?\n[ \t]*")


def _unfold(text: str) -> str:
    return _FOLD.sub(" ", text).strip() if "\n" in text else text.strip()


_PLAIN_ADDRESS = re.compile(r'^[^\s<>@"(),;:]+@[^\s<>@"(),;:]+$')


def _addresses(values: list[str], notes: list[str], hint: Hint = None) -> tuple[tuple[str, str], ...]:
    """Addresses of a header, split on the header as written and only then decoded.

    Decoding first would let an encoded display name pose as an address:
    ``=?utf-8?q?alice=40corp.example?= <mallory@evil>`` decodes to
    ``alice@corp.example <mallory@evil>``, which reads as Alice.  The identity is the
    addr-spec as sent; only the display name is decoded."""
    raw = [_unfold(str(v)) for v in values if v is not None]
    pairs = []
    for name, addr in email.utils.getaddresses(raw):
        addr = address_as_written(addr, notes, hint)
        if addr is None:
            continue
        addr = normalize(_fix_surrogates(addr, notes))
        if "@" in addr and not addr.startswith("@") and not addr.endswith("@"):
            pairs.append((decode_header_value(name, notes, hint).strip(), addr))
    return tuple(pairs)


# An RFC 2047 encoded word, by its grammar: a charset token, Q or B, and encoded text
# without "?" or white space (what the standard library's decoder also takes for one is
# looser: "=?utf-8?Q?attacker?Q?agent?=" reads as "attacker?Q?agent").
_ENCODED_WORD = re.compile(r"""=\?[^\s()<>@,;:"/\[\]?.=]+\?[QqBb]\?[^\s?]+\?=""")


def address_as_written(addr: str, notes: list[str] | None = None, hint: Hint = None) -> str | None:
    """The addr-spec to use for ``addr`` as the header wrote it.

    Encoded words inside an addr-spec are invalid (RFC 2047 §5), yet some mailers write
    them (``=?utf-8?Q?agent?=@example.com``, Zammad's mail118): when every ``=?`` in it
    starts a well-formed encoded word, it is decoded, and kept only when the result is a
    plain address (None: no address, rather than one an encoded "@" made up).  Anything
    else that looks like one (``=?utf-8?Q?attacker?Q?agent?=@victim.example``) is no
    encoded word at all: the address stays literal, never half decoded."""
    if "=?" not in addr or "=?" in _ENCODED_WORD.sub("", addr):
        return addr
    decoded = re.sub(r"\s+", "", decode_header_value(addr, notes, hint))
    return decoded if _PLAIN_ADDRESS.match(decoded) else None


# The From shapes both readings agree on, without asking the strict parser (which costs
# ~0.5 ms a mail): ASCII only, no comment, no backslash, no encoded word in the address.
_SIMPLE_LOCAL = r"[A-Za-z0-9!#$%&'*+/^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/^_`{|}~-]+)*"
_SIMPLE_DOMAIN = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+"
_SIMPLE_ADDR = _SIMPLE_LOCAL + "@" + _SIMPLE_DOMAIN
_SIMPLE_PHRASE = r"""(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:[ \t]+[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*|"[\x20\x21\x23-\x5b\x5d-\x7e]*")"""
_SIMPLE_FROM = re.compile(rf"[ \t]*(?:{_SIMPLE_ADDR}|(?:{_SIMPLE_PHRASE}[ \t]*)?<{_SIMPLE_ADDR}>)[ \t]*\Z")


def sender_problem(values: list[str]) -> str | None:
    """Why the From cannot be trusted as one identity, or None.

    Two readings of the header must agree: the tolerant one used for the address and the
    standard library's strict header parser (CVE-2023-27043: shapes such as
    ``alice@corp.example(<mallory@evil>`` read as Alice by one and not by the other), or
    the MTA that checked DMARC may have read another address than ours.  (Several From
    addresses are read alike by both; ``parse`` then asks which one sent, _one_author.)"""
    if values and all(isinstance(value, str) and _SIMPLE_FROM.match(value) for value in values):
        # A plain address, or a phrase of plain words (encoded words included) or a plain
        # quoted string before one in angle brackets: nothing either parser could read
        # otherwise (tests/test_sender_identity.py checks this against the strict reading).
        return None
    from email.policy import default as strict_policy

    def comparable(addresses) -> set[str]:
        # Quoting and stray spaces in the local part are the two parsers' only
        # legitimate differences.
        return {re.sub(r'["\s]', "", a).lower() for a in addresses}

    ours = {a for _, a in _addresses(values, [])}
    strict: set[str] = set()
    for value in values:
        try:
            header = strict_policy.header_factory("From", _unfold(str(value)))
            if any("end of header" in str(d) for d in header.defects):
                # An unterminated comment, quote or angle bracket: where the address ends
                # is a guess, and a guess is no identity.
                return "unreadable sender address (unterminated comment or quote)"
            # Raw 8-bit bytes (an SMTPUTF8 mail's josé@example.org) are repaired as in
            # our reading; left as surrogates, the two readings never agreed on them.
            strict |= {normalize(_fix_surrogates(address_as_written(a.addr_spec) or a.addr_spec, None))
                       for a in header.addresses if "@" in a.addr_spec}
        except Exception:  # noqa: BLE001 - the strict parser refusing it is the answer
            return "unreadable sender address"
    if ours and strict and comparable(ours) != comparable(strict):
        return f"ambiguous sender address: read as {sorted(ours)[0]} or {sorted(strict)[0]}"
    if not ours and values:
        return None  # no usable address at all: the "no sender" quarantine says so
    return None


def _one_author(msg: email.message.Message, from_values: list[str], froms, notes: list[str],
                hint: Hint) -> tuple[str, str]:
    """The sender of a mail whose From names several people, or a Quarantine.

    Which of them wrote is an identity question, and the first is not an answer: "From:
    victim, attacker" would act in the victim's name.  RFC 5322 allows one From field,
    and several authors in it only with a Sender field naming the one who sent: that one,
    when it is among the authors."""
    if len(from_values) > 1:
        raise Quarantine(f"ambiguous sender: {len(from_values)} From fields")
    senders = _addresses(raw_headers(msg, "Sender"), notes, hint)
    authors = {a.lower(): (name, a) for name, a in froms}
    if len(senders) == 1 and senders[0][1].lower() in authors:
        return authors[senders[0][1].lower()]
    raise Quarantine(f"ambiguous sender: {len(authors)} addresses in From and no Sender naming one of them")


def _message_ids(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    found = re.findall(r"<([^<>\s]+)>", value)
    if not found:
        found = [v for v in value.split() if "@" in v]
    return tuple(normalize_message_id(v) for v in found)


def _part_filename(part: email.message.Message, notes: list[str], hint: Hint = None) -> str | None:
    """The file name of a part: RFC 2231 and encoded words decoded, raw 8-bit bytes read in
    the mail's charset (compat32 would turn them into replacement characters)."""
    probe = email.message.Message()
    for header in ("Content-Disposition", "Content-Type"):
        value = raw_header(part, header)
        if value is not None:
            probe[header] = _fix_surrogates(value, notes, hint)
    name = None
    try:
        name = probe.get_filename()
    except Exception:
        name = None
    if name is None:
        try:
            name = probe.get_param("name")
            if isinstance(name, tuple):  # RFC 2231
                name = email.utils.collapse_rfc2231_value(name)
        except Exception:
            name = None
    if name is None:
        return None
    return decode_header_value(name, notes, hint)


_WINDOWS_DEVICE = re.compile(r"^(?:con|prn|aux|nul|com[0-9]|lpt[0-9])(?:\.|$)", re.IGNORECASE)


def clean_filename(name: str, fallback: str = "attachment") -> str:
    """A file name safe to show and to store: no path parts, no control or bidi characters
    (``invoice\u202egpj.exe`` shows as the .exe it is), no Windows device name, bounded."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable() and ch not in '<>:"|?*')
    name = name.strip().strip(".").strip()
    if not name:
        name = fallback
    if _WINDOWS_DEVICE.match(name):  # "CON.txt" opens the console, not a file, on Windows
        name = "_" + name
    if len(name) > 200:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 10:
            name = stem[: 199 - len(ext)] + "." + ext
        else:
            name = name[:200]
    return name


_CRLF = email.policy.compat32.clone(linesep="\r\n")
_RFC822_PART = re.compile(rb"^content-type:[ \t]*message/rfc822", re.IGNORECASE | re.MULTILINE)


def _raw_report_part(raw: bytes, cursor: dict, boundary: str | None, ctype: str, rebuilt: bytes) -> bytes | None:
    """A report part (delivery status, returned headers) exactly as it came; None unless
    the slice holds the same fields as the parsed part."""
    if boundary is None:
        return None
    m = re.compile(rb"^content-type:[ \t]*" + re.escape(ctype.encode()), re.IGNORECASE | re.MULTILINE).search(
        raw, cursor["pos"])
    if m is None:
        return None
    sep = re.compile(rb"\r?\n\r?\n").search(raw, m.end())
    if sep is None:
        return None
    delimiter = re.compile(rb"\r?\n--" + re.escape(boundary.encode("utf-8", "surrogateescape")) + rb"(?:--)?[ \t]*(?:\r?\n|$)")
    end_m = delimiter.search(raw, sep.end())
    end = end_m.start() if end_m else len(raw)
    data = raw[sep.end():end]
    if re.sub(rb"\s+", b"", data) != re.sub(rb"\s+", b"", rebuilt):
        return None
    cursor["pos"] = end
    return data


def _raw_inner_message(raw: bytes, cursor: dict, boundary: str | None,
                       inner: email.message.Message) -> bytes | None:
    """The bytes of a forwarded message exactly as they came, cut from the raw mail
    between its part's header block and the next delimiter of the enclosing multipart
    (re-serialising would refold headers and change the content hash).  None when it
    cannot be found for sure; the caller then re-serialises."""
    if boundary is None:
        return None
    m = _RFC822_PART.search(raw, cursor["pos"])
    if m is None:
        return None
    sep = re.compile(rb"\r?\n\r?\n").search(raw, m.end())
    if sep is None:
        return None
    start = sep.end()
    delimiter = re.compile(rb"\r?\n--" + re.escape(boundary.encode("utf-8", "surrogateescape")) + rb"(?:--)?[ \t]*(?:\r?\n|$)")
    end_m = delimiter.search(raw, start)
    end = end_m.start() if end_m else len(raw)
    data = raw[start:end]
    # The slice must be the message compat32 found there, else it is not trusted.
    found = re.search(rb"(?im)^message-id:[ \t]*(\S+)", data.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0])
    expected = inner.get("Message-ID")
    if (found.group(1).decode("ascii", "replace") if found else None) != (str(expected).strip() if expected else None):
        return None
    cursor["pos"] = end
    return data


def _charset_hints(msg: email.message.Message) -> tuple[str, ...]:
    """The charsets the mail declares, in order, to read undeclared 8-bit headers with
    (decode_bytes tries the Latin ones last)."""
    found: list[str] = []
    for i, part in enumerate(msg.walk()):
        if i > 50:
            break
        charset = part.get_content_charset()
        if charset and charset not in ("us-ascii", "ascii", "utf-8") and charset not in found:
            found.append(charset)
    return tuple(found)


def _report_bytes(part: email.message.Message) -> bytes:
    """The text of a report part (compat32 splits delivery-status into header blocks)."""
    payload = part.get_payload()
    try:
        if isinstance(payload, list):
            data = b"".join(sub.as_bytes() if isinstance(sub, email.message.Message) else b"" for sub in payload)
            return data.rstrip(b"\r\n") + b"\n"
        return part.get_payload(decode=True) or b""
    except Exception:
        return str(payload).encode("utf-8", "replace")


def _unpack_tnef(attachments: list[ParsedAttachment], notes: list[str]) -> list[ParsedAttachment]:
    """Outlook's winmail.dat (TNEF) hides the real files; replace it by them.  When it holds
    no file (only a rich-text body) or cannot be read, it is kept as it came."""
    out: list[ParsedAttachment] = []
    for att in attachments:
        is_tnef = att.content_type in ("application/ms-tnef", "application/vnd.ms-tnef") or \
            att.filename.lower() == "winmail.dat"
        if not is_tnef:
            out.append(att)
            continue
        try:
            from tnefparse import TNEF

            tnef = TNEF(att.data, do_checksum=False)
            files = [(f.long_filename() or f.name or "", f.data) for f in tnef.attachments]
        except Exception as exc:  # a broken TNEF stream: keep the bytes
            notes.append(f"winmail.dat not readable as TNEF ({type(exc).__name__}): kept as it came")
            out.append(att)
            continue
        if not files:
            out.append(att)
            continue
        for i, (name, data) in enumerate(files, 1):
            if isinstance(name, bytes):
                name = decode_bytes(name, None)
            data = bytes(data or b"")
            out.append(ParsedAttachment(clean_filename(name, f"winmail-{i}.bin"), _guess_type(name), data))
        notes.append(f"winmail.dat unpacked into {len(files)} file(s)")
    return out


def _guess_type(name: str) -> str:
    import mimetypes

    return mimetypes.guess_type(name)[0] or "application/octet-stream"


_EXT = {"text/plain": "txt", "text/html": "html", "message/rfc822": "eml", "text/calendar": "ics",
        "application/pdf": "pdf", "image/png": "png", "image/jpeg": "jpg", "image/gif": "gif"}


_HEADER_LINE = re.compile(rb"^[\x21-\x39\x3b-\x7e]{1,76}:")
# Headers that only a mail has; a text file with none of them is not a mail.
_MAIL_HEADERS = ("from", "to", "subject", "date", "message-id", "received", "sender", "mime-version",
                 "content-type", "return-path")
# Machine-readable report parts: kept as attachments with their text, never walked as mail.
_REPORT_PARTS = ("message/delivery-status", "message/global-delivery-status", "message/feedback-report",
                 "message/disposition-notification", "text/rfc822-headers", "message/rfc822-headers",
                 "message/global-headers")


def _skip_leading_text(raw: bytes, notes: list[str]) -> bytes:
    """Some clients put a line of text before the headers ("---- Original email message ----").
    When the first line is not a header but the next ones are, read the mail from there."""
    if _HEADER_LINE.match(raw) or raw.startswith(b"From "):
        return raw
    lines = raw.split(b"\n", 4)
    for i in range(1, min(3, len(lines) - 1)):
        if _HEADER_LINE.match(lines[i]) and _HEADER_LINE.match(lines[i + 1]):
            notes.append(f"text before the headers skipped: {b' '.join(lines[:i]).strip()[:80]!r}")
            return b"\n".join(lines[i:])
    return raw


def _repair_header_block(raw: bytes, notes: list[str]) -> bytes:
    """Some mailers continue a header on lines that are not indented (a base64 tracker, a
    wrapped Received).  The standard parser then ends the header block early and loses
    From and Subject.  Lines of the header block that are neither a header nor indented,
    and that have real headers after them, are read as continuation lines."""
    m = re.search(rb"\r?\n\r?\n", raw)
    if m is None:
        return raw
    head = raw[: m.start()]  # (the rest is copied only when the block is repaired)
    lines = head.split(b"\n")
    is_header = [bool(_HEADER_LINE.match(line)) or line[:1] in (b" ", b"\t") or (i == 0 and line.startswith(b"From "))
                 for i, line in enumerate(lines)]
    if all(is_header):
        return raw
    last_header = max((i for i, ok in enumerate(is_header) if ok and _HEADER_LINE.match(lines[i])), default=-1)
    fixed = [line if ok or i > last_header else b" " + line for i, (line, ok) in enumerate(zip(lines, is_header))]
    if fixed == lines:
        return raw
    notes.append("header lines continued without indentation: read as continuations")
    return b"\n".join(fixed) + raw[m.start():]


# Lines starting with "--": a pattern starting with ^ (MULTILINE) is tried at every byte
# (~36 ms for a 5 MB mail, in the door and again in the worker); one starting with the
# literal "\n--" is found by a fast search (~2 ms).  The first line is matched apart.
_DASHES_FIRST = re.compile(rb"--([^\r\n]{1,204})")
_DASHES_NEXT = re.compile(rb"\n--([^\r\n]{1,204})")


def _delimiter_lines(raw: bytes, first: re.Pattern, following: re.Pattern):
    """(line start, match end, text after the dashes) of each line of ``raw`` that
    ``first`` matches at its start, in order: what ``^`` + ``first`` with re.MULTILINE
    finds (no match spans a line break, so none can overlap the next line's)."""
    m = first.match(raw)
    if m is not None:
        yield 0, m.end(), m.group(1)
    for m in following.finditer(raw):
        yield m.start(1) - 2, m.end(), m.group(1)


_BOUNDARY = re.compile(rb"""boundary\s*=\s*(?:"([^"\r\n]{1,200})"|([^\s;"]{1,200}))""", re.IGNORECASE)


def _boundaries(raw: bytes) -> set[bytes]:
    """The boundary parameters ``raw`` declares: what ``_BOUNDARY.findall`` finds, at a
    fraction of its cost on a large mail (a case-insensitive pattern is tried at every
    byte: ~33 ms for 5 MB).  Its matches start with the word "boundary": the places of
    the word are found in a lower-cased copy of one 1 MB piece at a time (``raw`` may be a
    memory map of a large mail: never copied whole), and the pattern is tried there, each
    search going on after the previous match as findall's does."""
    found: set[bytes] = set()
    after = 0  # end of the last match
    piece = 1 << 20
    for start in range(0, len(raw), piece):
        lowered = raw[start:start + piece + 7].lower()  # 7: the word may cross the cut
        i = lowered.find(b"boundary")
        while 0 <= i < piece:
            if start + i >= after:
                m = _BOUNDARY.match(raw, start + i)
                if m is not None:
                    found.add((m.group(1) or m.group(2)).strip())
                    after = m.end()
            i = lowered.find(b"boundary", i + 1)
    return found


# How over_limits names a mail that went round too many relays: the SMTP door answers it
# with RFC 3463's "routing loop detected" (5.4.6), not as a mail too large.
MAIL_LOOP = "mail loop"


def over_limits(raw: bytes, limits: Limits) -> str | None:
    """The first limit ``raw`` is over, as a reason, or None.  Linear in the size and run
    before the standard parser, whose time and recursion grow with a hostile structure
    (100,000 parts take tens of seconds; nesting of 1,000 overflows the stack)."""
    m = re.search(rb"\r?\n\r?\n", raw)
    head = raw if m is None else raw[: m.start()]
    # A stray NUL is a broken mail (kept, and the NUL dropped from its text); many are a
    # binary file, such as an Outlook .msg, that is no mail at all.
    if head.count(b"\x00") > 16 or b"\x00" in head[:64]:
        return "not an e-mail message: binary data in the header"
    if len(head) > limits.max_header_block:
        return f"header block larger than {limits.max_header_block} bytes"
    hops = 0
    for line in re.split(rb"\r?\n(?![ \t])", head):
        if len(line) > limits.max_header_length:
            return f"header longer than {limits.max_header_length} bytes"
        hops += line[:9].lower() == b"received:"
    if hops > limits.max_received:
        return f"{MAIL_LOOP}: {hops} Received headers (more than {limits.max_received})"
    boundaries = _boundaries(raw)
    if not boundaries:
        return None
    # Walk the delimiter lines: a boundary seen for the first time opens a level, its
    # closing delimiter (or a delimiter of an outer level) closes the inner ones.
    stack: list[bytes] = []
    parts = depth = 0
    for _, _, token in _delimiter_lines(raw, _DASHES_FIRST, _DASHES_NEXT):
        token = token.rstrip()
        closing = token.endswith(b"--") and token[:-2] in boundaries
        name = token[:-2] if closing else token
        if name not in boundaries:
            continue
        if closing:
            if name in stack:
                del stack[stack.index(name):]
            continue
        parts += 1
        if name in stack:
            del stack[stack.index(name) + 1:]
        else:
            stack.append(name)
            depth = max(depth, len(stack))
        if parts > limits.max_parts:
            return f"more than {limits.max_parts} MIME parts"
        if depth > limits.max_depth:
            return f"MIME nesting deeper than {limits.max_depth}"
    return None


# Large leaf bodies ---------------------------------------------------------------------
# The standard parser holds a part's body several times over (the raw bytes, the payload
# as str, that str encoded back, the same without line breaks, one object per line): a
# 34 MB mail costs ~11 times its size.  Bodies above LARGE_BODY are therefore cut out of
# the copy the standard parser reads (a placeholder keeps the structure, headers and
# defects), then decoded straight from the raw bytes, a few MB at a time, into the blob
# store.  Anything the cut cannot be sure of falls back to the standard parser's own reading.
LARGE_BODY = 1 << 20
# Bodies over CUT_BODY are cut too, and decoded in memory up to LARGE_BODY: the standard
# parser reads a mail line by line, and a 200 KB attachment's 2,700 lines were a third
# of parsing the benchmark's mixed set (issue 20).
CUT_BODY = 64 << 10
_CHUNK = 4 << 20
_DELIMITER_FIRST = re.compile(rb"--([^\r\n]{1,204})(?=\r?\n|\r?\Z)")
_DELIMITER_NEXT = re.compile(rb"\n--([^\r\n]{1,204})(?=\r?\n|\r?\Z)")
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_NOT_BASE64 = bytes(b for b in range(256) if b not in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
_DECODED_HERE = ("base64", "quoted-printable")
_UU = ("x-uuencode", "uuencode", "uue", "x-uue")
_MAX_DELIMITERS = 10_000


# complex: a walk of the boundary delimiter lines, the same walk as over_limits (tests/test_large_mail.py keeps them equal)
def _large_leaves(raw: bytes, threshold: int = LARGE_BODY) -> list[tuple[int, int]]:
    """(start, end) of the bodies of leaf parts larger than ``threshold``, found by walking
    the delimiter lines of the boundaries the mail declares (as ``over_limits`` does).
    Parts inside a forwarded message are left alone: its bytes are kept as they came."""
    if len(raw) <= threshold:
        return []
    boundaries = _boundaries(raw)
    if not boundaries:
        return []
    delimiters = []  # (line start, after the line break, name, closing)
    for start, stop, token in _delimiter_lines(raw, _DELIMITER_FIRST, _DELIMITER_NEXT):
        token = token.rstrip(b" \t")
        closing = token.endswith(b"--") and token[:-2] in boundaries
        name = token[:-2] if closing else token
        if name not in boundaries:
            continue
        if len(delimiters) >= _MAX_DELIMITERS:
            return []  # (over_limits counts parts, not closing lines): the standard reading
        nl = raw.find(b"\n", stop)
        delimiters.append((start, len(raw) if nl < 0 else nl + 1, name, closing))
    leaves: list[tuple[int, int]] = []
    forwarded_until = -1  # inside a message/* part up to there
    for i, (_, after, name, closing) in enumerate(delimiters):
        if closing or i + 1 >= len(delimiters) or after < forwarded_until:
            continue
        end = delimiters[i + 1][0]
        if raw.startswith(b"\r\n", after) or raw.startswith(b"\n", after):
            head, body_start = b"", after + (2 if raw[after] == 13 else 1)
        else:
            sep = _BLANK_LINE.search(raw, after, end)
            if sep is None:
                continue
            head, body_start = raw[after:sep.start()], sep.end()
            if not all(_HEADER_LINE.match(line) or line[:1] in (b" ", b"\t") for line in head.split(b"\n")):
                continue  # not a clean header block: leave the part to the standard parser
        maintype = email.message_from_bytes(head + b"\r\n\r\n").get_content_maintype()
        if maintype == "message":
            # Up to the next delimiter of the same boundary: the forwarded message's own.
            forwarded_until = next((d[0] for d in delimiters[i + 1:] if d[2] == name), len(raw))
            continue
        if maintype == "multipart":
            continue
        body_end = end - 2 if raw[end - 2:end] == b"\r\n" else end - 1 if raw[end - 1:end] == b"\n" else end
        if body_end - body_start > threshold:
            leaves.append((body_start, body_end))
    return leaves


def _placeholders(raw: bytes, leaves: list[tuple[int, int]]) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """A copy of ``raw`` with each large body replaced by a token no mail can guess."""
    nonce = secrets.token_hex(12)
    view = memoryview(raw)
    pieces: list = []
    slots: dict[str, tuple[int, int]] = {}
    prev = 0
    for i, (start, end) in enumerate(leaves):
        token = f"gateway-large-body-{nonce}-{i}"
        slots[token] = (start, end)
        pieces += [view[prev:start], token.encode()]
        prev = end
    pieces.append(view[prev:])
    return b"".join(pieces), slots


def _tokens_in_place(msg: email.message.Message, slots: dict) -> bool:
    """Did the standard parser see each token as the whole body of a leaf part, outside any
    forwarded message?  Else the cut did not match its reading of the structure."""
    found = 0

    def visit(part: email.message.Message, forwarded: bool) -> None:
        nonlocal found
        payload = part.get_payload()
        if isinstance(payload, list):
            forwarded = forwarded or part.get_content_maintype() == "message"
            for sub in payload:
                if isinstance(sub, email.message.Message):
                    visit(sub, forwarded)
        elif isinstance(payload, str) and payload in slots and not forwarded \
                and part.get_content_maintype() not in ("multipart", "message"):
            found += 1

    visit(msg, False)
    return found == len(slots)


def _decoded_chunks(raw: bytes, start: int, end: int, cte: str):
    """The decoded bytes of raw[start:end], a few MB at a time, as ``get_payload(decode=True)``
    would give them.  Raises ValueError for what only the standard decoder can handle."""
    if cte == "base64":
        carry = b""
        pos = start
        while pos < end:
            stop = min(end, pos + _CHUNK)
            clean = carry + raw[pos:stop].translate(None, _NOT_BASE64)
            pos = stop
            last = pos >= end
            if b"=" in (clean if not last else clean.rstrip(b"=")):
                # Padding inside the data: decoders differ there; the standard one decides.
                raise ValueError("padding inside the base64 data")
            if not last:
                cut = len(clean) - len(clean) % 4
                clean, carry = clean[:cut], clean[cut:]
            elif len(clean) % 4 == 1:
                raise ValueError("base64 data of an impossible length")
            elif len(clean) % 4:
                clean += b"=" * (4 - len(clean) % 4)
            if clean:
                yield binascii.a2b_base64(clean)
    elif cte == "quoted-printable":
        pos = start
        while pos < end:
            stop = min(end, pos + _CHUNK)
            if stop < end:
                nl = raw.rfind(b"\n", pos, stop)
                stop = nl + 1 if nl > pos else stop
            yield binascii.a2b_qp(raw[pos:stop])
            pos = stop
    else:
        for pos in range(start, end, _CHUNK):
            yield raw[pos:min(end, pos + _CHUNK)]


def _store_large(raw: bytes, slot: tuple[int, int], cte: str, blobs):
    """Decode a large body from ``raw``: (content, None, 0) in memory without a blob store,
    (None, sha256, size) once stored in it; None when only the standard decoder can."""
    chunks = _decoded_chunks(raw, slot[0], slot[1], cte if cte in _DECODED_HERE else "")
    try:
        if blobs is None:
            return b"".join(chunks), None, 0
        with blobs.writer() as writer:
            for chunk in chunks:
                writer.write(chunk)
            return None, writer.commit(), writer.size
    except ValueError:  # (binascii.Error is one)
        return None


# long, complex: the one pass from raw bytes to ParsedMail, in the order the limits must be checked; not split in issue 18 because 20-cost is reworking the parser's cost in it
def parse(raw: bytes, limits: Limits = Limits(), blobs=None) -> ParsedMail:
    """Parse a raw RFC 5322 message.  Raises Quarantine over a limit or for what is not mail.

    With ``blobs`` (a BlobStore), large attachments are decoded straight into it and their
    ``data`` is read back from it on demand; without, they are decoded into memory."""
    notes: list[str] = []
    if not raw or raw.isspace():  # (not raw.strip(): that would copy the whole mail)
        raise Quarantine("empty message")
    raw = _skip_leading_text(raw.lstrip(b"\r\n"), notes)
    raw = _repair_header_block(raw, notes)
    problem = over_limits(raw, limits)
    if problem:
        raise Quarantine(problem)
    original = raw
    slots: dict[str, tuple[int, int]] = {}
    try:
        leaves = _large_leaves(raw, CUT_BODY)
        if leaves:
            raw, slots = _placeholders(original, leaves)
        msg = email.message_from_bytes(raw)
        if slots and not _tokens_in_place(msg, slots):
            # The cut did not match the standard parser's reading: let it read it all.
            raw, slots = original, {}
            msg = email.message_from_bytes(raw)
    except RecursionError:
        raise Quarantine("MIME structure too deep to parse") from None
    except Exception as exc:  # the tolerant parser almost never raises
        raise Quarantine(f"unparseable message: {exc}") from None
    if not any(k.lower() in _MAIL_HEADERS for k in msg.keys()):
        raise Quarantine("not an e-mail message: no mail headers found")

    hint = _charset_hints(msg)
    headers = tuple((k.lower(), decode_header_value(v, notes, hint)) for k, v in msg.raw_items())
    for defect in msg.defects:
        notes.append(type(defect).__name__)

    subject = decode_header_value(raw_header(msg, "Subject"), notes, hint)
    from_values = raw_headers(msg, "From") or raw_headers(msg, "Sender")
    problem = sender_problem(from_values)
    if problem:
        raise Quarantine(problem)
    froms = _addresses(from_values, notes, hint)
    from_name, from_addr = froms[0] if froms else ("", "")
    if len(from_values) > 1 or len({a.lower() for _, a in froms}) > 1:
        from_name, from_addr = _one_author(msg, from_values, froms, notes, hint)
    to = tuple(a for _, a in _addresses(msg.get_all("To") or [], notes))
    cc = tuple(a for _, a in _addresses(msg.get_all("Cc") or [], notes))
    reply_to = tuple(a for _, a in _addresses(msg.get_all("Reply-To") or [], notes))
    date = None
    try:
        if msg.get("Date"):
            date = email.utils.parsedate_to_datetime(str(msg.get("Date")))
    except Exception:
        notes.append("unreadable Date header")
    lang = msg.get("Content-Language")
    lang = str(lang).split(",")[0].strip().lower() if lang else None

    # Body fragments in order, (content type, text); alternatives are resolved as walked.
    fragments: list[tuple[str, str]] = []
    htmls: list[str] = []
    attachments: list[ParsedAttachment] = []
    counter = {"parts": 0}
    part_types: list[str] = []

    cursor = {"pos": 0}

    # long, complex: parse's walk of the MIME tree, one branch per kind of part (text, HTML, TNEF, forwarded mail, attachment)
    def walk(part: email.message.Message, depth: int, boundary: str | None = None) -> None:
        counter["parts"] += 1
        if counter["parts"] > limits.max_parts:
            raise Quarantine(f"more than {limits.max_parts} MIME parts")
        if depth > limits.max_depth:
            raise Quarantine(f"MIME nesting deeper than {limits.max_depth}")
        for defect in part.defects:
            name = type(defect).__name__
            if name not in notes:
                notes.append(name)
        ctype = part.get_content_type()
        part_types.append(ctype)
        maintype = part.get_content_maintype()
        disposition = str(part.get("Content-Disposition") or "").split(";")[0].strip().lower()
        filename = _part_filename(part, notes, part.get_content_charset() or hint)
        content_id = normalize_message_id(str(part.get("Content-ID"))) if part.get("Content-ID") else None
        slot = None
        if slots and not part.is_multipart():
            slot = slots.get(part.get_payload())
        if slot is not None:
            cte = str(part.get("content-transfer-encoding", "")).lower()
            as_text = ctype in ("text/plain", "text/html") and disposition != "attachment" and filename is None
            stored = None
            if not (as_text or ctype in _REPORT_PARTS or cte in _UU):
                stored = _store_large(original, slot, cte, blobs if slot[1] - slot[0] > LARGE_BODY else None)
            if stored is None:
                # Body text, a report or an unusual encoding: the standard reading, on the
                # bytes as they came.
                part.set_payload(original[slot[0]:slot[1]].decode("ascii", "surrogateescape"))
            else:
                attach(ctype, filename, disposition, content_id, *stored)
                return

        if ctype in _REPORT_PARTS:
            rebuilt = _report_bytes(part)
            data = _raw_report_part(raw, cursor, boundary, ctype, rebuilt)
            attachments.append(ParsedAttachment(clean_filename(filename or f"{ctype.split('/')[1]}.txt"), ctype,
                                                rebuilt if data is None else data, False, content_id))
            return
        if ctype == "message/rfc822" or maintype == "message":
            payload = part.get_payload()
            if isinstance(payload, list) and payload:
                inner = payload[0]
                data = _raw_inner_message(raw, cursor, boundary, inner)
                if data is None:
                    try:
                        # Keep the line endings the mail came with.
                        # (counted here, not for every mail: two passes over a 5 MB mail)
                        crlf = original.count(b"\r\n") * 2 > original.count(b"\n")
                        data = inner.as_bytes(policy=_CRLF if crlf else email.policy.compat32)
                    except Exception:
                        data = str(inner).encode("utf-8", "replace")
            else:
                data = part.get_payload(decode=True) or b""
            inner_subject = ""
            if isinstance(payload, list) and payload:
                inner_subject = decode_header_value(payload[0].get("Subject"), notes)
            description = decode_header_value(raw_header(part, "Content-Description"), notes, hint)
            name = filename or (inner_subject or description or "forwarded message") + ".eml"
            attachments.append(ParsedAttachment(clean_filename(name, "message.eml"), "message/rfc822", data))
            return
        if maintype == "multipart" and not part.is_multipart():
            # No boundary found: the parts cannot be told apart, so the whole is shown as text.
            ctype, filename, disposition = "text/plain", None, ""
        elif part.is_multipart():
            payload = part.get_payload()
            if not isinstance(payload, list):
                return
            subs = [sub for sub in payload if isinstance(sub, email.message.Message)]
            inner_boundary = part.get_boundary()
            if ctype != "multipart/alternative":
                for sub in subs:
                    walk(sub, depth + 1, inner_boundary)
                return
            # Alternatives say the same thing: keep the plain-text one as the body when
            # there is one, else the richest (the last); attachments of all are kept.
            choices = []
            for sub in subs:
                start = len(fragments)
                walk(sub, depth + 1, inner_boundary)
                choices.append(fragments[start:])
                del fragments[start:]
            plain = [c for c in choices if any(t == "text/plain" and x.strip() for t, x in c)]
            rich = [c for c in choices if any(x.strip() for _, x in c)]
            fragments.extend(plain[0] if plain else (rich[-1] if rich else []))
            return
        try:
            data = part.get_payload(decode=True) or b""
        except Exception:
            data = (part.get_payload() or "").encode("utf-8", "replace")
            notes.append(f"undecodable transfer encoding in a {ctype} part")
        # Text is the body unless it is marked or named as an attachment.
        is_body_text = (ctype in ("text/plain", "text/html") and disposition != "attachment"
                        and filename is None)
        if is_body_text:
            text = decode_bytes(data, part.get_content_charset(), notes)
            fragments.append((ctype, text))
            if ctype == "text/html":
                htmls.append(text)
            return
        attach(ctype, filename, disposition, content_id, data)

    def attach(ctype: str, filename: str | None, disposition: str, content_id: str | None, data: bytes | None,
               blob: str | None = None, size: int = 0) -> None:
        inline = disposition == "inline" or (content_id is not None and disposition != "attachment")
        ext = _EXT.get(ctype, "bin")
        fallback = f"attachment-{len(attachments) + 1}.{ext}"
        if content_id:
            # Outlook names an inline image's Content-ID after its file ("image001.jpg@01D4…"):
            # that name is kept as it is, never given its extension a second time.
            stem = content_id.split("@")[0]
            fallback = stem if _guess_type(stem) != "application/octet-stream" else f"{stem}.{ext}"
        attachments.append(ParsedAttachment(clean_filename(filename or fallback, fallback), ctype, data, inline,
                                            content_id, blob, size, blobs if blob else None))

    try:
        walk(msg, 0)
    except RecursionError:
        raise Quarantine("MIME structure too deep to parse") from None
    attachments = _unpack_tnef(attachments, notes)
    # An image the HTML shows by "cid:" is inline, whatever its Content-Disposition says
    # (Outlook often sends such images as "attachment").
    if htmls:
        shown = {m.lower() for h in htmls for m in re.findall(r"cid:([^\s\"'>)]+)", h, re.IGNORECASE)}
        attachments = [dataclasses.replace(a, inline=True) if a.content_id and a.content_id.lower() in shown else a
                       for a in attachments]

    html = "\n".join(htmls) if htmls else None
    # Fragments of a multipart/mixed (text, then HTML, then text again) are all body.
    text = "\n".join((t if kind == "text/plain" else html_to_text(t)).strip("\r\n") for kind, t in fragments)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    ctype = msg.get_content_type()
    report_type = msg.get_param("report-type") if ctype == "multipart/report" else None
    if "\x00" in subject + text + from_name + (html or "") or any("\x00" in v for _, v in headers):
        # PostgreSQL text refuses NUL (SQLite takes it): drop it, and say so.
        notes.append("NUL characters removed from the text")
        subject, text, from_name = (v.replace("\x00", "") for v in (subject, text, from_name))
        html = html.replace("\x00", "") if html is not None else None
        headers = tuple((k, v.replace("\x00", "")) for k, v in headers)
    return ParsedMail(
        message_id=normalize_message_id(str(msg.get("Message-ID") or "")),
        subject=subject,
        from_addr=from_addr,
        from_name=from_name,
        to=to,
        cc=cc,
        reply_to=reply_to,
        in_reply_to=_message_ids(decode_header_value(msg.get("In-Reply-To"))),
        references=_message_ids(decode_header_value(msg.get("References"))),
        date=date,
        content_language=lang,
        text=text,
        html=sanitize_html(html) if html is not None else None,
        attachments=tuple(attachments),
        headers=headers,
        content_type=ctype,
        report_type=str(report_type).lower() if report_type else None,
        defects=tuple(notes),
        part_types=tuple(part_types),
    )
