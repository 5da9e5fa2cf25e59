"""The timing report and its figures on a known set of job telemetry: two runs, two GPU jobs of one
stage at once, readings that are missing."""

from __future__ import annotations

import datetime
import json
import logging

import numpy as np
import polars as pl
import pytest

from virnucpro.reporting import figures
from virnucpro.reporting.timing import (BATCH_SCHEMA, GPU_SAMPLE_SCHEMA, JOB_SCHEMA, NOT_AVAILABLE, latest_run, load_telemetry,
                              runs, stage_summary, telemetry_tables, timing_report, write_report)

T0 = 1_700_000_000.0  # the latest run's first job starts here (unix seconds)


def job(stage: str, unit: str, start: float, wall: float, run_id: str | None = "run-2", startup: float = 1.0,
        records: int | None = 1000, details: dict | None = None, gpu: dict | None = None, host: str = "node1") -> dict:
    """A telemetry record as virnucpro.run.telemetry.JobTelemetry writes it."""
    begin = datetime.datetime.fromtimestamp(T0 + start, datetime.timezone.utc)
    return {"run_id": run_id, "stage": stage, "sample": "s", "part": None, "shard": unit, "status": "ok", "error": None,
            "start": begin.isoformat(), "end": (begin + datetime.timedelta(seconds=wall)).isoformat(),
            "start_unix": T0 + start, "wall_seconds": wall, "startup_seconds": startup, "cpu_seconds": wall,
            "peak_rss_mb": 500.0, "records_in": records, "records_out": records, "bytes_in": 10, "bytes_out": 10,
            "records_per_second": None, "bytes_per_second": None, "host": host, "pid": 1, "threads": 4,
            "resources": {"gpu": 1, "tmpdir": "/tmp"}, "details": details or {}, "gpu": gpu}


