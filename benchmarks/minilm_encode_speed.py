"""Encode speed of the MiniLM scenario's exported students against the teacher, repeated and
interleaved so that a load spike on a shared machine does not decide the ratio (the evaluate stage
times each once). ONNX Runtime CPU, one thread, the first 256 test sentences in order, batches of
1 and 64, each padded to its own longest sentence (pipeline.evaluate.embedding.encode_throughput).

    python benchmarks/minilm_encode_speed.py --repeats 3 quarter_layers   # after make repro-minilm

Prints each pass, then per batch size the best pass of each student over the best of the teacher.
"""

from __future__ import annotations

import argparse

import numpy as np

from pipeline.data.dataset import open_prepared
from pipeline.evaluate.embedding import encode_throughput
from pipeline.text.tokenizer import TokenizedText


def main() -> None:
    """Parse the arguments, time the teacher and the students in turn, print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("students", nargs="+", help="names under scenarios/minilm/data/export")
    parser.add_argument("--scenario", default="scenarios/minilm")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = f"{args.scenario}/data"
    prepared = open_prepared(f"{data}/prepared")
    ids = prepared.read(prepared.rows("test"), ["input_ids"])["input_ids"]
    values, offsets = np.asarray(ids.values, np.int64), np.asarray(ids.offsets, np.int64)
    sentences = TokenizedText(values, offsets, int(np.diff(offsets).max()), 0, 0)  # [PAD] is 0
    models = {"teacher": f"{data}/teacher/model.onnx"}
    models |= {name: f"{data}/export/{name}/model.onnx" for name in args.students}
    best: dict[tuple[str, str], float] = {}
    for repeat in range(args.repeats):
        for name, path in models.items():
            passes = encode_throughput(path, sentences, (1, 64), 256, intra_op_threads=1)
            print(repeat, name, {key: round(value, 1) for key, value in passes.items()}, flush=True)
            for key, value in passes.items():
                best[name, key] = max(best.get((name, key), 0.0), value)
    for name in args.students:
        for key in ("sentences_per_s_b1", "sentences_per_s_b64"):
            ratio = best[name, key] / best["teacher", key]
            print(
                f"{name} {key}: best {best[name, key]:.1f} / teacher "
                f"{best['teacher', key]:.1f} = {ratio:.2f}x"
            )


if __name__ == "__main__":
    main()
