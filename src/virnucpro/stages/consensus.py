"""Stage 9: from frame predictions to calls, and the output files.

- `prediction_results.txt`: VirNucPro's per-frame file (Sequence_ID, Prediction, score1, score2),
  the shards' rows (written by stage 8) after the header.
- `prediction_results_highestscore.csv`: VirNucPro's consensus file. VirNucPro groups frames by
  their ID minus the two-character frame suffix, i.e. by chunk, and calls a chunk a virus when its
  highest virus score (score2) is at least its highest others score (score1); rows sorted by ID.
- `read_predictions.parquet`: one row per input read, in input order. `score_virus` and
  `score_others` are the highest virus and others scores over all frames of all the read's chunks
  (they may come from different frames). Its `call` follows the configured `CallRule`: a read of
  one chunk is `virus` by VirNucPro's rule (highest virus score at least the highest others score)
  and a minimum virus score (0 by default, i.e. VirNucPro's rule alone); a sequence of several
  chunks is `virus` by its share of viral chunks, `provirus` when only a region of it is viral,
  else `others`. `best_frame` is the frame that decided the call (the one with the highest virus
  score for a virus or provirus, the highest others score for an others read). It also counts the
  read's classified and viral chunks and its viral regions. Reads that could not be classified
  keep a row with a null call and the reason (empty_sequence, too_short, too_ambiguous,
  no_stop_free_frame). A read shorter than `min_codons` codons gets no call either
  (`below_min_codons`) and no viral region, although its frames have scores: a few amino acids say
  nothing about where a sequence comes from, yet the classifier scores them as confidently as any
  (a 3-bp read scored 1.0). The rule applied is in the table's metadata (`virnucpro.calls`).
- `viral_regions.tsv`: the runs of viral chunks of every sequence, with their coordinates and mean
  score (see `virnucpro.stages.regions`), its chunks viral by the same rule as the reads.
- `score_tracks.tsv`: every chunk of the few longest sequences with viral regions, with its
  highest virus score, for the report's score tracks.

VirNucPro's two files follow VirNucPro's rule whatever the call rule.

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
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from virnucpro.io.atomic import atomic_paths, concatenate_files, scratch_directory
from virnucpro.io.ids import chunk_id, frame_id
from virnucpro.io.schemas import (READ_PREDICTION_SCHEMA, REASON_BELOW_MIN_CODONS, REASON_EMPTY_SEQUENCE, REGION_COLUMNS,
                                   SCORE_TRACK_COLUMNS)
from virnucpro.io.tables import PartedTable, TableReader, TableWriter
from virnucpro.stages.regions import Regions, region_lines, viral_regions

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


@dataclass(frozen=True)
class CallRule:
    """How the read table's `call` is made (the config's `calls`; `virnucpro.run.config.call_rule`).

    A chunk counts as viral when VirNucPro calls it so (highest virus score at least the highest
    others score) and its highest virus score reaches `min_score_virus` (0: VirNucPro's rule).
    A read of one chunk is called as its chunk. A sequence of several chunks is `virus` when its
    viral chunks reach `min_viral_chunk_fraction` of its classified chunks, else `provirus` when it
    has a viral region with at least `min_provirus_length` viral bases (in its viral chunks, not
    counting the unclassified chunks it spans), else `others` (smaller regions stay in the regions
    table: a few stray viral chunks do not make a host contig a provirus). A read shorter than
    `min_codons` codons gets no call (1: VirNucPro's rule, any complete codon).
    """

    preset: str
    min_score_virus: float
    min_viral_chunk_fraction: float
    min_provirus_length: int
    min_codons: int = 1

    def too_short(self, reads: pa.Table) -> np.ndarray:
        """The block's reads too short for a call."""
        return reads.column("length").to_numpy() < 3 * self.min_codons


@dataclass(frozen=True)
class StageInputs:
    """The part files of stages 1-2 and the shard files of stage 8, in order."""

    reads: Sequence[str | os.PathLike]
    chunk_summary: Sequence[str | os.PathLike]
    frames: Sequence[str | os.PathLike]
    predictions: Sequence[str | os.PathLike]
    lines: Sequence[str | os.PathLike]


@dataclass(frozen=True)
class Outputs:
    results_txt: str | os.PathLike
    highest_score: str | os.PathLike
    read_table: str | os.PathLike
    regions: str | os.PathLike
    score_tracks: str | os.PathLike


def write_outputs(sample: str, inputs: StageInputs, outputs: Outputs, expected_length: int, classifier: str,
                  rule: CallRule, score_tracks: int = 0, note: str | None = None,
                  models: dict | None = None) -> dict[str, int]:
    """All stage-9 outputs. The read table's metadata carries the call rule, `models` (kind ->
    identity of the models that made the calls, see `model_cache.model_identity`) and `note` (a
    warning about them). `score_tracks` is how many of the longest sequences with viral regions
    get their chunk scores in the score-track table.

    Returns the number of reads per call ("virus", "provirus", "others", "unclassified") and of
    viral regions ("viral_regions")."""
    reads = PartedTable(inputs.reads)
    chunks = PartedTable(inputs.chunk_summary,
                         columns=["read_index", "chunk", "start", "length", "frames", "reason"])
    frames = PartedTable(inputs.frames, columns=["read_index", "chunk", "frame"])
    predictions = _Predictions(inputs.predictions)
    metadata = {"virnucpro.calls": json.dumps(asdict(rule)),
                **({"virnucpro.models": json.dumps(models)} if models else {}),
                **({"virnucpro.note": note} if note else {})}
    schema = READ_PREDICTION_SCHEMA.with_metadata(metadata)
    counts = {"virus": 0, "provirus": 0, "others": 0, "unclassified": 0, "viral_regions": 0}
    longest = _LongestWithRegions(score_tracks)
    # The files appear together, the read table last, when all are written; or not at all.
    with atomic_paths([outputs.results_txt, outputs.highest_score, outputs.regions, outputs.score_tracks,
                       outputs.read_table]) as (results, highest, regions_path, tracks, table), \
            scratch_directory(outputs.read_table) as scratch:
        chunk_calls = _SortedRuns(scratch)
        chunk_row = frame_row = 0
        with pq.ParquetWriter(table, schema) as read_table, \
                open(regions_path, "w", encoding="utf-8") as regions_table:
            regions_table.write("\t".join(REGION_COLUMNS) + "\n")
            for block in _read_blocks(reads):
                chunk_count = int(pc.sum(block.column("chunks")).as_py() or 0)
                chunk_block = chunks.read(chunk_row, chunk_row + chunk_count)
                frame_count = int(pc.sum(chunk_block.column("frames")).as_py() or 0)
                frame_block = frames.read(frame_row, frame_row + frame_count)
                others, virus = predictions.take(frame_count)
                _check_frames_match_chunks(block, chunk_block, frame_block)

                scores = chunk_scores(chunk_block, others, virus)
                chunk_calls.add(*virnucpro_chunk_calls(block, chunk_block, scores))
                regions = block_regions(block, chunk_block, scores, rule)
                regions_table.write(region_lines(regions, block.column("read_id").to_pylist(),
                                                 block.column("length").to_numpy()))
                longest.add(block, chunk_block, scores, rule, regions)
                calls = read_rows(sample, block, chunk_block, frame_block, others, virus, regions, rule,
                                  expected_length, classifier)
                read_table.write_table(calls.replace_schema_metadata(schema.metadata))

                counts["viral_regions"] += len(regions.number)
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
            concatenate_files(inputs.lines, out)
        longest.write(tracks)
    if note:
        log.warning("%s", note)
    return counts


def _check_frames_match_chunks(reads: pa.Table, chunks: pa.Table, frames: pa.Table) -> None:
    """Each chunk's frame count covers exactly its run of frame rows."""
    first_read = reads.column("read_index")[0].as_py()
    chunk_frames = chunks.column("frames").to_numpy().astype(np.int64)
    if not (np.array_equal(np.repeat(chunks.column("read_index").to_numpy(), chunk_frames),
                           frames.column("read_index").to_numpy())
            and np.array_equal(np.repeat(chunks.column("chunk").to_numpy(), chunk_frames),
                               frames.column("chunk").to_numpy())):
        raise ValueError(f"the frames of reads {first_read}-{first_read + reads.num_rows} do not match their chunks")


@dataclass(frozen=True)
class ChunkScores:
    """Per chunk of a block: whether it has frames, and its highest virus and others scores (0 without)."""

    classified: np.ndarray
    virus: np.ndarray
    others: np.ndarray

    @property
    def virnucpro_virus(self) -> np.ndarray:
        """VirNucPro's consensus: a tie counts as virus."""
        return self.classified & (self.virus >= self.others)


def highest_scores(frame_counts: np.ndarray, others: np.ndarray,
                   virus: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For groups of consecutive frames (a chunk's, a read's) of `frame_counts` frames each: whether
    a group has frames, and its highest virus and others scores (0 without frames)."""
    has_frames = frame_counts > 0
    starts = (np.cumsum(frame_counts) - frame_counts)[has_frames]
    best_virus = np.zeros(len(frame_counts), dtype=np.float32)
    best_others = np.zeros(len(frame_counts), dtype=np.float32)
    if len(starts):
        best_virus[has_frames] = np.maximum.reduceat(virus, starts)
        best_others[has_frames] = np.maximum.reduceat(others, starts)
    return has_frames, best_virus, best_others


def chunk_scores(chunks: pa.Table, others: np.ndarray, virus: np.ndarray) -> ChunkScores:
    return ChunkScores(*highest_scores(chunks.column("frames").to_numpy().astype(np.int64), others, virus))


def virnucpro_chunk_calls(reads: pa.Table, chunks: pa.Table, scores: ChunkScores) -> tuple[pa.Array, np.ndarray]:
    """The rows of VirNucPro's consensus file for the block's classified chunks: IDs and calls."""
    read_ids = reads.column("read_id").to_pylist()
    rows = (chunks.column("read_index").to_numpy() - reads.column("read_index")[0].as_py())[scores.classified]
    names = [chunk_id(read_ids[r], c) for r, c in zip(rows.tolist(),
                                                      chunks.column("chunk").to_numpy()[scores.classified].tolist())]
    return pa.array(names, pa.string()), scores.virnucpro_virus[scores.classified]


def block_regions(reads: pa.Table, chunks: pa.Table, scores: ChunkScores, rule: CallRule) -> Regions:
    """Viral regions and chunk counts of the block's sequences, under the call rule (a read too
    short for a call has none)."""
    viral = scores.virnucpro_virus & (scores.virus >= rule.min_score_virus)
    chunk_read = chunks.column("read_index").to_numpy() - reads.column("read_index")[0].as_py()
    return viral_regions(reads.num_rows, chunk_read, chunks.column("chunk").to_numpy(),
                         chunks.column("start").to_numpy(), chunks.column("length").to_numpy(),
                         scores.classified & ~rule.too_short(reads)[chunk_read], viral, scores.virus)


def call_reads(rule: CallRule, chunks: np.ndarray, max_virus: np.ndarray, max_others: np.ndarray,
               regions: Regions) -> np.ndarray:
    """The call of each classified read (see `CallRule`)."""
    one_chunk = (max_virus >= max_others) & (max_virus >= rule.min_score_virus)
    fraction = regions.viral_chunks / np.maximum(regions.classified_chunks, 1)
    has_provirus = np.zeros(len(chunks), dtype=bool)
    has_provirus[regions.sequence[regions.viral_bases >= rule.min_provirus_length]] = True
    several = np.where(fraction >= rule.min_viral_chunk_fraction, "virus",
                       np.where(has_provirus, "provirus", "others"))
    return np.where(chunks > 1, several, np.where(one_chunk, "virus", "others")).astype(object)


def deciding_frames(read_ids: list[str], frames: pa.Table, frame_read: np.ndarray, starts: np.ndarray,
                    virus_like: np.ndarray, others: np.ndarray, virus: np.ndarray) -> list[str | None]:
    """Per read, the frame with the highest score of its called class (virus for a virus or
    provirus read, others for an others read; the first such frame), or None without frames."""
    best_frame: list[str | None] = [None] * len(read_ids)
    if len(starts):
        deciding = np.where(virus_like[frame_read], virus, others)
        frame_chunk, frame_number = frames.column("chunk").to_numpy(), frames.column("frame").to_numpy()
        for index in np.lexsort((-deciding, frame_read))[starts].tolist():
            read = frame_read[index]
            best_frame[read] = frame_id(read_ids[read], int(frame_chunk[index]), int(frame_number[index]))
    return best_frame


def unclassified_reasons(reads: pa.Table, chunks: pa.Table, classified: np.ndarray,
                         too_short: np.ndarray) -> list[str | None]:
    """Why each read without a call has none: an empty sequence, too few codons, or its chunks'
    reasons."""
    chunk_read = chunks.column("read_index").to_numpy() - reads.column("read_index")[0].as_py()
    reasons: list[set[str]] = [set() for _ in range(reads.num_rows)]
    for row, reason in zip(chunk_read.tolist(), chunks.column("reason").to_pylist()):
        if reason is not None:
            reasons[row].add(reason)
    lengths = reads.column("length").to_numpy()
    return [None if classified[i] and not too_short[i] else REASON_EMPTY_SEQUENCE if lengths[i] == 0 else
            REASON_BELOW_MIN_CODONS if too_short[i] else ",".join(sorted(reasons[i])) for i in range(reads.num_rows)]


def read_rows(sample: str, reads: pa.Table, chunks: pa.Table, frames: pa.Table, others: np.ndarray,
              virus: np.ndarray, regions: Regions, rule: CallRule, expected_length: int,
              classifier: str) -> pa.Table:
    """The read table's rows for a block of reads: the highest scores over all frames of all the
    read's chunks, its call, the frame that decided it, and why it has none."""
    read_ids = reads.column("read_id").to_pylist()
    frame_read = frames.column("read_index").to_numpy() - reads.column("read_index")[0].as_py()
    frame_counts = np.bincount(frame_read, minlength=len(read_ids))
    classified, max_virus, max_others = highest_scores(frame_counts, others, virus)
    starts = (np.cumsum(frame_counts) - frame_counts)[classified]
    call = call_reads(rule, reads.column("chunks").to_numpy(), max_virus, max_others, regions)
    too_short = classified & rule.too_short(reads)
    called = classified & ~too_short
    call[~called] = None
    return pa.table({
        "sample": pa.array([sample] * len(read_ids), pa.string()),
        "read_index": reads.column("read_index"),
        "read_id": reads.column("read_id"),
        "length": reads.column("length"),
        "ambiguous_bases": reads.column("ambiguous_bases"),
        "chunks": reads.column("chunks"),
        "frames": pa.array(frame_counts.astype(np.int32)),
        "call": pa.array(call.tolist(), pa.string()),
        "is_virus": pa.array(call == "virus", pa.bool_(), mask=~called),
        "score_virus": pa.array(max_virus, pa.float32(), mask=~classified),
        "score_others": pa.array(max_others, pa.float32(), mask=~classified),
        "best_frame": pa.array(deciding_frames(read_ids, frames, frame_read, starts, call != "others", others, virus),
                               pa.string()),
        "reason": pa.array(unclassified_reasons(reads, chunks, classified, too_short), pa.string()),
        "classified_chunks": pa.array(regions.classified_chunks.astype(np.int32)),
        "viral_chunks": pa.array(regions.viral_chunks.astype(np.int32)),
        "viral_chunk_fraction": pa.array(regions.viral_chunks / np.maximum(regions.classified_chunks, 1),
                                         pa.float32(), mask=regions.classified_chunks == 0),
        "viral_regions": pa.array(regions.regions.astype(np.int32)),
        "expected_length": pa.array([expected_length] * len(read_ids), pa.int32()),
        "classifier": pa.array([classifier] * len(read_ids), pa.string()),
    }, schema=READ_PREDICTION_SCHEMA)


class _LongestWithRegions:
    """The chunk scores of the `keep` longest sequences with viral regions seen so far (ties: the
    first in the input), for the report's score tracks; memory: those sequences' chunks."""

    def __init__(self, keep: int):
        self.keep = keep
        self.heap: list[tuple[int, int, str]] = []  # (length, -read index, its table rows as text)

    def add(self, reads: pa.Table, chunks: pa.Table, scores: ChunkScores, rule: CallRule, regions: Regions) -> None:
        if not self.keep or not len(regions.number):
            return
        lengths = reads.column("length").to_numpy()
        with_regions = np.flatnonzero(regions.regions > 0)
        candidates = with_regions[np.argsort(-lengths[with_regions], kind="stable")[: self.keep]]
        chunk_read = chunks.column("read_index").to_numpy() - reads.column("read_index")[0].as_py()
        read_ids = reads.column("read_id").to_pylist()
        first_index = reads.column("read_index")[0].as_py()
        viral = scores.virnucpro_virus & (scores.virus >= rule.min_score_virus)
        for row in candidates.tolist():
            entry = (int(lengths[row]), -(first_index + row))
            if len(self.heap) == self.keep and entry <= self.heap[0][:2]:
                continue
            mine = np.flatnonzero(chunk_read == row)
            starts, sizes = chunks.column("start").to_numpy()[mine], chunks.column("length").to_numpy()[mine]
            text = "".join(
                f"{read_ids[row]}\t{lengths[row]}\t{number}\t{start + 1}\t{start + size}\t"
                f"{f'{score:.6f}' if is_classified else ''}\t{str(bool(is_viral)).lower()}\n"
                for number, start, size, score, is_classified, is_viral in zip(
                    chunks.column("chunk").to_numpy()[mine].tolist(), starts.tolist(), sizes.tolist(),
                    scores.virus[mine].tolist(), scores.classified[mine].tolist(), viral[mine].tolist()))
            if len(self.heap) == self.keep:
                heapq.heapreplace(self.heap, (*entry, text))
            else:
                heapq.heappush(self.heap, (*entry, text))

    def write(self, path) -> None:
        with open(path, "w", encoding="utf-8") as out:
            out.write("\t".join(SCORE_TRACK_COLUMNS) + "\n")
            for _, _, text in sorted(self.heap, reverse=True):
                out.write(text)
