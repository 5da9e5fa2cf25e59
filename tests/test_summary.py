"""The sample and run summaries: counts by call and reason, chunks and regions, the models used."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from virnucpro.io.schemas import READ_PREDICTION_SCHEMA
from virnucpro.reporting import results_summary as summary
from virnucpro.reporting.results_summary import read_sample_summary, summarize_sample, write_run_summary, write_sample_summary

MODELS = {"dnabert_s": "/models/DNABERT-S", "esm2": "/models/esm2_t36_3B_UR50D.pt", "classifier": "/models/300_model.pth"}


def write_reads(path, rows: list[dict], batch_rows: int = 2) -> None:
    """A read table in small row groups, so that the summary reads it in several batches."""
    defaults = {"sample": "s", "ambiguous_bases": 0, "is_virus": None, "best_frame": None, "expected_length": 300,
                "classifier": "c", "viral_chunk_fraction": None}
    table = pa.Table.from_pylist([{**defaults, **row} for row in rows], schema=READ_PREDICTION_SCHEMA)
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
    assert "note" not in measures


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
