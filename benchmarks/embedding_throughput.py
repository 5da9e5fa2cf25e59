"""Throughput and equivalence of the embedding stages on a GPU, with random weights of the real sizes.

ESM-2 3B (36 layers, 2560 wide, 40 heads) on protein frames of 40-170 residues, side by side in
one run on the same proteins and weights:
  1. fair-esm fp32, 2,048-token batches (VirNucPro's setting), on the first --reference-proteins
     proteins: the reference of every cosine,
  2. fair-esm fp16, length-sorted padded 16,384-token batches,
  3. this project: packed bf16 batches, varlen FlashAttention, the Triton kernels between the
     matrix multiplies, with each option (residual stream float32 or bf16; exact GELU or cuBLASLt's
     tanh-GELU epilogue), then torch.compile on top of the default.
DNABERT-S (12 layers, 768 wide) on nucleotide frames of 150-500 nt: this project's packed bf16
path with each option (hidden states float32 or bf16; eager or torch.compile), and the
straightforward fp32 forward (one sequence at a time, as VirNucPro runs it) on a subset, for the
ratio and the equivalence check. Each variant's label names the attention path that ran.

The sequences are tokenized before the timing starts (in the pipeline, stages 3 and 4 do it, not
the embedding jobs), and each of this project's variants is timed twice over all sequences after a
warm-up. Throughput does not depend on weight values, so the weights are seeded random numbers.
Pooled embeddings are compared with the fp32 reference by cosine similarity per sequence. Last, a
torch.profiler trace of the default ESM-2 variant gives each kernel's share of the GPU time.

    python benchmarks/embedding_throughput.py --data ../shared/data --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from virnucpro.io.sequences import read_sequences
from virnucpro.model_store.builtin import perturb_layer_norms
from virnucpro.model_store.loading import load_embedder
from virnucpro.models.dnabert_s import DnabertS, DnabertSConfig, save_dnabert_s
from virnucpro.models.esm2 import ESM2, ESM2Config, save_fair_esm_checkpoint
from virnucpro.stages.translation import translate_chunks

REPO = Path(__file__).resolve().parents[1]
ESM2_3B = ESM2Config(num_layers=36, embed_dim=2560, attention_heads=40)
DNABERT_S = DnabertSConfig(vocab_size=4096, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                           intermediate_size=3072)


def realistic_frames(data_dir: Path, count: int, seed: int):
    """(protein, nucleotide) of the stop-free frames of random 150-500 nt chunks of the lambda and
    Klebsiella genomes."""
    genomes = [r.sequence.upper() for name in ("lambda_virus.fa.gz", "Klebs_HS11286.fna.xz")
               for r in read_sequences(data_dir / name)]
    weights = np.array([len(g) for g in genomes], dtype=float)
    rng = np.random.default_rng(seed)
    frames = []
    while len(frames) < count:
        chunks = []
        for genome_index in rng.choice(len(genomes), size=2000, p=weights / weights.sum()):
            genome = genomes[genome_index]
            length = int(rng.integers(150, 501))
            start = int(rng.integers(0, len(genome) - length))
            chunks.append(genome[start : start + length])
        translated = translate_chunks(pa.array(chunks))
        frames += zip(translated.protein.to_pylist(), translated.nucleotide.to_pylist())
    return frames


def flat_tokens(tokenizer, sequences: list[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = tokenizer.encode(pa.array(sequences))
    return encoded.values.to_numpy().astype(np.int64), np.diff(encoded.offsets.to_numpy())


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def timed(function):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = function()
    torch.cuda.synchronize()
    return result, time.perf_counter() - start, torch.cuda.max_memory_allocated() / 2**30


def fair_esm_embed(model, alphabet, proteins: list[str], toks_per_batch: int) -> np.ndarray:
    """VirNucPro's extract_esm: fair-esm batches by padded size, mean over residues of layer L."""
    import esm

    dataset = esm.data.FastaBatchedDataset(list(map(str, range(len(proteins)))), proteins)
    converter = alphabet.get_batch_converter()
    layer = model.num_layers
    out = np.empty((len(proteins), model.embed_dim), dtype=np.float32)
    with torch.no_grad():
        for batch in dataset.get_batch_indices(toks_per_batch, extra_toks_per_seq=1):
            labels, strs, tokens = converter([(str(i), proteins[i]) for i in batch])
            representation = model(tokens.cuda(non_blocking=True), repr_layers=[layer])["representations"][layer]
            for row, index in enumerate(batch):
                out[index] = representation[row, 1 : len(strs[row]) + 1].float().mean(0).cpu().numpy()
    return out


