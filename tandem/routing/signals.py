"""Router signals: confidence statistics of what the local model generated, and prompt features.

Both are small fixed-length vectors with named entries, so the same code feeds the gateway's
live decision and the offline evaluation. Everything here is cheap: a few hundred floating-point
operations per token for the confidence, one pass over the text for the prompt.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# -- confidence of a generation ---------------------------------------------------------------

LOGPROB_FEATURES = (
    "lp_mean", "lp_min", "lp_q10", "lp_q25", "lp_first", "lp_sum", "n_tokens", "lp_last",
)
WORD_FEATURES = ("copied", "copy_count", "copy_recency", "function_words", "word_len",
                 "capitalized")
GENERATION_FEATURES = LOGPROB_FEATURES + WORD_FEATURES
_WORD = re.compile(r"\w+")
# Function words: an answer made of them is rarely the content a question asks for.
FUNCTION_WORDS = frozenset((
    "a", "an", "the", "of", "to", "in", "on", "at", "by", "for", "from", "with", "as", "and",
    "or", "but", "nor", "so", "if", "then", "than", "that", "this", "these", "those", "it",
    "its", "he", "she", "they", "we", "you", "i", "me", "him", "her", "them", "us", "his",
    "their", "our", "your", "my", "be", "is", "are", "was", "were", "been", "am", "do", "does",
    "did", "not", "no", "there", "here", "what", "which", "who", "whom", "whose", "when",
    "where", "why", "how", "all", "any", "some", "such",
))


@dataclass(frozen=True)
class PromptIndex:
    """The prompt's words: how often each occurs, and how far from the end it last occurs."""

    counts: dict[str, int]
    last_seen: dict[str, int]  # words between the last occurrence and the prompt's end
    n_words: int

    @classmethod
    def of(cls, prompt: str) -> PromptIndex:
        words = [w.lower() for w in _WORD.findall(prompt)]
        counts: dict[str, int] = {}
        last: dict[str, int] = {}
        for i, w in enumerate(words):
            counts[w] = counts.get(w, 0) + 1
            last[w] = len(words) - i
        return cls(counts, last, len(words))


def word_features(text: str, index: PromptIndex) -> dict[str, float]:
    """What the generated words are, against the prompt's.

    ``copied``: the share of generated words found in the prompt (a small model that copies a
    name or entity from the context is more often right than one that makes a word up);
    ``copy_count``/``copy_recency``: how often, and how recently, the copied words occur
    (log scale); ``function_words``: the share of function words (an answer that is all
    "the"/"that" missed the question); ``word_len``: mean word length; ``capitalized``: the
    share of capitalised words (names).
    """
    raw = _WORD.findall(text)
    if not raw:
        return dict.fromkeys(WORD_FEATURES, 0.0)
    words = [w.lower() for w in raw]
    copied = [w for w in words if w in index.counts]
    n = len(words)
    absent = math.log1p(index.n_words) + 1.0
    return {
        "copied": len(copied) / n,
        "copy_count": sum(math.log1p(index.counts.get(w, 0)) for w in words) / n,
        "copy_recency": sum(math.log1p(index.last_seen[w]) if w in index.last_seen else absent
                            for w in words) / n,
        "function_words": sum(w in FUNCTION_WORDS for w in words) / n,
        "word_len": sum(len(w) for w in words) / n,
        "capitalized": sum(w[:1].isupper() for w in raw) / n,
    }


def generation_confidence(logprobs: Sequence[float], text: str = "",
                          index: PromptIndex | None = None) -> dict[str, float]:
    """Statistics of the chosen tokens' log-probabilities (higher: more confident), and the
    generated words' ``word_features`` against the prompt's ``index``.

    ``lp_q10``/``lp_q25`` are low quantiles (robust minimums); ``lp_sum`` is the sequence's
    log-probability and ``lp_mean`` its length-normalised form.
    """
    words = word_features(text, index or PromptIndex({}, {}, 0))
    if not logprobs:
        return {**dict.fromkeys(LOGPROB_FEATURES, 0.0), **words}
    lp = np.asarray(logprobs, dtype=np.float64)
    return {
        "lp_mean": float(lp.mean()),
        "lp_min": float(lp.min()),
        "lp_q10": float(np.quantile(lp, 0.1)),
        "lp_q25": float(np.quantile(lp, 0.25)),
        "lp_first": float(lp[0]),
        "lp_sum": float(lp.sum()),
        "n_tokens": float(len(lp)),
        "lp_last": float(lp[-1]),
        **words,
    }


