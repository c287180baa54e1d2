"""Importance matrices: per input column, the mean of x² over calibration text, per weight matrix.

llama.cpp's quantizers weigh each column's rounding error by this (``quant_weights``). The
statistics are collected from llama.cpp's own forward pass: the context's eval callback
(``cb_eval``) is asked about every graph node; for each matrix multiplication whose first operand
is a model weight, the second operand (the activations entering that weight) is read back and
its squared columns summed. llama-cpp-python has no binding for this (llama.cpp ships it only as
the ``llama-imatrix`` program), so the callback and a mirror of ``struct ggml_tensor`` (from the
pinned version's ``ggml.h``) are written here.

Files are written in llama.cpp's GGUF imatrix format (``<weight>.in_sum2`` and
``<weight>.counts`` tensors, ``general.type = imatrix``), which ``llama-quantize`` reads too.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tandem.errors import ConfigError
from tandem.optimize.metrics import chunks

GGML_MAX_DIMS = 4
GGML_MAX_SRC = 10
GGML_MAX_OP_PARAMS = 64
GGML_MAX_NAME = 64
GGML_TYPE_F32 = 0


class GgmlTensor(ctypes.Structure):
    """``struct ggml_tensor`` of the pinned llama.cpp (ggml 0.25)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
        ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * GGML_MAX_SRC),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * GGML_MAX_NAME),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


def _ggml() -> Any:
    from llama_cpp._ggml import libggml

    libggml.ggml_op_name.argtypes = [ctypes.c_int]
    libggml.ggml_op_name.restype = ctypes.c_char_p
    libggml.ggml_backend_tensor_get.argtypes = [
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t,
    ]
    libggml.ggml_backend_tensor_get.restype = None
    return libggml


def _op_code(lib: Any, name: bytes) -> int:
    for code in range(256):
        if lib.ggml_op_name(code) == name:
            return code
    raise RuntimeError(f"ggml has no op {name!r}")


