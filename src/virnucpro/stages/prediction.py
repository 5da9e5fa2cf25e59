"""Stage 8: classify every frame of a shard with the MLP, reading its merged features block by block.

score1 is the softmax probability of class 0 (others), score2 of class 1 (virus); a frame is
called virus when score2 > score1, as `torch.max` decides in VirNucPro (a tie goes to others).
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from virnucpro.io.atomic import atomic_output, atomic_path
from virnucpro.io.features import MergedFeatures
from virnucpro.io.ids import frame_id
from virnucpro.io.schemas import FRAME_PREDICTION_SCHEMA
from virnucpro.io.tables import PartedTable
from virnucpro.models.classifier import MLPClassifier

PREDICTION_BLOCK_ROWS = 16384
MLP_BLOCK_ROWS = 1024


def frame_probabilities(model: MLPClassifier, features: np.ndarray, first_row: int = 0) -> np.ndarray:
    """Softmax class probabilities [rows, 2] float32 for merged feature vectors of consecutive
    frames, the first of which is row `first_row` of the frames table.

    Matrix-multiply libraries round differently with the number of rows and a row's place among
    them, so the frames go through the MLP in blocks of `MLP_BLOCK_ROWS` aligned to their row in
    the frames table: a frame is computed in the same place of the same product whatever shard it
    is in, and its scores do not depend on the shard size.
    """
    if features.shape[1] != model.hidden_layer.in_features:
        raise ValueError(f"features have {features.shape[1]} values, the classifier expects "
                         f"{model.hidden_layer.in_features}")
    out = np.empty((len(features), 2), dtype=np.float32)
    block = np.zeros((MLP_BLOCK_ROWS, features.shape[1]), dtype=np.float32)
    with torch.inference_mode():
        for start in range(-(first_row % MLP_BLOCK_ROWS), len(features), MLP_BLOCK_ROWS):
            first, last = max(start, 0), min(start + MLP_BLOCK_ROWS, len(features))
            block[:] = 0
            block[first - start : last - start] = features[first:last]
            probabilities = torch.softmax(model(torch.from_numpy(block)), dim=1).numpy()
            out[first:last] = probabilities[first - start : last - start]
    return out


def prediction_lines(frame_ids: list[str], others: np.ndarray, virus: np.ndarray) -> str:
    """Rows of VirNucPro's prediction_results.txt; scores printed as NumPy prints float32 values."""
    labels = np.where(virus > others, "virus", "others")
    return "".join(f"{i}\t{label}\t{s1}\t{s2}\n"
                   for i, label, s1, s2 in zip(frame_ids, labels, others.astype(str), virus.astype(str)))


def predict_shard(model: MLPClassifier, nucleotide_path: str | os.PathLike, protein_path: str | os.PathLike,
                  frame_paths: list, read_paths: list, predictions_path: str | os.PathLike,
                  lines_path: str | os.PathLike, check_models) -> int:
    """Stage 8 for one shard: the scores of its frames (Parquet, by row) and its rows of
    prediction_results.txt, from its DNABERT-S and ESM-2 feature files. `check_models(models)` vets
    the features' provenance first."""
    features = MergedFeatures(nucleotide_path, protein_path)
    check_models(features.models)
    frames = PartedTable(frame_paths, columns=["read_index", "chunk", "frame"])
    reads = PartedTable(read_paths, columns=["read_id"])
    with atomic_path(predictions_path) as temporary, atomic_output(lines_path) as lines, \
            pq.ParquetWriter(temporary, FRAME_PREDICTION_SCHEMA) as table:
        for first, vectors in features.blocks(PREDICTION_BLOCK_ROWS):
            scores = frame_probabilities(model, vectors, first)
            table.write_table(pa.table({"row": np.arange(first, first + len(vectors)), "score_others": scores[:, 0],
                                        "score_virus": scores[:, 1]}, schema=FRAME_PREDICTION_SCHEMA))
            keys = frames.read(first, first + len(vectors))
            read_index = keys.column("read_index").to_numpy()
            read_ids = reads.read(int(read_index[0]), int(read_index[-1]) + 1).column("read_id").to_pylist()
            ids = [frame_id(read_ids[r], c, f) for r, c, f in zip((read_index - read_index[0]).tolist(),
                                                                  keys.column("chunk").to_pylist(),
                                                                  keys.column("frame").to_pylist())]
            lines.write(prediction_lines(ids, scores[:, 0], scores[:, 1]))
    return features.row_end - features.row_start
