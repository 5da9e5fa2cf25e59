"""Stage 9: from frame predictions to calls, and the output files.

- `prediction_results.txt`: VirNucPro's per-frame file (Sequence_ID, Prediction, score1, score2),
  the shards' rows (written by stage 8) after the header.
- `prediction_results_highestscore.csv`: VirNucPro's consensus file. VirNucPro groups frames by
  their ID minus the two-character frame suffix, i.e. by chunk, and calls a chunk a virus when its
  highest virus score (score2) is at least its highest others score (score1); rows sorted by ID.
- `read_predictions.parquet`: one row per input read, in input order, with the same rule applied
  over all frames of all the read's chunks: `score_virus` and `score_others` are the highest virus
  and others scores over all of them (they may come from different frames), the call is `virus`
  when the first is at least the second, and `best_frame` is the frame that decided the call (the
  one with the highest virus score for a virus read, the highest others score for an others read).
  It also counts the read's classified and viral chunks and its viral regions. Reads that could
  not be classified keep a row with a null call and the reason (empty_sequence, too_short,
  too_ambiguous, no_stop_free_frame). A read shorter than `min_codons` codons gets no call either
  (`below_min_codons`), although its frames have scores: a few amino acids say nothing about where
  a sequence comes from, yet the classifier scores them as confidently as any (a 3-bp read scored
  1.0). VirNucPro's own files keep every frame and chunk, as the original does.
- `viral_regions.tsv`: the runs of viral chunks of every sequence, with their coordinates and mean
  score (see `virnucpro.stages.regions`).

Everything is streamed. Reads, chunks, frames and predictions are all stored in input order, so a
block of reads covers a run of chunk rows and a run of frame rows that the chunk and frame counts
give directly; each block is joined by these integer positions and written out. A block holds at
most READ_BLOCK_ROWS reads and CHUNK_BLOCK_ROWS chunks (but for a single longer sequence), so
100 million short reads and a few long genomes are both read in bounded memory. The one global
order, the consensus file's sort by chunk ID, is made by an external merge sort: sorted runs of
a bounded size spilled to disk, then merged.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from virnucpro.io.atomic import atomic_paths, concatenate_files, scratch_directory
from virnucpro.io.ids import chunk_id
from virnucpro.io.ids import frame_id
from virnucpro.io.schemas import REGION_COLUMNS
from virnucpro.io.schemas import READ_PREDICTION_SCHEMA, REASON_BELOW_MIN_CODONS, REASON_EMPTY_SEQUENCE
from virnucpro.io.tables import PartedTable, TableReader, TableWriter
from virnucpro.stages.regions import region_lines, viral_regions

log = logging.getLogger(__name__)

RESULTS_HEADER = b"Sequence_ID\tPrediction\tscore1\tscore2\n"
READ_BLOCK_ROWS = 65536
CHUNK_BLOCK_ROWS = 524288
SORT_RUN_ROWS = 4_000_000


class _Predictions:
    """The shards' frame predictions as one stream of rows, taken in consecutive runs."""

    def __init__(self, paths: Sequence[str | os.PathLike]):
        self._batches = (batch for path in paths for batch in pq.ParquetFile(path).iter_batches(65536))
        self._held = pa.table({"row": pa.array([], pa.int64()), "score_others": pa.array([], pa.float32()),
                               "score_virus": pa.array([], pa.float32())})
        self.next_row = 0

    def take(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(others, virus) scores of the next `count` frame rows."""
        pieces, held = [self._held], self._held.num_rows
        while held < count:
            batch = next(self._batches, None)
            if batch is None:
                raise ValueError(f"frame predictions end at row {self.next_row + held}, "
                                 f"frames go on to row {self.next_row + count}")
            pieces.append(pa.Table.from_batches([batch]))
            held += batch.num_rows
        table = pa.concat_tables(pieces)
        taken, self._held = table.slice(0, count), table.slice(count)
        rows = taken.column("row").to_numpy()
        if not np.array_equal(rows, np.arange(self.next_row, self.next_row + count)):
            raise ValueError(f"frame predictions of rows {self.next_row}-{self.next_row + count} are missing or "
                             "out of order")
        self.next_row += count
        return (taken.column("score_others").to_numpy(), taken.column("score_virus").to_numpy())

    def finish(self) -> None:
        if self._held.num_rows or next(self._batches, None) is not None:
            raise ValueError(f"frame predictions go on after the last frame (row {self.next_row})")


class _SortedRuns:
    """(key, value) pairs put out in key order, in bounded memory: sorted runs spilled to disk,
    merged at the end."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = directory
        self.runs: list[str] = []
        self.keys: list[pa.Array] = []
        self.values: list[np.ndarray] = []
        self.held = 0

    def add(self, keys: pa.Array, values: np.ndarray) -> None:
        self.keys.append(keys)
        self.values.append(values)
        self.held += len(keys)
        if self.held >= SORT_RUN_ROWS:
            self._spill()

    def _spill(self) -> None:
        keys, values = pa.concat_arrays(self.keys), np.concatenate(self.values)
        order = pc.sort_indices(keys)
        path = os.path.join(self.directory, f"run{len(self.runs)}.arrow")
        with TableWriter(path, pa.schema([("key", pa.string()), ("value", pa.bool_())]), 65536) as run:
            run.write_columns({"key": keys.take(order), "value": values[order.to_numpy()]})
        self.runs.append(path)
        self.keys, self.values, self.held = [], [], 0

    def __iter__(self) -> Iterator[tuple[str, bool]]:
        if self.held:
            self._spill()
        streams = [((key, value) for batch in TableReader(path).batches()
                    for key, value in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()))
                   for path in self.runs]
        return heapq.merge(*streams, key=lambda pair: pair[0])


