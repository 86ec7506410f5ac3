"""``build_bytes`` (the notification writer on the hot path) writes what
``build_message(...).as_bytes()`` (the standard library's policy) writes, for plain and
hostile names, titles and thread headers alike: the same bytes, except for encoded words
and quoted-printable bodies, which are checked to say the same once decoded."""

from __future__ import annotations

import re
from email import message_from_bytes
from email.header import decode_header, make_header
from email.policy import default
from datetime import datetime, timezone

import pytest

from gateway.outbound.compose import Envelope, build_bytes, build_message, header_text
from gateway.outbound.render import RenderedMail

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
BOUNDARY = re.compile(rb"={15}\d{19}==")

NAMES = ["", "Marie Dupont", "Zoë Ĳzerman", "Dupont, Marie", "O'Brien Jr.", 'Say "hi"', "a" * 90,
         "王小明", "Ann\r\nBcc: x@example.org", "=?utf-8?q?Zo=C3=AB?=", "Tab\there", "(comment) name", "x@y"]
TITLES = ["Imprimante en panne", "Imprimante du 3e étage en panne", "打印机坏了，无法打印任何文件",
          "Принтер не работает 🖨️ " + "очень длинное описание " * 6, "a" * 300, "=?utf-8?q?hidden?= title",
          "Line\r\nBcc: evil@example.org", "word " * 30, "", "[INC-000001] already tagged", "semi;colon: <x>"]
ADDRS = ["marie@example.org", "jan@exämple.be", "o'brien+tag@mail.example.com", "a.b@c-d.example"]
BODIES = [("Bonjour,\n\nVotre demande est enregistrée.\n", "<p>Bonjour</p>"),
          ("x" * 200 + "\n= sign =3D and trailing space \n\n\rcr\r\nlf", "<p>" + "é" * 100 + "</p>\n"),
          ("", "")]


def envelope(i: int, title: str, name: str, addr: str, refs: int) -> Envelope:
    return Envelope(
        from_name=["Service desk", "Dépannage IT", "Help, Desk"][i % 3], from_addr="helpdesk@desk.example.com",
        to=((name, addr),) if i % 4 else ((name, addr), ("Second Person", "second@example.org")),
        reply_to="helpdesk+inc-000001.abcdef@desk.example.com", message_id=f"{i}.123@desk.example.com",
        in_reply_to=None if i % 5 == 0 else "AM0PR07MB4417E1A8C9@AM0PR07MB4417.eurprd07.prod.outlook.com",
        references=tuple(f"m{k}.{'x' * (k % 40)}@example.org" for k in range(refs)),
        number="INC-000001", loop_id="helpdesk@desk.example.com",
        auto_submitted="auto-replied" if i % 2 else "auto-generated", date=T0,
        subject=None if i % 3 == 0 else f"[INC-000001] {title}", thread_topic=f"[INC-000001] {title}"[:200],
        thread_index="AdqMb0v1b2V4a5RkAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        flag=[None, "Action required: your approval or refusal",
              "Action requise\u00a0: nous attendons votre approbation financière", title][i % 4])


CASES = [(i, t, n, a, r) for i, (t, n, a, r) in enumerate(
    [(t, n, ADDRS[k % len(ADDRS)], k % 25) for k, (t, n) in enumerate((t, n) for t in TITLES for n in NAMES)])]


