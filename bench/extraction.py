"""``tandem bench extraction``: form extraction under a JSON schema, each tier alone and ``auto``.

A seeded set of short sentences about a person (name, age, city, department, e-mail, in six
phrasings), each sent through the gateway in-process, exactly as ``tandem serve`` answers it
(chat template, privacy redaction before the cloud, the shipped routing config), with a
``json_schema`` response format, three times: ``route: local``, ``route: cloud`` and ``auto``.
Reported: the local answers' valid rate (they parse and pass the schema's checks), the share
``auto`` escalates and why, and the end accuracy of each mode (every field equal to the
sentence's). The schema check is a rule and the cascade's router was trained on the chat
protocol's families; the one choice made on this generator (the JSON layout the local model
writes) was made on other items (``TUNE_SEED``) than those reported (``REPORT_SEED``).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console

from tandem.events import GenerationParams, TokenEvent
from tandem.settings import Settings
from tandem.structured import parse_response_format
from tandem.turn import RouteInfo, RoutePreference, Turn

FIRST = ["Maria", "Tom", "Aisha", "Kenji", "Lena", "Pedro", "Olga", "Samuel", "Ines", "Raj"]
LAST = ["Rossi", "Becker", "Khan", "Sato", "Novak", "Silva", "Ivanova", "Okafor", "Moreau",
        "Patel"]
CITIES = ["Rome", "Hamburg", "Lagos", "Osaka", "Prague", "Lisbon", "Kyiv", "Toronto", "Lyon",
          "Pune"]
DEPARTMENTS = ["sales", "engineering", "finance", "support"]
PHRASINGS = [
    "{name} is {age} years old, lives in {city} and works in {dept}. Email: {email}.",
    "New hire: {name}, age {age}, based in {city}, {dept} team, reachable at {email}.",
    "Please file this: {email} belongs to {name} ({age}) from the {dept} department in {city}.",
    "{name}, {age}, moved to {city} last year and joined {dept}; write to {email}.",
    "Contact card - name {name}; city {city}; department {dept}; age {age}; mail {email}",
    "Our {dept} colleague {name} from {city} turns {age} today! Send wishes to {email}.",
]
FIELDS = ("name", "age", "city", "department", "email")
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 16, "maximum": 90},
        "city": {"type": "string", "enum": CITIES},
        "department": {"type": "string", "enum": DEPARTMENTS},
        "email": {"type": "string", "format": "email"},
    },
    "required": ["name", "age", "city", "department", "email"],
    "additionalProperties": False,
}
MODES = {"local": RoutePreference.LOCAL, "cloud": RoutePreference.CLOUD,
         "auto": RoutePreference.AUTO}


TUNE_SEED = 7  # the items the local layout was chosen on (structured.OutputFormat.grammar)
REPORT_SEED = 11  # the items reported


def items(n: int, seed: int = REPORT_SEED) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        gold = {
            "name": f"{first} {last}",
            "age": rng.randint(19, 70),
            "city": rng.choice(CITIES),
            "department": rng.choice(DEPARTMENTS),
            "email": f"{first.lower()}.{last.lower()}@example.com",
        }
        sentence = PHRASINGS[i % len(PHRASINGS)].format(
            name=gold["name"], age=gold["age"], city=gold["city"], dept=gold["department"],
            email=gold["email"])
        out.append({"prompt": f"Extract the person's details as JSON.\n\n{sentence}",
                    "gold": gold})
    return out


def grade(text: str, gold: dict[str, Any]) -> tuple[bool, int]:
    """(every field right, fields right)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return False, 0
    if not isinstance(value, dict):
        return False, 0
    right = sum(
        str(value.get(k, "")).strip().casefold() == str(v).strip().casefold()
        for k, v in gold.items()
    )
    return right == len(gold), right


async def _ask(gateway: Any, prompt: str, mode: str) -> dict[str, Any]:
    fmt = parse_response_format({"type": "json_schema",
                                 "json_schema": {"name": "person", "schema": SCHEMA}})
    params = GenerationParams(max_tokens=128, temperature=0.0, output=fmt)
    turn = Turn([{"role": "user", "content": prompt}], params, MODES[mode])
    started = time.perf_counter()
    route: RouteInfo | None = None
    pieces: list[str] = []
    async for event in gateway.stream(turn):
        if isinstance(event, RouteInfo):
            route = event
        elif isinstance(event, TokenEvent):
            pieces.append(event.text)
    assert route is not None and fmt is not None
    text = "".join(pieces)
    return {"text": text, "tier": route.tier.value, "reason": route.reason,
            "seconds": time.perf_counter() - started, "valid": not fmt.problems(text)}


async def _run(settings: Settings, rows: list[dict[str, Any]], console: Console) -> None:
    from tandem.runtime import Runtime

    async with Runtime(settings) as runtime:
        gateway = runtime.gateway
        for i, row in enumerate(rows):
            for mode in MODES:
                row[mode] = await _ask(gateway, row["prompt"], mode)
                row[mode]["correct"], row[mode]["fields_right"] = grade(
                    row[mode]["text"], row["gold"])
            if (i + 1) % 10 == 0:
                console.print(f"[dim]{i + 1}/{len(rows)} items[/dim]")


def run_extraction_bench(settings: Settings, n: int, out: Path, console: Console
                         ) -> dict[str, Any]:
    from tandem.cloud.standin import StandinCloud

    rows = items(n)
    with ExitStack() as stack:
        if not settings.cloud_url:
            standin = stack.enter_context(StandinCloud.from_settings(settings))
            settings = settings.model_copy(update={"cloud_url": standin.base_url,
                                                   "cloud_dialect": "llama_cpp"})
        settings = settings.model_copy(update={"sessions": False, "keep_alive_s": None})
        asyncio.run(_run(settings, rows, console))
    result: dict[str, Any] = {"items": n, "schema_fields": len(FIELDS),
                              "modes": {}}
    for mode in MODES:
        answers = [r[mode] for r in rows]
        result["modes"][mode] = {
            "accuracy": round(sum(a["correct"] for a in answers) / n, 3),
            "field_accuracy": round(
                sum(a["fields_right"] for a in answers) / (n * len(FIELDS)), 3),
            "valid_rate": round(sum(a["valid"] for a in answers) / n, 3),
            "median_s": round(statistics.median(a["seconds"] for a in answers), 3),
            "tiers": dict(Counter(a["tier"] for a in answers)),
            "reasons": dict(Counter(a["reason"] for a in answers)),
        }
    auto = [r["auto"] for r in rows]
    result["auto_escalation_rate"] = round(sum(a["tier"] == "cloud" for a in auto) / n, 3)
    result["rows"] = [{"prompt": r["prompt"], "gold": r["gold"],
                       **{m: {k: r[m][k] for k in ("text", "tier", "reason", "correct")}
                          for m in MODES}} for r in rows]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    for mode, m in result["modes"].items():
        console.print(f"{mode:6} accuracy {m['accuracy']:.1%} (fields {m['field_accuracy']:.1%}),"
                      f" valid {m['valid_rate']:.1%}, median {m['median_s']} s, {m['reasons']}")
    return result