@dataclass
class Imatrix:
    """Sum of squared activations per input column and the number of rows summed, per weight."""

    sums: dict[str, npt.NDArray[np.float64]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    # Per block: [sum over tokens of the angular distance input→output, tokens]. Not saved.
    block_distance: dict[int, list[float]] = field(default_factory=dict)

    def add_block_distance(self, block: int, x_in: npt.NDArray[np.float32],
                           x_out: npt.NDArray[np.float32]) -> None:
        a, b = x_in.astype(np.float64), x_out.astype(np.float64)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
        angle = np.arccos(np.clip(cos, -1.0, 1.0)) / np.pi
        acc = self.block_distance.setdefault(block, [0.0, 0.0])
        acc[0] += float(angle.sum())
        acc[1] += len(angle)

    def block_influence(self) -> dict[int, float]:
        """Mean angular distance (0..1) between each block's input and output."""
        return {b: s / n for b, (s, n) in sorted(self.block_distance.items()) if n}

    def add(self, name: str, x: npt.NDArray[np.float32]) -> None:
        sq = np.square(x, dtype=np.float64).sum(axis=0)
        if name in self.sums:
            if self.sums[name].shape != sq.shape:
                raise ValueError(
                    f"{name}: width changed from {self.sums[name].shape} to {sq.shape}"
                )
            self.sums[name] += sq
            self.counts[name] += x.shape[0]
        else:
            self.sums[name] = sq
            self.counts[name] = x.shape[0]

    def means(self) -> dict[str, npt.NDArray[np.float32]]:
        """What the quantizer takes: the mean of x² per column."""
        return {k: (v / max(self.counts[k], 1)).astype(np.float32) for k, v in self.sums.items()}

    def save(self, path: Path) -> None:
        import gguf

        writer = gguf.GGUFWriter(str(path), arch="", endianess=gguf.GGUFEndian.LITTLE)
        # An imatrix file has no architecture: drop the key the writer adds by default.
        writer.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)
        writer.add_type(gguf.GGUFType.IMATRIX)
        writer.add_array(gguf.Keys.IMatrix.DATASETS, self.datasets or ["unknown"])
        writer.add_uint32(gguf.Keys.IMatrix.CHUNK_COUNT, self.chunk_count)
        writer.add_uint32(gguf.Keys.IMatrix.CHUNK_SIZE, self.chunk_size)
        for name in sorted(self.sums):
            writer.add_tensor(f"{name}.in_sum2", self.sums[name].astype(np.float32)[None, :])
            writer.add_tensor(f"{name}.counts", np.array([[self.counts[name]]], np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    @classmethod
    def load(cls, path: Path) -> Imatrix:
        """Read a GGUF imatrix file (this module's or ``llama-imatrix``'s)."""
        import gguf

        try:
            reader = gguf.GGUFReader(str(path))
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{path} is not a GGUF imatrix file ({exc}); make one with `tandem imatrix`.",
                param="imatrix",
            ) from exc
        out = cls()
        tensors = {t.name: t for t in reader.tensors}
        for name, t in tensors.items():
            if not name.endswith(".in_sum2"):
                continue
            weight = name.removesuffix(".in_sum2")
            counts = tensors.get(f"{weight}.counts")
            if counts is None:
                raise ConfigError(f"{path}: {weight} has sums but no counts.", param="imatrix")
            sums = np.asarray(t.data, np.float64)
            n = np.asarray(counts.data, np.float64).reshape(-1)
            if sums.ndim == 2 and sums.shape[0] > 1:
                raise ConfigError(f"{path}: {weight} holds per-expert data (not supported).")
            out.sums[weight] = sums.reshape(-1)
            out.counts[weight] = int(n[0])
        if not out.sums:
            raise ConfigError(f"{path} holds no importance data.", param="imatrix")
        field_ = reader.fields.get(gguf.Keys.IMatrix.CHUNK_COUNT)
        if field_ is not None:
            out.chunk_count = int(field_.contents())
        datasets = reader.fields.get(gguf.Keys.IMatrix.DATASETS)
        if datasets is not None:
            out.datasets = [str(d) for d in datasets.contents()]
        return out


class _Collector:
    """The eval callback: observe weight matmuls and add their inputs' squares.

    It also watches each block's residual stream (llama.cpp names the block input ``embd`` for
    the first block and each block's output ``l_out-N``) and accumulates the angular distance
    between a block's input and output per token: ShortGPT's block influence, used by pruning.
    """

    def __init__(self, target: Imatrix):
        self.target = target
        self.lib = _ggml()
        self.mul_mat = _op_code(self.lib, b"MUL_MAT")
        self.buf = np.empty(0, np.float32)
        self.error: BaseException | None = None
        self.c_callback = _callback_type()(self._callback)
        self._prev: npt.NDArray[np.float32] | None = None

    def _weight_of(self, t: GgmlTensor) -> str | None:
        if t.op != self.mul_mat or not t.src[0] or not t.src[1]:
            return None
        src0 = GgmlTensor.from_address(t.src[0])
        name = src0.name.decode("utf-8", errors="replace")
        return name if name.endswith(".weight") else None

    def _read(self, address: int, name: str) -> npt.NDArray[np.float32]:
        x = GgmlTensor.from_address(address)
        width = int(x.ne[0])
        rows = int(x.ne[1] * x.ne[2] * x.ne[3])
        if x.nb[1] != width * 4:
            raise RuntimeError(f"{name}: non-contiguous activations are not supported")
        if self.buf.size < width * rows:
            self.buf = np.empty(width * rows, np.float32)
        self.lib.ggml_backend_tensor_get(address, self.buf.ctypes.data, 0, width * rows * 4)
        return self.buf[: width * rows].reshape(rows, width)

    def _residual(self, t: GgmlTensor) -> int | None:
        """-1 for the embeddings entering block 0, N for block N's output, else None."""
        if t.type != GGML_TYPE_F32:
            return None
        name = t.name.decode("utf-8", errors="replace")
        if name == "embd":
            return -1
        if name.startswith("l_out-") and name[6:].isdigit():
            return int(name[6:])
        return None

    def _callback(self, tensor: int, ask: bool, user_data: int) -> bool:
        try:
            t = GgmlTensor.from_address(tensor)
            name = self._weight_of(t)
            block = None if name is not None else self._residual(t)
            if name is None and block is None:
                return not ask
            if ask:
                return True
            if block is not None:
                h = self._read(tensor, f"block {block}").copy()
                if block >= 0 and self._prev is not None and self._prev.shape == h.shape:
                    self.target.add_block_distance(block, self._prev, h)
                self._prev = h
                return True
            assert name is not None
            if GgmlTensor.from_address(t.src[1]).type != GGML_TYPE_F32:
                return True
            self.target.add(name, self._read(t.src[1], name))
            return True
        except BaseException as exc:  # never unwind through C: remember and stop the graph
            self.error = exc
            return False


def _callback_type() -> Any:
    import llama_cpp

    return llama_cpp.ggml_backend_sched_eval_callback


def compute_imatrix(
    model: Path,
    text: str,
    *,
    dataset: str,
    n_ctx: int = 512,
    limit: int | None = None,
    n_threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Imatrix, dict[str, float]]:
    """Collect the importance matrix of ``model`` over ``text``; also returns its perplexity."""
    from tandem.scoring import quiet_llama

    with quiet_llama():
        return _collect(model, text, dataset, n_ctx, limit, n_threads, progress)


def _collect(
    model: Path,
    text: str,
    dataset: str,
    n_ctx: int,
    limit: int | None,
    n_threads: int | None,
    progress: Callable[[int, int], None] | None,
) -> tuple[Imatrix, dict[str, float]]:
    import llama_cpp

    from tandem.optimize.metrics import StreamStats
    from tandem.scoring import log_softmax

    result = Imatrix(datasets=[dataset], chunk_size=n_ctx)
    collector = _Collector(result)
    mparams = llama_cpp.llama_model_default_params()
    lmodel = llama_cpp.llama_model_load_from_file(str(model).encode(), mparams)
    if not lmodel:
        raise ConfigError(f"llama.cpp could not load {model}; is it a GGUF model?")
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = n_ctx
    cparams.n_threads = cparams.n_threads_batch = n_threads or os.cpu_count() or 1
    cparams.cb_eval = collector.c_callback
    cparams.cb_eval_user_data = None
    ctx = llama_cpp.llama_init_from_model(lmodel, cparams)
    if not ctx:
        llama_cpp.llama_model_free(lmodel)
        raise ConfigError(f"llama.cpp could not create a context for {model}.")
    try:
        vocab = llama_cpp.llama_model_get_vocab(lmodel)
        n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
        tokens = _tokenize(llama_cpp, vocab, text, add_bos)
        bos = int(llama_cpp.llama_vocab_bos(vocab)) if add_bos else None
        todo = chunks(tokens, n_ctx, bos=bos, limit=limit)
        if not todo:
            raise ConfigError(f"The calibration text has fewer than {n_ctx} tokens.")
        stats = StreamStats()
        batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)
        try:
            for i, chunk in enumerate(todo):
                llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
                batch.n_tokens = len(chunk)
                for j, tok in enumerate(chunk):
                    batch.token[j] = tok
                    batch.pos[j] = j
                    batch.n_seq_id[j] = 1
                    batch.seq_id[j][0] = 0
                    batch.logits[j] = True
                rc = llama_cpp.llama_decode(ctx, batch)
                if collector.error is not None:
                    raise collector.error
                if rc != 0:
                    raise RuntimeError(f"llama_decode failed with {rc}")
                logits = np.ctypeslib.as_array(
                    llama_cpp.llama_get_logits(ctx), shape=(len(chunk), n_vocab)
                )
                first = n_ctx // 2
                stats.add(log_softmax(logits[first : n_ctx - 1]), chunk[first + 1 :], None)
                result.chunk_count += 1
                if progress is not None:
                    progress(i + 1, len(todo))
        finally:
            llama_cpp.llama_batch_free(batch)
    finally:
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(lmodel)
    if not result.sums:
        raise ConfigError(f"No weight matrix multiplications were observed in {model}.")
    return result, {k: float(v) for k, v in stats.perplexity().items()}


def _tokenize(llama_cpp: Any, vocab: Any, text: str, add_bos: bool) -> list[int]:
    data = text.encode("utf-8")
    n_max = len(data) + 16
    buf = (llama_cpp.llama_token * n_max)()
    n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, n_max, add_bos, False)
    if n < 0:
        raise RuntimeError("tokenization overflow")
    return list(buf[:n])
