"""Stage 9: from frame predictions to calls, and the output files.

- `prediction_results.txt`: VirNucPro's per-frame file (Sequence_ID, Prediction, score1, score2).
- `prediction_results_highestscore.csv`: VirNucPro's consensus file. VirNucPro groups frames by
  their ID minus the two-character frame suffix, i.e. by chunk, and calls a chunk a virus when its
  highest virus score (score2) is at least its highest others score (score1); rows sorted by ID.
- `read_predictions.parquet`: one row per input read, in input order, with the same rule applied
  over all frames of all the read's chunks. Reads that could not be classified keep a row with a
  null call and the reason (empty_sequence, too_short, too_ambiguous, no_stop_free_frame).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from virnucpro.chunking import chunk_id
from virnucpro.sequence_io import atomic_output, atomic_path

log = logging.getLogger(__name__)

REASON_EMPTY_SEQUENCE = "empty_sequence"

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
        ("expected_length", pa.int32()),
        ("classifier", pa.string()),
    ]
)


def read_frame_predictions(paths: Sequence[str | os.PathLike]) -> pa.Table:
    """Frame predictions of all shards, in shard order (which is the order of the input reads)."""
    return pa.concat_tables([pq.read_table(path) for path in paths])


def write_prediction_results(path, frame_ids: list[str], others: np.ndarray, virus: np.ndarray) -> None:
    """VirNucPro's prediction_results.txt; scores printed as NumPy prints float32 values."""
    labels = np.where(virus > others, "virus", "others")
    with atomic_output(path) as out:
        out.write("Sequence_ID\tPrediction\tscore1\tscore2\n")
        for row in zip(frame_ids, labels, others.astype(str), virus.astype(str)):
            out.write("\t".join(row) + "\n")


def chunk_best_scores(frame_ids: list[str], others: np.ndarray, virus: np.ndarray) -> dict[str, list[float]]:
    """Per chunk (frame ID minus its frame suffix): [highest others score, highest virus score].

    VirNucPro's consensus calls a chunk a virus when the second is at least the first.
    """
    best: dict[str, list[float]] = {}
    for frame_id, score_others, score_virus in zip(frame_ids, others.tolist(), virus.tolist()):
        scores = best.setdefault(frame_id[:-2], [score_others, score_virus])
        scores[0], scores[1] = max(scores[0], score_others), max(scores[1], score_virus)
    return best


def write_highest_score(path, frame_ids: list[str], others: np.ndarray, virus: np.ndarray) -> None:
    """VirNucPro's prediction_results_highestscore.csv (tab-separated, like the original)."""
    best = chunk_best_scores(frame_ids, others, virus)
    with atomic_output(path) as out:
        out.write("Modified_ID\tIs_Virus\n")
        for group in sorted(best):
            score_others, score_virus = best[group]
            out.write(f"{group}\t{score_virus >= score_others}\n")


def read_calls(sample: str, manifest: pa.Table, chunk_summary: pa.Table, frame_ids: list[str], others: np.ndarray,
               virus: np.ndarray, expected_length: int, classifier: str) -> pa.Table:
    """One row per input read: the consensus call over all its frames, or why there is none."""
    read_ids = manifest.column("read_id").to_pylist()
    chunk_counts = manifest.column("chunks").to_numpy()
    read_of_chunk = {chunk_id(read_id, k): row for row, (read_id, n) in enumerate(zip(read_ids, chunk_counts))
                     for k in range(1, n + 1)}

    reasons: list[set[str]] = [set() for _ in read_ids]
    expected_frames = np.zeros(len(read_ids), dtype=np.int64)
    for chunk, count, reason in zip(chunk_summary.column("chunk_id").to_pylist(),
                                    chunk_summary.column("frames").to_numpy(),
                                    chunk_summary.column("reason").to_pylist()):
        row = read_of_chunk[chunk]
        expected_frames[row] += count
        if reason is not None:
            reasons[row].add(reason)

    frame_read = np.fromiter((read_of_chunk[f[:-2]] for f in frame_ids), dtype=np.int64, count=len(frame_ids))
    frame_counts = np.bincount(frame_read, minlength=len(read_ids))
    if not np.array_equal(frame_counts, expected_frames):
        lost = int(np.flatnonzero(frame_counts != expected_frames)[0])
        raise ValueError(f"frame predictions do not match the identified frames (read '{read_ids[lost]}': "
                         f"{frame_counts[lost]} predicted, {expected_frames[lost]} identified)")

    max_virus = np.full(len(read_ids), -np.inf, dtype=np.float32)
    max_others = np.full(len(read_ids), -np.inf, dtype=np.float32)
    np.maximum.at(max_virus, frame_read, virus)
    np.maximum.at(max_others, frame_read, others)
    best_frame: list[str | None] = [None] * len(read_ids)
    for index in np.lexsort((-virus, frame_read)):  # per read, its highest virus score first
        if best_frame[frame_read[index]] is None:
            best_frame[frame_read[index]] = frame_ids[index]

    classified = frame_counts > 0
    is_virus = max_virus >= max_others
    lengths = manifest.column("length").to_numpy()
    reason = [None if classified[i] else (REASON_EMPTY_SEQUENCE if lengths[i] == 0 else ",".join(sorted(reasons[i])))
              for i in range(len(read_ids))]
    return pa.table({
        "sample": pa.array([sample] * len(read_ids), pa.string()),
        "read_index": manifest.column("read_index"),
        "read_id": manifest.column("read_id"),
        "length": manifest.column("length"),
        "ambiguous_bases": manifest.column("ambiguous_bases"),
        "chunks": manifest.column("chunks"),
        "frames": pa.array(frame_counts.astype(np.int32)),
        "call": pa.array(np.where(is_virus, "virus", "others").tolist(), pa.string(), mask=~classified),
        "is_virus": pa.array(is_virus, pa.bool_(), mask=~classified),
        "score_virus": pa.array(max_virus, pa.float32(), mask=~classified),
        "score_others": pa.array(max_others, pa.float32(), mask=~classified),
        "best_frame": pa.array(best_frame, pa.string()),
        "reason": pa.array(reason, pa.string()),
        "expected_length": pa.array([expected_length] * len(read_ids), pa.int32()),
        "classifier": pa.array([classifier] * len(read_ids), pa.string()),
    }, schema=READ_PREDICTION_SCHEMA)


def write_outputs(sample: str, manifest_path, chunk_summary_path, frame_prediction_paths, expected_length: int,
                  classifier: str, results_txt, highest_score_csv, read_table_path, note: str | None = None) -> pa.Table:
    """All stage-9 outputs; `note` (a warning about the models) goes into the read table's metadata."""
    frames = read_frame_predictions(frame_prediction_paths)
    frame_ids = frames.column("id").to_pylist()
    others = frames.column("score_others").to_numpy()
    virus = frames.column("score_virus").to_numpy()
    calls = read_calls(sample, pq.read_table(manifest_path), pq.read_table(chunk_summary_path), frame_ids, others,
                       virus, expected_length, classifier)
    write_prediction_results(results_txt, frame_ids, others, virus)
    write_highest_score(highest_score_csv, frame_ids, others, virus)
    if note:
        log.warning("%s", note)
        calls = calls.replace_schema_metadata({"virnucpro.note": note})
    with atomic_path(read_table_path) as temporary:
        pq.write_table(calls, temporary)
    return calls