def embedding(tokens: int, padding: int, batches: int, fill: float, compute: float, gpu: str | None,
              samples_start: float | None = None) -> dict:
    return {"sequences": 100, "tokens": tokens, "padding_tokens": padding, "batches": batches, "token_budget": 200,
            "oom_splits": 0, "packing_efficiency": fill, "tokens_per_second_compute": tokens / compute,
            "data_wait_seconds": 0.5, "compute_seconds": compute, "peak_allocated_bytes": 2**30,
            "model": {"kind": "esm2", "architecture": "esm2_t36", "dim": 2560, "fingerprint": "f" * 16, "source": "x"},
            "model_load_seconds": 5.0, "first_batch_after_seconds": 7.0, "device": "NVIDIA H200" if gpu else "cpu",
            "leased_gpu": gpu, "compute_dtype": "bfloat16", "compiled": False,
            "gpu_samples_start_unix": None if samples_start is None else T0 + samples_start,
            "batch_timeline": {"end_unix": [T0 + 20, T0 + 25], "batches": [batches // 2, batches - batches // 2],
                               "sequences": [50, 50], "tokens": [tokens // 2, tokens - tokens // 2],
                               "padding_tokens": [padding, 0], "compute_seconds": [compute / 2, compute / 2]}}


def nvml(samples: list[tuple], energy: float | None) -> dict:
    """A GPU summary with its samples (t, utilisation, memory MB, power W; None where not read)."""
    return {"nvml_device": "NVIDIA H200", "mean_gpu_util": 0.0, "max_gpu_util": 0.0, "max_memory_used_mb": 0.0,
            "mean_power_w": 0.0, "energy_j": energy,
            "samples": [{"t": t, "gpu_util": u, "memory_used_mb": m, "power_w": p} for t, u, m, p in samples]}


@pytest.fixture
def telemetry_files(tmp_path):
    """An earlier run's chunk job (its output reused), then this run: translate, two ESM-2 jobs on two
    GPUs at once (the second without an energy reading), and a DNABERT-S job on the CPU. The files
    in pipeline order, as the workflow passes them."""
    jobs = {
        "chunk/s.000": job("chunk", "000", -500, 10, run_id="run-1"),
        "translate/s.000": job("translate", "000", 0, 2),
        "embed_esm2/s.000": job("embed_esm2", "000", 10, 20, details=embedding(1000, 100, 10, 0.5, 8.0, "GPU-aaaa",
                                                                                15.0),
                                gpu=nvml([(0, 50, 1000, 100), (1, 70, 2000, None), (2, None, None, 300)], 300.0)),
        "embed_esm2/s.001": job("embed_esm2", "001", 12, 28, details=embedding(3000, 0, 30, 0.9, 12.0, "GPU-bbbb",
                                                                                20.0),
                                gpu=nvml([(0, 90, 4000, 200), (1, 90, 4096, 200), (2, 90, 3000, 200)], None)),
        "embed_dnabert_s/s.000": job("embed_dnabert_s", "000", 5, 4, details=embedding(500, 10, 5, 0.6, 2.0, None)),
    }
    for name, record in jobs.items():
        path = tmp_path / "telemetry" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
    return [tmp_path / "telemetry" / f"{name}.json" for name in ("chunk/s.000", "translate/s.000",
                                                                  "embed_dnabert_s/s.000", "embed_esm2/s.000",
                                                                  "embed_esm2/s.001")]


def stages_by_name(telemetry) -> dict[str, dict]:
    return {row["stage"]: row for row in stage_summary(latest_run(telemetry)).iter_rows(named=True)}


def test_the_tables_have_their_schemas_and_timestamps(telemetry_files):
    telemetry = telemetry_tables(load_telemetry(telemetry_files))
    assert telemetry.jobs.schema == JOB_SCHEMA and telemetry.jobs.height == 5
    assert telemetry.gpu_samples.schema == GPU_SAMPLE_SCHEMA and telemetry.batches.schema == BATCH_SCHEMA
    esm2 = telemetry.jobs.filter(pl.col("stage") == "embed_esm2", pl.col("unit") == "000").row(0, named=True)
    assert esm2["start"] == datetime.datetime.fromtimestamp(T0 + 10, datetime.timezone.utc)
    assert esm2["details"]["model"]["dim"] == 2560 and esm2["details"]["leased_gpu"] == "GPU-aaaa"
    assert {"name": "tmpdir", "value": "/tmp"} in esm2["resources"]
    samples = telemetry.gpu_samples.filter(pl.col("job") == esm2["job"])
    assert samples["time"].to_list() == [datetime.datetime.fromtimestamp(T0 + 15 + t, datetime.timezone.utc)
                                         for t in (0, 1, 2)]
    assert samples["power_w"].to_list() == [100, None, 300]  # a missing reading stays missing
    assert telemetry.batches["tokens"].sum() == 4500 and telemetry.batches.height == 6


def test_the_report_covers_the_latest_run_and_lists_the_earlier_one(telemetry_files):
    telemetry = telemetry_tables(load_telemetry(telemetry_files))
    assert runs(telemetry)["run_id"].to_list() == ["run-1", "run-2"]
    assert set(stages_by_name(telemetry)) == {"translate", "embed_dnabert_s", "embed_esm2"}
    report, _ = timing_report(latest_run(telemetry), runs(telemetry))
    markdown = report.markdown()
    # the latest run: from translate's process start (-1 s) to the second ESM-2 job's end (40 s)
    assert "Run run-2, started" in markdown and "4 jobs, 0 failed; 41.0 s elapsed" in markdown
    assert "## Runs" in markdown and "\n| run-1 | " in markdown and "\n| chunk | " not in markdown


def test_throughput_is_over_the_span_and_per_gpu(telemetry_files):
    esm2 = stages_by_name(telemetry_tables(load_telemetry(telemetry_files)))["embed_esm2"]
    assert esm2["span_seconds"] == pytest.approx(30.0)  # 10 s to 12 + 28 = 40 s
    assert esm2["job_seconds"] == pytest.approx(48.0)
    assert esm2["gpus"] == 2
    assert esm2["tokens_per_second"] == pytest.approx(4000 / 30)  # not 4000 / 48 job-seconds
    assert esm2["tokens_per_second_per_gpu"] == pytest.approx(4000 / 30 / 2)
    assert esm2["tokens_per_compute_second"] == pytest.approx(4000 / 20)
    assert esm2["records_per_second"] == pytest.approx(2000 / 30)
    assert esm2["startup_seconds"] == pytest.approx(2.0) and esm2["model_load_per_job"] == pytest.approx(5.0)


def test_means_are_weighted(telemetry_files):
    esm2 = stages_by_name(telemetry_tables(load_telemetry(telemetry_files)))["embed_esm2"]
    assert esm2["batch_fill"] == pytest.approx((0.5 * 10 + 0.9 * 30) / 40)  # by batches, not (0.5 + 0.9) / 2
    assert esm2["padding_share"] == pytest.approx(100 / 4100)
    assert esm2["mean_gpu_util"] == pytest.approx((50 + 70 + 90 * 3) / 5)  # over samples (time), not jobs
    assert esm2["max_memory_used_gib"] == pytest.approx(4096 / 1024)


def test_missing_readings_are_not_available_rather_than_zero(telemetry_files):
    telemetry = telemetry_tables(load_telemetry(telemetry_files))
    stages = stages_by_name(telemetry)
    esm2, dnabert = stages["embed_esm2"], stages["embed_dnabert_s"]
    assert esm2["mean_power_w"] == pytest.approx((100 + 300 + 200 * 3) / 5)  # the missing reading left out
    assert esm2["energy_j"] is None  # one job has no energy reading: a sum would undercount
    assert dnabert["gpus"] == 0 and dnabert["tokens_per_second_per_gpu"] is None
    assert dnabert["mean_gpu_util"] is None and dnabert["energy_j"] is None
    report, _ = timing_report(latest_run(telemetry), runs(telemetry))
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in report.markdown().splitlines()
            if line.startswith("| embed_")}
    assert rows["embed_esm2"][-1].rstrip(" |") == NOT_AVAILABLE  # energy J
    assert rows["embed_dnabert_s"][6] == NOT_AVAILABLE  # tokens/s per GPU


def test_write_report_writes_every_output(telemetry_files, tmp_path):
    names = {"table": "telemetry.parquet", "gpu_samples": "samples.parquet", "batches": "batches.parquet",
             "summary": "timing.tsv", "report": "timing.md", "html": "timing.html", "timeline": "timeline.png",
             "gpu_usage": "gpu.png", "stage_times": "stages.png", "throughput": "throughput.png"}
    outputs = {name: tmp_path / "out" / file for name, file in names.items()}
    assert write_report(telemetry_files, outputs, note="demonstration models") == 5
    assert pl.read_parquet(outputs["table"]).schema == JOB_SCHEMA
    assert pl.read_parquet(outputs["gpu_samples"]).height == 6
    tsv = pl.read_csv(outputs["summary"], separator="\t")
    assert tsv["stage"].to_list() == ["translate", "embed_dnabert_s", "embed_esm2"]
    assert "<b>Note:</b> demonstration models" in outputs["html"].read_text()
    for name in ("timeline", "gpu_usage", "stage_times", "throughput"):
        assert outputs[name].read_bytes().startswith(b"\x89PNG"), name


def figure_texts(figure) -> list[str]:
    return [text.get_text() for axis in figure.axes for text in axis.texts]


def test_the_gpu_figure_says_so_when_there_are_no_gpu_samples(telemetry_files):
    run = latest_run(telemetry_tables(load_telemetry(telemetry_files)))
    figure = figures.gpu_usage(run.jobs, run.gpu_samples.clear())
    assert any(text.startswith("no GPU samples") for text in figure_texts(figure))
    figure = figures.gpu_usage(run.jobs, run.gpu_samples)
    utilisation, memory, power = figure.axes[:3]
    assert len(utilisation.lines) == 2  # one line per job, coloured by GPU
    first = power.lines[0].get_ydata()
    assert first[0] == 100 and np.isnan(first[1]) and first[2] == 300  # a gap where the reading is missing
    assert [label.get_text() for label in figure.axes[0].get_legend().get_texts()] == ["GPU-aaaa", "GPU-bbbb"]
    no_power = figures.gpu_usage(run.jobs, run.gpu_samples.with_columns(power_w=pl.lit(None, pl.Float64)))
    assert NOT_AVAILABLE in [text.get_text() for text in no_power.axes[2].texts]


def test_the_timeline_has_a_bar_per_job_with_its_start_up(telemetry_files):
    run = latest_run(telemetry_tables(load_telemetry(telemetry_files)))
    axis = figures.job_timeline(run.jobs).axes[0]
    bars = axis.patches
    assert len(bars) == 2 * run.jobs.height  # start-up and run time
    labels = [label.get_text() for label in axis.get_yticklabels()]
    assert labels == ["translate s.000", "embed_dnabert_s s.000", "embed_esm2 s.000  [GPU-aaaa]",
                      "embed_esm2 s.001  [GPU-bbbb]"]
    work = bars[run.jobs.height:]
    assert [round(bar.get_x(), 3) for bar in work] == [1.0, 6.0, 11.0, 13.0]  # from translate's process start
    assert [round(bar.get_width(), 3) for bar in work] == [2.0, 4.0, 20.0, 28.0]


def test_the_throughput_figure_plots_each_batch(telemetry_files):
    run = latest_run(telemetry_tables(load_telemetry(telemetry_files)))
    axis = figures.embedding_throughput(run.jobs, run.batches).axes[0]
    assert len(axis.lines) == 3
    esm2 = axis.lines[1]  # jobs in pipeline order: DNABERT-S, then the two ESM-2 jobs
    assert list(esm2.get_xdata()) == [21.0, 26.0] and list(esm2.get_ydata()) == [500 / 4, 500 / 4]
    empty = figures.embedding_throughput(run.jobs, run.batches.clear())
    assert "no embedding batches in this run" in figure_texts(empty)


def test_jobs_without_a_run_id_and_unknown_fields_are_kept(tmp_path, caplog):
    record = job("translate", "000", 0, 1, run_id=None, details={"shiny_new_metric": 3})
    (tmp_path / "translate").mkdir()
    (tmp_path / "translate" / "s.000.json").write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING):
        telemetry = telemetry_tables(load_telemetry([tmp_path / "translate" / "s.000.json"]))
    assert "details.shiny_new_metric" in caplog.text
    assert telemetry.jobs["unknown"][0].to_list() == [{"name": "details.shiny_new_metric", "value": "3"}]
    report, _ = timing_report(latest_run(telemetry), runs(telemetry))
    assert report.headline.startswith("Run (no run id)")
