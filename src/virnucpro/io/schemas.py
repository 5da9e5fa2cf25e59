"""The tables that flow between stages: their Arrow schemas, and the reasons a read goes unclassified.

Each table is written by one stage and read by later ones; its schema lives here so that a reader
never imports the stage that writes it.
"""

from __future__ import annotations

import pyarrow as pa

# Rows per record batch of the reads, chunks and frames tables.
TABLE_BATCH_ROWS = 65536

# Stage 1's input: each part of a sample's input, the records as read (`partition_input`).
INPUT_PART_SCHEMA = pa.schema([("id", pa.string()), ("header", pa.string()), ("sequence", pa.large_string())])

# Stage 1: the reads (the manifest every later stage joins to by read index) and their chunks.
READ_SCHEMA = pa.schema(
    [
        ("read_index", pa.int64()),
        ("read_id", pa.string()),
        ("length", pa.int64()),
        ("ambiguous_bases", pa.int64()),
        ("chunks", pa.int32()),
        ("origin_sequence", pa.string()),
        ("origin_position", pa.int64()),
    ]
)
CHUNK_SCHEMA = pa.schema(
    [("read_index", pa.int64()), ("chunk", pa.int32()), ("start", pa.int64()), ("sequence", pa.large_string())]
)

# Stage 2: the stop-free frames of every chunk, and a row per chunk with the reason when it has none.
FRAME_SCHEMA = pa.schema(
    [
        ("read_index", pa.int64()),
        ("chunk", pa.int32()),
        ("frame", pa.int8()),
        ("protein", pa.string()),
        ("nucleotide", pa.string()),
    ]
)
CHUNK_SUMMARY_SCHEMA = pa.schema(
    [
        ("read_index", pa.int64()),
        ("chunk", pa.int32()),
        ("start", pa.int64()),
        ("length", pa.int32()),
        ("ambiguous_bases", pa.int32()),
        ("frames", pa.int8()),
        ("reason", pa.string()),
    ]
)

# Stages 3 and 4: a shard's frames as tokens for its embedding model.
TOKEN_SCHEMA = pa.schema([("tokens", pa.list_(pa.uint16()))])

# Stage 8: a shard's frame scores, by row of the frames table.
FRAME_PREDICTION_SCHEMA = pa.schema(
    [("row", pa.int64()), ("score_others", pa.float32()), ("score_virus", pa.float32())]
)

# Stage 9: one row per input read (`read_predictions.parquet`), and the columns of `viral_regions.tsv`.
READ_PREDICTION_SCHEMA = pa.schema(
    [
        ("sample", pa.string()),
        ("read_index", pa.int64()),
        ("read_id", pa.string()),
        ("length", pa.int64()),
        ("ambiguous_bases", pa.int64()),
        ("chunks", pa.int32()),
        ("frames", pa.int32()),
        ("call", pa.string()),
        ("is_virus", pa.bool_()),
        ("score_virus", pa.float32()),
        ("score_others", pa.float32()),
        ("best_frame", pa.string()),
        ("reason", pa.string()),
        ("classified_chunks", pa.int32()),
        ("viral_chunks", pa.int32()),
        ("viral_chunk_fraction", pa.float32()),
        ("viral_regions", pa.int32()),
        ("expected_length", pa.int32()),
        ("classifier", pa.string()),
    ]
)
REGION_COLUMNS = ("sequence_id", "sequence_length", "region", "start", "end", "first_chunk", "last_chunk",
                  "viral_chunks", "mean_score_virus")

# Why a read or chunk has no call (the `reason` column).
REASON_EMPTY_SEQUENCE = "empty_sequence"
REASON_TOO_SHORT = "too_short"
REASON_TOO_AMBIGUOUS = "too_ambiguous"
REASON_NO_STOP_FREE_FRAME = "no_stop_free_frame"
REASON_BELOW_MIN_CODONS = "below_min_codons"  # a read (not a chunk): fewer codons than `min_codons`
