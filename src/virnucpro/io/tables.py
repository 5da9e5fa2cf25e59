"""Tables that flow between stages: Arrow IPC files written in fixed-size record batches.

Every intermediate table (the input parts, reads, chunks, frames, tokens, features) is an Arrow IPC
file whose record batches all hold `batch_rows` rows but the last, with that number in the schema
metadata. A reader can therefore find the batches that hold any row range from the row count
alone, and reads just those from disk: a job touches only the rows it works on, whatever the size
of the file, and its memory is bounded by its block size, not by the input. Files are read with
plain reads, not memory-mapped, so that what a job has read stops counting once it is dropped.

A table stored as one file per part (the frames of a sample, written by one job per part of the
input) is read as one table with `PartedTable`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa

from virnucpro.io.atomic import atomic_path

BATCH_ROWS_KEY = b"virnucpro.batch_rows"


def string_bytes(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (from 0) and bytes of a string array, without copying where possible."""
    array = array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array
    offset_type = np.int64 if pa.types.is_large_string(array.type) else np.int32
    offsets = np.frombuffer(array.buffers()[1], dtype=offset_type)[array.offset : array.offset + len(array) + 1]
    data = array.buffers()[2]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.empty(0, dtype=np.uint8)
    return offsets.astype(np.int64) - offsets[0], data[offsets[0] : offsets[-1]]


class TableWriter:
    """Write record batches of exactly `batch_rows` rows (the last may be shorter) to `path`.

    Use as a context manager: the file appears under its name only when the block succeeds.
    `metadata` goes into the schema metadata (JSON-encoded values); `compression` is an Arrow
    IPC codec ("zstd", "lz4") or None.
    """

    def __init__(self, path: str | os.PathLike, schema: pa.Schema, batch_rows: int, metadata: dict | None = None,
                 compression: str | None = None):
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be positive, got {batch_rows}")
        encoded = {key.encode(): json.dumps(value) for key, value in (metadata or {}).items()}
        self.schema = schema.with_metadata({**(schema.metadata or {}), **encoded, BATCH_ROWS_KEY: str(batch_rows)})
        self.batch_rows = batch_rows
        self.rows = 0
        self._path = path
        self._options = pa.ipc.IpcWriteOptions(compression=compression)
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0

    def __enter__(self) -> TableWriter:
        with contextlib.ExitStack() as stack:
            temporary = stack.enter_context(atomic_path(self._path))
            sink = stack.enter_context(pa.OSFile(str(temporary), "wb"))
            self._writer = stack.enter_context(pa.ipc.new_file(sink, self.schema, options=self._options))
            self._stack = stack.pop_all()
        return self

    def write(self, data: pa.RecordBatch | pa.Table) -> None:
        """Append rows; they are written out in batches of `batch_rows`."""
        if data.schema.remove_metadata() != self.schema.remove_metadata():
            raise ValueError(f"{self._path}: rows of schema {data.schema} do not fit {self.schema}")
        batches = data.to_batches() if isinstance(data, pa.Table) else [data]
        for batch in batches:
            self._pending.append(batch.replace_schema_metadata(self.schema.metadata))
            self._pending_rows += batch.num_rows
            self.rows += batch.num_rows
        if self._pending_rows >= self.batch_rows:
            self._flush(whole_batches_only=True)

    def write_columns(self, columns: dict) -> None:
        """Append rows given as arrays or lists by column name."""
        self.write(pa.table(columns, schema=self.schema))

    def _flush(self, whole_batches_only: bool) -> None:
        table = pa.Table.from_batches(self._pending, schema=self.schema)
        written = 0
        while table.num_rows - written >= self.batch_rows or (not whole_batches_only and written < table.num_rows):
            piece = table.slice(written, self.batch_rows).combine_chunks()
            for batch in piece.to_batches(max_chunksize=self.batch_rows):
                self._writer.write_batch(batch)
            written += piece.num_rows
        rest = table.slice(written)
        self._pending = rest.to_batches() if rest.num_rows else []
        self._pending_rows = rest.num_rows

    def __exit__(self, error_type, error, traceback) -> bool:
        if error is None and self._pending_rows:
            try:
                self._flush(whole_batches_only=False)
            except BaseException as flush_error:
                self._stack.__exit__(type(flush_error), flush_error, flush_error.__traceback__)
                raise
        # Unwinds the writer, the file and, last, the atomic rename (or removal after an error).
        return self._stack.__exit__(error_type, error, traceback)


