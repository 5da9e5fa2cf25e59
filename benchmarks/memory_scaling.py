"""Each job's peak memory and time at two input sizes, with the built-in models, on this machine's CPU.

The same pipeline (default config) on N and 10 N simulated 150-bp reads; every job's peak RSS from
its telemetry, per stage, side by side. Then the smaller input again with shards and parts a
hundred times smaller than the defaults, and its outputs compared byte for byte with the default run.

    python benchmarks/memory_scaling.py --data ../shared/data --reads 20000 200000 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
from pathlib import Path

from runs import jobs, run_workflow, same_outputs, stage_rows, workload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/virnucpro-scaling"))
    parser.add_argument("--reads", type=int, nargs=2, default=[20_000, 200_000])
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    args = parser.parse_args()

    summary = {"command": "python benchmarks/memory_scaling.py " + " ".join(
                   f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                   for k, v in vars(args).items() if k != "work"),
               "machine": f"{platform.node()}: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
               "models": "built-in demonstration models (resources/models), on the CPU", "runs": {}}
    for reads in args.reads:
        run_dir = args.work / f"run_{reads}"
        shutil.rmtree(run_dir, ignore_errors=True)
        run = run_workflow(run_dir, "bench", workload(args.data, args.work, reads), args.cores)
        run_jobs = jobs(run_dir)
        run["stages"] = stage_rows(run_jobs)
        run["jobs"] = [{"stage": j["stage"], "unit": j.get("shard") or j.get("part") or "all",
                        "wall_seconds": round(j["wall_seconds"], 2), "peak_rss_mb": round(j["peak_rss_mb"], 1),
                        "records_in": j["records_in"]} for j in run_jobs]
        summary["runs"][reads] = run
    small = args.reads[0]
    fine_dir = args.work / f"run_{small}_fine"
    shutil.rmtree(fine_dir, ignore_errors=True)
    fine = run_workflow(fine_dir, "bench", workload(args.data, args.work, small), args.cores,
                        overrides={"shard_tokens": 240_000, "part_mb": 0.16})
    fine["stages"] = stage_rows(jobs(fine_dir))
    fine["identical_to_default_run"] = same_outputs(Path(summary["runs"][small]["directory"]), fine_dir, "bench")
    summary["small_shards"] = fine

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory_scaling_cpu.json").write_text(json.dumps(summary, indent=2) + "\n")
    small_run, large_run = (summary["runs"][reads] for reads in args.reads)
    lines = [f"| stage | jobs at {args.reads[0]:,} | jobs at {args.reads[1]:,} | peak RSS MB at {args.reads[0]:,} | "
             f"peak RSS MB at {args.reads[1]:,} | ratio | job seconds at {args.reads[0]:,} | job seconds at "
             f"{args.reads[1]:,} | MB written at {args.reads[0]:,} | MB written at {args.reads[1]:,} |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for stage, a in small_run["stages"].items():
        b = large_run["stages"][stage]
        lines.append(f"| {stage} | {a['jobs']} | {b['jobs']} | {a['max_rss_mb']:.0f} | {b['max_rss_mb']:.0f} | "
                     f"{b['max_rss_mb'] / a['max_rss_mb']:.2f} | {a['job_seconds']:.1f} | {b['job_seconds']:.1f} | "
                     f"{a['bytes_out'] / 1e6:.1f} | {b['bytes_out'] / 1e6:.1f} |")
    lines.append("")
    lines.append(f"Wall time: {small_run['wall_seconds']:.0f} s and {large_run['wall_seconds']:.0f} s. Small shards "
                 f"and parts ({fine['stages']['embed_esm2']['jobs']} shards, {fine['stages']['chunk']['jobs']} parts): "
                 f"identical outputs: {fine['identical_to_default_run']}")
    (args.out / "memory_scaling_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
