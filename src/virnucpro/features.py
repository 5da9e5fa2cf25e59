"""Feature tables, and stage 7: merging nucleotide and protein embeddings frame by frame.

A feature table is Parquet with an `id` column, a fixed-size float32 vector column, and, in its
metadata, the identity of the models that made the vectors. The merged vector of a frame is its
DNABERT-S embedding followed by its ESM-2 embedding (768 + 2560 = 3328 values with the real
models), in the order of the nucleotide records, as VirNucPro's `merge_data` builds it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from virnucpro.sequence_io import atomic_path

_MODELS_KEY = b"virnucpro.models"


@dataclass
class FeatureTable:
    ids: list[str]
    vectors: np.ndarray  # [rows, dim] float32
    models: list[dict]  # identity of each model whose embedding is part of the vector, in order


def read_features(path: str | os.PathLike) -> FeatureTable:
    table = pq.read_table(path)
    metadata = table.schema.metadata or {}
    if _MODELS_KEY not in metadata or table.num_columns != 2:
        raise ValueError(f"{path}: not a feature table written by this pipeline")
    column = table.column(1).combine_chunks()
    dim = column.type.list_size
    vectors = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim) if len(column) else \
        np.empty((0, dim), dtype=np.float32)
    return FeatureTable(table.column("id").to_pylist(), vectors, json.loads(metadata[_MODELS_KEY]))


def write_features(path: str | os.PathLike, features: FeatureTable, column: str = "embedding") -> None:
    dim = features.vectors.shape[1]
    flat = np.ascontiguousarray(features.vectors, dtype=np.float32).ravel()
    schema = pa.schema([("id", pa.string()), (column, pa.list_(pa.float32(), dim))],
                       metadata={_MODELS_KEY: json.dumps(features.models)})
    table = pa.Table.from_arrays([pa.array(features.ids, pa.string()),
                                  pa.FixedSizeListArray.from_arrays(pa.array(flat), dim)], schema=schema)
    with atomic_path(path) as temporary:
        pq.write_table(table, temporary, compression="none", row_group_size=65536)


def merge_features(nucleotide: FeatureTable, protein: FeatureTable, source: str = "") -> FeatureTable:
    """Concatenate each frame's nucleotide and protein vectors, in the nucleotide table's order.

    A frame present on one side only is an error: it means the two shards do not belong together.
    """
    position = {frame_id: row for row, frame_id in enumerate(protein.ids)}
    if len(position) != len(protein.ids) or len(set(nucleotide.ids)) != len(nucleotide.ids):
        raise ValueError(f"{source}: duplicate frame IDs in a feature table")
    only_nucleotide = [i for i in nucleotide.ids if i not in position]
    only_protein = sorted(set(protein.ids) - set(nucleotide.ids))
    if only_nucleotide or only_protein:
        raise ValueError(
            f"{source}: nucleotide and protein features do not cover the same frames: "
            f"{len(only_nucleotide)} only in the nucleotide features (e.g. {only_nucleotide[:3]}), "
            f"{len(only_protein)} only in the protein features (e.g. {only_protein[:3]})")
    rows = np.fromiter((position[i] for i in nucleotide.ids), dtype=np.int64, count=len(nucleotide.ids))
    vectors = np.concatenate((nucleotide.vectors, protein.vectors[rows]), axis=1)
    return FeatureTable(nucleotide.ids, vectors, nucleotide.models + protein.models)


def merge_feature_files(nucleotide_path, protein_path, output_path) -> int:
    merged = merge_features(read_features(nucleotide_path), read_features(protein_path),
                            source=f"{nucleotide_path} + {protein_path}")
    write_features(output_path, merged, column="features")
    return len(merged.ids)