def _read_blocks(reads: PartedTable) -> Iterator[pa.Table]:
    """The reads in blocks of at most READ_BLOCK_ROWS reads and CHUNK_BLOCK_ROWS chunks (a read
    with more chunks has a block of its own)."""
    for block in reads.blocks(rows=READ_BLOCK_ROWS):
        chunk_ends = np.cumsum(block.column("chunks").to_numpy())
        start = 0
        while start < block.num_rows:
            before = int(chunk_ends[start - 1]) if start else 0
            stop = max(start + 1, int(np.searchsorted(chunk_ends, before + CHUNK_BLOCK_ROWS, side="right")))
            yield block.slice(start, stop - start)
            start = stop


def write_outputs(sample: str, read_paths: list, chunk_paths: list, frame_paths: list, prediction_paths: list,
                  line_paths: list, expected_length: int, classifier: str, results_txt, highest_score_csv,
                  read_table_path, regions_path, note: str | None = None, models: dict | None = None,
                  min_codons: int = 1) -> dict[str, int]:
    """All stage-9 outputs. The read table's metadata carries `models` (kind -> identity of the models
    that made the calls, see `model_cache.model_identity`) and `note` (a warning about them).

    Returns the number of reads per call ("virus", "others", "unclassified") and of viral regions
    ("viral_regions")."""
    reads = PartedTable(read_paths)
    chunks = PartedTable(chunk_paths, columns=["read_index", "chunk", "start", "length", "frames", "reason"])
    frames = PartedTable(frame_paths, columns=["read_index", "chunk", "frame"])
    predictions = _Predictions(prediction_paths)
    metadata = {**({"virnucpro.models": json.dumps(models)} if models else {}),
                **({"virnucpro.note": note} if note else {})}
    schema = READ_PREDICTION_SCHEMA.with_metadata(metadata or None)
    counts = {"virus": 0, "others": 0, "unclassified": 0, "viral_regions": 0}
    # The four files appear together, the read table last, when all are written; or not at all.
    with atomic_paths([results_txt, highest_score_csv, regions_path, read_table_path]) as (
            results, highest, regions, table), scratch_directory(read_table_path) as scratch:
        chunk_calls = _SortedRuns(scratch)
        chunk_row = frame_row = 0
        with pq.ParquetWriter(table, schema) as read_table, open(regions, "w", encoding="utf-8") as regions_table:
            regions_table.write("\t".join(REGION_COLUMNS) + "\n")
            for block in _read_blocks(reads):
                chunk_count = int(pc.sum(block.column("chunks")).as_py() or 0)
                chunk_block = chunks.read(chunk_row, chunk_row + chunk_count)
                frame_count = int(pc.sum(chunk_block.column("frames")).as_py() or 0)
                frame_block = frames.read(frame_row, frame_row + frame_count)
                others, virus = predictions.take(frame_count)
                calls, region_count = _read_calls(sample, block, chunk_block, frame_block, others, virus,
                                                  expected_length, classifier, chunk_calls, regions_table, min_codons)
                read_table.write_table(calls.replace_schema_metadata(schema.metadata))
                counts["viral_regions"] += region_count
                for call, number in zip(*np.unique(calls.column("call").fill_null("unclassified").to_numpy(
                        zero_copy_only=False), return_counts=True)):
                    counts[call] += int(number)
                chunk_row, frame_row = chunk_row + chunk_count, frame_row + frame_count
        if chunk_row != chunks.num_rows or frame_row != frames.num_rows:
            raise ValueError(f"the reads' chunk counts give {chunk_row} chunks and {frame_row} frames, stage 2 "
                             f"wrote {chunks.num_rows} and {frames.num_rows}")
        predictions.finish()
        with open(highest, "w", encoding="utf-8") as out:
            out.write("Modified_ID\tIs_Virus\n")
            for key, is_virus in chunk_calls:
                out.write(f"{key}\t{is_virus}\n")
        with open(results, "wb") as out:
            out.write(RESULTS_HEADER)
            concatenate_files(line_paths, out)
    if note:
        log.warning("%s", note)
    return counts


