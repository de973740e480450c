"""What the token-level losses see of a sparse per-token target form: tensors, aligned with the
student's (..., V) logits by their leading axes (docs/token_distillation.md).

`SampledTokens` and `TopKTokens` are the torch side of `token_forms.SampledTargets` and
`TopKTargets`, field for field (ids widened to int64 for gather, the rest to float32); the leading
axes are (N,) for flat tokens or (B, L) for padded sequences, whatever the student's logits have.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from pipeline.cache.token_forms import SampledTargets, TopKTargets


class _TokenTensors:
    """Conversions shared by both forms: every array field becomes a tensor of the same name."""

    ids: torch.Tensor

    @classmethod
    def from_targets(cls, targets: SampledTargets | TopKTargets):
        """The tensors of numpy targets (leading axis N): ids int64, other arrays float32."""
        values = {}
        for field in fields(cls):
            value = getattr(targets, field.name)
            if isinstance(value, np.ndarray):
                value = torch.from_numpy(
                    np.ascontiguousarray(value, np.int64 if field.name == "ids" else np.float32)
                )
            values[field.name] = value
        return cls(**values)

    def _map(self, transform):
        tensors = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: transform(v) for k, v in tensors.items() if isinstance(v, torch.Tensor)})

    def reshape(self, *leading: int):
        """The same targets with leading axes `leading` (e.g. (N,) -> (B, L)); trailing axes kept."""
        old = self.ids.dim() - 1
        return self._map(lambda tensor: tensor.reshape(*leading, *tensor.shape[old:]))

    def to(self, device: torch.device | str):
        """The same targets on `device`."""
        return self._map(lambda tensor: tensor.to(device, non_blocking=True))


@dataclass(frozen=True)
class SampledTokens(_TokenTensors):
    """Sampled teacher targets of a batch of tokens (see token_forms.SampledTargets).

    ids: (..., S) int64 distinct drawn ids (padding slots hold any valid id).
    counts: (..., S) float32 draws of each id; 0 in padding slots; a real token's counts sum to `draws`.
    log_probs: (..., S) float32 teacher log p_T(id) at the sampling temperature `temperature`.
    log_normalizers: (..., R) float32 logsumexp(z / T_r) for T_r in `normalizer_temperatures`.
    log_probs and log_normalizers are None for a cache of ids + counts alone (`store_log_probs: false`).
    """

    ids: torch.Tensor
    counts: torch.Tensor
    log_probs: torch.Tensor | None
    log_normalizers: torch.Tensor | None
    draws: int
    temperature: float
    normalizer_temperatures: tuple[float, ...]
    vocab_size: int


@dataclass(frozen=True)
class TopKTokens(_TokenTensors):
    """Top-k teacher targets of a batch of tokens (see token_forms.TopKTargets).

    ids: (..., k) int64 ids by descending probability.
    log_probs: (..., k) float32 log p_T(id) at the form's `temperature`.
    log_normalizer: (...) float32 logsumexp(z / T) of the full row.
    log_tail_mass: (...) float32 log of the probability outside the k ids (-inf when k = V).
    """

    ids: torch.Tensor
    log_probs: torch.Tensor
    log_normalizer: torch.Tensor
    log_tail_mass: torch.Tensor
    temperature: float
    vocab_size: int
