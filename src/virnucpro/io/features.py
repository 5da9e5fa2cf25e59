"""Feature files, and the merge of nucleotide and protein embeddings frame by frame.

A feature file holds one shard's embeddings from one model, in row order: a `row` column (the
frame's row in the sample's frames table) and a fixed-size float32 `embedding` column, written a
batch at a time by the embedding job, with the identity of the model and the shard's row range in
its metadata.

The merged vector of a frame is its DNABERT-S embedding followed by its ESM-2 embedding
(768 + 2560 = 3328 values with the real models), as VirNucPro's `merge_data` builds it. Copying
both files into a third would double the largest data of a run (13 KB per frame), so the jobs that
need merged vectors (prediction, training) take both files as inputs: `MergedFeatures` checks that
they cover the same rows in the same order and reads the concatenation block by block. The merged
copy is written only when asked for (`outputs.merged_features`, stage 7).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from virnucpro.io.tables import TableReader, TableWriter

FEATURE_BATCH_ROWS = 4096


def feature_schema(dim: int, column: str = "embedding") -> pa.Schema:
    return pa.schema([("row", pa.int64()), (column, pa.list_(pa.float32(), dim))])


class FeatureWriter(TableWriter):
    """Writes the embeddings of rows [row_start, row_end), which must come in order, all of them."""

    def __init__(self, path: str | os.PathLike, dim: int, models: list[dict], row_start: int, row_end: int,
                 column: str = "embedding"):
        super().__init__(path, feature_schema(dim, column), FEATURE_BATCH_ROWS,
                         metadata={"models": models, "row_start": row_start, "row_end": row_end})
        self.dim, self.next_row, self.row_end = dim, row_start, row_end

    def write_vectors(self, first_row: int, vectors: np.ndarray) -> None:
        if first_row != self.next_row:
            raise ValueError(f"embeddings of row {first_row} written where row {self.next_row} was due")
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
        self.write_columns({"row": np.arange(first_row, first_row + len(vectors)),
                            self.schema.field(1).name: pa.FixedSizeListArray.from_arrays(flat, self.dim)})
        self.next_row += len(vectors)

    def __exit__(self, error_type, error, traceback) -> bool:
        if error is None and self.next_row != self.row_end:
            error = ValueError(f"embeddings end at row {self.next_row}, the shard at {self.row_end}")
            super().__exit__(ValueError, error, None)
            raise error
        return super().__exit__(error_type, error, traceback)


class FeatureFile:
    """A feature file, read by row range."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._table = TableReader(path)
        try:
            self.models = self._table.metadata("models")
            self.row_start, self.row_end = self._table.metadata("row_start"), self._table.metadata("row_end")
        except ValueError:
            raise ValueError(f"{self.path}: not a feature file written by this pipeline") from None
        self.dim = self._table.schema.field(1).type.list_size
        if self._table.num_rows != self.row_end - self.row_start:
            raise ValueError(f"{self.path}: {self._table.num_rows} rows for rows {self.row_start}-{self.row_end}")

    def vectors(self, start: int, stop: int) -> np.ndarray:
        """Embeddings [stop - start, dim] float32 of rows [start, stop) of the frames table."""
        table = self._table.read(start - self.row_start, stop - self.row_start)
        rows = table.column("row").to_numpy()
        if not np.array_equal(rows, np.arange(start, start + len(rows))) or len(rows) != stop - start:
            raise ValueError(f"{self.path}: rows {start}-{stop} are not stored in order")
        return np.concatenate([_vectors(chunk) for chunk in table.column(1).chunks]) if table.num_rows else \
            np.empty((0, self.dim), dtype=np.float32)


def _vectors(column: pa.FixedSizeListArray) -> np.ndarray:
    values = column.values.slice(column.offset * column.type.list_size, len(column) * column.type.list_size)
    return values.to_numpy(zero_copy_only=True).reshape(len(column), column.type.list_size)


class MergedFeatures:
    """The merged features of a shard: its DNABERT-S (nucleotide) and ESM-2 (protein) feature files,
    checked to cover the same rows."""

    def __init__(self, nucleotide_path: str | os.PathLike, protein_path: str | os.PathLike):
        nucleotide, protein = FeatureFile(nucleotide_path), FeatureFile(protein_path)
        if (nucleotide.row_start, nucleotide.row_end) != (protein.row_start, protein.row_end):
            raise ValueError(f"{nucleotide.path} covers rows {nucleotide.row_start}-{nucleotide.row_end} but "
                             f"{protein.path} rows {protein.row_start}-{protein.row_end}: they are not the same shard")
        self.files = [nucleotide, protein]
        self.row_start, self.row_end = nucleotide.row_start, nucleotide.row_end
        self.dim, self.models = nucleotide.dim + protein.dim, nucleotide.models + protein.models

    def blocks(self, rows: int = FEATURE_BATCH_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, merged vectors [n, dim]) for consecutive blocks of the shard's rows."""
        for start in range(self.row_start, self.row_end, rows):
            stop = min(start + rows, self.row_end)
            yield start, np.concatenate([file.vectors(start, stop) for file in self.files], axis=1)
