"""The final rule: all jobs' telemetry in one table, and a per-stage timing report."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from virnucpro.files import atomic_output, atomic_path

STAGES = ("partition_input", "chunk", "translate", "plan_shards", "split_nucleotide", "split_protein",
          "embed_dnabert_s", "embed_esm2", "merge_features", "predict_frames", "consensus", "collect_fasta")
GPU_STAGES = ("embed_dnabert_s", "embed_esm2")


def load_telemetry(directory: str | os.PathLike, samples: Sequence[str]) -> list[dict]:
    """The telemetry of every job of these samples that has written one."""
    return [json.loads(path.read_text()) for sample in samples
            for path in sorted(Path(directory).glob(f"*/{sample}.*.json"))]


def telemetry_table(jobs: list[dict]) -> pa.Table:
    """One row per job; stage details and GPU summaries flattened into columns (samples dropped)."""
    rows = []
    for job in jobs:
        row = {key: value for key, value in job.items() if key not in ("details", "gpu", "resources")}
        row["resources"] = json.dumps(job.get("resources") or {})
        for key, value in (job.get("details") or {}).items():
            row[f"detail_{key}"] = json.dumps(value) if isinstance(value, (dict, list)) else value
        for key, value in (job.get("gpu") or {}).items():
            if key != "samples":
                row[f"gpu_{key}"] = value
        rows.append(row)
    columns = sorted({key for row in rows for key in row})
    return pa.Table.from_pylist([{column: row.get(column) for column in columns} for row in rows])


def stage_summary(jobs: list[dict]) -> list[dict]:
    """Per stage: jobs, wall time (sum over jobs and first start to last end), share, throughput."""
    total_job_seconds = sum(job["wall_seconds"] for job in jobs) or 1.0
    known = [stage for stage in STAGES if any(job["stage"] == stage for job in jobs)]
    others = sorted({job["stage"] for job in jobs} - set(STAGES))
    summary = []
    for stage in known + others:
        group = [job for job in jobs if job["stage"] == stage]
        wall = sum(job["wall_seconds"] for job in group)
        start = min(job["start_unix"] for job in group)
        end = max(job["start_unix"] + job["wall_seconds"] for job in group)
        records = sum(job["records_in"] or 0 for job in group)
        entry = {
            "stage": stage, "jobs": len(group), "failed": sum(job["status"] != "ok" for job in group),
            "job_seconds": wall, "span_seconds": end - start, "share": wall / total_job_seconds,
            "records_in": records, "records_per_second": records / wall if wall else None,
            "cpu_seconds": sum(job["cpu_seconds"] for job in group),
            "max_rss_mb": max(job["peak_rss_mb"] for job in group),
        }
        if stage in GPU_STAGES:
            details = [job["details"] for job in group if job.get("details")]
            gpus = [job["gpu"] for job in group if job.get("gpu")]
            tokens = sum(d.get("tokens", 0) for d in details)
            compute = sum(d.get("compute_seconds", 0.0) for d in details)
            fills = [d["packing_efficiency"] for d in details if d.get("packing_efficiency") is not None]
            entry.update({
                "device": ", ".join(sorted({d.get("device", "?") for d in details})),
                "tokens": tokens, "batches": sum(d.get("batches", 0) for d in details),
                "tokens_per_second": tokens / wall if wall else None,
                "tokens_per_compute_second": tokens / compute if compute else None,
                "packing_efficiency": sum(fills) / len(fills) if fills else None,
                "data_wait_seconds": sum(d.get("data_wait_seconds", 0.0) for d in details),
                "compute_seconds": compute,
                "model_load_seconds": sum(d.get("model_load_seconds", 0.0) for d in details),
                "peak_allocated_gib": max((d.get("peak_allocated_bytes", 0) for d in details), default=0) / 2**30,
                "mean_gpu_util": sum(g["mean_gpu_util"] for g in gpus) / len(gpus) if gpus else None,
                "energy_j": sum(g["energy_j"] or 0 for g in gpus) if gpus else None,
            })
        summary.append(entry)
    return summary


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def render_markdown(jobs: list[dict], summary: list[dict], note: str | None = None) -> str:
    start = min(job["start_unix"] for job in jobs)
    end = max(job["start_unix"] + job["wall_seconds"] for job in jobs)
    lines = [
        "# Timing report", "",
        *([f"**Note:** {note}", ""] if note else []),
        f"{len(jobs)} jobs, {sum(j['status'] != 'ok' for j in jobs)} failed; "
        f"elapsed {end - start:,.1f} s from the first job's start to the last job's end; "
        f"{sum(j['wall_seconds'] for j in jobs):,.1f} job-seconds in all.", "",
        "| stage | jobs | job seconds | share | span seconds | records in | records/s | CPU seconds | max RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        lines.append(f"| {s['stage']} | {s['jobs']}{' (' + str(s['failed']) + ' failed)' if s['failed'] else ''} | "
                     f"{_fmt(s['job_seconds'])} | {s['share']:.1%} | {_fmt(s['span_seconds'])} | "
                     f"{_fmt(s['records_in'])} | {_fmt(s['records_per_second'])} | {_fmt(s['cpu_seconds'])} | "
                     f"{_fmt(s['max_rss_mb'], 0)} |")
    gpu_rows = [s for s in summary if s["stage"] in GPU_STAGES]
    if gpu_rows:
        lines += ["", "## Embedding stages", "",
                  "| stage | device | tokens | batches | tokens/s (wall) | tokens/s (compute) | packing | "
                  "data wait s | compute s | model load s | peak alloc GiB | mean GPU util % | energy J |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for s in gpu_rows:
            packing = f"{s['packing_efficiency']:.1%}" if s["packing_efficiency"] is not None else "-"
            lines.append(f"| {s['stage']} | {s['device']} | {_fmt(s['tokens'])} | {_fmt(s['batches'])} | "
                         f"{_fmt(s['tokens_per_second'], 0)} | {_fmt(s['tokens_per_compute_second'], 0)} | {packing} | "
                         f"{_fmt(s['data_wait_seconds'])} | {_fmt(s['compute_seconds'])} | "
                         f"{_fmt(s['model_load_seconds'])} | {_fmt(s['peak_allocated_gib'], 2)} | "
                         f"{_fmt(s['mean_gpu_util'])} | {_fmt(s['energy_j'], 0)} |")
    failed = [job for job in jobs if job["status"] != "ok"]
    if failed:
        lines += ["", "## Failed jobs", ""]
        lines += [f"- {job['stage']} {job['sample']}.{job['shard']}: {job['error']}" for job in failed]
    return "\n".join(lines) + "\n"


def write_report(telemetry_directory: str | os.PathLike, samples: Sequence[str], table_path, report_path,
                 summary_path, note: str | None = None) -> int:
    jobs = load_telemetry(telemetry_directory, samples)
    if not jobs:
        raise ValueError("no telemetry found: no job of this workflow has run yet")
    with atomic_path(table_path) as temporary:
        pq.write_table(telemetry_table(jobs), temporary)
    summary = stage_summary(jobs)
    with atomic_output(summary_path) as out:
        columns = sorted({key for entry in summary for key in entry}, key=lambda k: (k != "stage", k))
        out.write("\t".join(columns) + "\n")
        for entry in summary:
            out.write("\t".join("" if entry.get(c) is None else str(entry.get(c)) for c in columns) + "\n")
    with atomic_output(report_path) as out:
        out.write(render_markdown(jobs, summary, note))
    return len(jobs)
