"""The language of a mail's text, among the four the helpdesk speaks (fr, nl, en, de).

A stopword count: the most frequent short words of each language are nearly disjoint,
so counting them tells French from Dutch from English from German in a few sentences.
It answers only when the text is long enough and one language clearly leads; otherwise
None, and the caller falls back to the configured default.  Quoted lines (``>``) are
left out: they are often in the helpdesk's own language, not the customer's.
"""

from __future__ import annotations

import re

from store.vocabulary import LANGUAGES

_STOPWORDS = {
    "fr": "le la les un une des du de et est pas je vous nous il elle ce cette qui que pour dans sur avec "
          "mais ne plus au aux son sa ses mon ma mes votre vos merci bonjour fonctionne depuis ai suis "
          "très peut être faire avons avez sont été tout sans chez",
    "nl": "de het een en is niet ik je jij u wij we het dat die van voor op met maar ook naar bij zijn "
          "heb hebben wordt worden werkt geen nog al dank bedankt graag kunt kan mijn onze uw dit deze "
          "er om te wel als hoe wat",
    "en": "the a an and is are not i you we it that this of for on with but to in my your our have has "
          "does doesn't don't can could please thanks thank hello since be been was were will would "
          "there from at by all no",
    "de": "der die das ein eine und ist nicht ich sie wir es dass für auf mit aber auch zu im mein meine "
          "ihr ihre unser haben hat wird werden funktioniert kein keine noch schon danke bitte hallo "
          "seit sind war bei von den dem",
}
_WORDS = {lang: frozenset(words.split()) for lang, words in _STOPWORDS.items()}
_TOKEN = re.compile(r"[a-zà-öø-ÿ']+", re.IGNORECASE)


def detect_language(text: str, min_hits: int = 5, lead: float = 1.5) -> str | None:
    """``fr``, ``nl``, ``en`` or ``de`` when the text clearly is in that language, else None.

    ``min_hits`` stopwords of the winner are needed, and it must have ``lead`` times as
    many as the runner-up.
    """
    lines = [line for line in text[:20000].splitlines() if not line.lstrip().startswith(">")]
    counts = dict.fromkeys(_WORDS, 0)
    for token in _TOKEN.findall("\n".join(lines).lower()):
        for lang, words in _WORDS.items():
            if token in words:
                counts[lang] += 1
    ranked = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)
    (best, first), (_, second) = ranked[0], ranked[1]
    if first >= min_hits and first >= lead * max(second, 1):
        return best
    return None


def mail_language(mail, default: str) -> str:
    """The language to answer ``mail`` (a ParsedMail) in: its Content-Language, else the
    language of its text when that is clear, else ``default``."""
    lang = (mail.content_language or "").split("-")[0].lower()
    if lang in LANGUAGES:
        return lang
    return detect_language(f"{mail.subject}\n{mail.text}") or default
