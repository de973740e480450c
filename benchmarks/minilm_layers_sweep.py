"""How a `teacher_layers` student of all-MiniLM-L6-v2 learns (issue 18): which layers to copy, how
much text, which learning rate, how many epochs. Not part of `make bench`: minutes on a GPU, hours on
two CPU cores.

Each run builds the student with pipeline/students/teacher_layers.py (vocabulary: the ids of the
train sentences used, at most `--max-vocabulary` rows), trains it with AdamW on the feature MSE of
its pooled, normalised embedding against the teacher's (the scenario's `feature` term), batches of
64 in a seeded order, and scores the whole test split after the listed epochs: mean cosine to the
teacher's embedding, kNN agreement@10 and the Spearman correlation of pairwise similarities.

    python benchmarks/minilm_layers_sweep.py --device cuda     # figures in docs/text.md

Train text: `cached` = the 4,000 sentences the scenario caches (`--prepared`, its split
`unlabelled`), `all` = the corpus's 10,335 train sentences. Prints one line per run and epoch.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.data.dataset import open_prepared
from pipeline.data.fields import Ragged
from pipeline.data.writer import write_arrays
from pipeline.students.teacher_layers import TeacherLayersParams, TeacherLayersStudent, load_teacher_bert
from pipeline.text.corpus import CorpusParams, build_corpus
from pipeline.text.tokenizer import minilm_tokenizer_path, tokenize

RUNS = {  # name -> (layers, train text, lr, epochs scored)
    "L05": ([0, 5], "cached", 1e-4, (1, 2, 4, 8, 16, 32)),
    "L0": ([0], "cached", 1e-4, (1, 2, 4, 8, 16, 32)),
    "L5": ([5], "cached", 1e-4, (1, 2, 4, 8, 16, 32)),
    "L03": ([0, 3], "cached", 1e-4, (1, 2, 4, 8, 16, 32)),
    "L25": ([2, 5], "cached", 1e-4, (1, 2, 4, 8, 16, 32)),
    "L05_lr3e-4": ([0, 5], "cached", 3e-4, (1, 2, 4, 8, 16, 32)),
    "L05_all": ([0, 5], "all", 1e-4, (1, 2, 4, 8, 16, 32)),
}


def padded(sequences, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) int64 ids right-padded with 0 and (B, L) int64 mask, L the longest sequence."""
    longest = max(len(s) for s in sequences)
    ids = np.zeros((len(sequences), longest), np.int64)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = sequence
    ids = torch.from_numpy(ids).to(device)
    return ids, (ids != 0).long()


def write_train_rows(directory: Path, sequences) -> Path:
    """`sequences` (int64 token ids each) as prepared data in split `unlabelled`, where the student
    reads its vocabulary from (`arch.vocabulary`)."""
    if not directory.exists():
        offsets = np.concatenate([[0], np.cumsum([len(s) for s in sequences])]).astype(np.int64)
        ids = np.concatenate(sequences).astype(np.int64)
        fields = {
            "input_ids": Ragged(ids, offsets),
            "attention_mask": Ragged(np.ones_like(ids), offsets.copy()),
        }
        n = len(sequences)
        write_arrays(
            directory, np.arange(n, dtype=np.int64), np.full(n, 3, np.int8), np.full(n, -1), 1, fields
        )
    return directory


def pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, D) the mask-aware mean of (B, L, D), L2-normalised (sentence-transformers' pooling)."""
    weight = mask.unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * weight).sum(1) / weight.sum(1).clamp(min=1e-9), dim=1)


