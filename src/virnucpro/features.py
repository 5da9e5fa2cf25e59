"""Feature files, and stage 7: merging nucleotide and protein embeddings frame by frame.

A feature file is an Arrow IPC file with an `id` column, a fixed-size float32 vector column and,
in its metadata, the identity of the models that made the vectors. Arrow IPC rather than Parquet
because these are large intermediate files: they are written at disk speed and read back
memory-mapped, without decoding or copying (a million reads make tens of GB of features).

The merged vector of a frame is its DNABERT-S embedding followed by its ESM-2 embedding
(768 + 2560 = 3328 values with the real models), in the order of the nucleotide records, as
VirNucPro's `merge_data` builds it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from virnucpro.sequence_io import atomic_path

_MODELS_KEY = b"virnucpro.models"
MERGE_BLOCK_ROWS = 65536


@dataclass
class FeatureTable:
    ids: list[str]
    vectors: np.ndarray  # [rows, dim] float32
    models: list[dict]  # identity of each model whose embedding is part of the vector, in order


def _schema(dim: int, models: list[dict], column: str) -> pa.Schema:
    return pa.schema([("id", pa.string()), (column, pa.list_(pa.float32(), dim))],
                     metadata={_MODELS_KEY: json.dumps(models)})


def _batch(schema: pa.Schema, ids: list[str], vectors: np.ndarray) -> pa.RecordBatch:
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel())
    dim = schema.field(1).type.list_size
    return pa.RecordBatch.from_arrays([pa.array(ids, pa.string()), pa.FixedSizeListArray.from_arrays(flat, dim)],
                                      schema=schema)


def _vectors(batch: pa.RecordBatch) -> np.ndarray:
    column = batch.column(1)
    values = column.values.slice(column.offset * column.type.list_size, len(column) * column.type.list_size)
    return values.to_numpy(zero_copy_only=True).reshape(len(column), column.type.list_size)


def write_features(path: str | os.PathLike, features: FeatureTable, column: str = "embedding") -> None:
    schema = _schema(features.vectors.shape[1], features.models, column)
    with atomic_path(path) as temporary, pa.OSFile(str(temporary), "wb") as sink, \
            pa.ipc.new_file(sink, schema) as writer:
        writer.write_batch(_batch(schema, features.ids, features.vectors))


def _open(path: str | os.PathLike) -> pa.ipc.RecordBatchFileReader:
    try:
        reader = pa.ipc.open_file(pa.memory_map(str(path)))
    except pa.ArrowInvalid:
        raise ValueError(f"{path}: not a feature file written by this pipeline") from None
    if _MODELS_KEY not in (reader.schema.metadata or {}) or len(reader.schema) != 2:
        raise ValueError(f"{path}: not a feature file written by this pipeline")
    return reader


def feature_batches(path: str | os.PathLike) -> tuple[list[dict], int, Iterator[tuple[list[str], np.ndarray]]]:
    """The models, the vector width, and the file's (ids, vectors) blocks; vectors are memory-mapped."""
    reader = _open(path)
    models = json.loads(reader.schema.metadata[_MODELS_KEY])
    dim = reader.schema.field(1).type.list_size

    def blocks():
        for index in range(reader.num_record_batches):
            batch = reader.get_batch(index)
            yield batch.column(0).to_pylist(), _vectors(batch)

    return models, dim, blocks()


def read_features(path: str | os.PathLike) -> FeatureTable:
    models, dim, blocks = feature_batches(path)
    ids, vectors = [], []
    for block_ids, block_vectors in blocks:
        ids += block_ids
        vectors.append(block_vectors)
    if len(vectors) != 1:  # a single block stays memory-mapped
        vectors = [np.concatenate(vectors) if vectors else np.empty((0, dim), dtype=np.float32)]
    return FeatureTable(ids, vectors[0], models)


def merged_row_order(nucleotide_ids: list[str], protein_ids: list[str], source: str = "") -> np.ndarray:
    """For each nucleotide frame, the row of the same frame among the protein features.

    A frame present on one side only is an error: it means the two shards do not belong together.
    """
    if nucleotide_ids == protein_ids and len(set(nucleotide_ids)) == len(nucleotide_ids):
        return np.arange(len(nucleotide_ids))
    position = {frame_id: row for row, frame_id in enumerate(protein_ids)}
    if len(position) != len(protein_ids) or len(set(nucleotide_ids)) != len(nucleotide_ids):
        raise ValueError(f"{source}: duplicate frame IDs in a feature file")
    only_nucleotide = [i for i in nucleotide_ids if i not in position]
    only_protein = sorted(set(protein_ids) - set(nucleotide_ids))
    if only_nucleotide or only_protein:
        raise ValueError(
            f"{source}: nucleotide and protein features do not cover the same frames: "
            f"{len(only_nucleotide)} only in the nucleotide features (e.g. {only_nucleotide[:3]}), "
            f"{len(only_protein)} only in the protein features (e.g. {only_protein[:3]})")
    return np.fromiter((position[i] for i in nucleotide_ids), dtype=np.int64, count=len(nucleotide_ids))


def merge_feature_files(nucleotide_path, protein_path, output_path) -> int:
    """Stage 7: each frame's nucleotide vector followed by its protein vector, in the nucleotide
    file's order, written block by block so that memory stays small whatever the shard size."""
    nucleotide, protein = read_features(nucleotide_path), read_features(protein_path)
    rows = merged_row_order(nucleotide.ids, protein.ids, source=f"{nucleotide_path} + {protein_path}")
    schema = _schema(nucleotide.vectors.shape[1] + protein.vectors.shape[1], nucleotide.models + protein.models,
                     "features")
    with atomic_path(output_path) as temporary, pa.OSFile(str(temporary), "wb") as sink, \
            pa.ipc.new_file(sink, schema) as writer:
        for start in range(0, max(len(rows), 1), MERGE_BLOCK_ROWS):
            block = slice(start, start + MERGE_BLOCK_ROWS)
            vectors = np.concatenate((nucleotide.vectors[block], protein.vectors[rows[block]]), axis=1)
            writer.write_batch(_batch(schema, nucleotide.ids[block], vectors))
    return len(rows)
