"""The offline English corpus: sentences of Python's own documentation, deduplicated and split by
document, with stable ids and a fingerprint.

Order of work (docs/text.md): documents from `sources` (topics first, then docstrings in module
order; a repeated document id keeps its first text), prose sentences from `clean`, then exact
deduplication in that order (a sentence whose `dedup_key` was already seen anywhere in the corpus
is dropped, so no sentence is in two splits), then the split of each *document* by a seeded hash of
its id (`document_split`), so every sentence of a document lands in the same split and a
document's split does not depend on which other documents exist. A sentence's id is
`<document id>#<k>`, k its position among the document's prose sentences before deduplication.

The corpus is a function of the Python version (and of which stdlib files the installation has);
`Corpus.python_version` and `Corpus.fingerprint` record both.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field

from pipeline.config import StrictModel
from pipeline.errors import DistilleryError
from pipeline.io import atomic_write_json, atomic_write_text
from pipeline.text.clean import dedup_key, document_sentences
from pipeline.text.sources import RawDocument, stdlib_documents, topic_documents

CORPUS_FORMAT = 1
SPLIT_NAMES = ("train", "val", "test")
SOURCES = ("topics", "docstrings")


class CorpusError(DistilleryError):
    """A corpus file that is missing, of another format, or altered since it was written."""


class CorpusParams(StrictModel):
    """How the corpus is cut: the seed of the document split, the val and test fractions of
    documents, and the sources used (`topics`, `docstrings`)."""

    seed: int = 0
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    sources: tuple[str, ...] = SOURCES

    def model_post_init(self, _context) -> None:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction must be < 1 (got {self.val_fraction} + {self.test_fraction})"
            )
        unknown = sorted(set(self.sources) - set(SOURCES))
        if unknown or not self.sources:
            raise ValueError(f"sources: choose from {list(SOURCES)}, got {list(self.sources)}")


@dataclass(frozen=True)
class Corpus:
    """Sentences in corpus order, row-aligned tuples of str: `ids` (`topic:assert#3`), `documents`
    (`topic:assert`), `splits` (one of SPLIT_NAMES), `texts`. `stats` counts what cleaning and
    deduplication dropped; `files` lists the stdlib sources read."""

    ids: tuple[str, ...]
    documents: tuple[str, ...]
    splits: tuple[str, ...]
    texts: tuple[str, ...]
    params: CorpusParams
    python_version: str
    fingerprint: str
    stats: dict = field(default_factory=dict)

    def texts_of(self, split: str) -> list[str]:
        """The sentences of `split` ("train", "val" or "test"), in corpus order."""
        _check_split(split)
        return [text for text, s in zip(self.texts, self.splits) if s == split]

    def ids_of(self, split: str) -> list[str]:
        """The sentence ids of `split`, aligned with `texts_of(split)`."""
        _check_split(split)
        return [sid for sid, s in zip(self.ids, self.splits) if s == split]

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {"documents", "sentences", "words", "characters"}}; words are whitespace-separated."""
        result = {name: {"documents": 0, "sentences": 0, "words": 0, "characters": 0} for name in SPLIT_NAMES}
        seen: set[str] = set()
        for document, split, text in zip(self.documents, self.splits, self.texts):
            row = result[split]
            if document not in seen:
                seen.add(document)
                row["documents"] += 1
            row["sentences"] += 1
            row["words"] += len(text.split())
            row["characters"] += len(text)
        return result


def _check_split(split: str) -> None:
    if split not in SPLIT_NAMES:
        raise CorpusError(f"split {split!r} does not exist; choose one of {list(SPLIT_NAMES)}")


