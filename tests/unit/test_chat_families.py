"""The chat protocol's free-form families: coding tasks checked by tests, writing by checks."""

from __future__ import annotations

import pytest

from tandem.routing.chat_families import (
    CODE_TASKS,
    code_items,
    code_passes,
    writing_done,
    writing_items,
)
from tandem.routing.chat_protocol import chat_items, grade, max_tokens_for

# One plain solution per task: the tasks' own tests must accept a right answer.
SOLUTIONS = {
    "reverse_text": "def reverse_text(s):\n    return s[::-1]",
    "count_vowels": "def count_vowels(s):\n    return sum(c in 'aeiouAEIOU' for c in s)",
    "sum_even": "def sum_even(nums):\n    return sum(n for n in nums if n % 2 == 0)",
    "factorial": "import math\ndef factorial(n):\n    return math.factorial(n)",
    "is_prime": "def is_prime(n):\n    return n > 1 and all(n % d for d in range(2, n))",
    "fib": "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
           "    return a",
    "largest": "def largest(nums):\n    return sorted(nums)[-1]",
    "is_palindrome": "def is_palindrome(s):\n    t = [c.lower() for c in s if c.isalnum()]\n"
                     "    return t == t[::-1]",
    "word_count": "def word_count(text):\n    return len(text.split())",
    "fizzbuzz": "def fizzbuzz(n):\n    return 'FizzBuzz' if n % 15 == 0 else 'Fizz' if n % 3 == 0"
                " else 'Buzz' if n % 5 == 0 else str(n)",
    "gcd": "import math\ndef gcd(a, b):\n    return math.gcd(a, b)",
    "unique": "def unique(items):\n    return list(dict.fromkeys(items))",
    "to_fahrenheit": "def to_fahrenheit(c):\n    return c * 9 / 5 + 32",
    "second_largest": "def second_largest(nums):\n    return sorted(set(nums))[-2]",
    "capitalize_words": "def capitalize_words(s):\n    return ' '.join(w.capitalize() "
                        "for w in s.split())",
    "digit_sum": "def digit_sum(n):\n    return sum(int(d) for d in str(n))",
    "merge_sorted": "def merge_sorted(a, b):\n    return sorted(a + b)",
    "count_char": "def count_char(s, c):\n    return s.count(c)",
    "to_binary": "def to_binary(n):\n    return bin(n)[2:]",
    "flatten": "def flatten(lists):\n    return [x for xs in lists for x in xs]",
}


@pytest.mark.parametrize("task", CODE_TASKS, ids=lambda t: t[0])
def test_every_coding_task_accepts_a_right_solution_and_refuses_a_wrong_one(task) -> None:
    sig, _, tests = task
    name = sig.split("(")[0]
    answer = f"Here it is:\n\n```python\n{SOLUTIONS[name]}\n```\n\nThis runs in O(n)."
    assert code_passes(answer, name, tests)
    wrong = f"```python\ndef {name}(*args):\n    return None\n```"
    assert not code_passes(wrong, name, tests)


def test_code_grading_needs_the_named_function_and_survives_bad_code() -> None:
    item = next(i for i in code_items(80) if i.fields["function"] == "gcd")
    assert grade(item, "```python\n" + SOLUTIONS["gcd"] + "\n```")
    assert grade(item, SOLUTIONS["gcd"])  # no fence: the answer is the code
    assert not grade(item, "```python\ndef greatest(a, b):\n    return 1\n```")
    assert not grade(item, "```python\ndef gcd(a, b):\n    return a +\n```")  # syntax error
    assert not grade(item, "```python\ndef gcd(a, b):\n    raise SystemExit(0)\n```")
    assert not grade(item, "The gcd is the largest common divisor.")


def test_code_that_never_ends_fails_instead_of_hanging() -> None:
    loop = "```python\ndef fib(n):\n    while True:\n        pass\n```"
    assert not code_passes(loop, "fib", [[[1], 1]])


def test_coding_items_are_seeded_distinct_and_capped_by_tasks_times_phrasings() -> None:
    items = code_items(80, seed=1)
    assert len(items) == 80 and len({i.prompt for i in items}) == 80
    assert [i.prompt for i in items[:10]] == [i.prompt for i in code_items(10, seed=1)]
    assert [i.prompt for i in items[:10]] != [i.prompt for i in code_items(10, seed=2)]
    assert all(i.fields["function"] in i.prompt for i in items)
    assert all(max_tokens_for(i) == 256 for i in items)


def test_writing_checks_topic_length_items_loops_and_echo() -> None:
    fields = {"topic_words": ["sleep", "bed"], "min_words": 12, "list_items": 3}
    prompt = "Give me three tips for sleeping better."
    good = ("Here are three tips:\n1. Go to bed at the same time every night.\n"
            "2. Keep the bedroom dark and cool.\n3. Avoid screens an hour before sleep.")
    assert writing_done(prompt, good, fields)
    assert not writing_done(prompt, good.split("\n2.")[0], fields)  # one item, too short
    assert not writing_done(prompt, prompt + " " + good, fields)  # echoes the request
    off_topic = ("Here are three tips:\n1. Water the plants.\n2. Feed the cat twice a day.\n"
                 "3. Paint the fence in spring.")
    assert not writing_done(prompt, off_topic, fields)
    loop = "1. sleep in bed\n2. sleep in bed\n3. sleep in bed\n" + "sleep in bed " * 20
    assert not writing_done(prompt, loop, fields)
    assert not writing_done(prompt, good + "<|im_end|>", fields)


def test_writing_items_cover_every_kind_and_are_chat_items() -> None:
    items = chat_items("writing", limit=30)
    assert [i.prompt for i in items] == [i.prompt for i in writing_items(30)]
    assert len({i.prompt.split()[0] for i in items}) >= 6  # Write, Imagine, Pretend, Explain...
    assert all(i.fields["kind"] == "writing" for i in items)
    story = next(i for i in items if "poem" in i.prompt)
    topic = story.fields["topic_words"][0]
    poem = f"The {topic} hums a song,\nsoft and low the whole night long,\nand I listen, " \
           "calm and still, until the morning light."
    assert grade(story, poem)
