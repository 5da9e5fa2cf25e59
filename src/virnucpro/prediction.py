"""Stage 8: classify every frame with the MLP.

score1 is the softmax probability of class 0 (others), score2 of class 1 (virus); a frame is
called virus when score2 > score1, as `torch.max` decides in VirNucPro (a tie goes to others).
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from virnucpro.features import feature_batches
from virnucpro.models.classifier import MLPClassifier
from virnucpro.sequence_io import atomic_path

FRAME_PREDICTION_SCHEMA = pa.schema(
    [("id", pa.string()), ("score_others", pa.float32()), ("score_virus", pa.float32())]
)


def frame_probabilities(model: MLPClassifier, features: np.ndarray, batch_size: int = 65536) -> np.ndarray:
    """Softmax class probabilities [rows, 2] float32 for merged feature vectors.

    Batches are padded to a multiple of 8 rows: matrix-multiply libraries use other kernels for a
    handful of rows, and a frame's scores must not depend on where a shard happens to end.
    """
    if features.shape[1] != model.hidden_layer.in_features:
        raise ValueError(f"features have {features.shape[1]} values, the classifier expects "
                         f"{model.hidden_layer.in_features}")
    out = np.empty((len(features), 2), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(features), batch_size):
            batch = features[start : start + batch_size]
            padded = np.zeros((len(batch) + -len(batch) % 8, batch.shape[1]), dtype=np.float32)
            padded[: len(batch)] = batch
            out[start : start + batch_size] = torch.softmax(model(torch.from_numpy(padded)), dim=1)[: len(batch)].numpy()
    return out


def predict_frames(model: MLPClassifier, features_path: str | os.PathLike, output_path: str | os.PathLike,
                   check_models) -> int:
    """Classify the frames of one merged feature shard; `check_models(models)` vets its provenance."""
    models, _, blocks = feature_batches(features_path)
    check_models(models)
    ids, probabilities = [], []
    for block_ids, vectors in blocks:
        ids += block_ids
        probabilities.append(frame_probabilities(model, vectors))
    probabilities = np.concatenate(probabilities) if probabilities else np.empty((0, 2), dtype=np.float32)
    table = pa.table({"id": ids, "score_others": probabilities[:, 0], "score_virus": probabilities[:, 1]},
                     schema=FRAME_PREDICTION_SCHEMA)
    with atomic_path(output_path) as temporary:
        pq.write_table(table, temporary)
    return len(ids)
