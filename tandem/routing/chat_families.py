"""Free-form chat items with a checkable answer: small coding tasks and everyday writing.

The dev data holds multiple-choice questions only, and chat traffic is mostly not that: people
ask for code, for an email, a poem, an explanation. These two seeded generators give the chat
protocol items of those kinds, each with a check that needs no judge model:

- ``code``: "write a Python function ``f(x)`` that ..."; the answer's code is run against the
  task's tests in a separate, isolated Python process with a time and memory limit. A larger
  model's gain here is large and measured exactly.
- ``writing``: a poem, a story, an email, a role to play, an explanation, a list of tips. The
  check is whether the answer *did the task*: on the topic, long enough, the asked number of
  items, not a loop that repeats itself, not the prompt echoed back. It does not grade style,
  so it understates what a stronger model adds to prose; that is the measure's limit, and the
  routing docs say so.

Both are built here, not read from files, because no free-form data with checkable answers
ships with the project or its dev data.
"""

from __future__ import annotations

import functools
import json
import random
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from tandem.routing.tasks import Item, item_key

CODE_MAX_TOKENS = 256  # a function, a code fence and a sentence around it
WRITING_MAX_TOKENS = 128

# -- code ------------------------------------------------------------------------------------

# (signature, what it does, tests as (arguments, expected result)). Every test's arguments are a
# JSON list, so the checker passes them to the function without evaluating any text.
CODE_TASKS: tuple[tuple[str, str, list[tuple[list[Any], Any]]], ...] = (
    ("reverse_text(s)", "returns the string s reversed",
     [(["abc"], "cba"), ([""], ""), (["Hello, world"], "dlrow ,olleH")]),
    ("count_vowels(s)", "returns how many vowels (a, e, i, o, u, in either case) s contains",
     [(["banana"], 3), (["sky"], 0), (["AEIOU and more"], 8)]),
    ("sum_even(nums)", "returns the sum of the even numbers in the list nums",
     [([[1, 2, 3, 4]], 6), ([[]], 0), ([[7, 9, 10, -2]], 8)]),
    ("factorial(n)", "returns n! for a non-negative integer n",
     [([0], 1), ([5], 120), ([10], 3628800)]),
    ("is_prime(n)", "returns True if the integer n is a prime number and False otherwise",
     [([2], True), ([1], False), ([91], False), ([97], True)]),
    ("fib(n)", "returns the n-th Fibonacci number, with fib(0) = 0 and fib(1) = 1",
     [([0], 0), ([1], 1), ([10], 55), ([20], 6765)]),
    ("largest(nums)", "returns the largest number in a non-empty list without using max()",
     [([[3, 9, 2]], 9), ([[-5, -1, -7]], -1), ([[4]], 4)]),
    ("is_palindrome(s)", "returns True if s reads the same backwards, ignoring case, spaces "
     "and punctuation", [(["Racecar"], True), (["A man, a plan, a canal: Panama"], True),
                         (["hello"], False)]),
    ("word_count(text)", "returns the number of words in text, separated by whitespace",
     [(["one two  three"], 3), ([""], 0), (["  padded words here  "], 3)]),
    ("fizzbuzz(n)", "returns 'Fizz' if n is divisible by 3, 'Buzz' if by 5, 'FizzBuzz' if by "
     "both, and otherwise n as a string", [([9], "Fizz"), ([10], "Buzz"), ([30], "FizzBuzz"),
                                            ([7], "7")]),
    ("gcd(a, b)", "returns the greatest common divisor of two positive integers",
     [([12, 18], 6), ([17, 5], 1), ([100, 75], 25)]),
    ("unique(items)", "returns the list items without duplicates, keeping the first "
     "occurrence's order", [([[3, 1, 3, 2, 1]], [3, 1, 2]), ([[]], []), ([["a", "a"]], ["a"])]),
    ("to_fahrenheit(c)", "converts a temperature in degrees Celsius to Fahrenheit",
     [([0], 32), ([100], 212), ([-40], -40)]),
    ("second_largest(nums)", "returns the second largest distinct number in a list with at "
     "least two distinct numbers", [([[1, 5, 3]], 3), ([[7, 7, 2]], 2), ([[-1, -2]], -2)]),
    ("capitalize_words(s)", "returns s with the first letter of every word in upper case and "
     "words separated by single spaces", [(["hello world"], "Hello World"),
                                          (["a b c"], "A B C")]),
    ("digit_sum(n)", "returns the sum of the decimal digits of a non-negative integer n",
     [([0], 0), ([1234], 10), ([99999], 45)]),
    ("merge_sorted(a, b)", "merges two sorted lists into one sorted list",
     [([[1, 4], [2, 3]], [1, 2, 3, 4]), ([[], [1]], [1]), ([[5], []], [5])]),
    ("count_char(s, c)", "returns how many times the character c occurs in the string s",
     [(["mississippi", "s"], 4), (["abc", "z"], 0)]),
    ("to_binary(n)", "returns the binary representation of a non-negative integer n as a "
     "string of 0s and 1s, without a prefix", [([0], "0"), ([5], "101"), ([255], "11111111")]),
    ("flatten(lists)", "flattens a list of lists by one level into a single list",
     [([[[1, 2], [3], []]], [1, 2, 3]), ([[]], [])]),
)
_CODE_ASKS = (
    "Write a Python function `{sig}` that {does}.",
    "Implement `{sig}` in Python: it {does}.",
    "In Python, write a function {sig} which {does}. Just the code, please.",
    "Can you write me a Python function called {name} that {does}? The signature is {sig}.",
)


