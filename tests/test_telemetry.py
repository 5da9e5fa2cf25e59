"""Telemetry never fails a job: NVML queries a device does not support (a MIG instance has no
utilisation, power or energy) are recorded as unavailable, NVML is shut down, and a telemetry file
that cannot be written leaves the job's outcome as it was."""

from __future__ import annotations

import json
import sys
import types

import polars as pl
import pytest

from virnucpro.run.telemetry import GpuMonitor, JobTelemetry


class NotSupported(Exception):
    pass


def fake_nvml(monkeypatch, unsupported: set[str], fail_init: bool = False) -> types.SimpleNamespace:
    """A pynvml whose device answers only the queries not in `unsupported`."""
    calls = types.SimpleNamespace(init=0, shutdown=0)

    def query(name, value):
        def answer(handle):
            if name in unsupported:
                raise NotSupported("Not Supported")
            return value
        return answer

    def init():
        if fail_init:
            raise NotSupported("Driver Not Loaded")
        calls.init += 1

    def shutdown():
        calls.shutdown += 1

    module = types.SimpleNamespace(
        nvmlInit=init, nvmlShutdown=shutdown,
        nvmlDeviceGetHandleByUUID=lambda uuid: "handle", nvmlDeviceGetHandleByIndex=lambda index: "handle",
        nvmlDeviceGetName=query("name", "NVIDIA H100 80GB HBM3 MIG 1g.10gb"),
        nvmlDeviceGetUtilizationRates=query("utilisation", types.SimpleNamespace(gpu=87)),
        nvmlDeviceGetMemoryInfo=query("memory", types.SimpleNamespace(used=3 * 2**30)),
        nvmlDeviceGetPowerUsage=query("power", 250_000),
        nvmlDeviceGetTotalEnergyConsumption=query("energy", 1_000_000))
    monkeypatch.setitem(sys.modules, "pynvml", module)
    return calls


def test_a_mig_instance_gives_what_it_can_and_says_what_it_cannot(monkeypatch):
    calls = fake_nvml(monkeypatch, unsupported={"utilisation", "power", "energy"})
    with GpuMonitor("MIG-1234", interval=0.01) as monitor:
        pass
    summary = monitor.summary()
    assert summary["nvml_device"] == "NVIDIA H100 80GB HBM3 MIG 1g.10gb"
    assert summary["max_memory_used_mb"] == 3 * 1024
    assert summary["mean_gpu_util"] is None and summary["mean_power_w"] is None and summary["energy_j"] is None
    assert [entry.split(":")[0] for entry in summary["unavailable"]] == ["energy_j", "gpu_util", "power_w"]
    assert "gpu_util: NotSupported: Not Supported" in summary["unavailable"]
    assert calls.init == 1 and calls.shutdown == 1


def test_a_full_gpu_gives_every_metric(monkeypatch):
    calls = fake_nvml(monkeypatch, unsupported=set())
    with GpuMonitor("GPU-1234", interval=0.01) as monitor:
        pass
    summary = monitor.summary()
    assert summary["mean_gpu_util"] == 87 and summary["mean_power_w"] == 250 and summary["energy_j"] == 0
    assert summary["unavailable"] == []
    assert calls.shutdown == 1


def test_the_timing_report_takes_gpu_jobs_with_and_without_unavailable_metrics(monkeypatch, tmp_path):
    from virnucpro.reporting.timing import write_report

    summaries = []
    for unsupported in (set(), {"utilisation", "power", "energy"}):
        fake_nvml(monkeypatch, unsupported)
        with GpuMonitor("GPU-1234", interval=0.01) as monitor:
            pass
        summaries.append(monitor.summary())
    for shard, summary in enumerate(summaries):
        with JobTelemetry(tmp_path / "telemetry" / "embed_esm2" / f"reads.00{shard}.json", "embed_esm2", "reads",
                          shard=f"00{shard}") as telemetry:
            telemetry.gpu = summary
    outputs = {name: tmp_path / f"{name}.{suffix}" for name, suffix in (
        ("table", "parquet"), ("gpu_samples", "parquet"), ("batches", "parquet"), ("summary", "tsv"),
        ("report", "md"), ("html", "html"), ("timeline", "png"), ("gpu_usage", "png"), ("stage_times", "png"),
        ("throughput", "png"))}
    assert write_report(sorted((tmp_path / "telemetry").rglob("*.json")), outputs) == 2
    assert "| embed_esm2 |" in outputs["report"].read_text()
    gpu = pl.read_parquet(outputs["table"])["gpu"].struct.unnest()
    assert gpu["unavailable"].list.len().to_list() == [0, 3]


