"""All nine stages on simulated reads, with random-weight models of the real sizes, on GPUs.

Makes (once, cached in --work) a seeded workload of 150-bp reads simulated from the lambda and
Klebsiella genomes, an ESM-2 3B checkpoint (fp16, fair-esm format), a DNABERT-S directory and a
3328-feature classifier, all with random weights (throughput does not depend on them). Then runs
the workflow for each requested GPU count, each in its own directory, and copies every run's
timing report and a summary to --out. With several runs it also compares their predictions.

    python benchmarks/end_to_end.py --data ../shared/data --reads 1000000 --gpus 1 --out benchmarks/results
    python benchmarks/end_to_end.py --data ../shared/data --reads 200000 --gpus 1 2 4 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import yaml

from virnucpro.builtin_models import perturb_layer_norms
from virnucpro.embedding import load_embedder
from virnucpro.models.classifier import MLPClassifier, save_classifier
from virnucpro.models.dnabert_s import DnabertS, DnabertSConfig, save_dnabert_s
from virnucpro.models.esm2 import ESM2, ESM2Config, save_fair_esm_checkpoint
from virnucpro.simulate import load_genomes, simulate_reads, write_reads

REPO = Path(__file__).resolve().parents[1]


def make_models(work: Path) -> dict:
    models = work / "models"
    paths = {"dnabert_s": models / "DNABERT-S-random", "esm2": models / "esm2_t36_3B_random.pt",
             "classifier": models / "classifier_300_random.pt"}
    if all(path.exists() for path in paths.values()):
        return paths
    models.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda")
    torch.manual_seed(0)
    with device:
        esm = ESM2(ESM2Config(num_layers=36, embed_dim=2560, attention_heads=40))
    perturb_layer_norms(esm, torch.Generator().manual_seed(0))
    save_fair_esm_checkpoint(esm, paths["esm2"], dtype=torch.float16)
    del esm
    with device:
        dnabert = DnabertS(DnabertSConfig(vocab_size=4096, hidden_size=768, num_hidden_layers=12,
                                          num_attention_heads=12, intermediate_size=3072))
    perturb_layer_norms(dnabert, torch.Generator().manual_seed(1))
    save_dnabert_s(dnabert, REPO / "resources/models/dnabert_s_mini/tokenizer.json", paths["dnabert_s"])
    del dnabert
    identities = []
    for kind in ("dnabert_s", "esm2"):
        identity = load_embedder(kind, paths[kind], device).identity()
        identity.pop("source")
        identities.append(identity)
        torch.cuda.empty_cache()
    feature_dims = {identity["kind"]: identity["dim"] for identity in identities}
    save_classifier(MLPClassifier(sum(feature_dims.values())).eval(), paths["classifier"], {
        "expected_length": 300, "feature_dims": feature_dims, "embedding_models": identities,
        "description": "random weights, for benchmarks"})
    return paths


def run_workflow(work: Path, workload: Path, models: dict, gpus: int, eager: bool, cores: int) -> dict:
    run_dir = work / f"run_{gpus}gpu"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["samples"] = {"bench": str(workload)}
    config["models"].update({key: str(path) for key, path in models.items()})
    config["embedding"].update({"device": "cuda", "gpu_lock_dir": str(run_dir / "locks")})
    if eager:
        config["embedding"]["compile"] = False
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    environment = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(map(str, range(gpus))))
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
               str(run_dir), "--configfile", str(run_dir / "config.yaml"), "--cores", str(cores),
               "--resources", f"gpu={gpus}"]
    start = time.perf_counter()
    result = subprocess.run(command, env=environment, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (run_dir / "snakemake.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"workflow failed with {gpus} GPU(s):\n{result.stderr[-4000:]}")
    return {"gpus": gpus, "wall_seconds": wall, "directory": str(run_dir),
            "command": " ".join(command[1:]), "cuda_visible_devices": environment["CUDA_VISIBLE_DEVICES"]}


def stage_seconds(run_dir: Path) -> dict:
    rows = (run_dir / "results/timing_report.tsv").read_text().splitlines()
    header = rows[0].split("\t")
    summary = [dict(zip(header, row.split("\t"))) for row in rows[1:]]
    return {row["stage"]: {"job_seconds": float(row["job_seconds"]), "span_seconds": float(row["span_seconds"]),
                           "jobs": int(row["jobs"])} for row in summary}


def compare_predictions(first: Path, second: Path) -> dict:
    a = pq.read_table(first / "results/bench/read_predictions.parquet")
    b = pq.read_table(second / "results/bench/read_predictions.parquet")
    virus_a = a.column("score_virus").to_numpy(zero_copy_only=False)
    virus_b = b.column("score_virus").to_numpy(zero_copy_only=False)
    same_calls = a.column("call").to_pylist() == b.column("call").to_pylist()
    return {"same_read_ids": a.column("read_id").equals(b.column("read_id")), "same_calls": same_calls,
            "max_abs_score_difference": float(np.nanmax(np.abs(virus_a - virus_b))) if len(virus_a) else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/virnucpro-e2e"))
    parser.add_argument("--reads", type=int, default=1_000_000)
    parser.add_argument("--gpus", type=int, nargs="+", default=[1])
    parser.add_argument("--eager", action="store_true", help="embedding.compile: false")
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    workload = args.work / f"reads_{args.reads}_150bp_seed{args.seed}.fa.gz"
    started = time.perf_counter()
    if not workload.exists():
        write_reads(simulate_reads(load_genomes(args.data), args.reads, 150, 150, 0.5, 0.002, 0.0005, args.seed), workload)
    models = make_models(args.work)
    preparation = time.perf_counter() - started

    summary = {"command": "python benchmarks/end_to_end.py " + " ".join(sys.argv[1:]),
               "device": torch.cuda.get_device_name(), "gpus_on_machine": torch.cuda.device_count(),
               "cpu_cores": os.cpu_count(), "reads": args.reads, "read_length": 150,
               "workload": f"simulated with virnucpro.simulate, seed {args.seed}, half lambda, half Klebsiella",
               "preparation_seconds": preparation, "runs": []}
    for gpus in args.gpus:
        run = run_workflow(args.work, workload, models, gpus, args.eager, args.cores)
        run["stages"] = stage_seconds(Path(run["directory"]))
        summary["runs"].append(run)
        for name in ("timing_report.md", "timing_report.tsv"):
            shutil.copy(Path(run["directory"]) / "results" / name, args.out / f"e2e_{args.reads}reads_{gpus}gpu_{name}")
        (args.out / f"e2e_{args.reads}reads_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if len(summary["runs"]) > 1:
        base = Path(summary["runs"][0]["directory"])
        summary["predictions_vs_first_run"] = {
            run["gpus"]: compare_predictions(base, Path(run["directory"])) for run in summary["runs"][1:]}
    (args.out / f"e2e_{args.reads}reads_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