class RunningConfidence:
    """The cascade's per-token check: O(1) work per token, statistics on demand."""

    __slots__ = ("_index", "_lps", "_text")

    def __init__(self, prompt: str = "") -> None:
        self._lps: list[float] = []
        self._text: list[str] = []
        self._index = PromptIndex.of(prompt)

    def add(self, logprob: float | None, text: str = "") -> None:
        if logprob is not None and math.isfinite(logprob):
            self._lps.append(logprob)
        self._text.append(text)

    def __len__(self) -> int:
        return len(self._lps)

    def features(self) -> dict[str, float]:
        return generation_confidence(self._lps, "".join(self._text), self._index)


# -- confidence of a multiple-choice answer -------------------------------------------------------

CHOICE_FEATURES = (
    "p_max", "margin", "entropy", "p_max_raw", "margin_raw", "p_max_pmi", "margin_pmi",
    "pmi_agrees", "raw_agrees", "token_agrees", "agreement", "pred_pmi", "pred_prior",
)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    out: np.ndarray = e / e.sum()
    return out


def _top(p: np.ndarray) -> tuple[float, float]:
    s = np.sort(p)
    return float(s[-1]), float(s[-1] - s[-2]) if len(s) > 1 else 1.0


def choice_confidence(ll: Sequence[float], n_bytes: Sequence[int],
                      ll_uncond: Sequence[float] | None = None,
                      n_tokens: Sequence[int] | None = None) -> dict[str, float]:
    """How sure the model is of its choice, from each choice's log-likelihood.

    The answer is the choice with the highest log-likelihood per byte. ``p_max``/``margin``
    come from a softmax over those normalised scores (scaled to nats per ~4-byte token), the
    ``_raw`` variants from the raw sums, the ``_pmi`` ones from the pointwise mutual information
    with the query (log-likelihood with the query minus without it). ``*_agrees``: does the
    choice by PMI, by raw sum, by log-likelihood per token pick the same answer?
    ``agreement`` is their mean. ``pred_pmi`` is how much the query raises the answer's
    likelihood (per ~token), ``pred_prior`` how likely the answer is without the query,
    relative to the other choices: an answer picked for being a likely phrase, not for
    answering, is a guess.
    """
    raw = np.asarray(ll, dtype=np.float64)
    nb = np.maximum(np.asarray(n_bytes, dtype=np.float64), 1.0)
    norm = raw / nb * 4.0
    uncond = np.asarray(ll_uncond, dtype=np.float64) if ll_uncond is not None else raw * 0
    pmi = raw - uncond
    per_token = raw / np.maximum(np.asarray(n_tokens, dtype=np.float64), 1.0) if (
        n_tokens is not None) else norm
    p = _softmax(norm)
    pred = int(np.argmax(norm))
    agrees = [float(int(np.argmax(v)) == pred) for v in (pmi, raw, per_token)]
    prior = uncond / nb * 4.0
    return {
        "p_max": _top(p)[0],
        "margin": _top(p)[1],
        "entropy": float(-(p * np.log(p + 1e-12)).sum()),
        "p_max_raw": _top(_softmax(raw))[0],
        "margin_raw": _top(_softmax(raw))[1],
        "p_max_pmi": _top(_softmax(pmi))[0],
        "margin_pmi": _top(_softmax(pmi))[1],
        "pmi_agrees": agrees[0],
        "raw_agrees": agrees[1],
        "token_agrees": agrees[2],
        "agreement": float(np.mean(agrees)),
        "pred_pmi": float(pmi[pred] / nb[pred] * 4.0),
        "pred_prior": float(prior[pred] - prior.mean()),
    }


# -- prompt features ----------------------------------------------------------------------------

