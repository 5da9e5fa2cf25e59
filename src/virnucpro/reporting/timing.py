"""The run's telemetry report: every job's telemetry in typed tables, and what each stage did.

The per-job files (`virnucpro.run.telemetry`) become three Parquet tables with fixed schemas, joined by
`job` (the row of the job in the first):

- `telemetry.parquet` (JOB_SCHEMA): one row per job whose telemetry the workflow passes;
  times are timestamps, stage details a struct (`details`), the GPU summary a struct (`gpu`);
- `telemetry_gpu_samples.parquet` (GPU_SAMPLE_SCHEMA): the NVML samples of the GPU jobs;
- `telemetry_batches.parquet` (BATCH_SCHEMA): the embedding jobs' batch timelines.

A run is one Snakemake invocation (the jobs' `run_id`). A job's telemetry file is replaced when the
job runs again, so the files hold this run's jobs and those of earlier runs whose outputs this run
reused. The timing report covers the latest run; the earlier ones are listed as runs of their own.

Per stage of the run (the figures' definitions, also in the report's captions):

- span: the first job's start to the last job's end; job-seconds: the sum of the jobs' wall times.
  Several jobs at once make job-seconds larger than the span.
- throughput: records (tokens) over the span, and per GPU: over the span divided by the GPUs the
  stage used; tokens per device-second: tokens over the summed compute time of the batches.
- batch fill: real tokens / token budget, the mean over all the stage's batches (each job
  weighted by its batches); padding share: padding tokens / all tokens the model ran.
- GPU utilisation, memory and power: from the NVML samples (taken at a fixed interval, so a mean
  over samples is a mean over time); energy: summed over the stage's GPU jobs.
- start-up: from the job's process start to its telemetry start (interpreter, Snakemake's script
  preamble, imports), which is not part of the job's wall time; model load: inside it.

A reading that is missing (no GPU, NVML not available, a metric the device does not report, no
energy counter on one of the jobs) is "not available", never 0.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from virnucpro.io.atomic import save_figure
from virnucpro.io.atomic import atomic_output, atomic_path
from virnucpro.reporting import figures, html_pages

log = logging.getLogger(__name__)

EMBEDDING_STAGES = ("embed_dnabert_s", "embed_esm2")
NOT_AVAILABLE = "not available"

UTC_TIME = pl.Datetime("us", "UTC")
MODEL = pl.Struct({"kind": pl.String, "architecture": pl.String, "dim": pl.Int64, "fingerprint": pl.String,
                   "source": pl.String})
# Every detail a stage records (virnucpro.run.telemetry's `details`); null where a stage has none.
DETAILS = pl.Struct({
    "bases": pl.Int64, "reads_per_part": pl.List(pl.Int64), "expected_length": pl.Int64,  # partition, chunk
    "shards": pl.Int64, "shard_tokens": pl.Int64, "protein_tokens": pl.Int64,  # plan_shards
    "tokens": pl.Int64, "row_start": pl.Int64, "row_end": pl.Int64,  # tokenize_*, embed_*
    "sequences": pl.Int64, "padding_tokens": pl.Int64, "batches": pl.Int64, "token_budget": pl.Int64,  # embed_*
    "oom_splits": pl.Int64, "packing_efficiency": pl.Float64, "tokens_per_second_compute": pl.Float64,
    "data_wait_seconds": pl.Float64, "compute_seconds": pl.Float64, "peak_allocated_bytes": pl.Int64,
    "model": MODEL, "model_load_seconds": pl.Float64, "first_batch_after_seconds": pl.Float64,
    "device": pl.String, "leased_gpu": pl.String, "compute_dtype": pl.String, "compiled": pl.Boolean,
    "gpu_samples_start": UTC_TIME,
    "classifier": pl.String, "classifier_format": pl.String,  # predict_frames
    "virus": pl.Int64, "provirus": pl.Int64, "others": pl.Int64, "unclassified": pl.Int64,  # consensus
    "viral_regions": pl.Int64,  # consensus, viral_fasta
    "viral_sequences": pl.Int64,  # viral_fasta
    "score_tracks": pl.Int64,  # summarize_sample
    "bytes": pl.Int64,  # collect_fasta
})
GPU_SUMMARY = pl.Struct({"nvml_device": pl.String, "mean_gpu_util": pl.Float64, "max_gpu_util": pl.Float64,
                         "max_memory_used_mb": pl.Float64, "mean_power_w": pl.Float64, "energy_j": pl.Float64,
                         # "<metric>: <why>" for each metric NVML could not give for the device
                         "unavailable": pl.List(pl.String)})
NAMED_VALUES = pl.List(pl.Struct({"name": pl.String, "value": pl.String}))
JOB_SCHEMA = pl.Schema({
    "job": pl.Int64, "run_id": pl.String, "stage": pl.String, "sample": pl.String, "part": pl.String,
    "shard": pl.String, "unit": pl.String, "status": pl.String, "error": pl.String,
    # the process started at `process_start`, `startup_seconds` before its telemetry's `start`
    "process_start": UTC_TIME, "start": UTC_TIME, "end": UTC_TIME, "wall_seconds": pl.Float64,
    "startup_seconds": pl.Float64,
    "cpu_seconds": pl.Float64, "peak_rss_mb": pl.Float64, "memory_bound_mb": pl.Float64,
    "records_in": pl.Int64, "records_out": pl.Int64,
    "bytes_in": pl.Int64, "bytes_out": pl.Int64, "host": pl.String, "pid": pl.Int64, "threads": pl.Int64,
    "resources": NAMED_VALUES, "details": DETAILS, "gpu": GPU_SUMMARY, "warnings": pl.List(pl.String),
    # what a job recorded that this schema does not know yet (logged as a warning), as text
    "unknown": NAMED_VALUES,
})
GPU_SAMPLE_SCHEMA = pl.Schema({"job": pl.Int64, "time": UTC_TIME, "gpu_util": pl.Float64,
                               "memory_used_mb": pl.Float64, "power_w": pl.Float64})
BATCH_SCHEMA = pl.Schema({"job": pl.Int64, "end": UTC_TIME, "batches": pl.Int64, "sequences": pl.Int64,
                          "tokens": pl.Int64, "padding_tokens": pl.Int64, "compute_seconds": pl.Float64})


@dataclass(frozen=True)
class Telemetry:
    jobs: pl.DataFrame  # JOB_SCHEMA
    gpu_samples: pl.DataFrame  # GPU_SAMPLE_SCHEMA
    batches: pl.DataFrame  # BATCH_SCHEMA


def load_telemetry(paths: Sequence[str | os.PathLike]) -> list[dict]:
    """The telemetry files of the jobs, in pipeline order (the workflow gives them stage by stage): the
    report lists the stages in the order of their first job here."""
    return [json.loads(Path(path).read_text()) for path in paths]


def _time(unix: float | None) -> datetime.datetime | None:
    return None if unix is None else datetime.datetime.fromtimestamp(unix, datetime.timezone.utc)


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def telemetry_tables(records: list[dict]) -> Telemetry:
    """The jobs' telemetry files as the three tables (see the module's description)."""
    jobs, samples, batches, unknown_keys = [], [], [], set()
    for index, record in enumerate(records):
        details = dict(record.get("details") or {})
        timeline = details.pop("batch_timeline", None)
        details["gpu_samples_start"] = _time(details.pop("gpu_samples_start_unix", None))
        gpu = dict(record.get("gpu") or {})
        gpu_samples = gpu.pop("samples", None) or []
        unknown = [{"name": f"details.{key}", "value": _text(value)} for key, value in details.items()
                   if key not in DETAILS.to_schema()]
        unknown += [{"name": f"gpu.{key}", "value": _text(value)} for key, value in gpu.items()
                    if key not in GPU_SUMMARY.to_schema()]
        unknown += [{"name": key, "value": _text(value)} for key, value in record.items()
                    if key not in JOB_SCHEMA and key not in ("start_unix", "records_per_second", "bytes_per_second")]
        unknown_keys.update(entry["name"] for entry in unknown)
        start = _time(record["start_unix"])
        jobs.append({
            **{key: record.get(key) for key in JOB_SCHEMA if key not in ("start", "end", "details", "gpu")},
            "job": index, "unit": record.get("shard") or record.get("part") or "all",
            "process_start": start - datetime.timedelta(seconds=record.get("startup_seconds") or 0),
            "start": start, "end": start + datetime.timedelta(seconds=record["wall_seconds"]),
            "resources": [{"name": key, "value": _text(value)} for key, value in (record.get("resources") or {}).items()],
            "details": {key: details.get(key) for key in DETAILS.to_schema()} if record.get("details") else None,
            "gpu": {key: gpu.get(key) for key in GPU_SUMMARY.to_schema()} if record.get("gpu") else None,
            "unknown": unknown,
        })
        samples_start = details["gpu_samples_start"]
        for sample in gpu_samples:
            if samples_start is not None and sample.get("t") is not None:
                samples.append({"job": index, "time": samples_start + datetime.timedelta(seconds=sample["t"]),
                                **{key: sample.get(key) for key in ("gpu_util", "memory_used_mb", "power_w")}})
        if timeline:
            for entry in zip(*(timeline[name] for name in ("end_unix", "batches", "sequences", "tokens",
                                                            "padding_tokens", "compute_seconds"))):
                batches.append(dict(zip(BATCH_SCHEMA, (index, _time(entry[0]), *entry[1:]))))
    if unknown_keys:
        log.warning("telemetry fields that the report's schema does not know (kept as text in 'unknown'): %s",
                    ", ".join(sorted(unknown_keys)))
    return Telemetry(pl.DataFrame(jobs, schema=JOB_SCHEMA, strict=False),
                     pl.DataFrame(samples, schema=GPU_SAMPLE_SCHEMA, strict=False),
                     pl.DataFrame(batches, schema=BATCH_SCHEMA, strict=False))


def runs(telemetry: Telemetry) -> pl.DataFrame:
    """One row per run, oldest first: its jobs, first process start, last end and stages."""
    return (telemetry.jobs.with_columns(run_id=pl.col("run_id").fill_null("(no run id)"))
            .sort(_stage_order, "start")
            .group_by("run_id", maintain_order=True)
            .agg(jobs=pl.len(), failed=(pl.col("status") != "ok").sum(), start=pl.col("process_start").min(),
                 end=pl.col("end").max(), job_seconds=pl.col("wall_seconds").sum(),
                 stages=pl.col("stage").unique(maintain_order=True))
            .sort("start"))


def latest_run(telemetry: Telemetry) -> Telemetry:
    """The telemetry of the jobs of the latest run (the run of the job that started last), the jobs
    in pipeline order."""
    latest = telemetry.jobs.sort("start").select(pl.col("run_id").last()).item()
    jobs = telemetry.jobs.filter(pl.col("run_id").eq_missing(latest)).sort(_stage_order, "start")
    return Telemetry(jobs, *(table.join(jobs.select("job"), on="job", how="semi")
                             for table in (telemetry.gpu_samples, telemetry.batches)))


# A stage's place in the pipeline: that of its first job (`load_telemetry`).
_stage_order = pl.col("job").min().over("stage")


def _ratio(numerator: pl.Expr, denominator: pl.Expr) -> pl.Expr:
    """numerator / denominator, null where the denominator is 0 or missing."""
    return pl.when(denominator > 0).then(numerator / denominator)


def stage_summary(telemetry: Telemetry) -> pl.DataFrame:
    """Per stage of these jobs, in pipeline order (see the module's description)."""
    details, gpu = pl.col("details").struct, pl.col("gpu").struct
    gpu_job = details.field("leased_gpu").is_not_null()
    readings = (telemetry.gpu_samples.join(telemetry.jobs.select("job", "stage"), on="job")
                .group_by("stage")
                .agg(mean_gpu_util=pl.col("gpu_util").mean(), max_memory_used_gib=pl.col("memory_used_mb").max() / 1024,
                     mean_power_w=pl.col("power_w").mean(), gpu_samples=pl.len()))
    summary = (
        telemetry.jobs.group_by("stage")
        .agg(
            first_job=pl.col("job").min(), jobs=pl.len(), failed=(pl.col("status") != "ok").sum(),
            start=pl.col("start").min(), end=pl.col("end").max(),
            job_seconds=pl.col("wall_seconds").sum(),
            records_in=pl.when(pl.col("records_in").count() > 0).then(pl.col("records_in").sum()),
            cpu_seconds=pl.col("cpu_seconds").sum(), max_rss_mb=pl.col("peak_rss_mb").max(),
            startup_seconds=pl.col("startup_seconds").sum(), startup_per_job=pl.col("startup_seconds").mean(),
            device=details.field("device").drop_nulls().unique().sort().str.join(", "),
            gpus=pl.struct(pl.col("host"), details.field("leased_gpu")).filter(gpu_job).n_unique(),
            tokens=details.field("tokens").sum(), padding_tokens=details.field("padding_tokens").sum(),
            batches=details.field("batches").sum(),
            filled_batches=(details.field("packing_efficiency") * details.field("batches")).sum(),
            compute_seconds=details.field("compute_seconds").sum(),
            data_wait_seconds=details.field("data_wait_seconds").sum(),
            model_load_per_job=details.field("model_load_seconds").mean(),
            first_batch_after_per_job=details.field("first_batch_after_seconds").mean(),
            peak_allocated_gib=details.field("peak_allocated_bytes").max() / 2**30,
            gpu_jobs=gpu_job.sum(), energy_readings=gpu.field("energy_j").filter(gpu_job).count(),
            energy=gpu.field("energy_j").filter(gpu_job).sum(),
        )
        .join(readings, on="stage", how="left")
        .with_columns(span_seconds=(pl.col("end") - pl.col("start")).dt.total_microseconds() / 1e6)
        .with_columns(
            share=pl.col("job_seconds") / pl.col("job_seconds").sum(),
            records_per_second=_ratio(pl.col("records_in"), pl.col("span_seconds")),
            tokens_per_second=_ratio(pl.col("tokens"), pl.col("span_seconds")),
            tokens_per_second_per_gpu=_ratio(pl.col("tokens"), pl.col("span_seconds") * pl.col("gpus")),
            tokens_per_compute_second=_ratio(pl.col("tokens"), pl.col("compute_seconds")),
            batch_fill=_ratio(pl.col("filled_batches"), pl.col("batches")),
            padding_share=_ratio(pl.col("padding_tokens"), pl.col("tokens") + pl.col("padding_tokens")),
            # a sum with a job missing would read as less energy than was used
            energy_j=pl.when((pl.col("gpu_jobs") > 0) & (pl.col("energy_readings") == pl.col("gpu_jobs")))
            .then(pl.col("energy")),
        )
        .sort("first_job")
    )
    return summary.rename({"start": "first_start"}).with_columns(pl.col("device").replace("", None)).select(
        "stage", "jobs", "failed", "first_start", "span_seconds", "job_seconds", "share", "records_in",
        "records_per_second", "startup_seconds", "startup_per_job", "cpu_seconds", "max_rss_mb", "device", "gpus",
        "gpu_jobs", "tokens", "padding_tokens", "batches", "tokens_per_second", "tokens_per_second_per_gpu",
        "tokens_per_compute_second", "batch_fill", "padding_share", "compute_seconds", "data_wait_seconds",
        "model_load_per_job", "first_batch_after_per_job", "peak_allocated_gib", "gpu_samples", "mean_gpu_util",
        "max_memory_used_gib", "mean_power_w", "energy_j")


# The report's tables: (column, heading, format) with format "int", "decimal" (one decimal),
# "share", "rate", "gib" or "text".
STAGE_COLUMNS = [
    ("stage", "stage", "text"), ("jobs", "jobs", "int"), ("failed", "failed", "int"),
    ("span_seconds", "span s", "decimal"), ("job_seconds", "job-seconds", "decimal"), ("share", "share", "share"),
    ("records_in", "records in", "int"), ("records_per_second", "records/s over the span", "rate"),
    ("startup_per_job", "start-up s per job", "decimal"), ("cpu_seconds", "CPU s", "decimal"),
    ("max_rss_mb", "max RSS MB", "int"),
]
EMBEDDING_COLUMNS = [
    ("stage", "stage", "text"), ("device", "device", "text"), ("gpus", "GPUs", "int"), ("tokens", "tokens", "int"),
    ("batches", "batches", "int"), ("tokens_per_second", "tokens/s over the span", "rate"),
    ("tokens_per_second_per_gpu", "tokens/s per GPU", "rate"),
    ("tokens_per_compute_second", "tokens per device-second", "rate"), ("batch_fill", "batch fill", "share"),
    ("padding_share", "padding share", "share"), ("model_load_per_job", "model load s per job", "decimal"),
    ("first_batch_after_per_job", "first batch after s", "decimal"),
    ("data_wait_seconds", "data wait s", "decimal"), ("compute_seconds", "device s", "decimal"),
    ("peak_allocated_gib", "peak alloc GiB", "gib"), ("max_memory_used_gib", "max GPU memory GiB", "gib"),
    ("mean_gpu_util", "mean GPU util %", "decimal"),
    ("mean_power_w", "mean power W", "decimal"), ("energy_j", "energy J", "int"),
]
RUN_COLUMNS = [("run_id", "run", "text"), ("start", "first job started (UTC)", "text"), ("jobs", "jobs", "int"),
               ("failed", "failed", "int"), ("job_seconds", "job-seconds", "decimal"), ("stages", "stages", "text")]


def _format(value, kind: str) -> str:
    if value is None:
        return NOT_AVAILABLE
    if kind == "int":
        return f"{round(value):,}"
    if kind == "decimal":
        return f"{value:,.1f}"
    if kind == "share":
        return f"{value:.1%}"
    if kind == "rate":
        return f"{value:,.0f}"
    if kind == "gib":
        return f"{value:,.2f}"
    if isinstance(value, datetime.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return ", ".join(value) if isinstance(value, list) else str(value)


def _rows(table: pl.DataFrame, columns: list[tuple[str, str, str]]) -> tuple[list[str], list[list[str]]]:
    return ([heading for _, heading, _ in columns],
            [[_format(row[name], kind) for name, _, kind in columns] for row in table.iter_rows(named=True)])


@dataclass(frozen=True)
class TimingReport:
    """What the timing report says, in the forms it is written in."""

    headline: str
    note: str | None
    sections: list[tuple[str, list[str], list[list[str]]]]  # (title, headings, rows)
    failures: list[str]

    def markdown(self) -> str:
        lines = ["# Timing report", "", *([f"**Note:** {self.note}", ""] if self.note else []), self.headline]
        for title, headings, rows in self.sections:
            lines += ["", f"## {title}", "", "| " + " | ".join(headings) + " |",
                      "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headings))) + "|"]
            lines += ["| " + " | ".join(row) + " |" for row in rows]
        if self.failures:
            lines += ["", "## Failed jobs", "", *(f"- {failure}" for failure in self.failures)]
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        body = [html_pages.paragraph(self.note, "Note:") if self.note else "", html_pages.paragraph(self.headline)]
        for title, headings, rows in self.sections:
            body.append(html_pages.heading(title) + html_pages.table(headings, rows))
        if self.failures:
            body.append(html_pages.heading("Failed jobs") + "".join(html_pages.paragraph(failure) for failure in self.failures))
        return html_pages.page("Timing report", "".join(body))


def timing_report(run: Telemetry, all_runs: pl.DataFrame, note: str | None = None) -> tuple[TimingReport, pl.DataFrame]:
    """The timing report of one run's telemetry (`all_runs` lists every run), and its stage table."""
    stages = stage_summary(run)
    jobs = run.jobs
    process_start = jobs["process_start"].min()
    end = jobs["end"].max()
    run_id = jobs["run_id"][0] or "(no run id)"
    startup, load = jobs["startup_seconds"].sum(), jobs["details"].struct.field("model_load_seconds").sum()
    headline = (f"Run {run_id}, started {process_start:%Y-%m-%d %H:%M:%S} UTC: {jobs.height} jobs, "
                f"{(jobs['status'] != 'ok').sum()} failed; "
                f"{(end - process_start).total_seconds():,.1f} s elapsed from the first job's process start to the "
                f"last job's end; {jobs['wall_seconds'].sum():,.1f} job-seconds, of which {load:,.1f} s loading "
                f"models, and {startup:,.1f} s of job start-up before them (interpreter and imports).")
    if all_runs.height > 1:
        headline += (f" Earlier runs made the outputs of the stages that did not run again; their jobs are listed "
                     f"under Runs ({all_runs.height - 1} earlier).")
    sections = [("Stages", *_rows(stages, STAGE_COLUMNS))]
    embedding = stages.filter(pl.col("stage").is_in(EMBEDDING_STAGES))
    if embedding.height:
        sections.append(("Embedding stages", *_rows(embedding, EMBEDDING_COLUMNS)))
    if all_runs.height > 1:
        sections.append(("Runs", *_rows(all_runs, RUN_COLUMNS)))
    failures = [f"{row['stage']} {row['sample']}.{row['unit']}: {row['error']}"
                for row in jobs.filter(pl.col("status") != "ok").iter_rows(named=True)]
    return TimingReport(headline, note, sections, failures), stages


def write_report(telemetry_paths: Sequence[str | os.PathLike], outputs: dict, note: str | None = None) -> int:
    """All the outputs of the timing report from the jobs' telemetry files in pipeline order
    (`outputs`: path by name, see workflow/rules/report.smk); returns the number of jobs it read."""
    records = load_telemetry(telemetry_paths)
    if not records:
        raise ValueError("no telemetry found: no job of this workflow has run yet")
    telemetry = telemetry_tables(records)
    for name, table in (("table", telemetry.jobs), ("gpu_samples", telemetry.gpu_samples),
                        ("batches", telemetry.batches)):
        with atomic_path(outputs[name]) as temporary:
            table.write_parquet(temporary)
    run = latest_run(telemetry)
    report, stages = timing_report(run, runs(telemetry), note)
    with atomic_output(outputs["summary"]) as out:
        out.write(stages.with_columns(pl.col("first_start").dt.to_string("%Y-%m-%dT%H:%M:%S%.6fZ"))
                  .write_csv(separator="\t", null_value=""))
    with atomic_output(outputs["report"]) as out:
        out.write(report.markdown())
    with atomic_output(outputs["html"]) as out:
        out.write(report.html())
    save_figure(figures.job_timeline(run.jobs), outputs["timeline"])
    save_figure(figures.gpu_usage(run.jobs, run.gpu_samples), outputs["gpu_usage"])
    save_figure(figures.stage_times(stages), outputs["stage_times"])
    save_figure(figures.embedding_throughput(run.jobs, run.batches), outputs["throughput"])
    return len(records)