@pytest.mark.parametrize("i,title,name,addr,refs", CASES)
def test_fast_writer_matches_the_standard_library(i, title, name, addr, refs):
    text, html = BODIES[i % len(BODIES)]
    mail = RenderedMail("new", ["fr", "nl", "en", "de"][i % 4], title, text, html)
    env = envelope(i, title, name, addr, refs)
    msg = build_message(mail, env)
    expected = msg.as_bytes()
    got, subject = build_bytes(mail, env)
    assert subject == str(msg["Subject"])
    expected = BOUNDARY.sub(b"B", expected)
    got = BOUNDARY.sub(b"B", got)
    got_head, got_body = got.split(b"\r\n\r\n", 1)
    exp_head, exp_body = expected.split(b"\r\n\r\n", 1)
    same_parts(got, expected, got_body, exp_body)
    got_fields, exp_fields = fields(got_head), fields(exp_head)
    assert list(got_fields) == list(exp_fields)
    for key, value in got_fields.items():
        if key in ("Subject", "Thread-Topic", "X-Message-Flag") and b"=?" in exp_fields[key]:
            for n, line in enumerate(value.split(b"\r\n")):
                assert len(line) + (len(key) + 2 if n == 0 else 0) <= 78 and line.isascii(), (key, line)
            # Encoded by build_bytes itself: the same text once decoded, by either decoder.
            if key == "X-Message-Flag":
                # The standard library's folding adds or drops the space next to an
                # encoded word ("approbation  financière"): ours is exact.
                assert decoded(got_fields[key]) == header_text(env.flag)
                assert "".join(decoded(exp_fields[key]).split()) == "".join(env.flag.split())
                continue
            assert decoded(got_fields[key]) == decoded(exp_fields[key])
            assert str(make_header(decode_header(unfold(got_fields[key])))) == \
                str(make_header(decode_header(unfold(exp_fields[key]))))
        elif key in ("From", "To", "Reply-To") and (b"=?" in exp_fields[key] or b"=?" in value):
            # A name in another script is written as one encoded word by build_bytes: the
            # same names and addresses once parsed, in lines of at most 78 ASCII characters.
            for n, line in enumerate(value.split(b"\r\n")):
                assert len(line) + (len(key) + 2 if n == 0 else 0) <= 78 and line.isascii(), (key, line)
            assert people(got_fields[key]) == people(exp_fields[key]), key
        else:
            assert value == exp_fields[key], key
    assert message_from_bytes(got, policy=default)["Subject"] == str(msg["Subject"])


def same_parts(got: bytes, expected: bytes, got_body: bytes, exp_body: bytes) -> None:
    """The same parts with the same headers; each body the same text once decoded, in
    quoted-printable lines of at most 76 ASCII characters (the bodies are encoded by
    binascii, the standard library's writer uses email.quoprimime: their soft line
    breaks may fall elsewhere)."""
    got_msg, exp_msg = message_from_bytes(got, policy=default), message_from_bytes(expected, policy=default)
    got_parts, exp_parts = list(got_msg.walk()), list(exp_msg.walk())
    assert [p.get_content_type() for p in got_parts] == [p.get_content_type() for p in exp_parts]
    for got_part, exp_part in zip(got_parts[1:], exp_parts[1:]):
        assert got_part.items() == exp_part.items()
        assert got_part.get_content() == exp_part.get_content()
        assert got_part.get_payload(decode=True) == exp_part.get_payload(decode=True)
        raw = got_part.get_payload(decode=False)
        assert raw.isascii() and all(len(line) <= 76 for line in raw.splitlines()), raw
        # Every "=" is an escape or a soft line break: no line can be a boundary.
        assert re.fullmatch(r"(?:[^=]|=[0-9A-F]{2}|=\r?\n)*", raw, re.S), raw
    # Between the parts' bodies (their heads, the boundaries) the bytes are the same.
    strip = re.compile(rb"(?ms)(Content-Transfer-Encoding: quoted-printable\r\n(?:MIME-Version: 1.0\r\n)?\r\n).*?(\r\n--B)")
    assert strip.sub(rb"\1\2", got_body) == strip.sub(rb"\1\2", exp_body)


def fields(head: bytes) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            out[last] += b"\r\n" + line
        else:
            name, _, value = line.partition(b":")
            last = name.decode()
            out[last] = value[1:] if value.startswith(b" ") else value
    return out


def unfold(value: bytes) -> str:
    return value.replace(b"\r\n", b"").decode("ascii")


def people(value: bytes) -> list[tuple[str, str]]:
    header = default.header_factory("To", unfold(value))
    assert not header.defects, header.defects
    return [(a.display_name, a.addr_spec) for a in header.addresses]


def decoded(value: bytes) -> str:
    return str(default.header_factory("Subject", unfold(value)))


def test_a_local_part_in_utf8_takes_the_standard_path():
    mail = RenderedMail("new", "fr", "Sujet", "Texte\n", "<p>Texte</p>")
    env = envelope(1, "Sujet", "José", "josé@example.org", 2)
    got, subject = build_bytes(mail, env)
    assert "josé@example.org".encode() in got and subject == "[INC-000001] Sujet"