def _read_calls(sample: str, reads: pa.Table, chunks: pa.Table, frames: pa.Table, others: np.ndarray,
                virus: np.ndarray, expected_length: int, classifier: str, chunk_calls: _SortedRuns,
                regions_table, min_codons: int) -> tuple[pa.Table, int]:
    """The read table's rows for a block of reads; its chunks' consensus calls go into
    `chunk_calls`, its viral regions to `regions_table`, whose number is returned."""
    first_read = reads.column("read_index")[0].as_py()
    read_ids = reads.column("read_id").to_pylist()
    frame_read = frames.column("read_index").to_numpy() - first_read
    frame_chunk = frames.column("chunk").to_numpy()
    chunk_frames = chunks.column("frames").to_numpy().astype(np.int64)
    chunk_read = chunks.column("read_index").to_numpy() - first_read
    if not (np.array_equal(np.repeat(chunk_read, chunk_frames), frame_read)
            and np.array_equal(np.repeat(chunks.column("chunk").to_numpy(), chunk_frames), frame_chunk)):
        raise ValueError(f"the frames of reads {first_read}-{first_read + len(read_ids)} do not match their chunks")

    # Per chunk with frames: its highest scores, VirNucPro's consensus, under its ID.
    with_frames = np.flatnonzero(chunk_frames > 0)
    frame_starts = (np.cumsum(chunk_frames) - chunk_frames)[with_frames]
    chunk_number = chunks.column("chunk").to_numpy()
    chunk_virus = np.zeros(len(chunk_frames), dtype=np.float32)
    chunk_is_virus = np.zeros(len(chunk_frames), dtype=bool)
    if len(with_frames):
        chunk_virus[with_frames] = np.maximum.reduceat(virus, frame_starts)
        chunk_is_virus[with_frames] = chunk_virus[with_frames] >= np.maximum.reduceat(others, frame_starts)
        names = [chunk_id(read_ids[r], c) for r, c in zip(chunk_read[with_frames].tolist(),
                                                          chunk_number[with_frames].tolist())]
        chunk_calls.add(pa.array(names, pa.string()), chunk_is_virus[with_frames])
    lengths = reads.column("length").to_numpy()
    frame_counts = np.bincount(frame_read, minlength=len(read_ids))
    classified = frame_counts > 0
    too_short = classified & (lengths < 3 * min_codons)
    called = classified & ~too_short
    # a read without a call has no viral region either
    regions = viral_regions(len(read_ids), chunk_read, chunk_number, chunks.column("start").to_numpy(),
                            chunks.column("length").to_numpy(), (chunk_frames > 0) & ~too_short[chunk_read],
                            chunk_is_virus, chunk_virus)
    regions_table.write(region_lines(regions, read_ids, lengths))

    # Per read: the same rule over all frames of all its chunks.
    starts = (np.cumsum(frame_counts) - frame_counts)[classified]
    max_virus = np.zeros(len(read_ids), dtype=np.float32)
    max_others = np.zeros(len(read_ids), dtype=np.float32)
    best_frame: list[str | None] = [None] * len(read_ids)
    if len(starts):
        max_virus[classified] = np.maximum.reduceat(virus, starts)
        max_others[classified] = np.maximum.reduceat(others, starts)
    is_virus = max_virus >= max_others
    if len(starts):
        # The frame that decided the call: the highest score of the called class (the first such frame).
        deciding = np.where(is_virus[frame_read], virus, others)
        best = np.lexsort((-deciding, frame_read))[starts]
        frame_numbers = frames.column("frame").to_numpy()
        for index in best.tolist():
            best_frame[frame_read[index]] = frame_id(read_ids[frame_read[index]], int(frame_chunk[index]),
                                                     int(frame_numbers[index]))

    reasons: list[set[str]] = [set() for _ in read_ids]
    for row, reason in zip(chunk_read.tolist(), chunks.column("reason").to_pylist()):
        if reason is not None:
            reasons[row].add(reason)
    reason = [None if called[i] else REASON_EMPTY_SEQUENCE if lengths[i] == 0 else
              REASON_BELOW_MIN_CODONS if too_short[i] else ",".join(sorted(reasons[i])) for i in range(len(read_ids))]
    return pa.table({
        "sample": pa.array([sample] * len(read_ids), pa.string()),
        "read_index": reads.column("read_index"),
        "read_id": reads.column("read_id"),
        "length": reads.column("length"),
        "ambiguous_bases": reads.column("ambiguous_bases"),
        "chunks": reads.column("chunks"),
        "frames": pa.array(frame_counts.astype(np.int32)),
        "call": pa.array(np.where(is_virus, "virus", "others").tolist(), pa.string(), mask=~called),
        "is_virus": pa.array(is_virus, pa.bool_(), mask=~called),
        "score_virus": pa.array(max_virus, pa.float32(), mask=~classified),
        "score_others": pa.array(max_others, pa.float32(), mask=~classified),
        "best_frame": pa.array(best_frame, pa.string()),
        "reason": pa.array(reason, pa.string()),
        "classified_chunks": pa.array(regions.classified_chunks.astype(np.int32)),
        "viral_chunks": pa.array(regions.viral_chunks.astype(np.int32)),
        "viral_chunk_fraction": pa.array(regions.viral_chunks / np.maximum(regions.classified_chunks, 1),
                                         pa.float32(), mask=regions.classified_chunks == 0),
        "viral_regions": pa.array(regions.regions.astype(np.int32)),
        "expected_length": pa.array([expected_length] * len(read_ids), pa.int32()),
        "classifier": pa.array([classifier] * len(read_ids), pa.string()),
    }, schema=READ_PREDICTION_SCHEMA), len(regions.number)