def document_split(document_id: str, params: CorpusParams) -> str:
    """The split of one document: u = blake2b(seed, id) as a fraction of 2^64; test when
    u < test_fraction, val when u < test_fraction + val_fraction, else train."""
    digest = hashlib.blake2b(f"{params.seed}\0{document_id}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2.0**64
    if u < params.test_fraction:
        return "test"
    return "val" if u < params.test_fraction + params.val_fraction else "train"


def build_corpus(
    params: CorpusParams | None = None, documents: Sequence[RawDocument] | None = None
) -> Corpus:
    """Clean, deduplicate and split `documents` (default: the topics and stdlib docstrings named by
    `params.sources`) into a Corpus. Deterministic for one Python installation."""
    params = CorpusParams() if params is None else params
    files: list[str] = []
    if documents is None:
        documents = []
        if "topics" in params.sources:
            documents.extend(topic_documents())
        if "docstrings" in params.sources:
            docstrings, files = stdlib_documents()
            documents.extend(docstrings)
    ids, docs, splits, texts = [], [], [], []
    seen_documents: set[str] = set()
    seen_sentences: set[str] = set()
    stats = {"documents_read": 0, "sentences_prose": 0, "sentences_duplicate": 0, "stdlib_files": len(files)}
    for document in documents:
        if document.id in seen_documents:
            continue
        seen_documents.add(document.id)
        stats["documents_read"] += 1
        split = document_split(document.id, params)
        for position, sentence in enumerate(document_sentences(document.text)):
            stats["sentences_prose"] += 1
            key = dedup_key(sentence)
            if key in seen_sentences:
                stats["sentences_duplicate"] += 1
                continue
            seen_sentences.add(key)
            ids.append(f"{document.id}#{position}")
            docs.append(document.id)
            splits.append(split)
            texts.append(sentence)
    python_version = f"{platform.python_implementation()} {platform.python_version()}"
    fingerprint = _fingerprint(ids, splits, texts, files)
    return Corpus(
        tuple(ids), tuple(docs), tuple(splits), tuple(texts), params, python_version, fingerprint, stats
    )


def _fingerprint(
    ids: Sequence[str], splits: Sequence[str], texts: Sequence[str], files: Sequence[str]
) -> str:
    digest = hashlib.sha256(f"corpus-format-{CORPUS_FORMAT}\n".encode())
    for name in files:
        digest.update(f"file\t{name}\n".encode())
    for sid, split, text in zip(ids, splits, texts):
        digest.update(f"{sid}\t{split}\t{text}\n".encode())
    return digest.hexdigest()


def write_corpus(corpus: Corpus, directory: str | Path) -> Path:
    """Write, under `directory`, `sentences.jsonl` (one {"id", "document", "split", "text"} per line,
    corpus order) and `meta.json` (format, params, Python version, fingerprint, content hash, stats,
    counts)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lines = (
        json.dumps({"id": i, "document": d, "split": s, "text": t}, ensure_ascii=False)
        for i, d, s, t in zip(corpus.ids, corpus.documents, corpus.splits, corpus.texts)
    )
    atomic_write_text(directory / "sentences.jsonl", "".join(line + "\n" for line in lines))
    atomic_write_json(
        directory / "meta.json",
        {
            "format": CORPUS_FORMAT,
            "params": corpus.params.model_dump(mode="json"),
            "python_version": corpus.python_version,
            "fingerprint": corpus.fingerprint,
            "content_sha256": _content_hash(corpus),
            "stats": corpus.stats,
            "counts": corpus.counts(),
        },
    )
    return directory


def load_corpus(directory: str | Path) -> Corpus:
    """Read a corpus written by `write_corpus`. CorpusError when a file is missing, the format is
    another, or the sentences no longer match the recorded fingerprint."""
    directory = Path(directory)
    meta_path, rows_path = directory / "meta.json", directory / "sentences.jsonl"
    if not meta_path.is_file() or not rows_path.is_file():
        raise CorpusError(
            f"{directory}: no corpus here (meta.json and sentences.jsonl); build it with build_corpus"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != CORPUS_FORMAT:
        raise CorpusError(
            f"{meta_path}: corpus format {meta.get('format')}, this code reads {CORPUS_FORMAT}; "
            f"rebuild the corpus"
        )
    rows = [json.loads(line) for line in rows_path.read_text(encoding="utf-8").splitlines() if line]
    ids, docs, splits, texts = (
        tuple(row[key] for row in rows) for key in ("id", "document", "split", "text")
    )
    corpus = Corpus(
        ids,
        docs,
        splits,
        texts,
        CorpusParams(**meta["params"]),
        meta["python_version"],
        meta["fingerprint"],
        meta.get("stats", {}),
    )
    # The fingerprint also covers the stdlib file list, which is not stored: check the sentences' hash.
    if _content_hash(corpus) != meta.get("content_sha256"):
        raise CorpusError(f"{rows_path}: sentences changed since the corpus was written; rebuild it")
    return corpus


def _content_hash(corpus: Corpus) -> str:
    return _fingerprint(corpus.ids, corpus.splits, corpus.texts, ())
