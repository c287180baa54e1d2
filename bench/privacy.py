"""``tandem bench privacy``: what the detector finds, what it wrongly redacts, what it costs.

- Recall and precision per category on the PII corpus (``tests/data/pii_corpus.jsonl``), split by
  id: even ids are the tuning half (the only one looked at when choosing the threshold and the
  recognizers), odd ids the reporting half. "Leak recall" is category-blind: the share of
  sensitive values whose every character is inside some finding, i.e. that the cloud would not
  see.
- The false-redaction rate on clean prompts: MT-Bench questions with any finding.
- Latency of the whole cloud-bound check (scan + redact) on a 500-token prompt, p50/p99, and the
  median cost of each recognizer; the baseline in the same run is the same call on a one-line
  prompt.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from tandem.privacy.detect import Finding
from tandem.privacy.policy import PrivacyGuard, PrivacyMode
from tandem.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "data" / "pii_corpus.jsonl"
MT_BENCH = ROOT.parent / "shared" / "data" / "mt_bench_questions.jsonl"


def _spans(text: str, value: str) -> list[tuple[int, int]]:
    out, start = [], text.find(value)
    while start >= 0:
        out.append((start, start + len(value)))
        start = text.find(value, start + 1)
    return out


def score_corpus(guard: PrivacyGuard, records: list[dict[str, Any]]) -> dict[str, Any]:
    tp: dict[str, int] = {}
    gold_n: dict[str, int] = {}
    found_n: dict[str, int] = {}
    found_tp: dict[str, int] = {}
    covered = total = protected = kept_local = 0
    misses: list[dict[str, Any]] = []
    for record in records:
        text = record["text"]
        assessment = guard.assess([{"role": "user", "content": text}])
        findings = assessment.findings[0]
        stays = bool(assessment.keep_local)
        kept_local += stays
        gold = [
            (v["category"], s, e) for v in record["values"] for s, e in _spans(text, v["value"])
        ]
        for category, s, e in gold:
            gold_n[category] = gold_n.get(category, 0) + 1
            total += 1
            if _covered(findings, s, e):
                covered += 1
                protected += 1
            else:
                protected += stays
                misses.append(
                    {"id": record["id"], "category": category, "value": text[s:e], "local": stays}
                )
            if any(f.category == category and f.start < e and s < f.end for f in findings):
                tp[category] = tp.get(category, 0) + 1
        for f in findings:
            found_n[f.category] = found_n.get(f.category, 0) + 1
            if any(c == f.category and f.start < e and s < f.end for c, s, e in gold):
                found_tp[f.category] = found_tp.get(f.category, 0) + 1
    categories = sorted(set(gold_n) | set(found_n))
    per_category = {
        c: {
            "values": gold_n.get(c, 0),
            "recall": _ratio(tp.get(c, 0), gold_n.get(c, 0)),
            "findings": found_n.get(c, 0),
            "precision": _ratio(found_tp.get(c, 0), found_n.get(c, 0)),
        }
        for c in categories
    }
    return {
        "prompts": len(records),
        "values": total,
        # Values fully inside a finding: redacted before the cloud sees them.
        "redaction_recall": _ratio(covered, total),
        # Values that never reach the cloud under the policy: redacted, or the prompt is kept
        # on the device (a keep-local category was found).
        "protected_recall": _ratio(protected, total),
        "prompts_kept_local": kept_local,
        "per_category": per_category,
        "missed": misses,
    }


def _covered(findings: list[Finding], start: int, end: int) -> bool:
    return all(any(f.start <= i < f.end for f in findings) for i in range(start, end))


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def false_redaction(guard: PrivacyGuard, path: Path) -> dict[str, Any]:
    prompts = [t for line in path.open() for t in json.loads(line)["turns"]]
    flagged = []
    for text in prompts:
        findings = guard.detector.find(text)
        if findings:
            flagged.append({"text": text[:80], "found": [(f.category, f.text) for f in findings]})
    return {
        "prompts": len(prompts),
        "flagged": len(flagged),
        "rate": len(flagged) / len(prompts),
        "examples": flagged,
    }


def latency(guard: PrivacyGuard, runs: int) -> dict[str, Any]:
    questions = [json.loads(line)["turns"][0] for line in MT_BENCH.open()]
    long = " ".join(questions)
    prompt_500 = long[: _chars_for_tokens(long, 500)]
    short = "Write a haiku about rain."
    pii = " ".join(r["text"] for r in _corpus()[:12])
    prompt_pii = pii[: _chars_for_tokens(pii, 500)]
    out: dict[str, Any] = {}
    for name, text in (
        ("one_line", short),
        ("clean_500_tokens", prompt_500),
        ("pii_500_tokens", prompt_pii),
    ):
        msgs = [{"role": "user", "content": text}]
        started = time.perf_counter()
        guard.shield(msgs, PrivacyMode.REDACT, None)  # first sight of this text: cold caches
        first_ms = (time.perf_counter() - started) * 1000
        times = []
        for i in range(runs):
            # A different text each run: the detector caches results per text, and a new
            # message is what a request pays for (history messages come from the cache).
            fresh = [{"role": "user", "content": f"{text} ({i})"}]
            started = time.perf_counter()
            guard.shield(fresh, PrivacyMode.REDACT, None)
            times.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        guard.shield(msgs, PrivacyMode.REDACT, None)
        cached_ms = (time.perf_counter() - started) * 1000
        times.sort()
        out[name] = {
            "chars": len(text),
            "p50_ms": times[len(times) // 2],
            "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))],
            "first_call_ms": first_ms,
            "cached_ms": cached_ms,  # the same text again, as in a session's history
        }
    per = [guard.detector.timed(prompt_pii) for _ in range(max(5, runs // 10))]
    out["per_recognizer_median_ms_pii_500"] = {
        k: statistics.median(p[k] for p in per) for k in per[0]
    }
    out["ratio_p99_500_vs_one_line"] = out["pii_500_tokens"]["p99_ms"] / out["one_line"]["p99_ms"]
    return out


def _chars_for_tokens(text: str, tokens: int) -> int:
    """Characters of ``text`` that make about ``tokens`` SmolLM2 tokens (its own tokenizer)."""
    from llama_cpp import Llama

    from tandem.catalog import resolve_model

    llm = Llama(str(resolve_model("smollm2")[0]), vocab_only=True, verbose=False)
    ids = llm.tokenize(text.encode(), add_bos=False)[:tokens]
    return len(llm.detokenize(ids).decode("utf-8", errors="ignore"))


def _corpus(path: Path = CORPUS) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]


def run_privacy_bench(
    settings: Settings, quick: bool, out: Path, console: Console, corpus: Path = CORPUS
) -> dict[str, Any]:
    guard = PrivacyGuard(
        settings.privacy_categories, settings.privacy_keep_local, settings.privacy_threshold
    )
    guard.detector.warm()
    records = _corpus(corpus)
    tune = [r for r in records if int(r["id"].lstrip("p")) % 2 == 0]
    report = [r for r in records if int(r["id"].lstrip("p")) % 2 == 1]
    result = {
        "bench": "privacy",
        "quick": quick,
        "corpus": str(corpus),
        "threshold": settings.privacy_threshold,
        "categories": settings.privacy_categories,
        "report_split": score_corpus(guard, report),
        "tune_split": score_corpus(guard, tune),
        "false_redaction_mt_bench": false_redaction(guard, MT_BENCH),
        "latency": latency(guard, 50 if quick else 300),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    _print(result, console)
    return result


def _print(result: dict[str, Any], console: Console) -> None:
    from rich.table import Table

    rep = result["report_split"]
    table = Table(title=f"privacy detection, report split ({rep['prompts']} prompts)")
    for col in ("category", "values", "recall", "findings", "precision"):
        table.add_column(col, justify="right")
    for c, m in rep["per_category"].items():
        table.add_row(
            c,
            str(m["values"]),
            "-" if m["recall"] is None else f"{m['recall']:.2f}",
            str(m["findings"]),
            "-" if m["precision"] is None else f"{m['precision']:.2f}",
        )
    console.print(table)
    fr = result["false_redaction_mt_bench"]
    lat = result["latency"]
    console.print(
        f"values protected {rep['protected_recall']:.3f}, redacted {rep['redaction_recall']:.3f}"
        f" (tune split {result['tune_split']['protected_recall']:.3f} / "
        f"{result['tune_split']['redaction_recall']:.3f}); MT-Bench prompts flagged: "
        f"{fr['flagged']}/{fr['prompts']} ({fr['rate']:.1%}); scan+redact p99: "
        f"{lat['pii_500_tokens']['p99_ms']:.1f} ms (500 tokens with PII), "
        f"{lat['clean_500_tokens']['p99_ms']:.1f} ms (500 clean), "
        f"{lat['one_line']['p99_ms']:.1f} ms (one line)"
    )
