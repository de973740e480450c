"""The `cache:` section of params.yaml: store, dtypes, chunking, sparse form, reader threshold."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from pipeline.cache.store import STORES
from pipeline.config import ParamsError, StrictModel, validate_section
from pipeline.transforms.params import ViewsParams

StoreName = Literal[tuple(STORES)]  # type: ignore[valid-type]
"""A key of `pipeline.cache.store.STORES`: a new store is valid here once it is in the table."""


class TokenLogitsParams(StrictModel):
    """How per-token teacher logits (an LM's (batch, sequence, V)) are stored
    (docs/token_distillation.md, "The forms in the cache").

    form: "dense" (V logits a token, `logits_dtype`), "sampled" (`draws` draws from softmax(z / T)
        kept as distinct ids + counts + the teacher's log-probs, unbiased; Anshumann et al. 2025,
        arXiv:2503.16870) or "top_k" (the k most likely ids + exact tail mass, biased; the report
        gives its KL error).
    draws / seed: draws per token and the seed of the sampled form (each teacher batch draws from
        `np.random.default_rng([seed, first row])`). normalizer_temperatures: further T whose full-row
        logsumexp is stored (4 B a token each) so a student at that T gets exact weights.
    temperature: the T of the draws / of the top-k log-probs. k: ids kept by top-k.
    log_prob_dtype: stored dtype of the teacher's log-probs. kl_tokens: top-k only, tokens per
        teacher batch whose KL error against the dense row the build measures for the report.
    store_log_probs: sampled only; false stores ids + counts alone (3 B an id at V <= 65536, as the
        paper), no log-probs and no normaliser: the `counts` estimator at the sampling temperature
        needs neither (its loss is then the cross-entropy to the draws, the KL plus the teacher's
        entropy, with the same gradient); inclusion weights and other temperatures need them.
    """

    form: Literal["dense", "sampled", "top_k"] = "dense"
    draws: int = Field(32, ge=1, le=2**16 - 1)
    seed: int = Field(0, ge=0)
    normalizer_temperatures: list[float] = Field(default_factory=list)
    temperature: float = Field(1.0, gt=0)
    k: int = Field(16, ge=1)
    log_prob_dtype: Literal["float16", "float32"] = "float16"
    kl_tokens: int = Field(64, ge=0)
    store_log_probs: bool = True

    @model_validator(mode="after")
    def _normalizers_need_log_probs(self):
        if not self.store_log_probs and self.normalizer_temperatures:
            raise ValueError(
                "normalizer_temperatures need the stored log-probs (store_log_probs: true); "
                "without them only the sampling temperature can be used: remove normalizer_temperatures"
            )
        return self


class CacheParams(StrictModel):
    """How the `cache` stage writes the teacher cache (docs/cache_format.md).

    store: "zarr" (default; sharded, zstd + crc32c) or "parquet" (one file per shard): a key of
        `pipeline.cache.store.STORES`.
    logits_dtype / features_dtype: stored dtype of the raw logits / of every feature tap.
    batch_size: rows per teacher forward pass (ONNX Runtime).
    rows_per_chunk: inner chunk (Zarr) / row group (Parquet): the unit read independently.
    chunks_per_shard: chunks per shard; a shard is the unit written (and resumed) whole.
    zstd_level: compression level of every array.
    sparse_top_k: also store the top-k form (values, indices, full-row logsumexp); never the
        default, and the report always gives its KL error against the dense logits.
    kl_sample_rows: rows whose fp32 logits are kept during the run to measure the stored
        dtype's KL error (evenly spaced over the cache).
    in_memory_max_mb: the reader loads a cache up to this size into RAM (fast random batches).
    views: {count: K, seed, transforms: [...]}: also cache K augmented views of every sample a
        student may train on (train and unlabelled splits), each view's drawn params stored beside
        the teacher's outputs on it (docs/transforms.md, "Views in the cache"); null = no views,
        today's single-view cache, byte for byte.
    token_logits: how per-token logits are stored (`TokenLogitsParams`); null = dense.
    The teacher's provider and threads come from the `teacher:` section.
    """

    store: StoreName = "zarr"
    logits_dtype: Literal["float16", "float32"] = "float16"
    features_dtype: Literal["float16", "float32"] = "float16"
    batch_size: int = Field(256, ge=1)
    rows_per_chunk: int = Field(256, ge=1)
    chunks_per_shard: int = Field(8, ge=1)
    zstd_level: int = Field(3, ge=-7, le=22)
    sparse_top_k: int | None = Field(None, ge=1)
    kl_sample_rows: int = Field(20000, ge=1)
    in_memory_max_mb: int = Field(8192, ge=0)
    views: ViewsParams | None = None
    token_logits: TokenLogitsParams | None = None

    @property
    def rows_per_shard(self) -> int:
        """Rows in one shard = rows_per_chunk * chunks_per_shard."""
        return self.rows_per_chunk * self.chunks_per_shard


def validate_cache_variants(data: Any) -> dict[str, CacheParams]:
    """The `caches:` section: name -> a whole `cache:` section, each a cache of the same teacher
    in another form (`distillery cache --variant <name>`, scenarios/lm). ParamsError names the key."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"caches: expected a mapping of name -> cache settings, got {type(data).__name__}")
    return {str(name): validate_section(CacheParams, value, f"caches.{name}") for name, value in data.items()}
