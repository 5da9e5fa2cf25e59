"""What the benchmark scripts share: a simulated workload, a workflow run in its own directory, and
its jobs read back from their telemetry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from virnucpro.demo.simulate import load_genomes, simulate_reads, write_reads

REPO = Path(__file__).resolve().parents[1]
VIRNUCPRO_FILES = ("chunked.fa", "identified_nucleotide.fa", "identified_protein.faa", "prediction_results.txt",
                   "prediction_results_highestscore.csv")


def workload(data: Path, work: Path, reads: int, seed: int = 1) -> Path:
    """`reads` 150-bp reads simulated from lambda and Klebsiella (half each), made once."""
    path = work / f"reads_{reads}_150bp_seed{seed}.fa.gz"
    if not path.exists():
        work.mkdir(parents=True, exist_ok=True)
        write_reads(simulate_reads(load_genomes(data), reads, 150, 150, 0.5, 0.002, 0.0005, seed), path)
    return path


def run_workflow(run_dir: Path, sample: str, reads: Path, cores: int, gpus: int = 0,
                 overrides: dict | None = None, extra: tuple[str, ...] = ()) -> dict:
    """The workflow on `reads` with the default config, `overrides` merged into it; `extra` are
    further Snakemake arguments."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["samples"] = {sample: str(reads)}
    for key, path in config["models"].items():
        if isinstance(path, str):
            config["models"][key] = str(REPO / path)
    config["embedding"]["gpu_lock_dir"] = str(run_dir / "locks")
    for key, value in (overrides or {}).items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    # `extra` first: --resources takes every word after it
    command = [sys.executable, "-m", "snakemake", *extra, "--snakefile", str(REPO / "Snakefile"), "--directory",
               str(run_dir), "--configfile", str(run_dir / "config.yaml"), "--cores", str(cores), "--resources",
               f"gpu={gpus}"]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
    wall = time.perf_counter() - start
    (run_dir / "snakemake.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"workflow failed in {run_dir}:\n{result.stderr[-4000:]}")
    return {"directory": str(run_dir), "command": "snakemake " + " ".join(command[3:]), "wall_seconds": wall}


def jobs(run_dir: Path) -> list[dict]:
    """Every job's telemetry, in start order."""
    found = [json.loads(path.read_text()) for path in (run_dir / "results/telemetry").glob("*/*.json")]
    return sorted(found, key=lambda job: job["start_unix"])


def unit(job: dict) -> str:
    return job.get("shard") or job.get("part") or "all"


def stage_rows(run_jobs: list[dict]) -> dict[str, dict]:
    """Per stage: jobs, first start to last end (span), sum of job seconds, the largest peak RSS, and
    the bytes its jobs wrote (temporary files included, measured before Snakemake removes them)."""
    stages: dict[str, dict] = {}
    for job in run_jobs:
        entry = stages.setdefault(job["stage"], {"jobs": 0, "start": job["start_unix"], "end": 0.0,
                                                 "job_seconds": 0.0, "max_rss_mb": 0.0, "bytes_out": 0})
        entry["jobs"] += 1
        entry["end"] = max(entry["end"], job["start_unix"] + job["wall_seconds"])
        entry["job_seconds"] += job["wall_seconds"]
        entry["max_rss_mb"] = max(entry["max_rss_mb"], job["peak_rss_mb"])
        entry["bytes_out"] += job["bytes_out"] or 0
    first = min(entry["start"] for entry in stages.values())
    for entry in stages.values():
        entry["span_seconds"] = entry["end"] - entry["start"]
        entry["starts_at"], entry["ends_at"] = entry["start"] - first, entry["end"] - first
    return stages


def same_outputs(first: Path, second: Path, sample: str) -> dict[str, bool]:
    """Whether two runs' outputs are byte for byte the same (the read table compared as a table)."""
    import pyarrow.parquet as pq

    outputs = {}
    for name in VIRNUCPRO_FILES:
        outputs[name] = (first / "results" / sample / name).read_bytes() == (second / "results" / sample / name).read_bytes()
    outputs["read_predictions.parquet"] = pq.read_table(first / "results" / sample / "read_predictions.parquet").equals(
        pq.read_table(second / "results" / sample / "read_predictions.parquet"))
    return outputs