PROMPT_FEATURES = (
    "log_chars", "log_question_chars", "log_choice_chars", "log_longest_choice",
    "choice_len_spread", "digit_rate", "choice_digit_rate", "lines", "math_rate", "numbers",
    "negation", "statements", "has_question_mark", "mean_word_len", "upper_rate",
    "compute_verb", "blank", "scenario", "sentences", "code_rate", "choice_overlap",
    "asks_code", "asks_creative", "asks_explanation",
)
_CHOICE_LINE = re.compile(r"^\(?[A-Da-d][.)] (.*)$", re.M)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_NEGATION = re.compile(r"\b(?:NOT|EXCEPT|LEAST|FALSE|not true|incorrect)\b")
_COMPUTE = re.compile(
    r"\b(?:calculate|compute|how many|how much|what is the value|solve|find|estimate)\b", re.I
)
# The kind of task a request names: code, creative writing or a role, an explanation.
_ASKS_CODE = re.compile(
    r"\b(?:python|javascript|typescript|java|rust|sql|html|css|bash|c\+\+|c#|function|program|"
    r"code|script|implement|algorithm|array|regex|compile|debug|method)(?!\w)", re.I)
_ASKS_CREATIVE = re.compile(
    r"\b(?:poem|story|stories|email|essay|blog|letter|song|lyrics|speech|headline|slogan|"
    r"tweet|haiku|limerick|imagine|pretend|role|persona|act as|embody|character)\b", re.I)
_ASKS_EXPLANATION = re.compile(
    r"\b(?:explain|describe|discuss|outline|summari[sz]e|share|suggest|ideas|tips|insights|"
    r"advice)\b", re.I)
_MATH = set("+-*/=^<>%$∑√π")
_CODE = set("{}[];_#")


def prompt_features(text: str) -> dict[str, float]:
    """Cheap structural features of a prompt: lengths, numbers, maths, question form.

    Free of topic vocabulary: a router trained on some topics must transfer to others, and
    word features learn the topics (measured: they lower APGR on held-out MMLU subjects). The
    few words read (``asks_*``) name the *kind* of task a request is (code, creative writing
    or a role to play, an explanation), which holds across topics and is where a larger
    model's gain differs most.
    """
    n = max(len(text), 1)
    question = re.split(r"\n\(?[Aa][.)] ", text, maxsplit=1)[0]
    choices = _CHOICE_LINE.findall(text)
    lengths = [len(c) for c in choices] or [0]
    words = text.split()
    choice_text = "".join(choices)
    # Choices that share their words are harder to tell apart (mean pairwise Jaccard overlap).
    sets = [frozenset(w.lower() for w in _WORD.findall(c)) for c in choices]
    overlaps = [len(a & b) / max(len(a | b), 1)
                for i, a in enumerate(sets) for b in sets[i + 1:]]
    return {
        "log_chars": math.log1p(len(text)),
        "log_question_chars": math.log1p(len(question)),
        "log_choice_chars": math.log1p(float(np.mean(lengths))),
        "log_longest_choice": math.log1p(max(lengths)),
        "choice_len_spread": float(np.std(lengths) / (np.mean(lengths) + 1.0)),
        "digit_rate": sum(c.isdigit() for c in text) / n * 10,
        "choice_digit_rate": sum(c.isdigit() for c in choice_text) / (len(choice_text) + 1),
        "lines": text.count("\n") / 10,
        "math_rate": sum(c in _MATH for c in text) / n * 10,
        "numbers": len(_NUMBER.findall(text)) / 10,
        "negation": float(bool(_NEGATION.search(text))),
        "statements": float("Statement 1" in text),
        "has_question_mark": float("?" in question),
        "mean_word_len": float(np.mean([len(w) for w in words])) if words else 0.0,
        "upper_rate": sum(c.isupper() for c in text) / n,
        "compute_verb": float(bool(_COMPUTE.search(text))),
        "blank": float("___" in text),
        "scenario": float("Scenario" in text),
        "sentences": question.count(". ") / 5,
        "code_rate": sum(c in _CODE for c in text) / n * 10,
        "choice_overlap": float(np.mean(overlaps)) if overlaps else 0.0,
        "asks_code": float(bool(_ASKS_CODE.search(text))),
        "asks_creative": float(bool(_ASKS_CREATIVE.search(text))),
        "asks_explanation": float(bool(_ASKS_EXPLANATION.search(text))),
    }
