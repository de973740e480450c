"""Training and held-out evaluation of a CausalLM on a tokenised corpus.

Training (nanoGPT's recipe, small): the train split is one token stream (each sentence
`<bos> ... <eos>`, in corpus order); each step draws `batch_size` windows of `context + 1` tokens
at seeded random offsets and minimises next-token cross-entropy with AdamW (weight decay on
matrices only), linear warm-up then cosine decay, gradient norm clipped at 1.

Evaluation: sentence by sentence (each from its own `<bos>`, right-padded, longest-first
batches), the mean negative log-likelihood per real target token, and the unigram baseline
(add-one smoothed, counted on the train stream's targets) on the same targets.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from safetensors.torch import load_file, save_file
from torch.nn import functional as F

from pipeline.config import StrictModel
from pipeline.io import atomic_write_json
from pipeline.text.lm import CausalLM, LMConfig, build_lm
from pipeline.text.lm_metrics import (
    nll_sum,
    shift_for_next_token,
    token_kl,
    top1_agreement,
    unigram_log_probs,
    unigram_perplexity,
)
from pipeline.text.tokenizer import TokenizedText


class LMTrainParams(StrictModel):
    """Optimisation of train_lm: steps, windows per step, peak learning rate, warm-up steps,
    weight decay, seed (weights and window draws), torch threads (None: torch's default)."""

    steps: int = Field(1500, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    seed: int = 0
    threads: int | None = Field(None, ge=1)


def _learning_rate(step: int, params: LMTrainParams) -> float:
    if step < params.warmup_steps:
        return params.learning_rate * (step + 1) / params.warmup_steps
    progress = (step - params.warmup_steps) / max(1, params.steps - params.warmup_steps)
    return params.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _optimizer(model: CausalLM, params: LMTrainParams) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": params.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=params.learning_rate, betas=(0.9, 0.95))


def train_lm(
    config: LMConfig, stream: np.ndarray, params: LMTrainParams, log_every: int = 0
) -> tuple[CausalLM, dict]:
    """Train a fresh CausalLM of `config` on `stream` ((T,) int64 token ids, T > context).

    Returns (the model in eval mode, a report {"steps", "tokens_seen", "wall_s", "final_loss",
    "losses": [(step, mean train loss over the last log_every steps), ...]}). log_every > 0 also
    prints those means.
    """
    stream_t = torch.as_tensor(np.asarray(stream, dtype=np.int64))
    window = config.context + 1
    if len(stream_t) <= window:
        raise ValueError(f"the token stream has {len(stream_t)} tokens; training needs more than {window}")
    previous_threads, previous_state = torch.get_num_threads(), torch.random.get_rng_state()
    if params.threads is not None:
        torch.set_num_threads(params.threads)
    try:
        torch.manual_seed(params.seed)  # dropout masks: a rerun trains the same weights
        model = build_lm(config, params.seed).train()
        optimizer = _optimizer(model, params)
        draws = np.random.default_rng(params.seed)
        losses, recent, start = [], [], time.perf_counter()
        for step in range(params.steps):
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(step, params)
            offsets = draws.integers(0, len(stream_t) - window, size=params.batch_size)
            batch = torch.stack([stream_t[o : o + window] for o in offsets])
            logits = model(batch[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, config.vocab_size), batch[:, 1:].reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            recent.append(float(loss.detach()))
            if log_every and (step + 1) % log_every == 0:
                losses.append((step + 1, float(np.mean(recent))))
                print(f"step {step + 1}/{params.steps}  train loss {losses[-1][1]:.3f}", flush=True)
                recent = []
        wall = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous_threads)
        torch.random.set_rng_state(previous_state)
    report = {
        "steps": params.steps,
        "tokens_seen": params.steps * params.batch_size * config.context,
        "wall_s": wall,
        "final_loss": float(loss.detach()),
        "losses": losses,
    }
    return model.eval(), report


@torch.no_grad()
def lm_logits(model: CausalLM, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """(B, L, V) float32 logits of `model` (eval) on a padded batch (B, L) int64."""
    return model(torch.as_tensor(input_ids), torch.as_tensor(attention_mask)).numpy()


def held_out_batches(tokenized: TokenizedText, batch_size: int = 32):
    """Yield (inputs, input_mask, targets, target_mask), each (B, L-1) int64, over every sentence
    of `tokenized`, longest first (each batch padded to its own longest sentence)."""
    order = np.argsort(-tokenized.lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        ids, mask = tokenized.padded(order[start : start + batch_size])
        yield shift_for_next_token(ids, mask)


def evaluate_lm(model: CausalLM, tokenized: TokenizedText, batch_size: int = 32) -> dict:
    """{"nll": mean nats per real target token, "perplexity": exp(nll), "tokens": count} of
    `model` on every sentence of `tokenized` (held-out split, <bos> ... <eos> each)."""
    total, count = 0.0, 0
    for inputs, input_mask, targets, target_mask in held_out_batches(tokenized, batch_size):
        batch_total, batch_count = nll_sum(lm_logits(model, inputs, input_mask), targets, target_mask)
        total, count = total + batch_total, count + batch_count
    return {"nll": total / count, "perplexity": math.exp(total / count), "tokens": count}


def compare_to_teacher(
    teacher: CausalLM, student: CausalLM, tokenized: TokenizedText, batch_size: int = 32
) -> dict:
    """{"top1_agreement", "kl", "tokens"} of `student` against `teacher` on every sentence of
    `tokenized`: per real target token, averaged over all of them (KL(teacher || student), nats)."""
    agree, kl, count = 0.0, 0.0, 0
    for inputs, input_mask, _, target_mask in held_out_batches(tokenized, batch_size):
        teacher_logits = lm_logits(teacher, inputs, input_mask)
        student_logits = lm_logits(student, inputs, input_mask)
        tokens = int(target_mask.sum())
        agree += top1_agreement(teacher_logits, student_logits, target_mask) * tokens
        kl += token_kl(teacher_logits, student_logits, target_mask) * tokens
        count += tokens
    return {"top1_agreement": agree / count, "kl": kl / count, "tokens": count}


def unigram_baseline(train: TokenizedText, held_out: TokenizedText, vocab_size: int) -> dict:
    """{"perplexity", "tokens"} of the add-one unigram model of `train`'s targets (every token but
    the first of each sentence) on `held_out`'s targets: the figure evaluate_lm must beat."""
    targets = np.concatenate([train.row(i)[1:] for i in range(len(train))])
    log_probs = unigram_log_probs(targets, vocab_size)
    ids, mask = held_out.padded()
    _, _, held_targets, held_mask = shift_for_next_token(ids, mask)
    return {
        "perplexity": unigram_perplexity(log_probs, held_targets, held_mask),
        "tokens": int(held_mask.sum()),
    }


def save_lm(model: CausalLM, directory: str | Path) -> Path:
    """Write `model.safetensors` and `config.json` (the LMConfig) under `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "head.weight"}  # tied
    save_file(state, str(directory / "model.safetensors"))
    atomic_write_json(directory / "config.json", model.config.model_dump(mode="json"))
    return directory


def load_lm(directory: str | Path) -> CausalLM:
    """The CausalLM saved by `save_lm` under `directory`, in eval mode."""
    directory = Path(directory)
    model = CausalLM(LMConfig(**json.loads((directory / "config.json").read_text())))
    state = load_file(str(directory / "model.safetensors"))
    state["head.weight"] = state["token_embedding.weight"]  # tied: stored once
    model.load_state_dict(state)
    return model.eval()
