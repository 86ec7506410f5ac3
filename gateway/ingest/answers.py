"""Reading a customer's answer to an approval request, the way customers write it.

Customers do not answer "approved" on a line of its own.  They write "Bonjour,",
then "Approuvé, merci.", or "I don't approve this, it is too expensive.", sign, and
their mail program quotes our request below.  ``read_decision`` reads such an answer:

- only the new text counts (``gateway.ingest.quotes`` has taken off the quoted request,
  the signature and the closing formula), so the words of our own request ("reply
  with approved or refused") quoted below are never read;
- greeting lines ("Bonjour,", "Beste Jan,", "Sehr geehrte Damen und Herren,") and
  sentences that only thank ("Merci pour le devis.") are passed over;
- the decision is read in the first sentence after them (a line break ends a sentence
  too, unless the line looks hard-wrapped), and nowhere else: "Approved. But the
  delivery date is not agreed." approves;
- in French, Dutch, English and German, whatever the language of the ticket;
- a word negated in its clause ("pas d'accord", "not approved", "niet akkoord", "nicht
  genehmigt", "je n'approuve pas", "ich genehmige das nicht") refuses;
- a refusal wins over an approval when both appear ("Approuvé ? Non, refusé.");
- a clause that asks ("Est-ce approuvé ?") decides nothing.

Infinitives ("I need my manager to approve it", "Je dois faire approuver") are not
answers and are not read; nor are nouns ("l'approbation", "die Genehmigung").  What the
approval mail tells customers to write (``gateway.outbound.labels.APPROVE_WORD`` and
``REJECT_WORD`` in their language) is always read: tests/test_approval_answers.py holds
the two in step.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

APPROVE = "approve"
REFUSE = "refuse"

# Single words, lower case without accents (see _fold).  Participles and first persons:
# what someone who decides writes.
_APPROVE = frozenset({
    # English ("approve", "accept", "agree" only with "I"/"we": see _SUBJECT_VERBS)
    "approved", "agreed", "accepted",
    # French ("approuvé" and "approuve" fold alike: both are answers)
    "approuve", "approuvee", "approuves", "approuvees", "approuvons",
    "accepte", "acceptee", "acceptes", "acceptees", "acceptons", "validee", "validees", "validons",
    # Dutch
    "goedgekeurd", "akkoord", "aanvaard", "geaccepteerd", "accepteer",
    # German
    "genehmigt", "genehmige", "einverstanden", "freigegeben", "zugestimmt", "akzeptiert", "akzeptiere",
})
_REFUSE = frozenset({
    # English
    "rejected", "refused", "declined", "denied", "disapproved", "disapprove",
    # French
    "refuse", "refusee", "refuses", "refusees", "refusons", "rejete", "rejetee", "rejetes", "rejetees",
    "rejette", "rejetons",
    # Dutch
    "afgewezen", "geweigerd", "weiger", "afgekeurd",
    # German
    "abgelehnt", "verweigert", "verweigere", "abgewiesen",
})
# Base forms that answer only after "I"/"we" ("I approve", "we hereby reject", "ich
# genehmige", "wir genehmigen", "je valide"): without a subject they are the
# infinitives of someone who has not decided yet.
_SUBJECT_VERBS = {
    "approve": APPROVE, "accept": APPROVE, "agree": APPROVE, "valide": APPROVE,
    "reject": REFUSE, "refuse": REFUSE, "decline": REFUSE, "deny": REFUSE,
    "genehmigen": APPROVE, "akzeptieren": APPROVE,
}
_SUBJECTS = frozenset({"i", "we", "je", "j", "nous", "wir"})
# Words that may stand between the subject and its verb ("I hereby approve", "I do not
# approve", "I cannot approve").
_BETWEEN = frozenset({"hereby", "herewith", "do", "also", "fully", "can", "cannot", "not", "never", "ne", "n"})
# Verbs in two parts ("ik keur het goed", "ich lehne das ab", "wij wijzen het af"):
# the first part, then the particle that makes the decision, a few words later.
_SEPARABLE = {
    "keur": {"goed": APPROVE, "af": REFUSE}, "keuren": {"goed": APPROVE, "af": REFUSE},
    "wijs": {"af": REFUSE}, "wijzen": {"af": REFUSE},
    "lehne": {"ab": REFUSE}, "lehnen": {"ab": REFUSE},
    "stimme": {"zu": APPROVE}, "stimmen": {"zu": APPROVE},
    "gebe": {"frei": APPROVE}, "geben": {"frei": APPROVE},
}
# Phrases (folded words in a row).
_PHRASES = (
    (("d", "accord"), APPROVE),  # "d'accord", "je suis d'accord"
    (("bon", "pour", "accord"), APPROVE),
    (("go", "ahead"), APPROVE),
)
_NEGATORS = frozenset({
    "not", "never", "cannot",  # English ("don't" is read as "do not")
    "pas", "non", "jamais", "ne", "n", "aucun", "aucune",  # French
    "niet", "geen", "nooit",  # Dutch
    "nicht", "kein", "keine", "keinen", "keiner", "nie", "niemals",  # German
})
# Finite verbs that their negation follows ("j'approuve pas", "ich genehmige das nicht",
# "ik aanvaard dit niet").
_NEGATED_AFTER = frozenset({"approuve", "accepte", "valide", "genehmige", "genehmigen", "akzeptiere",
                            "aanvaard", "accepteer", "approve", "accept", "agree"})
_WINDOW = 3  # words around a decision word that may negate it

_GREETING = re.compile(
    r"^(?:bonjour|bonsoir|salut|madame|monsieur|mesdames|messieurs|ch[eè]re?s?"
    r"|hello|hi|hey|dear|good\s+(?:morning|afternoon|evening|day)|greetings"
    r"|beste|geachte|hallo|hoi|dag|goedemorgen|goedemiddag|goedenavond|goeiedag|goedendag"
    r"|guten\s+(?:tag|morgen|abend)|sehr\s+geehrte[rs]?|liebe[rs]?|servus|moin|gr[uü](?:ss|ß)\s+gott)\b",
    re.IGNORECASE,
)
_THANKS = re.compile(
    r"^(?:merci|thanks|thank\s+you|many\s+thanks|bedankt|dank\s+(?:u|je)|hartelijk\s+dank|alvast\s+bedankt"
    r"|danke|vielen\s+dank|herzlichen\s+dank)\b",
    re.IGNORECASE,
)
# A sentence ends at . ! ? ; followed by a space or the end (not inside "450.00" or "p.ex.").
_SENTENCE_END = re.compile(r"(?<=[.!?;…])\s+")
_CLAUSE = re.compile(r"[,:()\[\]–—]| - ")
_WRAPPED = 60  # a line this long not ending in punctuation was wrapped by the mail program


@dataclass(frozen=True)
class Reading:
    """What an answer to an approval request says: ``decision`` is APPROVE, REFUSE or
    None (not clear), read in ``statement``, the sentence read ("" when there was none)."""

    decision: str | None
    statement: str


def _fold(text: str) -> str:
    """Lower case, no accents, one kind of apostrophe, "n't" as " not".  "Validé" is
    told apart from "valide" (valid) before its accent goes."""
    text = unicodedata.normalize("NFC", text.lower().replace("’", "'").replace("‘", "'").replace("`", "'"))
    text = re.sub(r"\bvalidé(s?)\b", r"validee\1", text)
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    return re.sub(r"n't\b", " not", text)


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", _fold(text))


def _greeting_rest(line: str) -> str | None:
    """None when the line is only a greeting; the rest of it after a greeting and its
    comma ("Bonjour, approuvé."); the line itself when it does not greet."""
    m = _GREETING.match(line)
    if not m:
        return line
    rest = line[m.end():]
    cut = re.search(r"[,!:]", rest)
    if cut:
        name, after = rest[:cut.start()], rest[cut.end():].strip()
        if len(name.split()) <= 6 and not _decides(name):
            return after or None
        return line
    # "Bonjour Marie" with no punctuation: a greeting unless it already answers.
    if len(rest.split()) <= 6 and not _decides(rest):
        return None
    return line


def _sentences(lines: list[str]) -> list[str]:
    """The sentences of ``lines``, a line break ending one unless the line was wrapped."""
    joined: list[str] = []
    for line in lines:
        if joined and len(joined[-1]) >= _WRAPPED and not re.search(r"[.!?;:,…]$", joined[-1]):
            joined[-1] += " " + line
        else:
            joined.append(line)
    return [s.strip() for line in joined for s in _SENTENCE_END.split(line) if s.strip()]


def first_statement(text: str) -> str:
    """The sentence of ``text`` (a reply's new text) where its decision is read: the
    first one that is neither a greeting nor only thanks."""
    lines: list[str] = []
    for raw in (text or "").replace("\r\n", "\n").split("\n"):
        line = raw.strip().strip("*_").strip()  # *Approuvé* from an HTML mail's bold
        if not line:
            continue
        if not lines:  # greetings open a mail; further down they are text
            # "Madame, Monsieur," is two greetings on one line.
            rest = _greeting_rest(line)
            while rest is not None and rest != line and _GREETING.match(rest):
                line, rest = rest, _greeting_rest(rest)
            if rest is None:
                continue
            line = rest
        lines.append(line)
    for sentence in _sentences(lines):
        if _THANKS.match(sentence) and not _decides(sentence):
            continue
        return sentence
    return ""


def _clause_findings(words: list[str], opening: bool = False) -> list[tuple[str, bool]]:
    """(decision, negated) for every decision word of one clause.  ``opening``: the
    clause opens the answer, where a base form alone ("Approve.") is an answer too."""
    found: list[tuple[str, bool]] = []

    def negated(start: int, end: int, after: bool) -> bool:
        before = words[max(0, start - _WINDOW):start]
        inside = words[start + 1:end]
        later = words[end + 1:end + 1 + _WINDOW] if after else []
        return any(w in _NEGATORS for w in (*before, *inside, *later))

    for i, word in enumerate(words):
        for phrase, decision in _PHRASES:
            if tuple(words[i:i + len(phrase)]) == phrase:
                found.append((decision, negated(i, i + len(phrase) - 1, False)))
        if word in _SEPARABLE:
            for j in range(i + 1, min(len(words), i + 5)):
                decision = _SEPARABLE[word].get(words[j])
                if decision:
                    found.append((decision, negated(i, j, False)))
                    break
        if word in _APPROVE:
            found.append((APPROVE, negated(i, i, word in _NEGATED_AFTER)))
        elif word in _REFUSE:
            found.append((REFUSE, negated(i, i, False)))
        elif word in _SUBJECT_VERBS:
            k = i - 1
            while k >= 0 and words[k] in _BETWEEN:
                k -= 1
            if (k >= 0 and words[k] in _SUBJECTS) or (opening and i == 0):
                found.append((_SUBJECT_VERBS[word], negated(i, i, word in _NEGATED_AFTER)))
    return found


def _decides(text: str) -> bool:
    return bool(_clause_findings(_words(text)))


def read_decision(text: str) -> Reading:
    """Read the decision in a reply's new text (see the module's docstring)."""
    statement = first_statement(text)
    approvals = refusals = 0
    clauses = [c for c in _CLAUSE.split(statement) if c.strip()]
    for n, clause in enumerate(clauses):
        if n == len(clauses) - 1 and clause.rstrip().endswith("?"):
            continue  # asked, not answered
        for decision, negated in _clause_findings(_words(clause), opening=n == 0):
            if negated and decision == APPROVE:
                refusals += 1  # "not approved"
            elif not negated:
                approvals += decision == APPROVE
                refusals += decision == REFUSE
            # A negated refusal ("je ne refuse pas") is no decision by itself.
    if refusals:
        return Reading(REFUSE, statement)
    if approvals:
        return Reading(APPROVE, statement)
    return Reading(None, statement)
