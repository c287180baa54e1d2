"""What a person's name looks like in text: word shapes, the words that are not names, and the
context rules (a pronoun after it, a role word before it, a greeting, an identifier nearby)
that ``ner.py`` weighs against the NER model's label."""

from __future__ import annotations

import regex

from tandem.privacy import names
from tandem.privacy.names import (
    is_rare,
)

# A word this common in English, and not a first name, is no part of a name that a cue or the
# model picked up ("Suppose Benjamin", "Hi Team", "Dear Hiring Manager"). Tuned on the tune
# splits: "Hiring" is 4.2, "Suppose" 4.6.
COMMON_WORD = 4.0


# A word at the start of a span at least this common, and no first name, is not part of the name
# ("Suppose" 4.6, "Grandparents" 3.9; "Nguyen" 3.2 stays).
LEADING_WORD = 3.5


# Rarer than this, one capitalised word the model tags PERSON is a name even if the list lacks it
# ("Ndlovu" 1.8; "Stripe" 3.5, "Enroll" 3.5, "Converse" 3.5).
RARE_SINGLE = 3.0


def _words(text: str) -> list[str]:
    return text.split()


# Last words that make a capitalised run a place, a body or a thing, not a person (none that is
# also a common surname: "Park", "Hill", "Hall" are not here).
_NOT_NAME_HEADS = frozenset(
    _words(
        """
        academy account act agency airlines airport alliance algorithm app
        archipelago arena association authority award awards bank building bureau
        campus canal capital cathedral center centre challenge channel church city
        clinic cloud club college commission committee company conference congress
        corp corporation council county cup department desk district edition engine
        exchange expo express fair festival forest forum foundation fund galaxy
        gallery games group guide harbor harbour health highway holdings hospital
        hotel inc index initiative institute island islands lab labs league library
        limited llc ltd mall market max media method mini ministry model mountain
        mountains museum network news office ocean online pack partners peninsula
        plan platform plaza plus policy portal prize pro program programme project
        protocol province qualifier rail railway region reserve resort review river
        road school schools sea sector series service services show society software
        solutions square stadium station store strait street studio studios suite
        summit system systems team tech technologies theorem theory tower trail
        trust tunnel union university valley version week works workshop
        """
    )
)


# Words never part of a name the model found (pronouns, sentence openers it sometimes takes in).
_NOT_NAME_WORDS = frozenset(
    _words(
        """
        i the a an and or of for to in on at by with from my our your
        """
    )
)


_WORD = regex.compile(r"\p{L}[\p{L}'’.-]*")


_NAME_WORD = regex.compile(
    r"(?:\p{Lu}(?:\p{Ll}+|['’]\p{Lu}\p{Ll}+)(?:-\p{L}\p{Ll}+)?|\p{Lu}\.(?:\p{Lu}\.)*)"
)


_INITIALS = regex.compile(r"(?:\p{Lu}\.)+")


_PARTICLES = frozenset(
    _words(
        """
        van von de da del der den di du le la bin ibn al el dos das
        """
    )
)


# Words the name list has that, alone, are brands or assistants far more often than people.
_NOT_NAMES_NER = frozenset(
    _words(
        """
        visa mastercard maestro amex paypal venmo zelle alexa siri cortana bixby
        """
    )
)


_PRONOUN_AFTER = regex.compile(
    r"(?i)\b(?:he|she|him|her|his|hers|himself|herself|who|whom|whose)\b"
)


# A phone, card or account number, an IBAN, an e-mail address.
_IDENTIFIER = regex.compile(r"\w@\w|\d[\d \-]{6,}\d|\b[A-Z]{2}\d{2}[A-Z0-9 ]{10,}")


# Words for a person's role, right before a name: "landlord Giulia Romano", "my midwife is ...".
_ROLE_BEFORE = regex.compile(
    r"(?i)\b(?:landlord|landlady|tenant|nurse|midwife|doctor|dentist|therapist|patient|client|"
    r"customer|colleague|coworker|co-worker|manager|boss|employee|candidate|applicant|intern|"
    r"student|pupil|teacher|tutor|lawyer|attorney|solicitor|accountant|agent|recruiter|hire|"
    r"contractor|freelancer|neighbou?r|friend|cousin|aunt|uncle|nephew|niece|husband|wife|"
    r"partner|fianc[ée]e?|son|daughter|mother|father|mom|mum|dad|brother|sister|grandmother|"
    r"grandfather|babysitter|nanny|caregiver|carer|guardian|plumber|electrician)"
    r"(?:\s+(?:is|was|named|called))?[ \t]*,?[ \t]*$"
)


