"""README's precision and recall per calls preset: reads whose class is in their name."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from virnucpro.demo.evaluate import call_metrics


def test_precision_and_recall_of_virus_calls_by_read_length(tmp_path):
    rows = [("lambda_1", 120, "virus"), ("lambda_2", 120, None), ("lambda_3", 800, "provirus"),
            ("lambda_4", 800, "virus"), ("kpneumoniae_1", 120, "virus"), ("kpneumoniae_2", 800, "others")]
    pq.write_table(pa.table({"read_id": [r[0] for r in rows], "length": [r[1] for r in rows],
                             "call": [r[2] for r in rows]}), tmp_path / "reads.parquet")
    metrics = {row["lengths"]: row for row in call_metrics(tmp_path / "reads.parquet")}
    assert metrics["all"]["reads"] == 6 and metrics["all"]["classified"] == 5
    assert metrics["all"]["precision"] == pytest.approx(2 / 3) and metrics["all"]["recall"] == pytest.approx(2 / 4)
    assert metrics["0-149"]["precision"] == pytest.approx(1 / 2) and metrics["0-149"]["recall"] == pytest.approx(1 / 2)
    assert metrics["750+"]["precision"] == 1 and metrics["750+"]["recall"] == pytest.approx(1 / 2)
    assert metrics["150-299"]["reads"] == 0
