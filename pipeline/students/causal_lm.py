"""A causal language model as a student: next-token logits at every position, for `token_kd`.

`arch: {kind: causal_lm, vocab_size: V, layers: 2, width: 128, heads: 2, context: 128}` builds the
GPT-style `CausalLM` of pipeline/text/lm.py (the LM teacher's family, smaller) and reads named fields
(`students.<s>.inputs: [input_ids, attention_mask]`): `input_ids` (B, L) integer token ids, padded
per batch, and `attention_mask` (B, L) (non-zero on real tokens). Its logits are per token,
(B, L, V): position t's row predicts token t + 1, as the LM teacher's cached logits do, so
`token_kd` compares them position by position under the cache's token mask. Tap: `hidden`
(B, L, width), the final hidden states, zero at padded positions.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from pipeline.config import StrictModel, Width
from pipeline.students.output import StudentOutput
from pipeline.text.lm import LMConfig, build_lm


class CausalLMParams(StrictModel):
    """`arch: {kind: causal_lm, vocab_size: V, ...}` (see the module docstring). `vocab_size` must
    be the teacher's (token_kd refuses two sizes); `context` the longest sequence it reads."""

    kind: Literal["causal_lm"] = "causal_lm"
    vocab_size: int = Field(ge=2, description="token ids are in [0, vocab_size): the teacher's tokenizer")
    layers: int = Field(default=2, ge=1)
    width: Width = 128
    heads: int = Field(default=2, ge=1)
    context: int = Field(default=128, ge=2, description="longest sequence (learned positions)")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> CausalLMParams:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not a multiple of heads {self.heads}")
        return self

    def lm_config(self) -> LMConfig:
        """The CausalLM's LMConfig of these params."""
        return LMConfig(
            vocab_size=self.vocab_size,
            context=self.context,
            layers=self.layers,
            width=self.width,
            heads=self.heads,
            dropout=self.dropout,
        )


class CausalLMStudent(nn.Module):
    """(B, L) token ids (+ (B, L) mask) -> StudentOutput(logits (B, L, V), {hidden (B, L, width)})."""

    input_kinds = {"input_ids": ("iu", 1), "attention_mask": ("biu", 1)}
    """argument -> (numpy dtype kinds, per-row rank) it takes: checked against the fields up front."""

    def __init__(self, params: CausalLMParams, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        # weights come from torch's global generator, which the training seed has set
        self.lm = build_lm(params.lm_config(), seed=int(torch.initial_seed()) % 2**32)
        # the output layer is the token embedding (tied); kept once, so the saved weights (safetensors
        # refuses shared tensors) and the ONNX file hold it once
        self.lm.head = None
        self.tap_shapes = {"hidden": (None, params.width)}
        self.max_sequence = params.context  # the ONNX export's bound on the sequence axis

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> StudentOutput:
        """input_ids: (B, L) int; attention_mask: (B, L) bool/int, non-zero on real tokens, or None."""
        mask = None if attention_mask is None else (attention_mask != 0).long()
        hidden = self.lm.hidden_states(input_ids.long(), mask)
        if mask is not None:
            hidden = hidden * mask.unsqueeze(-1).to(hidden.dtype)
        logits = nn.functional.linear(hidden, self.lm.token_embedding.weight)
        return StudentOutput(logits, {"hidden": hidden})
