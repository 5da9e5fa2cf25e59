"""Where the GPU time of the embedding stages goes: a torch.profiler trace, kernels by category.

Runs the pipeline's own embedding path (packed bf16, compiled) on realistic frames and sums the
device time of every CUDA kernel into matrix multiplies, attention, fused element-wise kernels,
LayerNorm, other element-wise work, and copies. The matrix-multiply share against the total says
how close the stage is to the bf16 matrix-multiply bound.

    python benchmarks/profile_embedding.py --data ../shared/data --esm2 esm2_t36_3B.pt \\
        --dnabert-s DNABERT-S --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from embedding_throughput import realistic_frames
from virnucpro.model_store.loading import load_embedder
from virnucpro.stages.embedding import embed_sequences

CATEGORIES = (  # first match wins (attention kernels have "cutlass" in their names too)
    ("attention", ("flash", "fmha", "attention", "efficient")),
    ("matrix multiply", ("gemm", "cutlass", "xmma", "nvjet", "sm90_", "cublas")),
    ("fused element-wise (torch.compile)", ("triton",)),
    ("layer norm", ("layer_norm", "layernorm")),
    ("pooling and indexing", ("segment", "index", "scatter", "gather")),
    ("copies", ("memcpy", "memset", "copy")),
)


def category(kernel: str) -> str:
    name = kernel.lower()
    return next((label for label, keys in CATEGORIES if any(k in name for k in keys)), "other element-wise")


def profile_model(kind: str, path: Path, sequences: list[str], warm_up: list[str]) -> dict:
    device = torch.device("cuda")
    embedder = load_embedder(kind, path, device, compile_model=True)
    embed_sequences(embedder, warm_up, device)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as trace:
        _, stats = embed_sequences(embedder, sequences, device)
        torch.cuda.synchronize()
    by_category, by_kernel = defaultdict(float), defaultdict(float)
    for event in trace.events():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        by_category[category(event.name)] += event.device_time
        by_kernel[event.name] += event.device_time
    total = sum(by_category.values())
    parameters = sum(p.numel() for name, p in embedder.model.named_parameters()
                     if p.dim() == 2 and "embed" not in name and "word_embeddings" not in name)
    matmul_seconds = by_category["matrix multiply"] / 1e6
    del embedder
    torch.cuda.empty_cache()
    return {
        "sequences": len(sequences), "tokens": stats.tokens, "batches": stats.batches,
        "gpu_kernel_seconds": total / 1e6, "compute_seconds_events": stats.compute_seconds,
        "tokens_per_gpu_second": stats.tokens / (total / 1e6),
        "share_by_category": {k: v / total for k, v in sorted(by_category.items(), key=lambda kv: -kv[1])},
        "matrix_multiply_tflops": 2 * parameters * stats.tokens / matmul_seconds / 1e12 if matmul_seconds else None,
        "top_kernels": [{"kernel": k[:120], "share": v / total}
                        for k, v in sorted(by_kernel.items(), key=lambda kv: -kv[1])[:15]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--esm2", type=Path, required=True)
    parser.add_argument("--dnabert-s", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    frames = realistic_frames(args.data, 40000, seed=2)
    proteins = [p for p, _ in frames if 40 <= len(p) <= 170]
    nucleotides = [n for _, n in frames if 150 <= len(n) <= 500]
    results = {
        "device": torch.cuda.get_device_name(),
        "esm2": profile_model("esm2", args.esm2, proteins[:3000], proteins[3000:4000]),
        "dnabert_s": profile_model("dnabert_s", args.dnabert_s, nucleotides[:20000], nucleotides[20000:25000]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "profile_embedding.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
