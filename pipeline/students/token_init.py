"""A token student's embedding table started from its teacher's: the teacher ONNX's (V, E) word
embedding matrix reduced to the student's width by PCA (`arch.init_embeddings`, issue 18).

Why: a small student trained for minutes on a few thousand sentences sees a fraction of a 30k
vocabulary; rows it never sees stay random and wreck the embedding of any held-out sentence that
uses them. Starting every row from the teacher's own input embedding (its top principal directions)
gives them the teacher's lexical geometry before the first step, as DistilBERT starts its student
from the teacher's layers (Sanh, Debut, Chaumond & Wolf 2019, "DistilBERT, a distilled version of
BERT", arXiv:1910.01108).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import DistilleryError


class TokenInitError(DistilleryError):
    """`arch.init_embeddings` names a file without one (vocab_size, E) matrix to start from."""


def teacher_token_embeddings(onnx_path: str | Path, vocab_size: int) -> np.ndarray:
    """(vocab_size, E) float32: the one initializer of the ONNX file whose first axis is
    `vocab_size` and which is 2-D (a BERT-style export's word embeddings). TokenInitError naming
    what there is when the file is missing or holds none or several."""
    import onnx
    from onnx import numpy_helper

    path = Path(onnx_path)
    if not path.is_file():
        raise TokenInitError(
            f"arch.init_embeddings: {path} does not exist; point it at the teacher ONNX (e.g. "
            "data/teacher/model.onnx), or set it to null to start from random embeddings"
        )
    model = onnx.load(str(path), load_external_data=True)
    found = [i for i in model.graph.initializer if len(i.dims) == 2 and i.dims[0] == vocab_size]
    if len(found) != 1:
        names = [f"{i.name} {list(i.dims)}" for i in found]
        raise TokenInitError(
            f"arch.init_embeddings: {path} has {len(found)} 2-D initializers with {vocab_size} rows "
            f"({names or 'none'}); it needs exactly one, the teacher's word embeddings for this vocab_size"
        )
    return numpy_helper.to_array(found[0]).astype(np.float32)


def principal_rows(matrix: np.ndarray, width: int) -> np.ndarray:
    """(V, width) float32: the centred rows of `matrix` (V, E) projected on its `width` principal
    directions (width <= E), scaled to unit standard deviation overall, the scale nn.Embedding
    starts at. Deterministic: the SVD's sign ambiguity is fixed so each direction's largest
    coefficient is positive."""
    if width > matrix.shape[1]:
        raise TokenInitError(
            f"arch.width {width} is wider than the teacher's embeddings ({matrix.shape[1]}); "
            "PCA can only narrow them"
        )
    centred = np.asarray(matrix, np.float64) - matrix.mean(0)
    # the eigenvectors of the (E, E) scatter matrix: the right singular vectors, far cheaper than an SVD
    values, vectors = np.linalg.eigh(centred.T @ centred)
    directions = vectors[:, np.argsort(values)[::-1][:width]].T.copy()
    directions *= np.sign(directions[np.arange(width), np.abs(directions).argmax(1)])[:, None]
    projected = centred @ directions.T
    return (projected / projected.std()).astype(np.float32)
