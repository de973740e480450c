"""A small GPT-style causal language model (after Karpathy's nanoGPT; Radford et al. 2019,
"Language Models are Unsupervised Multitask Learners"): the LM teacher trained here and, at a
smaller size, the student of the same family.

Pre-LayerNorm blocks (causal self-attention, then a 4x GELU MLP, each a residual branch), learned
absolute positions, the output layer tied to the token embedding. Attention is written out (no
fused kernel) so it reads like the paper and exports to plain ONNX ops. `attention_mask` (1 = real
token) hides padded keys; positions count real tokens only, so left and right padding give a real
token the same logits as no padding. Every query may attend to itself, so no softmax row is empty.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from pipeline.config import StrictModel
from pipeline.errors import DistilleryError


class SequenceTooLongError(DistilleryError):
    """A batch longer than the model's context."""


class LMConfig(StrictModel):
    """Size of a CausalLM: vocabulary, context (longest sequence), layers, width (model dim),
    heads (width must divide by heads) and dropout (training only)."""

    vocab_size: int = Field(ge=2)
    context: int = Field(128, ge=2)
    layers: int = Field(4, ge=1)
    width: int = Field(256, ge=8)
    heads: int = Field(4, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)

    def model_post_init(self, _context) -> None:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} does not divide into {self.heads} heads")


def teacher_config(vocab_size: int) -> LMConfig:
    """The LM teacher: 4 layers, 192 wide, 4 heads, context 128: sized so 300 steps of 16 windows
    train in minutes on 2 CPU cores (docs/text.md has its figures)."""
    return LMConfig(vocab_size=vocab_size, context=128, layers=4, width=192, heads=4)


def student_config(vocab_size: int) -> LMConfig:
    """The LM student of the same family: 2 layers, 128 wide, 2 heads, context 128."""
    return LMConfig(vocab_size=vocab_size, context=128, layers=2, width=128, heads=2)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with an additive mask: (B, L, D) -> (B, L, D)."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.qkv = nn.Linear(config.width, 3 * config.width)
        self.proj = nn.Linear(config.width, config.width)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x (B, L, D) float32; bias (B, 1, L, L) float32, 0 where allowed and -inf elsewhere."""
        batch, length, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        shape = (batch, length, self.heads, width // self.heads)
        q, k, v = (t.reshape(shape).transpose(1, 2) for t in (q, k, v))  # (B, H, L, Dh)
        scores = q @ k.transpose(-2, -1) / math.sqrt(width // self.heads) + bias
        weights = self.dropout(torch.softmax(scores, dim=-1))
        return self.proj((weights @ v).transpose(1, 2).reshape(batch, length, width))


class Block(nn.Module):
    """x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(config.width)
        self.attn = CausalSelfAttention(config)
        self.ln_mlp = nn.LayerNorm(config.width)
        self.mlp = nn.Sequential(
            nn.Linear(config.width, 4 * config.width),
            nn.GELU(),
            nn.Linear(4 * config.width, config.width),
            nn.Dropout(config.dropout),
        )

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), bias (B, 1, L, L) -> (B, L, D)."""
        x = x + self.attn(self.ln_attn(x), bias)
        return x + self.mlp(self.ln_mlp(x))


class CausalLM(nn.Module):
    """GPT-style decoder. forward(input_ids (B, L) int64, attention_mask (B, L) int64 or None)
    -> logits (B, L, V) float32: position t's logits predict token t+1 from tokens <= t."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.position_embedding = nn.Embedding(config.context, config.width)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.ln_final = nn.LayerNorm(config.width)
        self.head = nn.Linear(config.width, config.vocab_size, bias=False)
        self.head.weight = self.token_embedding.weight  # tied (Press & Wolf 2017)
        self.apply(self._init)
        for block in self.blocks:  # GPT-2: residual projections scaled down with depth
            for layer in (block.attn.proj, block.mlp[2]):
                nn.init.normal_(layer.weight, std=0.02 / math.sqrt(2 * config.layers))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The final hidden states (B, L, D) float32, after the last LayerNorm."""
        batch, length = input_ids.shape
        if length > self.config.context:
            raise SequenceTooLongError(
                f"sequence of {length} tokens is longer than the model's context {self.config.context}; "
                f"tokenize with max_length <= {self.config.context}"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        real = attention_mask > 0
        positions = (real.long().cumsum(dim=1) - 1).clamp(min=0)
        index = torch.arange(length, device=input_ids.device)
        allowed = (index[None, :] <= index[:, None])[None, None] & real[:, None, None, :]  # (B, 1, L, L)
        allowed = allowed | (index[None, :] == index[:, None])[None, None]
        bias = torch.zeros(allowed.shape, dtype=torch.float32, device=input_ids.device)
        bias = bias.masked_fill(~allowed, float("-inf"))
        x = self.dropout(self.token_embedding(input_ids) + self.position_embedding(positions))
        for block in self.blocks:
            x = block(x, bias)
        return self.ln_final(x)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, L) int64 (L <= context), attention_mask (B, L) int64 (1 real, 0 padding)
        -> logits (B, L, V) float32."""
        return self.head(self.hidden_states(input_ids, attention_mask))


def parameter_count(model: nn.Module) -> int:
    """Number of distinct parameters (a tied weight counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def build_lm(config: LMConfig, seed: int = 0) -> CausalLM:
    """A CausalLM of `config` with weights initialised from `seed` (the same on every run)."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return CausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
