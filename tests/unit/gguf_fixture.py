"""A vocabulary-only GGUF for tests: the bundled SmolLM2's tokenizer with chosen metadata added
(e.g. FIM token ids its own vocabulary lacks), and no tensors. llama.cpp loads it with
``vocab_only``, so tokenization and the ``llama_vocab_*`` queries run on real code."""

from __future__ import annotations

from pathlib import Path

from tandem.catalog import bundled_path


def vocab_gguf(path: Path, extra: dict[str, int]) -> Path:
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(bundled_path("smollm2"))
    field = reader.fields["general.architecture"]
    writer = GGUFWriter(str(path), str(bytes(field.parts[-1]), "utf-8"))
    for name, f in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        kind = f.types[0]
        if kind == GGUFValueType.ARRAY:
            sub = f.types[1]
            if sub == GGUFValueType.STRING:
                values: list[object] = [str(bytes(f.parts[i]), "utf-8") for i in f.data]
            else:
                values = [f.parts[i].tolist()[0] for i in f.data]
            writer.add_key_value(name, values, kind, sub_type=sub)
        elif kind == GGUFValueType.STRING:
            writer.add_key_value(name, str(bytes(f.parts[-1]), "utf-8"), kind)
        else:
            writer.add_key_value(name, f.parts[-1].tolist()[0], kind)
    for name, value in extra.items():
        writer.add_uint32(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
