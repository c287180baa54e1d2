"""Write a GGUF model as a Hugging Face checkpoint (bfloat16 safetensors) that vLLM can serve.

Run by vLLM's own Python (``python export_hf.py MODEL.gguf OUT_DIR``), not imported by Tandem:
it needs transformers, torch, gguf and accelerate, which live in vLLM's environment. vLLM's own
GGUF loader needs CUDA, so on a CPU the model is dequantized here, once, by transformers' GGUF
reader. The checkpoint is written to a temporary folder beside ``OUT_DIR`` and renamed into
place, so an interrupted export never leaves a half-written model that looks whole.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def export(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer  # type: ignore[import-not-found]

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16
    )
    # Dequantized weights are plain tensors: drop the GGUF quantizer, which refuses to save.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    # transformers leaves the architecture out of a config read from GGUF; vLLM needs it.
    config_path = tmp / "config.json"
    config = json.loads(config_path.read_text())
    config["architectures"] = [type(model).__name__]
    config_path.write_text(json.dumps(config, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: export_hf.py MODEL.gguf OUT_DIR")
    export(Path(sys.argv[1]), Path(sys.argv[2]))