def variant(results: dict, name: str, save):
    """Run one measured variant; a failure is recorded and the other variants still run."""
    def decorate(function):
        started = time.perf_counter()
        try:
            results["variants"][name] = function()
        except Exception as error:  # recorded in the results, which say what failed and why
            results["variants"][name] = {"error": f"{type(error).__name__}: {error}"}
        results["variants"][name]["wall_seconds_of_variant"] = time.perf_counter() - started
        print(f"{name}: {json.dumps({k: v for k, v in results['variants'][name].items() if not isinstance(v, list)})}",
              flush=True)
        torch.cuda.empty_cache()
        save()
        return function
    return decorate


def time_ours(embedder, tokens: pa.ListArray, warm_up: pa.ListArray, device, repeats: int = 2) -> dict:
    """Embed the pre-tokenized sequences `repeats` times after a warm-up (as a job embeds its shard's
    token file, tokenized by an earlier stage): throughput of each repeat and of the best."""
    from virnucpro.stages.embedding import embed_token_blocks

    output = np.empty((len(tokens), embedder.dim), dtype=np.float32)

    def write(first_row: int, vectors: np.ndarray) -> None:
        output[first_row : first_row + len(vectors)] = vectors

    _, warm_seconds, _ = timed(lambda: embed_token_blocks(embedder, [warm_up], device, lambda *_: None))
    runs = []
    for _ in range(repeats):
        stats, seconds, peak = timed(lambda: embed_token_blocks(embedder, [tokens], device, write))
        runs.append({"seconds": seconds, "compute_seconds": stats.compute_seconds, "peak_allocated_gib": peak,
                     "tokens": stats.tokens, "batches": stats.batches, "token_budget": stats.token_budget,
                     "packing_efficiency": stats.as_dict()["packing_efficiency"]})
    best = min(runs, key=lambda run: run["seconds"])
    return {"embeddings": output, "warm_up_seconds": warm_seconds, "runs": runs, **best}


def cosines(ours: np.ndarray, reference: np.ndarray) -> dict:
    similarity = cosine(ours[: len(reference)], reference)
    return {"cosine_vs_fp32_min": float(similarity.min()), "cosine_vs_fp32_mean": float(similarity.mean()),
            "cosine_sequences": len(reference)}


ESM2_OPTIONS = (  # (label, residual stream dtype, cuBLASLt tanh-GELU epilogue in fc1)
    ("float32 residual stream, exact GELU", torch.float32, False),
    ("bf16 residual stream, exact GELU", torch.bfloat16, False),
    ("float32 residual stream, tanh-GELU epilogue", torch.float32, True),
    ("bf16 residual stream, tanh-GELU epilogue", torch.bfloat16, True),
)


def set_esm2_options(model, residual_dtype: torch.dtype, tanh_epilogue: bool) -> None:
    model.gpu_residual_dtype = residual_dtype
    for layer in model.layers:
        layer.gelu_tanh_epilogue = tanh_epilogue


