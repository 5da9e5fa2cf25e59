"""Stages 1-4 alone (partition, chunk, translate, shard plan, tokenization) at two input sizes, on
this machine's CPU: each job's peak memory and time, and the wall time of stages 1-4.

The whole pipeline's memory at two sizes is `memory_scaling.py`; its embedding stages make it
slow on a CPU, so this one stops before them to reach sizes well above every block size of stages
1-4 (32,768 reads, 65,536 chunks or frames): `--until plan_shards`, then, as the shard jobs are
known only once the checkpoints have run, a second Snakemake run for the token files of the shards
that it planned (the time between the two runs counts in the stages' wall time).

    python benchmarks/prepare_scaling.py --data ../shared/data --reads 100000 1000000 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
from pathlib import Path

from runs import jobs, run_workflow, stage_rows, workload
from virnucpro.stages.sharding import read_shard_plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/virnucpro-prepare"))
    parser.add_argument("--reads", type=int, nargs=2, default=[100_000, 1_000_000])
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    args = parser.parse_args()

    summary = {"command": f"python benchmarks/prepare_scaling.py --reads {args.reads[0]} {args.reads[1]} "
                          f"--cores {args.cores}",
               "machine": f"{platform.node()}: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
               "runs": {}}
    for reads in args.reads:
        run_dir = args.work / f"run_{reads}"
        shutil.rmtree(run_dir, ignore_errors=True)
        reads_path = workload(args.data, args.work, reads)
        run = run_workflow(run_dir, "bench", reads_path, args.cores, extra=("--until", "plan_shards"))
        token_files = [f"results/bench/tokens/{kind}/{shard.name}.arrow" for kind in ("dnabert_s", "esm2")
                       for plan in sorted((run_dir / "results/bench/shards").glob("*.tsv"))
                       for shard in read_shard_plan(plan)]
        run["wall_seconds"] += run_workflow(run_dir, "bench", reads_path, args.cores,
                                            extra=tuple(token_files))["wall_seconds"]
        run["input_bytes"] = reads_path.stat().st_size
        run["stages"] = stage_rows(jobs(run_dir))
        run["stages_1_4_seconds"] = max(s["ends_at"] for s in run["stages"].values())
        summary["runs"][reads] = run

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "prepare_scaling_cpu.json").write_text(json.dumps(summary, indent=2) + "\n")
    small, large = (summary["runs"][reads] for reads in args.reads)
    lines = [f"| stage | jobs at {args.reads[0]:,} | jobs at {args.reads[1]:,} | peak RSS MB at {args.reads[0]:,} | "
             f"peak RSS MB at {args.reads[1]:,} | job seconds at {args.reads[0]:,} | job seconds at {args.reads[1]:,} |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for stage, a in small["stages"].items():
        b = large["stages"][stage]
        lines.append(f"| {stage} | {a['jobs']} | {b['jobs']} | {a['max_rss_mb']:.0f} | {b['max_rss_mb']:.0f} | "
                     f"{a['job_seconds']:.1f} | {b['job_seconds']:.1f} |")
    lines += ["", f"Stages 1-4, first job's start to last job's end: {small['stages_1_4_seconds']:.1f} s and "
                  f"{large['stages_1_4_seconds']:.1f} s."]
    (args.out / "prepare_scaling_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