_GREETING_BEFORE = regex.compile(
    r"(?i)(?:\b(?:hi|hello|hey|dear|from|to|cc|bcc|attn|contact|member|customer|client|guest)"
    r"|\bI'm|\bI\s+am)[ \t]*[:,]?[ \t]*$"
)


_EMAIL_LOCAL = regex.compile(r"([\w.+-]+)@[\w-]+\.[\w.-]+")


_LIST_GAP = regex.compile(r"\s*(?:,|&|\band\b|\bor\b|;)\s*(?:and\s+)?")


PERSON_CONTEXT_CHARS = 60


def _vouched(text: str, s: int, e: int) -> bool:
    """Whether the text itself says a person is meant: a personal pronoun right after the
    span, a word for a person's role right before it ("landlord", "nurse", "my midwife is"),
    an e-mail address made of its words, an identifier (a phone, an account, an e-mail) in its
    sentence."""
    line_end = text.find("\n", e)
    after = text[e : min(e + PERSON_CONTEXT_CHARS, len(text) if line_end < 0 else line_end)]
    if _PRONOUN_AFTER.search(after) or _ROLE_BEFORE.search(text[max(0, s - 40) : s]):
        return True
    if _IDENTIFIER.search(_sentence(text, s, e)):
        return True
    words = {w.casefold() for w in _WORD.findall(text[s:e]) if len(w) > 2}
    return any(any(w in m.group(1).casefold() for w in words) for m in _EMAIL_LOCAL.finditer(text))


def _sentence(text: str, s: int, e: int) -> str:
    """The sentence around ``text[s:e]`` (up to 120 characters either side, within its line),
    without the span itself."""
    start = max(0, s - 120)
    before = text[start:s]
    cut = max(before.rfind(". "), before.rfind("? "), before.rfind("! "), before.rfind("\n"))
    before = before[cut + 1 :] if cut >= 0 else before
    after = text[e : e + 120]
    ends = [i for i in (after.find(m) for m in (". ", "? ", "! ", "\n")) if i >= 0]
    after = after[: min(ends)] if ends else after
    return before + " " + after


# A character the user asks the model to play, imitate or stage ("Pretend to be Elon Musk",
# "Embody the persona of Tony Stark", "in the style of Jane Austen", "a conversation between
# Socrates and Bill Gates"): most likely a figure of the prompt's fiction. Only right after the
# phrase (a list of names joined by "and" for "between"), never after a cue ("pretend to be my
# neighbour Sarah Klein": the cue wins) nor before a relation ("Maria Gonzalez, my landlord").
_ROLE_BEFORE_NAME = regex.compile(
    r"(?i)\b(?:pretend(?:ing)?\s+(?:yourself\s+|you\s+are\s+)?(?:to\s+be\s+)?"
    r"|act(?:ing)?\s+(?:like|as)\s+|(?:role|part|persona|voice|character)\s+of\s+"
    r"|impersonat(?:e|ing)\s+|embody(?:ing)?\s+|channel(?:ling)?\s+"
    r"|(?:speak|talk|write|think|answer|respond)(?:ing)?\s+like\s+"
    r"|in\s+the\s+(?:style|manner|voice|words)\s+of\s+|as\s+if\s+you\s+were\s+"
    r"|(?:conversation|dialogue|debate|discussion|interview|chat)\s+between\s+"
    r"(?:[\p{Lu}][\p{L}.'’-]*\s+){0,3}(?:and\s+)?)(?:the\s+(?:famous\s+)?)?$"
)


_RELATION_AFTER_NAME = regex.compile(
    r"(?i)^(?:'s)?[ \t]*[,(–—-]?[ \t]*(?:who\s+is\s+|she\s+is\s+|he\s+is\s+)?"
    r"(?:my|our|his|her|their|your)\b"
)


def _role_played(text: str, s: int, e: int) -> bool:
    """Whether the name at ``s:e`` is a character the prompt asks the model to play or stage."""
    if _RELATION_AFTER_NAME.search(text[e : e + 30]):
        return False
    return _ROLE_BEFORE_NAME.search(text[max(0, s - 60) : s]) is not None


def _greeting(text: str, s: int) -> bool:
    """Whether the cue before ``s`` is a greeting or a mail header ("Hi", "Dear", "To:")."""
    return _GREETING_BEFORE.search(text[max(0, s - 12) : s]) is not None