def esm_benchmark(work: Path, proteins: list[str], reference_count: int, results: dict, save,
                  compile_variant: bool) -> None:
    import esm

    from virnucpro.models.tokens import load_tokenizer

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = ESM2(ESM2_3B)
    perturb_layer_norms(model, torch.Generator().manual_seed(0))
    checkpoint = work / "esm2_t36_3B_random.pt"
    save_fair_esm_checkpoint(model, checkpoint, dtype=torch.float16)  # the real file is fp16 too
    del model
    residues = sum(map(len, proteins))
    results.update({"proteins": len(proteins), "residues": residues, "mean_length": residues / len(proteins),
                    "checkpoint": str(checkpoint), "variants": {}})

    data = torch.load(checkpoint, map_location="cpu", weights_only=False)
    with torch.device("cuda"):
        reference, alphabet = esm.pretrained.load_model_and_alphabet_core("esm2_t36_3B_UR50D", data, None)
    del data
    reference = reference.eval()
    fp32 = {}
    subset = proteins[:reference_count]
    subset_residues = sum(map(len, subset))

    @variant(results, f"fair-esm fp32, 2,048-token batches (first {reference_count} proteins)", save)
    def _():
        fair_esm_embed(reference, alphabet, proteins[:50], 2048)  # warm-up
        fp32["embeddings"], seconds, peak = timed(lambda: fair_esm_embed(reference, alphabet, subset, 2048))
        return {"seconds": seconds, "residues_per_second": subset_residues / seconds, "peak_allocated_gib": peak}

    @variant(results, "fair-esm fp16, sorted padded 16,384-token batches", save)
    def _():
        model = reference.half()
        fair_esm_embed(model, alphabet, proteins[:200], 16384)
        fp16, seconds, peak = timed(lambda: fair_esm_embed(model, alphabet, proteins, 16384))
        return {"seconds": seconds, "residues_per_second": residues / seconds, "peak_allocated_gib": peak,
                **cosines(fp16, fp32["embeddings"])}

    del reference
    torch.cuda.empty_cache()
    device = torch.device("cuda")
    tokenizer = load_tokenizer("esm2", checkpoint)
    tokens, warm_up = tokenizer.encode(pa.array(proteins)), tokenizer.encode(pa.array(proteins[:300]))
    embedder = load_embedder("esm2", checkpoint, device, prepared=False)
    path = embedder.model.attention_path(device)
    results["attention_path"] = path
    for label, residual_dtype, tanh_epilogue in ESM2_OPTIONS:
        @variant(results, f"this project: packed bf16, {path}, Triton kernels, {label}", save)
        def _():
            set_esm2_options(embedder.model, residual_dtype, tanh_epilogue)
            measured = time_ours(embedder, tokens, warm_up, device)
            return {"residues_per_second": residues / measured["seconds"],
                    **{k: v for k, v in measured.items() if k != "embeddings"},
                    **cosines(measured["embeddings"], fp32["embeddings"])}

    set_esm2_options(embedder.model, torch.bfloat16, True)  # the default
    profile_variant(embedder, tokens, warm_up, device, results)
    save()
    if compile_variant:
        @variant(results, f"this project: packed bf16, {path}, Triton kernels, bf16 residual stream, "
                          "tanh-GELU epilogue, torch.compile (default mode)", save)
        def _():
            embedder.model.compile_layers()
            measured = time_ours(embedder, tokens, warm_up, device)
            return {"residues_per_second": residues / measured["seconds"],
                    **{k: v for k, v in measured.items() if k != "embeddings"},
                    **cosines(measured["embeddings"], fp32["embeddings"])}


def profile_variant(embedder, tokens: pa.ListArray, warm_up: pa.ListArray, device, results: dict) -> None:
    """Each kernel's share of the GPU time over the first sequences' batches (torch.profiler)."""
    from collections import defaultdict

    from torch.profiler import ProfilerActivity, profile

    from virnucpro.stages.embedding import embed_token_blocks

    embed_token_blocks(embedder, [warm_up], device, lambda *_: None)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as trace:
        stats = embed_token_blocks(embedder, [tokens[:2000]], device, lambda *_: None)
        torch.cuda.synchronize()
    by_kernel = defaultdict(float)
    for event in trace.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            by_kernel[event.name] += event.device_time
    total = sum(by_kernel.values())
    parameters = sum(p.numel() for name, p in embedder.model.named_parameters() if p.dim() == 2 and "embed" not in name)
    matmul = sum(v for k, v in by_kernel.items() if any(m in k.lower() for m in ("nvjet", "gemm", "cublas", "sm90_xmma"))
                 and "flash" not in k.lower())
    results["profile"] = {
        "sequences": 2000, "tokens": stats.tokens, "gpu_kernel_seconds": total / 1e6,
        "compute_seconds_events": stats.compute_seconds, "tokens_per_gpu_second": stats.tokens / (total / 1e6),
        "matrix_multiply_share": matmul / total,
        "matrix_multiply_tflops": 2 * parameters * stats.tokens / (matmul / 1e6) / 1e12 if matmul else None,
        "top_kernels": [{"kernel": k[:140], "share": v / total}
                        for k, v in sorted(by_kernel.items(), key=lambda kv: -kv[1])[:20]],
    }
    print("profile:", json.dumps({k: v for k, v in results["profile"].items() if k != "top_kernels"}), flush=True)
    for row in results["profile"]["top_kernels"]:
        print(f"  {row['share']:6.1%}  {row['kernel']}", flush=True)