def code_items(n: int, seed: int = 0) -> list[Item]:
    """``n`` coding requests: each of the tasks in each of the phrasings, seeded order."""
    rng = random.Random(seed)
    pairs = [(t, a) for t in range(len(CODE_TASKS)) for a in range(len(_CODE_ASKS))]
    rng.shuffle(pairs)
    out = []
    for t, a in pairs[:n]:
        sig, does, tests = CODE_TASKS[t]
        name = sig.split("(")[0]
        prompt = _CODE_ASKS[a].format(sig=sig, does=does, name=name)
        fields = {"kind": "code", "task": "code", "function": name, "tests": tests}
        out.append(Item(item_key(["code", t, a, prompt]), prompt, fields))
    return out


_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|$)", re.S)

# Run in a fresh interpreter (-I: no site packages, no environment, no current directory on the
# path), in an empty temporary directory, with CPU-time and address-space limits: the code is
# a model's output and is run only to grade it.
_RUNNER = r"""
import json, resource, sys
resource.setrlimit(resource.RLIMIT_CPU, (4, 4))
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
spec = json.loads(sys.stdin.read())
scope = {}
exec(compile(spec["code"], "<answer>", "exec"), scope)
fn = scope[spec["function"]]
ok = all(fn(*args) == want for args, want in spec["tests"])
print("PASS" if ok else "FAIL")
"""


def code_passes(answer: str, function: str, tests: list[Any]) -> bool:
    """Does the answer define ``function`` so that every test passes?"""
    blocks = [b for b in _FENCE.findall(answer) if f"def {function}" in b]
    code = blocks[0] if blocks else (answer if f"def {function}" in answer else "")
    if not code:
        return False
    return _run_tests(code, function, json.dumps(tests))


@functools.lru_cache(maxsize=4096)
def _run_tests(code: str, function: str, tests_json: str) -> bool:
    spec = json.dumps({"code": code, "function": function, "tests": json.loads(tests_json)})
    with tempfile.TemporaryDirectory() as cwd:
        try:
            done = subprocess.run([sys.executable, "-I", "-c", _RUNNER], input=spec, cwd=cwd,
                                  capture_output=True, text=True, timeout=10)
        except subprocess.TimeoutExpired:
            return False
    return done.returncode == 0 and done.stdout.strip().endswith("PASS")


# -- writing ---------------------------------------------------------------------------------

