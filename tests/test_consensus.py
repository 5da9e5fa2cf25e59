"""Stage 9: VirNucPro's output files, and the per-read table that accounts for every read."""

import numpy as np
import pyarrow as pa
import pytest

from virnucpro.chunking import READ_MANIFEST_SCHEMA
from virnucpro.consensus import read_calls, write_highest_score, write_prediction_results
from virnucpro.translation import CHUNK_SUMMARY_SCHEMA


def original_scores(reference_dir):
    lines = (reference_dir / "prediction_results.txt").read_text().splitlines()[1:]
    rows = [line.split("\t") for line in lines]
    ids = [row[0] for row in rows]
    others = np.array([row[2] for row in rows], dtype=np.float32)
    virus = np.array([row[3] for row in rows], dtype=np.float32)
    return ids, others, virus


def test_prediction_results_reproduce_the_original_file(reference_dir, tmp_path):
    ids, others, virus = original_scores(reference_dir)
    write_prediction_results(tmp_path / "prediction_results.txt", ids, others, virus)
    assert (tmp_path / "prediction_results.txt").read_bytes() == (reference_dir / "prediction_results.txt").read_bytes()


def test_highest_score_file_reproduces_the_original(reference_dir, tmp_path):
    ids, others, virus = original_scores(reference_dir)
    write_highest_score(tmp_path / "highest.csv", ids, others, virus)
    expected = (reference_dir / "prediction_results_highestscore.csv").read_text()
    assert (tmp_path / "highest.csv").read_text() == expected


def test_highest_score_groups_by_chunk_sorted_and_ties_go_to_virus(tmp_path):
    ids = ["r2_chunk_1F1", "r10_chunk_1R2", "r10_chunk_1F3", "r2_chunk_2F1"]
    others = np.array([0.6, 0.7, 0.5, 0.5], dtype=np.float32)
    virus = np.array([0.4, 0.3, 0.7, 0.5], dtype=np.float32)
    write_highest_score(tmp_path / "h.csv", ids, others, virus)
    assert (tmp_path / "h.csv").read_text().splitlines() == [
        "Modified_ID\tIs_Virus",
        "r10_chunk_1\tTrue",  # max score2 0.7 >= max score1 0.7
        "r2_chunk_1\tFalse",
        "r2_chunk_2\tTrue",  # a tie counts as virus, as in the original
    ]


def test_frame_label_is_virus_only_when_score2_is_larger(tmp_path):
    write_prediction_results(tmp_path / "p.txt", ["a_chunk_1F1", "b_chunk_1F1"],
                             np.array([0.5, 0.25], dtype=np.float32), np.array([0.5, 0.75], dtype=np.float32))
    rows = [line.split("\t")[1] for line in (tmp_path / "p.txt").read_text().splitlines()[1:]]
    assert rows == ["others", "virus"]


def manifest(rows):
    columns = ["read_index", "read_id", "length", "ambiguous_bases", "chunks"]
    table = {c: [r[i] for r in rows] for i, c in enumerate(columns)}
    table.update(origin_sequence=[None] * len(rows), origin_position=[None] * len(rows))
    return pa.table(table, schema=READ_MANIFEST_SCHEMA)


def chunk_summary(rows):
    columns = ["chunk_id", "length", "ambiguous_bases", "frames", "reason"]
    return pa.table({c: [r[i] for r in rows] for i, c in enumerate(columns)}, schema=CHUNK_SUMMARY_SCHEMA)


def frame_scores(rows):
    """(frame IDs, others scores, virus scores), as stage 9 reads them from the frame predictions."""
    return ([r[0] for r in rows], np.array([r[1] for r in rows], dtype=np.float32),
            np.array([r[2] for r in rows], dtype=np.float32))


def test_every_read_gets_a_row_with_a_call_or_a_reason():
    reads = manifest([
        (0, "long", 450, 0, 2),
        (1, "stops", 120, 0, 1),
        (2, "empty", 0, 0, 0),
        (3, "tiny", 2, 0, 1),
        (4, "nnn", 100, 90, 1),
        (5, "host", 150, 1, 1),
    ])
    chunks = chunk_summary([
        ("long_chunk_1", 300, 0, 2, None),
        ("long_chunk_2", 300, 0, 0, "no_stop_free_frame"),
        ("stops_chunk_1", 120, 0, 0, "no_stop_free_frame"),
        ("tiny_chunk_1", 2, 0, 0, "too_short"),
        ("nnn_chunk_1", 100, 90, 0, "too_ambiguous"),
        ("host_chunk_1", 150, 1, 1, None),
    ])
    frames = frame_scores([
        ("long_chunk_1F1", 0.7, 0.3),
        ("long_chunk_1R2", 0.25, 0.75),
        ("host_chunk_1F2", 0.8, 0.2),
    ])
    table = read_calls("s", reads, chunks, *frames, 300, "model.pt")
    rows = {row["read_id"]: row for row in table.to_pylist()}
    assert table.column("read_id").to_pylist() == ["long", "stops", "empty", "tiny", "nnn", "host"]
    assert rows["long"]["call"] == "virus" and rows["long"]["frames"] == 2
    assert rows["long"]["best_frame"] == "long_chunk_1R2"
    # the maxima may come from different frames: virus 0.75 (R2) against others 0.7 (F1)
    assert rows["long"]["score_virus"] == pytest.approx(0.75) and rows["long"]["score_others"] == pytest.approx(0.7)
    assert rows["host"]["call"] == "others" and rows["host"]["is_virus"] is False
    assert {r: rows[r]["reason"] for r in ("stops", "empty", "tiny", "nnn")} == {
        "stops": "no_stop_free_frame", "empty": "empty_sequence", "tiny": "too_short", "nnn": "too_ambiguous"}
    for read in ("stops", "empty", "tiny", "nnn"):
        assert rows[read]["call"] is None and rows[read]["is_virus"] is None and rows[read]["score_virus"] is None
    assert rows["long"]["reason"] is None
    assert set(table.column("expected_length").to_pylist()) == {300}


def test_a_missing_frame_prediction_is_an_error_not_a_silent_loss():
    reads = manifest([(0, "r", 150, 0, 1)])
    chunks = chunk_summary([("r_chunk_1", 150, 0, 2, None)])
    frames = frame_scores([("r_chunk_1F1", 0.5, 0.5)])
    with pytest.raises(ValueError, match="read 'r': 1 predicted, 2 identified"):
        read_calls("s", reads, chunks, *frames, 300, "model.pt")


def test_read_ids_that_look_like_chunk_ids_stay_apart():
    """`x` cut into two chunks and a read literally named `x_chunk_1` never share a frame ID."""
    reads = manifest([(0, "x", 600, 0, 2), (1, "x_chunk_1", 150, 0, 1)])
    chunks = chunk_summary([("x_chunk_1", 300, 0, 1, None), ("x_chunk_2", 300, 0, 0, "no_stop_free_frame"),
                            ("x_chunk_1_chunk_1", 150, 0, 1, None)])
    frames = frame_scores([("x_chunk_1F1", 0.9, 0.1), ("x_chunk_1_chunk_1F1", 0.1, 0.9)])
    rows = {row["read_id"]: row for row in read_calls("s", reads, chunks, *frames, 300, "m").to_pylist()}
    assert rows["x"]["call"] == "others" and rows["x_chunk_1"]["call"] == "virus"