def dnabert_benchmark(work: Path, frames: list[str], reference_count: int, results: dict, save) -> None:
    from virnucpro.models.dnabert_s import load_dnabert_s
    from virnucpro.models.packing import PackedSequences
    from virnucpro.models.tokens import load_tokenizer

    torch.manual_seed(1)
    with torch.device("cuda"):
        model = DnabertS(DNABERT_S)
    perturb_layer_norms(model, torch.Generator().manual_seed(1))
    directory = work / "DNABERT-S-random"
    save_dnabert_s(model, REPO / "resources/models/dnabert_s_mini/tokenizer.json", directory)
    del model
    device = torch.device("cuda")
    tokenizer = load_tokenizer("dnabert_s", directory)
    started = time.perf_counter()
    tokens = tokenizer.encode(pa.array(frames))
    tokenize_seconds = time.perf_counter() - started
    warm_up = tokenizer.encode(pa.array(frames[:5000]))
    total_tokens = len(tokens.values)
    results.update({"frames": len(frames), "mean_length_nt": float(np.mean([len(f) for f in frames])),
                    "tokens": total_tokens, "tokenize_seconds_not_timed": tokenize_seconds, "variants": {}})

    model32, _ = load_dnabert_s(directory, device, torch.float32)
    subset = frames[:reference_count]
    fp32 = {}

    @variant(results, f"reference: fp32, one sequence at a time (as VirNucPro), first {reference_count} frames", save)
    def _():
        def one_at_a_time():
            with torch.inference_mode():
                return np.stack([model32.embed(PackedSequences.from_flat(*flat_tokens(tokenizer, [s])).to(device))[0]
                                 .cpu().numpy() for s in subset])

        one_at_a_time()
        fp32["embeddings"], seconds, peak = timed(one_at_a_time)
        count = len(tokenizer.encode(pa.array(subset)).values)
        return {"tokens": count, "seconds": seconds, "tokens_per_second": count / seconds, "peak_allocated_gib": peak,
                "attention_path": model32.attention_path(device)}

    del model32
    embedder = load_embedder("dnabert_s", directory, device, prepared=False)
    path = embedder.model.attention_path(device)
    results["attention_path"] = path
    for residual_dtype, compile_model in ((torch.float32, False), (torch.bfloat16, False), (torch.bfloat16, True)):
        label = (f"this project: packed bf16, {path}, Triton kernels, "
                 f"{'bf16' if residual_dtype == torch.bfloat16 else 'float32'} hidden states"
                 f"{', torch.compile (default mode)' if compile_model else ''}")

        @variant(results, label, save)
        def _():
            embedder.model.gpu_residual_dtype = residual_dtype
            if compile_model:
                embedder.model.compile_layers()
            measured = time_ours(embedder, tokens, warm_up, device)
            return {"tokens_per_second": measured["tokens"] / measured["seconds"],
                    **{k: v for k, v in measured.items() if k != "embeddings"},
                    **cosines(measured["embeddings"], fp32["embeddings"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder with the shared genomes")
    parser.add_argument("--out", type=Path, required=True, help="folder for embedding_throughput.json")
    parser.add_argument("--work", type=Path, default=Path("/tmp/virnucpro-bench"), help="scratch for the models")
    parser.add_argument("--proteins", type=int, default=4000)
    parser.add_argument("--reference-proteins", type=int, default=1000)
    parser.add_argument("--frames", type=int, default=60000)
    parser.add_argument("--reference-frames", type=int, default=1000)
    parser.add_argument("--no-esm2-compile", action="store_true", help="leave out the torch.compile ESM-2 variant")
    parser.add_argument("--name", default="embedding_throughput.json")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    frames = realistic_frames(args.data, max(args.frames, 3 * args.proteins), seed=1)
    proteins = [p for p, _ in frames if 40 <= len(p) <= 170][: args.proteins]
    nucleotides = [n for _, n in frames if 150 <= len(n) <= 500][: args.frames]
    results = {
        "command": "python benchmarks/embedding_throughput.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "host": platform.node(),
        "dnabert_s": {}, "esm2_3b": {},
    }
    args.out.mkdir(parents=True, exist_ok=True)

    def save():
        (args.out / args.name).write_text(json.dumps(results, indent=2) + "\n")

    dnabert_benchmark(args.work, nucleotides, args.reference_frames, results["dnabert_s"], save)
    esm_benchmark(args.work, proteins, args.reference_proteins, results["esm2_3b"], save, not args.no_esm2_compile)
    save()


if __name__ == "__main__":
    main()