# (request, the words an on-topic answer uses (any one), the fewest words, list items asked).
_Topic = tuple[str, tuple[str, ...]]
_TOPICS: tuple[_Topic, ...] = (
    ("the ocean", ("ocean", "sea", "wave", "tide")), ("autumn", ("autumn", "fall", "leaves")),
    ("a rainy city", ("rain", "city", "street")), ("friendship", ("friend",)),
    ("a lighthouse", ("lighthouse", "light", "sea")), ("coffee", ("coffee", "cup", "bean")),
    ("the night sky", ("star", "night", "sky", "moon")), ("a mountain hike", ("mountain",
                                                                              "hike", "trail")),
    ("an old bicycle", ("bicycle", "bike", "wheel")), ("a garden", ("garden", "flower",
                                                                    "plant")),
)
_ROLES: tuple[_Topic, ...] = (
    ("a chef in a busy restaurant", ("kitchen", "cook", "dish", "food", "chef")),
    ("a ship's captain", ("ship", "sea", "crew", "captain")),
    ("a museum guide", ("museum", "art", "exhibit", "painting")),
    ("a park ranger", ("park", "trail", "forest", "wildlife")),
    ("a librarian", ("book", "library", "read")),
)
_CONCEPTS: tuple[_Topic, ...] = (
    ("inflation", ("price", "inflation", "money")), ("photosynthesis", ("light", "plant",
                                                                        "energy")),
    ("democracy", ("vote", "people", "govern")), ("recycling", ("recycl", "waste", "material")),
    ("the water cycle", ("water", "evaporat", "rain")), ("supply and demand", ("price",
                                                                              "demand")),
)
_ACTIVITIES: tuple[_Topic, ...] = (
    ("sleeping better", ("sleep", "bed")), ("saving money", ("money", "sav", "budget")),
    ("learning a language", ("language", "word", "practi")), ("running a meeting",
                                                              ("meeting", "agenda")),
    ("studying for an exam", ("stud", "exam")),
)

_WRITING: tuple[tuple[str, tuple[_Topic, ...], int, int], ...] = (
    ("Write a short poem about {x}.", _TOPICS, 12, 0),
    ("Write a two-sentence story about {x}.", _TOPICS, 15, 0),
    ("Write a short, friendly email to a colleague inviting them to a talk about {x}.",
     _TOPICS, 25, 0),
    ("Imagine you are {x}. Describe your typical day in a few sentences.", _ROLES, 30, 0),
    ("Pretend to be {x} and greet a group of visitors.", _ROLES, 20, 0),
    ("Explain {x} in simple terms.", _CONCEPTS, 25, 0),
    ("Discuss why {x} matters to ordinary people.", _CONCEPTS, 30, 0),
    ("Give me three tips for {x}.", _ACTIVITIES, 20, 3),
    ("List five ideas for {x}.", _ACTIVITIES, 20, 5),
    ("Describe {x} in a few vivid sentences.", _TOPICS, 25, 0),
)


def writing_items(n: int, seed: int = 0) -> list[Item]:
    """``n`` writing requests, from ten kinds of request over a few dozen topics, seeded."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        template, topics, min_words, n_items = _WRITING[i % len(_WRITING)]
        topic, words = rng.choice(topics)
        prompt = template.format(x=topic)
        fields = {"kind": "writing", "task": "writing", "topic_words": list(words),
                  "min_words": min_words, "list_items": n_items}
        out.append(Item(item_key(["writing", seed, i, prompt]), prompt, fields))
    return out


# Chat-template control text: an answer that carries it leaked the template.
CONTROL_TEXT = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<start_of_turn>",
                "<end_of_turn>", "<|assistant|>", "<|user|>", "<eos>", "<bos>")
_LIST_LINE = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+\S", re.M)


def writing_done(prompt: str, answer: str, fields: dict[str, Any]) -> bool:
    """Did the answer do the writing task? (topic, length, items, no loop, no echo)"""
    text = answer.strip()
    words = re.findall(r"[\w']+", text.lower())
    if len(words) < int(fields["min_words"]) or any(c in text for c in CONTROL_TEXT):
        return False
    if text.startswith(prompt.strip()[:40]):
        return False  # the request echoed back
    if not any(w.startswith(stem) for w in words for stem in fields["topic_words"]):
        return False
    trigrams = list(zip(words, words[1:], words[2:], strict=False))
    if trigrams and len(set(trigrams)) / len(trigrams) < 0.6:
        return False  # the same phrase over and over
    return len(_LIST_LINE.findall(text)) >= int(fields["list_items"])


GRADERS: dict[str, Callable[[Item, str], bool]] = {
    "code": lambda item, answer: code_passes(answer, item.fields["function"],
                                             item.fields["tests"]),
    "writing": lambda item, answer: writing_done(item.prompt, answer, item.fields),
}