def scores(student: torch.Tensor, teacher: torch.Tensor, k: int = 10) -> tuple[float, float, float]:
    """(mean cosine, kNN agreement@k, Spearman of pairwise similarities) of (N, D) unit rows."""
    n = len(student)
    eye = torch.eye(n, dtype=torch.bool, device=student.device)
    near = [(x @ x.T).masked_fill(eye, -9.0).topk(k).indices for x in (student, teacher)]
    agreement = (near[0].unsqueeze(2) == near[1].unsqueeze(1)).any(2).float().mean()
    upper = torch.triu_indices(n, n, 1, device=student.device)
    pairs = [(x @ x.T)[upper[0], upper[1]] for x in (student, teacher)]
    ranks = torch.stack([p.argsort().argsort().float() for p in pairs])
    cosine = (student * teacher).sum(1).mean()
    return float(cosine), float(agreement), float(torch.corrcoef(ranks)[0, 1])


def main() -> None:
    """Parse the arguments, run the chosen runs, print their curves."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prepared", default="scenarios/minilm/data/prepared")
    parser.add_argument("--runs", nargs="*", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--max-vocabulary", type=int, default=5400)
    parser.add_argument(
        "--limit", type=int, default=None, help="at most this many train and test sentences (a smoke run)"
    )
    parser.add_argument("--max-epochs", type=int, default=None, help="stop each run after this many epochs")
    args = parser.parse_args()
    device = torch.device(args.device)
    corpus = build_corpus(CorpusParams(seed=0, val_fraction=0.1, test_fraction=0.1))
    tokens = tokenize(minilm_tokenizer_path(), list(corpus.texts), 128)
    values, offsets = np.asarray(tokens.values, np.int64), np.asarray(tokens.offsets, np.int64)
    split = np.asarray(corpus.splits)
    dataset = open_prepared(args.prepared)
    texts = {
        "cached": np.sort(dataset.sample_id[dataset.rows("unlabelled")]),
        "all": np.flatnonzero(split == "train"),
    }
    test = np.flatnonzero(split == "test")[: args.limit]
    texts = {key: rows[: args.limit] for key, rows in texts.items()}
    sentences = [values[offsets[i] : offsets[i + 1]] for i in range(len(split))]
    teacher = load_teacher_bert(None).to(device)

    @torch.no_grad()
    def encode(model, rows) -> torch.Tensor:
        out = []
        for start in range(0, len(rows), 256):
            ids, mask = padded([sentences[i] for i in rows[start : start + 256]], device)
            if isinstance(model, TeacherLayersStudent):
                out.append(model(ids, mask).features["embed"])
            else:
                out.append(pooled(model(input_ids=ids, attention_mask=mask).last_hidden_state, mask))
        return torch.cat(out)

    target_test = encode(teacher, test)
    scratch = tempfile.mkdtemp(prefix="minilm-sweep-")
    for name in args.runs:
        layers, text, lr, scored = RUNS[name]
        started, rows = time.time(), texts[text]
        torch.manual_seed(0)
        order_rng = np.random.default_rng(0)
        targets = encode(teacher, rows)
        vocabulary = write_train_rows(Path(scratch) / f"{text}-{len(rows)}", [sentences[i] for i in rows])
        params = TeacherLayersParams(
            layers=layers, vocabulary=str(vocabulary), max_vocabulary=args.max_vocabulary, max_length=128
        )
        student = TeacherLayersStudent(params, (), 1).to(device)
        optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
        scored = [e for e in scored if args.max_epochs is None or e <= args.max_epochs]
        for epoch in range(1, max(scored) + 1):
            student.train()
            order = order_rng.permutation(len(rows))
            for start in range(0, len(rows), 64):
                chosen = order[start : start + 64]
                ids, mask = padded([sentences[rows[i]] for i in chosen], device)
                embed = student(ids, mask).features["embed"]
                loss = ((embed - targets[chosen]) ** 2).sum(1).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            if epoch in scored:
                student.eval()
                got = encode(student, test)
                cosine, agreement, spearman = scores(got, target_test)
                print(
                    f"{name} layers={layers} text={text}({len(rows)}) lr={lr} epoch={epoch}: "
                    f"cos {cosine:.4f} knn@10 {agreement:.4f} spearman {spearman:.4f} "
                    f"({time.time() - started:.0f} s)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
