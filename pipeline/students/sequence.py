"""Sequence students over token ids: embedding (+ a tiny Transformer encoder) + masked mean pool.

`arch: {kind: tokens, vocab_size: 30522, width: 64, layers: 0}` reads named fields
(`students.<s>.inputs: [input_ids, attention_mask]`): `input_ids` (B, L) integer token ids, padded
per batch, and optionally `attention_mask` (B, L) (non-zero on real tokens; without it every
position is real). Taps: `tokens` (B, L, width), zero at padded positions, and `embed` (B, width),
the mean of the real tokens. `layers: 0` is a bag of embeddings (fast, exact under padding);
`layers > 0` adds learned positions and that many pre-norm Transformer encoder layers (Vaswani et al.
2017, "Attention Is All You Need", arXiv:1706.03762) with padded keys masked out. `embed_width: E`
adds a linear map of the pooled mean to E wide as the `embed` tap (a sentence encoder's student
that emits the teacher's embedding width, e.g. 384 for all-MiniLM-L6-v2, so its embeddings replace
the teacher's and mean cosine compares them directly: FitNets' regressor kept in the student).
`init_embeddings: data/teacher/model.onnx` starts the embedding table from the teacher ONNX's word
embeddings, narrowed by PCA (pipeline/students/token_init.py); the file is read whenever the
student is built, before trained weights replace the table.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from pipeline.config import StrictModel, Width
from pipeline.students.output import StudentOutput


class TokenParams(StrictModel):
    """`arch: {kind: tokens, vocab_size: V, width: D, layers: 0}` (see the module docstring)."""

    kind: Literal["tokens"] = "tokens"
    vocab_size: int = Field(ge=1, description="token ids are in [0, vocab_size)")
    width: Width = 64
    layers: int = Field(default=0, ge=0, description="Transformer encoder layers; 0: embedding bag")
    heads: int = Field(default=2, ge=1)
    max_length: int = Field(default=512, ge=1, description="longest sequence (positions) when layers > 0")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    embed_width: Width | None = Field(default=None, description="the `embed` tap's width; null: width")
    init_embeddings: str | None = Field(
        default=None, description="teacher ONNX whose (vocab_size, E) word embeddings start the table (PCA)"
    )

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TokenParams:
        if self.layers and self.width % self.heads:
            raise ValueError(f"width {self.width} is not a multiple of heads {self.heads}")
        return self


class TokenStudent(nn.Module):
    """(B, L) token ids (+ (B, L) mask) -> StudentOutput(logits (B, C), {tokens, embed})."""

    input_kinds = {"input_ids": ("iu", 1), "attention_mask": ("biu", 1)}
    """argument -> (numpy dtype kinds, per-row rank) it takes: checked against the fields up front."""

    def __init__(self, params: TokenParams, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(params.vocab_size, params.width)
        if params.init_embeddings is not None:
            from pipeline.students.token_init import principal_rows, teacher_token_embeddings

            table = teacher_token_embeddings(params.init_embeddings, params.vocab_size)
            with torch.no_grad():
                self.embedding.weight.copy_(torch.from_numpy(principal_rows(table, params.width)))
        self.positions = nn.Embedding(params.max_length, params.width) if params.layers else None
        self.encoder = (
            nn.TransformerEncoder(
                nn.TransformerEncoderLayer(
                    params.width,
                    params.heads,
                    dim_feedforward=2 * params.width,
                    dropout=params.dropout,
                    batch_first=True,
                    norm_first=True,
                ),
                params.layers,
                enable_nested_tensor=False,
            )
            if params.layers
            else None
        )
        embed_width = params.embed_width or params.width
        self.head = nn.Linear(params.width, embed_width) if params.embed_width else None
        self.classifier = nn.Linear(embed_width, num_classes)
        self.tap_shapes = {"tokens": (None, params.width), "embed": (embed_width,)}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> StudentOutput:
        """input_ids: (B, L) int; attention_mask: (B, L) bool/int, non-zero on real tokens, or None."""
        real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask != 0
        hidden = self.embedding(input_ids)
        if self.encoder is not None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            hidden = self.encoder(hidden + self.positions(positions)[None], src_key_padding_mask=~real)
        weight = real.unsqueeze(-1).to(hidden.dtype)
        hidden = hidden * weight
        pooled = hidden.sum(1) / weight.sum(1).clamp(min=1.0)
        if self.head is not None:
            pooled = self.head(pooled)
        return StudentOutput(self.classifier(pooled), {"tokens": hidden, "embed": pooled})
