"""The sample and run summaries: counts by call and reason, chunks and regions, the models used."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from virnucpro.io.schemas import READ_PREDICTION_SCHEMA
from virnucpro.reporting import results_summary as summary
from virnucpro.reporting.results_summary import read_sample_summary, summarize_sample, write_run_summary, write_sample_summary

RULE = {"preset": "conservative", "min_score_virus": 0.8, "min_viral_chunk_fraction": 0.7, "min_provirus_length": 10000}
MODELS = {"dnabert_s": "/models/DNABERT-S", "esm2": "/models/esm2_t36_3B_UR50D.pt", "classifier": "/models/300_model.pth"}


def write_reads(path, rows: list[dict], batch_rows: int = 2) -> None:
    """A read table in small row groups, so that the summary reads it in several batches."""
    defaults = {"sample": "s", "ambiguous_bases": 0, "is_virus": None, "best_frame": None, "expected_length": 300,
                "classifier": "c", "viral_chunk_fraction": None}
    schema = READ_PREDICTION_SCHEMA.with_metadata({"virnucpro.calls": json.dumps(RULE)})
    table = pa.Table.from_pylist([{**defaults, **row} for row in rows], schema=schema)
    pq.write_table(table, path, row_group_size=batch_rows)


def read(index, call, reason=None, length=150, chunks=1, frames=2, classified=1, viral=0, regions=0, virus=0.5,
         others=0.5) -> dict:
    if call is None:
        frames = classified = viral = regions = 0
        virus = others = None
    return {"read_index": index, "read_id": f"r{index}", "length": length, "chunks": chunks, "frames": frames,
            "call": call, "reason": reason, "classified_chunks": classified, "viral_chunks": viral,
            "viral_regions": regions, "score_virus": virus, "score_others": others}


@pytest.fixture
def reads(tmp_path, monkeypatch):
    monkeypatch.setattr(summary, "_BATCH_ROWS", 2)
    rows = [
        read(0, "virus", viral=1, regions=1, virus=0.91, others=0.2),
        read(1, "virus", viral=1, regions=1, virus=0.99, others=0.01),
        read(2, "others", virus=0.3, others=0.75),
        # a contig of 10 chunks, 8 classified, 3 viral in two regions, called others
        read(3, "others", length=3000, chunks=10, frames=30, classified=8, viral=3, regions=2, virus=0.8, others=0.95),
        read(4, None, "no_stop_free_frame"),
        read(5, None, "no_stop_free_frame"),
        read(6, None, "empty_sequence", length=0, chunks=0),
        read(7, None, "no_stop_free_frame,too_ambiguous", length=600, chunks=2),
    ]
    write_reads(tmp_path / "reads.parquet", rows)
    return tmp_path / "reads.parquet"


def test_the_summary_counts_reads_by_call_and_reason(reads):
    result = summarize_sample("s", reads, MODELS, 300)
    measures = {measure: (value, share) for measure, value, share in result.rows}
    assert measures["reads"] == (8, None) and measures["bases"] == (150 * 5 + 3000 + 600, None)
    assert measures["classified"] == (4, 0.5) and measures["virus"] == (2, 0.25) and measures["others"] == (2, 0.25)
    assert measures["unclassified"] == (4, 0.5)
    assert measures["unclassified_no_stop_free_frame"] == (2, 0.25)
    assert measures["unclassified_empty_sequence"] == (1, 0.125)
    assert measures["unclassified_too_short"] == (0, 0.0) and measures["unclassified_too_ambiguous"] == (0, 0.0)
    assert measures["unclassified_no_stop_free_frame,too_ambiguous"] == (1, 0.125)
    assert measures["chunks"] == (17, None) and measures["frames"] == (36, None)
    assert measures["classified_chunks"] == (11, 11 / 17) and measures["viral_chunks"] == (5, 5 / 17)
    assert "viral_regions" not in measures  # on reads of one chunk it would repeat the virus count
    assert measures["sequences_of_several_chunks"] == (2, 0.25)
    assert measures["of_which_with_viral_regions"] == (1, 0.125)
    assert measures["their_viral_regions"] == (2, None)  # the contig's two, not the two viral reads' own
    assert measures["model_esm2"] == (MODELS["esm2"], None) and measures["expected_length"] == (300, None)
    assert measures["provirus"] == (0, 0.0) and measures["viral_regions_of_proviruses"] == (0, None)
    # the rule the calls were made with, from the read table's metadata
    assert measures["calls_preset"] == ("conservative", None) and measures["calls_min_score_virus"] == (0.8, None)
    assert "note" not in measures


def test_the_summary_counts_proviruses_and_lists_the_files(tmp_path):
    write_reads(tmp_path / "reads.parquet", [
        read(0, "provirus", length=9000, chunks=30, classified=30, viral=12, regions=3),
        read(1, "virus", viral=1, regions=1)])
    files = {"viral_sequences": "results/s/viral_sequences.fna", "viral_regions": "results/s/viral_regions.fna"}
    measures = {measure: (value, share) for measure, value, share in summarize_sample(
        "s", tmp_path / "reads.parquet", MODELS, 300, files=files).rows}
    assert measures["provirus"] == (1, 0.5) and measures["viral_regions_of_proviruses"] == (3, None)
    assert measures["file_viral_regions"] == ("results/s/viral_regions.fna", None)


def test_score_tracks_draw_the_chunks_and_regions_of_each_sequence(tmp_path, monkeypatch):
    (tmp_path / "tracks.tsv").write_text(
        "sequence_id\tsequence_length\tchunk\tstart\tend\tscore_virus\tviral\n"
        + "".join(f"contig\t9000\t{c + 1}\t{300 * c + 1}\t{300 * c + 300}\t{0.9 if 10 <= c < 20 else 0.1}\t"
                  f"{str(10 <= c < 20).lower()}\n" for c in range(30))
        + "short\t900\t1\t1\t300\t\tfalse\nshort\t900\t2\t301\t600\t0.8\ttrue\n")
    (tmp_path / "regions.tsv").write_text(
        "sequence_id\tsequence_length\tregion\tstart\tend\tfirst_chunk\tlast_chunk\tviral_chunks\tmean_score_virus\n"
        "contig\t9000\t1\t3001\t6000\t11\t20\t10\t0.9\nother\t500\t1\t1\t300\t1\t1\t1\t0.7\n"
        "short\t900\t1\t301\t600\t2\t2\t1\t0.8\n")
    drawn = []
    monkeypatch.setattr(summary.figures, "score_tracks", lambda sample, tracks: drawn.append(tracks)
                        or summary.figures._no_data("x"))
    assert summary.write_score_tracks("s", tmp_path / "tracks.tsv", tmp_path / "regions.tsv", tmp_path / "t.png") == 2
    monkeypatch.undo()
    assert list(drawn[0]) == ["contig", "short"] and drawn[0]["contig"]["regions"] == [(3001, 6000)]
    assert len(drawn[0]["contig"]["chunks"]) == 30 and drawn[0]["short"]["chunks"] == [(301, 600, 0.8, True)]
    assert summary.write_score_tracks("s", tmp_path / "tracks.tsv", tmp_path / "regions.tsv", tmp_path / "t.png") == 2
    assert (tmp_path / "t.png").read_bytes().startswith(b"\x89PNG")


def test_the_score_histograms_count_the_classified_reads(reads):
    histograms = summarize_sample("s", reads, MODELS, 300).histograms
    assert histograms[("score_virus", "virus")].sum() == 2 and histograms[("score_others", "others")].sum() == 2
    bin_of = lambda score: int(np.searchsorted(summary.SCORE_BINS, score, side="right")) - 1  # noqa: E731
    assert histograms[("score_virus", "virus")][bin_of(0.91)] == 1
    assert histograms[("score_others", "others")][bin_of(0.95)] == 1
    assert histograms[("score_virus", "others")][bin_of(0.8)] == 1


def test_the_summary_table_and_the_run_summary(reads, tmp_path):
    first = summarize_sample("first", reads, MODELS, 300, note="demonstration models")
    write_sample_summary(first, tmp_path / "first.tsv", tmp_path / "first.png")
    lines = (tmp_path / "first.tsv").read_text().splitlines()
    assert lines[0] == "measure\tvalue\tshare" and lines[1] == "sample\tfirst\t"
    assert "virus\t2\t0.2500" in lines and lines[-1] == "note\tdemonstration models\t"
    assert (tmp_path / "first.png").read_bytes().startswith(b"\x89PNG")
    write_reads(tmp_path / "second.parquet", [read(0, "virus", viral=1, regions=1)])
    write_sample_summary(summarize_sample("second", tmp_path / "second.parquet", MODELS, 300),
                         tmp_path / "second.tsv", tmp_path / "second.png")
    assert read_sample_summary(tmp_path / "second.tsv")[2] == ("bases", "150", "")

    write_run_summary(["first", "second"], [tmp_path / "first.tsv", tmp_path / "second.tsv"], tmp_path / "run.tsv",
                      tmp_path / "calls.png", tmp_path / "run.html", note="demonstration models")
    rows = {line.split("\t")[0]: line.split("\t")[1:] for line in (tmp_path / "run.tsv").read_text().splitlines()}
    assert rows["measure"] == ["first", "second"] and rows["virus"] == ["2", "1"] and rows["reads"] == ["8", "1"]
    assert rows["unclassified_no_stop_free_frame,too_ambiguous"] == ["1", ""]
    page = (tmp_path / "run.html").read_text()
    assert "<b>Note:</b> demonstration models" in page and "<td>2 (25.0%)</td>" in page
    assert (tmp_path / "calls.png").read_bytes().startswith(b"\x89PNG")


def test_the_read_table_as_tsv_has_every_row_and_column(reads, tmp_path):
    import csv
    import gzip

    from virnucpro.io.tables import parquet_to_tsv_gz

    assert parquet_to_tsv_gz(reads, tmp_path / "reads.tsv.gz", batch_rows=3) == 8
    with gzip.open(tmp_path / "reads.tsv.gz", "rt") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert list(rows[0]) == READ_PREDICTION_SCHEMA.names and len(rows) == 8
    assert [row["call"] for row in rows[:4]] == ["virus", "virus", "others", "others"]
    assert rows[7]["reason"] == "no_stop_free_frame,too_ambiguous" and rows[7]["score_virus"] == ""
