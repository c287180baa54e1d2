"""``tandem bench frontier``: the quality–memory frontier of the bundled SmolLM2, reproducibly.

Builds the reference (the shipped Q4_1 model dequantized to F32: quality is measured against the
model we ship, not the original bf16 one), an importance matrix from WikiText-2 *validation*
text, and a fixed set of variants (plain types, token-embedding types, imatrix pairs, and mixes
aimed at ≤ 75% of the shipped size), then runs ``tandem frontier`` over them. The shipped file is
one of the points, so every figure has its baseline from the same run. Results (cached per file
hash, so a re-run only measures what changed) go to ``bench/results/frontier/``.

Why these mixes: SmolLM2's rows are 576 wide, which is not a multiple of the 256-wide k-quant
super-block, so llama.cpp falls back to 32-wide types (Q4_0/Q5_0/IQ4_NL…) for every tensor except
``ffn_down`` (1536 wide). The token embedding (also the output head: the model ties them) is
28% of the file and the most sensitive tensor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from tandem.catalog import bundled_path

# name: (type, token-embedding type, use imatrix, tensor overrides)
VARIANTS: dict[str, tuple[str, str | None, bool, tuple[tuple[str, str], ...]]] = {
    "q8_0": ("Q8_0", None, False, ()),
    "q4_k_m": ("Q4_K_M", None, False, ()),
    "q4_1-e_q4_1": ("Q4_1", "q4_1", False, ()),
    "q4_1-e_q4_1-im": ("Q4_1", "q4_1", True, ()),
    "q4_1-e_q5_0-im": ("Q4_1", "q5_0", True, ()),
    "q4_1-e_iq4_nl-im": ("Q4_1", "iq4_nl", True, ()),
    "iq4_nl-e_q5_0-im": ("IQ4_NL", "q5_0", True, ()),
    "iq4_nl-e_iq4_nl-im": ("IQ4_NL", "iq4_nl", True, ()),
    "q4_0-e_q4_0": ("Q4_0", "q4_0", False, ()),
    "q4_0-e_q4_0-im": ("Q4_0", "q4_0", True, ()),
    "q2_k": ("Q2_K", None, False, ()),
    "q2_k-im": ("Q2_K", None, True, ()),
    "iq4_nl-d_q3_k-e_iq4_nl-im": ("IQ4_NL", "iq4_nl", True, (("ffn_down", "q3_K"),)),
    "iq4_nl-d_iq3_xxs-e_iq4_nl-im": ("IQ4_NL", "iq4_nl", True, (("ffn_down", "iq3_xxs"),)),
}
QUICK = ("q8_0", "q4_1-e_q4_1", "q4_1-e_q4_1-im", "q4_0-e_q4_0", "q4_0-e_q4_0-im")


def build_variants(root: Path, data_dir: Path, *, quick: bool, console: Console) -> Path:
    """The reference, the imatrix and every variant under ``root/variants`` (kept if present)."""
    from tandem.optimize.gguf_io import dequantize
    from tandem.optimize.imatrix import compute_imatrix
    from tandem.optimize.quantize import quantize

    variants = root / "variants"
    variants.mkdir(parents=True, exist_ok=True)
    shipped = bundled_path("smollm2")
    ref = variants / "ref-f32.gguf"
    if not ref.exists():
        console.print("dequantizing the shipped model to F32 (the reference)…")
        dequantize(shipped, ref)
    link = variants / "shipped-q4_1.gguf"
    if not link.exists():
        link.symlink_to(shipped)
    imatrix = root / "imatrix-wikitext2-valid.gguf"
    if not imatrix.exists():
        console.print("importance matrix from WikiText-2 validation text (32 chunks)…")
        text = (data_dir / "wikitext2_valid_tokenized.txt").read_text(encoding="utf-8")
        im, _ = compute_imatrix(ref, text, dataset="wikitext2_valid_tokenized.txt", limit=32)
        im.save(imatrix)
    for name, (qtype, embd, use_im, overrides) in VARIANTS.items():
        if quick and name not in QUICK:
            continue
        out = variants / f"{name}.gguf"
        if out.exists():
            continue
        console.print(f"quantizing {name}…")
        quantize(ref, out, qtype, embd_type=embd, imatrix=imatrix if use_im else None,
                 tensor_types=overrides)
    return variants


def run_frontier_bench(*, quick: bool, out: Path, console: Console, data_dir: Path | None = None,
                       chunks: int | None = None, items: int | None = None) -> dict[str, Any]:
    from tandem.datadirs import default_data_dir
    from tandem.optimize.evaluate import EvalOptions
    from tandem.optimize.frontier import run_frontier, table

    data_dir = data_dir or default_data_dir()
    root = out.parent / "frontier"
    variants = build_variants(root, data_dir, quick=quick, console=console)
    options = EvalOptions(
        data_dir=data_dir,
        tasks=("ppl", "kld", "arc_easy", "perf"),
        chunks=chunks or (4 if quick else 40),
        items=items or (100 if quick else None),
    )
    with console.status("evaluating (cached per file)…"):
        front, data = run_frontier(variants, variants / "ref-f32.gguf", options,
                                   plot=root / "frontier.png", out=out)
    data["baseline"] = "shipped-q4_1"
    data["ratios_to_shipped"] = _ratios(data["results"])
    out.write_text(json.dumps(data, indent=2))
    console.print(table(front))
    console.print(f"JSON: {out}   plot: {root / 'frontier.png'}")
    return data


def _ratios(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Size and speed of each variant as ratios to the shipped file, from the same run."""
    base = next(r for r in results if r["model"]["name"] == "shipped-q4_1")
    out = {}
    for r in results:
        row = {"size": r["model"]["size_bytes"] / base["model"]["size_bytes"]}
        for key in ("prefill_tps", "decode_tps"):
            if r.get("speed") and base.get("speed"):
                row[key] = r["speed"][key] / base["speed"][key]
        if r.get("tasks", {}).get("arc_easy") and base.get("tasks", {}).get("arc_easy"):
            row["arc_easy_points"] = 100 * (r["tasks"]["arc_easy"]["acc"]
                                            - base["tasks"]["arc_easy"]["acc"])
        out[r["model"]["name"]] = row
    return out
