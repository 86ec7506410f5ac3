"""A deterministic set of mails for the benchmark (fixed seed: the same bytes every run).

Mixed set: 60 % small text/plain (~2.5 KB; UTF-8 8-bit, quoted-printable, ISO-8859-1),
25 % multipart/alternative text + HTML (~20 KB), 10 % with a 200 KB PDF-like attachment,
5 % with a 5 MB one.  French accents in names and bodies, subjects as RFC 2047 encoded
words ending with a ``##PO…##`` reference, about a fifth replies to earlier mails of the
set (In-Reply-To, References, quoted text).  The small set has only the small kind.
"""

from __future__ import annotations

import base64
import quopri
import random
from dataclasses import dataclass
from email.header import Header
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone

SEED = 20261127
HELPDESK = "helpdesk@localhost"

FIRST = ["Amélie", "Benoît", "Céline", "Clémence", "Élodie", "François", "Gaëlle", "Hélène", "Jérôme",
         "Loïc", "Maëlle", "Noël", "Océane", "Raphaël", "Stéphane", "Thérèse", "Zoé", "André"]
LAST = ["Lefèvre", "Dubœuf", "Garçon", "Hébert", "Bélanger", "Côté", "Lemaître", "Mercier", "Pétain",
        "Rivière", "Séguin", "Thévenet", "Vallée", "Ébrard"]
TOPICS = ["Imprimante du 2ᵉ étage en panne", "Accès VPN refusé depuis ce matin", "Écran noir au démarrage",
          "Demande d'accès au dossier Comptabilité", "Messagerie très lente", "Clé USB non reconnue",
          "Mot de passe expiré — impossible de me reconnecter", "Téléphone IP sans tonalité",
          "Installation du logiciel de facturation", "Problème d'impression des étiquettes"]
SENTENCES = ["Bonjour, depuis ce matin l'ordinateur refuse de démarrer correctement.",
             "J'ai déjà essayé de redémarrer, sans succès ; le message d'erreur réapparaît.",
             "Pourriez-vous intervenir rapidement ? Nous avons une échéance vendredi.",
             "Le problème concerne également mes collègues du service après-vente.",
             "Voici les détails : modèle HP LaserJet, bâtiment B, deuxième étage, près de l'accueil.",
             "Merci d'avance pour votre aide et votre réactivité habituelle.",
             "La dernière mise à jour semble avoir été installée hier soir à 23 h 15.",
             "Je reste joignable au poste 4521 toute la journée, sauf pendant la pause déjeuner.",
             "Ça fonctionnait très bien la semaine dernière ; rien n'a été modifié de notre côté.",
             "Être bloqué ainsi est très gênant pour l'équipe, surtout en fin de trimestre."]


@dataclass(frozen=True)
class Mail:
    index: int
    kind: str  # small | alternative | attach200k | attach5m | big25m
    message_id: str
    sender: str
    raw: bytes


def _ew(text: str) -> str:
    return Header(text, "utf-8").encode()


def _body(rng: random.Random, size: int) -> str:
    out: list[str] = []
    n = 0
    while n < size:
        s = rng.choice(SENTENCES)
        out.append(s)
        n += len(s.encode("utf-8")) + 1
    lines, line = [], ""
    for s in out:
        if len(line) + len(s) > 70:
            lines.append(line)
            line = s
        else:
            line = f"{line} {s}".strip()
    lines.append(line)
    return "\n".join(lines)


def _pdf_like(rng: random.Random, size: int) -> bytes:
    head = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj << /Type /Catalog >> endobj\nstream\n"
    return head + rng.randbytes(max(0, size - len(head) - 20)) + b"\nendstream\n%%EOF\n"


def _b64_lines(data: bytes) -> bytes:
    enc = base64.b64encode(data)
    return b"\r\n".join(enc[i:i + 76] for i in range(0, len(enc), 76))


