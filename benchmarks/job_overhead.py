"""Where a GPU job's fixed costs go: process start-up and imports, CUDA, model load, compile and
first batch, and exit, for ESM-2 3B and DNABERT-S (random weights of the real sizes), each job
run several times in a row as a fresh process the way Snakemake runs them (the first writes the
prepared copy of the model and fills the Triton and compile caches; later ones show a node that
has run the job before). The child does what an embedding job does (`workflow/scripts/embed.py`), in the same order.

    python benchmarks/job_overhead.py --data ../shared/data --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
from virnucpro.run.telemetry import _seconds_since_process_start
marks = {"imports_started_after": _seconds_since_process_start()}
start = time.perf_counter()
def mark(name):
    marks[name] = time.perf_counter() - start
import torch
from virnucpro.model_store.loading import load_embedder
from virnucpro.stages.embedding import embed_shard
mark("imports")
mark("cuda")  # CUDA starts inside load_embedder (with the prepared copy, while the weights are read)
if sys.argv[6]:
    import cProfile, io, pstats
    profiler = cProfile.Profile()
    profiler.enable()
from virnucpro.model_store.prepared import prepared_dir
marks["prepared_before"] = (prepared_dir(sys.argv[1], sys.argv[2], torch.bfloat16) / "manifest.json").exists()
embedder = load_embedder(sys.argv[1], sys.argv[2], torch.device("cuda"), compile_model=False)
torch.cuda.synchronize()
mark("model_load")
if sys.argv[6]:
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(30)
    open(sys.argv[6], "w").write(text.getvalue())
if sys.argv[5] == "compile":
    embedder.model.compile_layers()
mark("compile_setup")
stats = embed_shard(embedder, sys.argv[3], sys.argv[4], torch.device("cuda"))
marks["first_batch"] = stats.first_output_at - start
mark("done")
marks["compute_seconds"] = stats.compute_seconds
marks["tokens"] = stats.tokens
marks["batches"] = stats.batches
print("MARKS " + json.dumps(marks), flush=True)
"""


def token_file(kind: str, model: Path, frames: list[str], path: Path) -> None:
    import pyarrow as pa

    from virnucpro.io.schemas import TOKEN_SCHEMA
    from virnucpro.io.tables import TableWriter
    from virnucpro.models.tokens import load_tokenizer
    from virnucpro.stages.sharding import Shard

    tokenizer = load_tokenizer(kind, model)
    with TableWriter(path, TOKEN_SCHEMA, 65536, metadata={"kind": kind, "tokenizer": tokenizer.identity,
                                                          "shard": Shard("000", 0, len(frames), 0).__dict__}) as out:
        out.write_columns({"tokens": tokenizer.encode(pa.array(frames))})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/virnucpro-e2e"))
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kinds", nargs="+", default=["dnabert_s", "esm2"])
    parser.add_argument("--variants", nargs="+", default=["eager", "compile"])
    parser.add_argument("--name", default="job_overhead.json")
    parser.add_argument("--esm2", type=Path, help="ESM-2 3B checkpoint (default: end_to_end.make_models')")
    parser.add_argument("--dnabert-s", type=Path, help="DNABERT-S directory (default: end_to_end.make_models')")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    from embedding_throughput import realistic_frames

    if args.esm2 and args.dnabert_s:
        models = {"esm2": args.esm2, "dnabert_s": args.dnabert_s}
    else:
        from end_to_end import make_models

        models = make_models(args.work)
    frames = realistic_frames(args.data, args.frames, seed=3)[: args.frames]
    sequences = {"esm2": [p for p, _ in frames], "dnabert_s": [n for _, n in frames]}
    results = {"command": "python benchmarks/job_overhead.py " + " ".join(sys.argv[1:]), "runs": [],
               "PYTHONPYCACHEPREFIX": os.environ.get("PYTHONPYCACHEPREFIX")}
    for variant in args.variants:
        for kind in args.kinds:
            tokens = args.work / f"overhead_{kind}.arrow"
            if not tokens.exists():
                token_file(kind, models[kind], sequences[kind], tokens)
            for repeat in range(args.repeats):
                started = time.perf_counter()
                child = subprocess.run([sys.executable, "-c", CHILD, kind, str(models[kind]), str(tokens),
                                        str(args.work / f"overhead_{kind}.features.arrow"),
                                        variant, str(args.out / f"load_profile_{kind}.txt") if repeat == 1 else ""],
                                       capture_output=True, text=True)
                wall = time.perf_counter() - started
                line = next((l for l in child.stdout.splitlines() if l.startswith("MARKS ")), None)
                if line is None:
                    raise RuntimeError(child.stderr[-3000:])
                marks = json.loads(line[6:])
                run = {"variant": variant, "kind": kind, "repeat": repeat, "process_wall": wall, **marks,
                       "exit_after_done": wall - marks["imports_started_after"] - marks["done"]}
                results["runs"].append(run)
                run["process_start_to_first_batch"] = marks["imports_started_after"] + marks["first_batch"]
                print(f"{variant:8s} {kind:9s} #{repeat}: prepared copy {'yes' if marks['prepared_before'] else 'no '}"
                      f" | start to first batch {run['process_start_to_first_batch']:4.1f} s"
                      f" | process {wall:5.1f} s | to imports "
                      f"{marks['imports_started_after']:.1f} + imports {marks['imports']:.1f} | cuda "
                      f"{marks['cuda'] - marks['imports']:.1f} | load {marks['model_load'] - marks['cuda']:.1f} | "
                      f"compile setup {marks['compile_setup'] - marks['model_load']:.1f} | first batch "
                      f"{marks['first_batch'] - marks['compile_setup']:.1f} | rest {marks['done'] - marks['first_batch']:.1f}"
                      f" (compute {marks['compute_seconds']:.1f}) | exit {run['exit_after_done']:.1f} | after the first batch "
                      f"{marks['tokens'] * (1 - 1 / max(1, marks['batches'])) / max(1e-9, marks['done'] - marks['first_batch']):,.0f}"
                      " tokens/s", flush=True)
        (args.out / args.name).write_text(json.dumps(results, indent=2) + "\n")
    (args.out / args.name).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