class TableReader:
    """One table file written by `TableWriter`, read by row range; `columns` reads only those."""

    def __init__(self, path: str | os.PathLike, columns: Sequence[str] | None = None):
        self.path = os.fspath(path)
        try:
            options = None
            if columns is not None:
                names = pa.ipc.open_file(pa.OSFile(self.path)).schema.names
                missing = sorted(set(columns) - set(names))
                if missing:
                    raise ValueError(f"{self.path}: no column(s) {missing}")
                options = pa.ipc.IpcReadOptions(included_fields=[names.index(column) for column in columns])
            self._reader = pa.ipc.open_file(pa.OSFile(self.path), options=options)
        except (pa.ArrowInvalid, OSError) as error:
            raise ValueError(f"{self.path}: not a table written by this pipeline ({error})") from None
        metadata = self._reader.schema.metadata or {}
        if BATCH_ROWS_KEY not in metadata:
            raise ValueError(f"{self.path}: not a table written by this pipeline (no batch size)")
        self.batch_rows = int(metadata[BATCH_ROWS_KEY])
        self._cached: tuple[int, pa.RecordBatch] | None = None
        batches = self._reader.num_record_batches  # all of `batch_rows` rows but the last
        self.num_rows = (batches - 1) * self.batch_rows + self._batch(batches - 1).num_rows if batches else 0

    @property
    def schema(self) -> pa.Schema:
        return self._reader.schema

    def metadata(self, key: str):
        """A value stored with `TableWriter(metadata=...)`, decoded from JSON."""
        value = (self._reader.schema.metadata or {}).get(key.encode())
        if value is None:
            raise ValueError(f"{self.path}: no '{key}' in the table's metadata")
        return json.loads(value)

    def _batch(self, index: int) -> pa.RecordBatch:
        # Consecutive reads of neighbouring ranges often fall in the same batch: keep the last one.
        if self._cached is None or self._cached[0] != index:
            self._cached = (index, self._reader.get_batch(index))
        return self._cached[1]

    def read(self, start: int, stop: int) -> pa.Table:
        """Rows [start, stop) as a table (reading only the batches that hold them)."""
        start, stop = max(0, start), min(stop, self.num_rows)
        if start >= stop:
            return self.schema.empty_table()
        pieces = []
        for index in range(start // self.batch_rows, (stop - 1) // self.batch_rows + 1):
            first = index * self.batch_rows
            batch = self._batch(index)
            pieces.append(batch.slice(max(start - first, 0), min(stop, first + batch.num_rows) - max(start, first)))
        return pa.Table.from_batches(pieces, schema=self.schema)

    def batches(self) -> Iterator[pa.RecordBatch]:
        """Every record batch in order (each read from disk once, then dropped)."""
        for index in range(self._reader.num_record_batches):
            yield self._reader.get_batch(index)


class PartedTable:
    """Tables of the same schema, one file per part, read as one table (parts in order)."""

    def __init__(self, paths: Sequence[str | os.PathLike], columns: Sequence[str] | None = None):
        if not paths:
            raise ValueError("a parted table needs at least one part")
        self.parts = [TableReader(path, columns) for path in paths]
        schemas = {part.schema.remove_metadata() for part in self.parts}
        if len(schemas) != 1:
            raise ValueError(f"parts {[part.path for part in self.parts]} do not share one schema")
        self.offsets = [0]
        for part in self.parts:
            self.offsets.append(self.offsets[-1] + part.num_rows)

    @property
    def num_rows(self) -> int:
        return self.offsets[-1]

    @property
    def schema(self) -> pa.Schema:
        return self.parts[0].schema

    def read(self, start: int, stop: int) -> pa.Table:
        """Rows [start, stop) of the whole table."""
        pieces = []
        for index, part in enumerate(self.parts):
            first, last = self.offsets[index], self.offsets[index + 1]
            if first < stop and start < last:
                pieces.append(part.read(max(start, first) - first, min(stop, last) - first))
        if not pieces:
            return self.schema.empty_table()
        return pa.concat_tables(pieces)

    def blocks(self, start: int = 0, stop: int | None = None, rows: int = 65536) -> Iterator[pa.Table]:
        """Rows [start, stop) in blocks of at most `rows` rows."""
        stop = self.num_rows if stop is None else stop
        for first in range(start, stop, rows):
            yield self.read(first, min(first + rows, stop))


def parquet_to_tsv_gz(parquet_path: str | os.PathLike, tsv_path: str | os.PathLike, batch_rows: int = 65536) -> int:
    """A Parquet table as gzip-compressed TSV with a header line (nulls empty), batch by batch;
    returns the number of rows. For readers without a Parquet library. The gzip header holds no
    name or time, so that the same table gives the same bytes."""
    import gzip

    import pyarrow.csv as csv
    import pyarrow.parquet as pq

    table = pq.ParquetFile(parquet_path)
    rows = 0
    with atomic_path(tsv_path) as temporary, open(temporary, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", compresslevel=6, fileobj=raw, mtime=0) as out, \
            csv.CSVWriter(out, table.schema_arrow, write_options=csv.WriteOptions(delimiter="\t")) as writer:
        for batch in table.iter_batches(batch_rows):
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows
