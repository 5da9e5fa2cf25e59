"""How long the GPU waits at the start of a run, and how long the run goes on after the GPU work,
for this checkout and, side by side in the same session, another one (`--baseline`, e.g. a copy of
main), with the built-in models on this machine.

From the jobs' telemetry (a job starts when its process starts: its `start_unix` less its
`startup_seconds`; Snakemake launches it then):
- before the GPU: the first job's start to the first embedding job's start, on `--start-reads`
  reads; the run is stopped once an embedding job has started (on a CPU the embedding of many reads
  takes long, and what follows does not matter to this measure);
- after the GPU: the last embedding job's end to the last job's end, on `--end-reads` reads, a whole
  run.

    git clone -q . /tmp/main-copy && git -C /tmp/main-copy checkout -q main
    python benchmarks/pipeline_latency.py --data ../shared/data --baseline /tmp/main-copy --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from runs import REPO, workload

GPU_STAGES = ("embed_dnabert_s", "embed_esm2")


def write_config(checkout: Path, run_dir: Path, reads: Path) -> Path:
    config = yaml.safe_load((checkout / "config/config.yaml").read_text())
    config["samples"] = {"bench": str(reads)}
    for key, path in config["models"].items():
        if isinstance(path, str):
            config["models"][key] = str(checkout / path)
    config["embedding"]["gpu_lock_dir"] = str(run_dir / "locks")
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    return run_dir / "config.yaml"


def start_run(checkout: Path, run_dir: Path, reads: Path, cores: int) -> subprocess.Popen:
    shutil.rmtree(run_dir, ignore_errors=True)
    config = write_config(checkout, run_dir, reads)
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(checkout / "Snakefile"), "--directory",
               str(run_dir), "--configfile", str(config), "--cores", str(cores), "--resources", "gpu=1"]
    env = dict(os.environ, PYTHONPATH=str(checkout / "src"))
    with open(run_dir / "snakemake.log", "w") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def job_times(run_dir: Path) -> list[dict]:
    """Each job's stage, process start and end (Unix seconds), from its telemetry."""
    jobs = []
    for path in (run_dir / "results/telemetry").glob("*/*.json"):
        job = json.loads(path.read_text())
        start = job["start_unix"] - (job["startup_seconds"] or 0)
        jobs.append({"stage": job["stage"], "unit": job.get("shard") or job.get("part") or "all", "start": start,
                     "end": job["start_unix"] + job["wall_seconds"]})
    return sorted(jobs, key=lambda job: job["start"])


def gpu_wait(checkout: Path, run_dir: Path, reads: Path, cores: int, run: bool = True) -> dict:
    """Run until an embedding job has started (its log appears once its imports are done: by
    then its process start is in its telemetry), then stop the run."""
    if run:
        process = start_run(checkout, run_dir, reads, cores)
        logs = [run_dir / "results/logs" / stage for stage in GPU_STAGES]
        while not any(log.is_dir() and any(log.iterdir()) for log in logs):
            if process.poll() is not None:
                raise RuntimeError(f"the run in {run_dir} ended before any embedding job: see its snakemake.log")
            time.sleep(0.05)
        time.sleep(2)
        os.killpg(process.pid, signal.SIGINT)
        process.wait()
    jobs = job_times(run_dir)
    first = min(job["start"] for job in jobs)
    first_gpu = min(job["start"] for job in jobs if job["stage"] in GPU_STAGES)
    return {"seconds_to_first_gpu_job": first_gpu - first,
            "jobs_before": [{**job, "start": round(job["start"] - first, 2), "end": round(job["end"] - first, 2)}
                            for job in jobs if job["start"] <= first_gpu]}


def after_gpu(checkout: Path, run_dir: Path, reads: Path, cores: int, run: bool = True) -> dict:
    """A whole run: the last embedding job's end to the last job's end, and the jobs in between."""
    if run and start_run(checkout, run_dir, reads, cores).wait() != 0:
        raise RuntimeError(f"the run in {run_dir} failed: see its snakemake.log")
    jobs = job_times(run_dir)
    first = min(job["start"] for job in jobs)
    last_gpu_end = max(job["end"] for job in jobs if job["stage"] in GPU_STAGES)
    last_end = max(job["end"] for job in jobs)
    return {"elapsed_seconds": last_end - first,
            "first_gpu_job_after_seconds": min(job["start"] for job in jobs if job["stage"] in GPU_STAGES) - first,
            "seconds_after_last_gpu_job": last_end - last_gpu_end,
            "jobs_after": [{**job, "start": round(job["start"] - last_gpu_end, 2),
                            "end": round(job["end"] - last_gpu_end, 2)}
                           for job in jobs if job["end"] > last_gpu_end and job["stage"] not in GPU_STAGES]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--baseline", type=Path, help="another checkout to measure in the same session")
    parser.add_argument("--work", type=Path, default=Path("/tmp/virnucpro-latency"))
    parser.add_argument("--start-reads", type=int, default=1_000_000)
    parser.add_argument("--end-reads", type=int, default=2_000)
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--analyse-only", action="store_true", help="read the runs already in --work again")
    args = parser.parse_args()

    checkouts = {"this": REPO, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    command = " ".join(arg for arg in sys.argv[1:] if arg != "--analyse-only")
    summary = {"command": f"python benchmarks/pipeline_latency.py {command}",
               "machine": f"{platform.node()}: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
               "cores": args.cores, "start_reads": args.start_reads, "end_reads": args.end_reads, "runs": {}}
    start_input = workload(args.data, args.work, args.start_reads)
    end_input = workload(args.data, args.work, args.end_reads)
    for name, checkout in checkouts.items():
        commit = subprocess.run(["git", "-C", str(checkout), "log", "-1", "--format=%h %s"], capture_output=True,
                                text=True).stdout.strip() or "(not a git checkout)"
        summary["runs"][name] = {
            "checkout": str(checkout), "commit": commit,
            "start": gpu_wait(checkout, args.work / f"{name}_start", start_input, args.cores, not args.analyse_only),
            "end": after_gpu(checkout, args.work / f"{name}_end", end_input, args.cores, not args.analyse_only)}
        print(name, json.dumps({key: value for key, value in summary["runs"][name]["end"].items()
                                if key != "jobs_after"}), summary["runs"][name]["start"]["seconds_to_first_gpu_job"])
    args.out.mkdir(parents=True, exist_ok=True)
    output = args.out / f"pipeline_latency_cpu_{args.cores}cores"
    output.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = ["| checkout | first job to first GPU job, s | last GPU job to last job, s | elapsed, s |",
             "|---|---:|---:|---:|"]
    for name, run in summary["runs"].items():
        lines.append(f"| {name} ({run['commit'][:7]}) | {run['start']['seconds_to_first_gpu_job']:.1f} "
                     f"({args.start_reads:,} reads) | {run['end']['seconds_after_last_gpu_job']:.1f} "
                     f"({args.end_reads:,} reads) | {run['end']['elapsed_seconds']:.1f} |")
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