def _person_context(
    text: str,
    s: int,
    e: int,
    accepted: dict[tuple[int, int], tuple[float, bool]],
    full_name: bool,
) -> bool:
    """Whether a span the model vetoed is a person's name after all: vouched for (above), or,
    for a first name with a surname, personal identifiers elsewhere in the text, or the
    surname of a name found, or in a list with a name found ("Lena and Felix")."""
    if _vouched(text, s, e):
        return True
    if full_name and _IDENTIFIER.search(text):
        return True
    last = _WORD.findall(text[s:e])[-1].casefold()
    for a, b in accepted:
        if accepted[(a, b)][1]:
            continue  # a weak name says nothing of its neighbours
        name_words = [w.casefold() for w in _WORD.findall(text[a:b])]
        if len(name_words) > 1 and name_words[-1] == last:
            return True
    for a, b in accepted:
        gap = text[b:s] if b <= s else text[e:a] if e <= a else None
        if gap is not None and _LIST_GAP.fullmatch(gap):
            return True
    return False


def _in_compound(text: str, s: int, e: int) -> bool:
    """Part of a hyphenated or contracted word: "F-Pace", "Don't"."""
    before = text[s - 1 : s]
    after = text[e : e + 2]
    return before in ("-", "/") or (
        len(after) == 2 and after[0] in "'’" and after[1].isalpha() and after[1] != "s"
    )


def _trim(text: str, s: int, e: int, known: frozenset[str]) -> tuple[int, int] | None:
    """The span without the words before the name that are English words and no first names
    ("Suppose Benjamin", "Grandparents Heinrich Vogel", "Hi Team"), nor a possessive or a
    pronoun at either end."""
    words = [(m.start() + s, m.end() + s, m.group()) for m in _WORD.finditer(text[s:e])]
    while words and (
        _bare(words[0][2]) in _NOT_NAME_WORDS
        or (
            "-" not in words[0][2]  # "Min-jun", "Hye-jin": given names, not English words
            and _bare(words[0][2]) not in known
            and not is_rare(_bare(words[0][2]), LEADING_WORD)
        )
    ):
        words.pop(0)
    while words and _bare(words[-1][2]) in _NOT_NAME_WORDS:
        words.pop()
    if not words:
        return None
    end = words[-1][1]
    last = words[-1][2]
    for suffix in ("'s", "’s", "'", "’", "."):
        if last.endswith(suffix) and len(last) > len(suffix) + 1 and not _INITIALS.fullmatch(last):
            end -= len(suffix)
            break
    return words[0][0], end


def _trim_end(text: str, s: int, e: int) -> tuple[int, int]:
    """The span without a possessive at its end ("Rosa Delgado's")."""
    for suffix in ("'s", "’s"):
        if text[s:e].endswith(suffix):
            return s, e - len(suffix)
    return s, e


def _all_common(span: str, known: frozenset[str]) -> bool:
    return all(
        _bare(w) not in known and not is_rare(_bare(w), LEADING_WORD) for w in _WORD.findall(span)
    )


def _bare(word: str) -> str:
    return word.removesuffix("'s").removesuffix("’s").rstrip(".'’").lower()


def _has_first_name(span: str, known: frozenset[str]) -> bool:
    return any(w.lower() in known and w.lower() not in names.AMBIGUOUS for w in _WORD.findall(span))


def _has_common_word(span: str, known: frozenset[str]) -> bool:
    return any(
        w.lower() not in known and w.lower() not in _PARTICLES and not is_rare(w, COMMON_WORD)
        for w in _WORD.findall(span)
    )


def _ends_in_thing(span: str) -> bool:
    words = _WORD.findall(span)
    return len(words) > 1 and words[-1].lower() in _NOT_NAME_HEADS


def _looks_like_name(text: str, s: int, e: int, known: frozenset[str]) -> bool:
    """The shape of a name: capitalised words (and particles), no digits, no code."""
    span = text[s:e]
    words = span.split()
    if not words or any(c.isdigit() for c in span) or any(c in span for c in "=()[]{}<>_/@#"):
        return False
    for w in words:
        core = w.rstrip(",;:").removesuffix("'s").removesuffix("’s")
        if core.lower() in _PARTICLES:
            continue
        if not _NAME_WORD.fullmatch(core):
            return False
    return True


def _model_name(text: str, s: int, e: int, known: frozenset[str]) -> bool:
    """Whether a span the model tags PERSON is one: name-shaped, not ending in "River" or
    "Inc"; one word alone must be a known first name, or a rare word not opening a sentence;
    several must hold a known first name or be all rare words."""
    span = text[s:e]
    if not _looks_like_name(text, s, e, known) or _ends_in_thing(span):
        return False
    words = _WORD.findall(span)
    if len(words) == 1:
        w = words[0].removesuffix("'s").removesuffix("’s")
        if w.lower() in _NOT_NAMES_NER:
            return False
        if w.lower() in known and w.lower() not in names.AMBIGUOUS:
            return True
        before = text[:s].rstrip(" \t")
        initial = not before or before[-1] in '.!?\n"“:'
        return not initial and is_rare(w, RARE_SINGLE)
    return _has_first_name(span, known) or not _has_common_word(span, known)