def make_mail(rng: random.Random, i: int, kind: str, earlier: list[Mail], date: datetime) -> Mail:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    sender = f"{first.lower().encode('ascii', 'ignore').decode() or 'user'}.{i}@client{i % 7}.example"
    reply_to = earlier[rng.randrange(len(earlier))] if earlier and rng.random() < 0.2 else None
    mid = f"bench-{i}-{rng.getrandbits(32):08x}@client.example"
    if reply_to is not None:
        sender = reply_to.sender
        subject = f"RE: {rng.choice(TOPICS)}"
    else:
        subject = f"{rng.choice(TOPICS)} ##PO{rng.randrange(10000, 99999)}##"
    text = _body(rng, 1800 if kind == "small" else 3000)
    if reply_to is not None:
        text += "\n\nLe mardi, l'assistance a écrit :\n" + "\n".join("> " + s for s in _body(rng, 600).splitlines())
    head = [
        f"From: {_ew(f'{first} {last}')} <{sender}>",
        f"To: Helpdesk <{HELPDESK}>",
        f"Subject: {_ew(subject)}",
        f"Date: {format_datetime(date)}",
        f"Message-ID: <{mid}>",
        "MIME-Version: 1.0",
        "Content-Language: fr",
    ]
    if reply_to is not None:
        head += [f"In-Reply-To: <{reply_to.message_id}>", f"References: <{reply_to.message_id}>"]
    crlf = "\r\n"
    if kind == "small":
        flavour = i % 3
        if flavour == 0:
            head += ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"]
            body = text.replace("\n", crlf).encode("utf-8")
        elif flavour == 1:
            head += ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: quoted-printable"]
            body = quopri.encodestring(text.encode("utf-8")).replace(b"\n", b"\r\n")
        else:
            latin = text.replace("ᵉ", "e").replace("œ", "oe").replace("—", "-")
            head += ["Content-Type: text/plain; charset=iso-8859-1", "Content-Transfer-Encoding: 8bit"]
            body = latin.replace("\n", crlf).encode("iso-8859-1", "replace")
        return Mail(i, kind, mid, sender, (crlf.join(head) + crlf + crlf).encode() + body + b"\r\n")
    boundary = f"=_bench_{i}_{rng.getrandbits(24):06x}"
    alt = f"=_alt_{i}_{rng.getrandbits(24):06x}"
    html_body = "".join(f"<p>{s}</p>\n" for s in _body(rng, 11500 if kind == "alternative" else 3000).splitlines())
    html = f"<html><body style=\"font-family:Arial\"><h1>{subject}</h1>\n{html_body}</body></html>"
    alternative = (
        f"Content-Type: multipart/alternative; boundary=\"{alt}\"{crlf}{crlf}"
        f"--{alt}{crlf}Content-Type: text/plain; charset=utf-8{crlf}Content-Transfer-Encoding: quoted-printable"
        f"{crlf}{crlf}"
    ).encode() + quopri.encodestring(text.encode()).replace(b"\n", b"\r\n") + (
        f"{crlf}--{alt}{crlf}Content-Type: text/html; charset=utf-8{crlf}"
        f"Content-Transfer-Encoding: quoted-printable{crlf}{crlf}"
    ).encode() + quopri.encodestring(html.encode()).replace(b"\n", b"\r\n") + f"{crlf}--{alt}--{crlf}".encode()
    if kind == "alternative":
        head.append(f"Content-Type: multipart/alternative; boundary=\"{alt}\"")
        body = alternative.split(b"\r\n\r\n", 1)[1]
        return Mail(i, kind, mid, sender, (crlf.join(head) + crlf + crlf).encode() + body)
    size = {"attach200k": 200_000, "attach5m": 5_000_000, "big25m": 25_000_000}[kind]
    name = f"facture-n°{i}.pdf"
    head.append(f"Content-Type: multipart/mixed; boundary=\"{boundary}\"")
    body = (f"--{boundary}{crlf}").encode() + alternative + (
        f"--{boundary}{crlf}Content-Type: application/pdf; name=\"{_ew(name)}\"{crlf}"
        f"Content-Disposition: attachment; filename*=utf-8''facture-n%C2%B0{i}.pdf{crlf}"
        f"Content-Transfer-Encoding: base64{crlf}{crlf}"
    ).encode() + _b64_lines(_pdf_like(rng, size)) + f"{crlf}--{boundary}--{crlf}".encode()
    return Mail(i, kind, mid, sender, (crlf.join(head) + crlf + crlf).encode() + body)


def mixed_kinds(n: int) -> list[str]:
    """60/25/10/5 %, spread evenly through the set (deterministic)."""
    counts = {"small": round(n * 0.60), "alternative": round(n * 0.25), "attach200k": round(n * 0.10)}
    counts["attach5m"] = max(1, n - sum(counts.values()))
    kinds: list[str] = []
    for kind, c in counts.items():
        kinds += [kind] * c
    random.Random(SEED + 1).shuffle(kinds)
    return kinds[:n]


def generate(n: int, small_only: bool = False, seed: int = SEED) -> list[Mail]:
    rng = random.Random(seed + (1 if small_only else 0))
    kinds = ["small"] * n if small_only else mixed_kinds(n)
    start = datetime(2026, 11, 2, 8, 0, tzinfo=timezone.utc)
    mails: list[Mail] = []
    for i, kind in enumerate(kinds):
        mails.append(make_mail(rng, i, kind, mails[-50:], start + timedelta(minutes=i)))
    return mails


def big_mail(seed: int = SEED) -> Mail:
    """One mail with a 25 MB attachment (the memory measurement)."""
    rng = random.Random(seed + 25)
    return make_mail(rng, 999_999, "big25m", [], datetime(2026, 11, 2, 8, 0, tzinfo=timezone.utc))


if __name__ == "__main__":  # a quick look at the set: python3 -m bench.mailset
    from collections import Counter

    ms = generate(200)
    print(Counter(m.kind for m in ms), sum(len(m.raw) for m in ms) // 1024, "KB",
          sum(b"In-Reply-To" in m.raw for m in ms), "replies")