def test_no_nvml_gives_no_gpu_summary(monkeypatch):
    fake_nvml(monkeypatch, unsupported=set(), fail_init=True)
    with GpuMonitor("GPU-1234") as monitor:
        pass
    assert monitor.summary() is None


def test_a_job_records_its_warnings(tmp_path):
    with JobTelemetry(tmp_path / "job.json", "chunk", "reads", part="000") as telemetry:
        telemetry.warn("3 of 10 reads look like protein")
    report = json.loads((tmp_path / "job.json").read_text())
    assert report["status"] == "ok" and report["warnings"] == ["3 of 10 reads look like protein"]


def test_telemetry_that_cannot_be_written_does_not_fail_the_job(tmp_path, caplog):
    (tmp_path / "telemetry").write_text("a file where the directory should be")
    with JobTelemetry(tmp_path / "telemetry" / "job.json", "chunk", "reads"):
        pass
    assert "its telemetry could not be written" in caplog.text


def test_a_failing_job_still_fails_and_says_why(tmp_path):
    with pytest.raises(ValueError, match="bad input"):
        with JobTelemetry(tmp_path / "job.json", "chunk", "reads"):
            raise ValueError("bad input")
    report = json.loads((tmp_path / "job.json").read_text())
    assert report["status"] == "failed" and report["error"] == "ValueError: bad input"


def test_a_job_over_its_memory_bound_says_so_in_its_telemetry(tmp_path):
    with JobTelemetry(tmp_path / "job.json", "chunk", "reads", resources={"mem_mb": 1}):
        pass
    report = json.loads((tmp_path / "job.json").read_text())
    assert report["memory_bound_mb"] == 1 and report["peak_rss_mb"] > 1
    assert report["warnings"] == [f"peak memory {report['peak_rss_mb']:.0f} MB is over the job's bound of 1 MB (mem_mb)"]


def test_an_error_raised_on_purpose_ends_the_job_with_its_message_alone(tmp_path, capsys):
    from virnucpro.io.errors import VirnucproError
    from virnucpro.run.failures import failed_job_messages
    from virnucpro.run.telemetry import RUN_ID_VARIABLE, configure_logging

    configure_logging(tmp_path / "job.log")
    with pytest.raises(SystemExit) as stopped:
        with JobTelemetry(tmp_path / "telemetry/chunk/reads.000.json", "chunk", "reads"):
            raise VirnucproError("reads.fa, record 'r2': character 'Z' at position 3 is not a nucleotide")
    assert stopped.value.code == 1
    assert "Traceback" not in (tmp_path / "job.log").read_text()
    assert "character 'Z'" in (tmp_path / "job.log").read_text()
    assert "character 'Z'" not in capsys.readouterr().err  # printed by the run, last, once
    report = json.loads((tmp_path / "telemetry/chunk/reads.000.json").read_text())
    assert report["message"] == "reads.fa, record 'r2': character 'Z' at position 3 is not a nucleotide"
    import os
    assert failed_job_messages(tmp_path / "telemetry", os.environ.get(RUN_ID_VARIABLE)) == [report["message"]]
    assert failed_job_messages(tmp_path / "telemetry", "another run") == []


def test_a_full_disk_names_the_folder_and_what_the_job_needs(tmp_path):
    import errno
    import os

    (tmp_path / "in.arrow").write_bytes(b"x" * 3 * 2**20)
    with pytest.raises(SystemExit):
        with JobTelemetry(tmp_path / "job.json", "chunk", "reads", inputs=[tmp_path / "in.arrow"],
                          outputs=[tmp_path / "results/reads/chunks/000.arrow", tmp_path / "results/reads/x.arrow"]):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    message = json.loads((tmp_path / "job.json").read_text())["message"]
    assert message.startswith(f"{tmp_path}: no space left on device (")
    assert "this chunk job reads 3.0 MB" in message


def test_the_error_behind_snakemakes_wrappers_is_found():
    from snakemake.exceptions import WorkflowError

    from virnucpro.io.errors import VirnucproError
    from virnucpro.run.failures import project_error

    error = VirnucproError("models.esm2 'x': not found")
    try:
        try:
            raise error
        except VirnucproError:
            raise WorkflowError("while building the DAG")  # as Snakemake wraps an input function's error
    except WorkflowError as wrapped:
        assert project_error(wrapped) is error
    assert project_error(WorkflowError("a bug")) is None
