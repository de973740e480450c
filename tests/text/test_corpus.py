"""The offline corpus: deterministic, deduplicated, split by document, with stable ids."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict

import pytest

from pipeline.text.clean import clean_paragraphs, dedup_key, document_sentences, is_prose, split_sentences
from pipeline.text.corpus import (
    SPLIT_NAMES,
    CorpusError,
    CorpusParams,
    build_corpus,
    document_split,
    load_corpus,
    write_corpus,
)
from pipeline.text.sources import RawDocument, stdlib_source_files, topic_documents

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def corpus():
    return build_corpus()


def test_the_corpus_has_real_sentences_in_every_split_from_both_sources(corpus):
    counts = corpus.counts()
    for split in SPLIT_NAMES:
        assert counts[split]["documents"] > 10 and counts[split]["sentences"] > 100
    assert counts["train"]["sentences"] > 4 * counts["test"]["sentences"]
    assert {d.split(":")[0] for d in corpus.documents} == {"topic", "doc"}
    assert corpus.python_version.endswith(
        ".".join(map(str, sys.version_info[:2])) + f".{sys.version_info[2]}"
    )
    assert len(corpus.fingerprint) == 64


def test_no_document_straddles_two_splits(corpus):
    splits_of = defaultdict(set)
    for document, split in zip(corpus.documents, corpus.splits):
        splits_of[document].add(split)
    assert all(len(splits) == 1 for splits in splits_of.values())


def test_ids_are_unique_and_name_their_document(corpus):
    assert len(set(corpus.ids)) == len(corpus.ids)
    assert all(sid.rsplit("#", 1)[0] == document for sid, document in zip(corpus.ids, corpus.documents))
    assert any(sid.startswith("topic:assert#") for sid in corpus.ids)
    assert any(sid.startswith("doc:json.loads#") for sid in corpus.ids)


def test_no_sentence_appears_twice_even_across_splits(corpus):
    keys = [dedup_key(text) for text in corpus.texts]
    assert len(set(keys)) == len(keys)
    assert corpus.stats["sentences_duplicate"] > 0


def test_the_corpus_is_the_same_in_a_fresh_process_with_another_hash_seed():
    # topics only: the same code path in seconds; the full corpus is fingerprinted in the benchmark
    code = (
        "from pipeline.text.corpus import CorpusParams, build_corpus;"
        "print(build_corpus(CorpusParams(sources=('topics',))).fingerprint)"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": ROOT}
    fresh = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert fresh.stdout.strip() == build_corpus(CorpusParams(sources=("topics",))).fingerprint


def test_a_documents_split_depends_only_on_its_id_and_the_seed():
    params = CorpusParams(seed=3)
    documents = topic_documents()
    alone = build_corpus(params, documents[:5])
    together = build_corpus(params, documents)
    first = {d: s for d, s in zip(together.documents, together.splits)}
    assert all(first[d] == s for d, s in zip(alone.documents, alone.splits))
    assert document_split("topic:assert", params) == document_split("topic:assert", CorpusParams(seed=3))
    seeds = {document_split(f"doc:m{i}", CorpusParams(seed=s)) for i in range(50) for s in (0, 1)}
    assert seeds == set(SPLIT_NAMES)


def test_duplicates_are_dropped_whatever_their_case_and_spacing_and_the_first_kept():
    documents = [
        RawDocument("doc:a", "docstrings", "The first sentence is here. Another sentence follows it."),
        RawDocument("doc:b", "docstrings", "THE FIRST   sentence is\nhere.  A third sentence is new."),
        RawDocument("doc:a", "docstrings", "A repeated document id is ignored entirely."),
    ]
    corpus = build_corpus(CorpusParams(), documents)
    assert corpus.ids == ("doc:a#0", "doc:a#1", "doc:b#1")
    assert corpus.stats["sentences_duplicate"] == 1 and corpus.stats["documents_read"] == 2


def test_a_written_corpus_loads_back_and_an_edited_one_is_refused(tmp_path):
    corpus = build_corpus(CorpusParams(sources=("topics",)))
    write_corpus(corpus, tmp_path)
    loaded = load_corpus(tmp_path)
    assert loaded.texts == corpus.texts and loaded.splits == corpus.splits
    assert loaded.fingerprint == corpus.fingerprint and loaded.counts() == corpus.counts()
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["counts"]["train"]["sentences"] == corpus.counts()["train"]["sentences"]
    rows = (tmp_path / "sentences.jsonl").read_text().replace("Python", "Pyth0n", 1)
    (tmp_path / "sentences.jsonl").write_text(rows)
    with pytest.raises(CorpusError, match="changed since"):
        load_corpus(tmp_path)
    with pytest.raises(CorpusError, match="no corpus here"):
        load_corpus(tmp_path / "missing")


def test_bad_corpus_params_are_refused():
    with pytest.raises(ValueError, match="must be < 1"):
        CorpusParams(val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="sources"):
        CorpusParams(sources=("wikipedia",))
    with pytest.raises(CorpusError, match="choose one of"):
        build_corpus(CorpusParams(), []).texts_of("dev")


def test_private_and_test_modules_are_not_read():
    names = [name for name, _ in stdlib_source_files()]
    assert "json" in names and "json.decoder" in names
    assert not any(part.startswith("_") or part in ("test", "tests") for n in names for part in n.split("."))


def test_doctests_literal_blocks_grammar_and_titles_are_dropped():
    text = """Title of a section
==================

Use :func:`json.loads` to parse ``text`` into *objects*. [1]

Example::

    result = parse(text)
    print(result)

>>> parse("1")
1
Output continues here.

   assert_stmt ::= "assert" expression

Back to prose after the example.
"""
    assert clean_paragraphs(text) == [
        "Use json.loads to parse text into objects.",
        "Example:",
        "Back to prose after the example.",
    ]


def test_sentences_are_cut_at_terminal_punctuation_but_not_after_abbreviations():
    paragraph = 'Use e.g. this one. Then "quoted" words follow! Is it 3.5 or 4? 2 is a digit.'
    assert split_sentences(paragraph) == [
        "Use e.g. this one.",
        'Then "quoted" words follow!',
        "Is it 3.5 or 4?",
        "2 is a digit.",
    ]


def test_code_signatures_and_fragments_are_not_prose():
    assert is_prose("Return the number of items in the container.")
    assert is_prose('"__new__()" is a static method that takes the class.')
    assert not is_prose("if not expression: raise AssertionError")
    assert not is_prose("Too short.")
    assert not is_prose("This sentence has no terminal punctuation at all")
    assert not is_prose("X = foo(a, b) + bar[c] * baz(d, e, f).")
    assert document_sentences("def f(x):\n    return x\n\nIt returns its argument unchanged.") == [
        "It returns its argument unchanged."
    ]
