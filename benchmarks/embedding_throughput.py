"""Throughput and equivalence of the embedding stages on a GPU, with random weights of the real sizes.

ESM-2 3B (36 layers, 2560 wide, 40 heads) on protein frames of 40-170 residues, side by side in
one run on the same proteins and weights:
  1. fair-esm fp32, 2,048-token batches (VirNucPro's setting),
  2. fair-esm fp16, length-sorted padded 16,384-token batches,
  3. this project: packed bf16 batches, varlen FlashAttention (eager, then torch.compile).
DNABERT-S (12 layers, 768 wide) on nucleotide frames of 150-500 nt: this project's packed bf16
path, and the straightforward fp32 forward (one sequence at a time, as VirNucPro runs it) on a
subset, for the ratio and the equivalence check.

Throughput does not depend on weight values, so the weights are seeded random numbers. Pooled
embeddings are compared with the fp32 reference by cosine similarity per sequence.

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
from virnucpro.models.dnabert_s import DnabertS, DnabertSConfig, save_dnabert_s
from virnucpro.models.embedder import load_embedder
from virnucpro.models.esm2 import ESM2, ESM2Config, save_fair_esm_checkpoint
from virnucpro.stages.embedding import embed_sequences
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
        try:
            results["variants"][name] = function()
        except Exception as error:  # recorded in the results, which say what failed and why
            results["variants"][name] = {"error": f"{type(error).__name__}: {error}"}
        torch.cuda.empty_cache()
        save()
        return function
    return decorate


def esm_benchmark(work: Path, proteins: list[str], results: dict, save) -> None:
    import esm

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = ESM2(ESM2_3B)
    perturb_layer_norms(model, torch.Generator().manual_seed(0))
    checkpoint = work / "esm2_t36_3B_random.pt"
    save_fair_esm_checkpoint(model, checkpoint, dtype=torch.float16)  # the real file is fp16 too
    del model
    residues = sum(map(len, proteins))
    results.update({"proteins": len(proteins), "residues": residues, "mean_length": residues / len(proteins),
                    "variants": {}})

    data = torch.load(checkpoint, map_location="cpu", weights_only=False)
    with torch.device("cuda"):
        reference, alphabet = esm.pretrained.load_model_and_alphabet_core("esm2_t36_3B_UR50D", data, None)
    del data
    reference = reference.eval()
    fp32 = {}

    @variant(results, "fair-esm fp32, 2,048-token batches", save)
    def _():
        fair_esm_embed(reference, alphabet, proteins[:50], 2048)  # warm-up
        fp32["embeddings"], seconds, peak = timed(lambda: fair_esm_embed(reference, alphabet, proteins, 2048))
        return {"seconds": seconds, "residues_per_second": residues / seconds, "peak_allocated_gib": peak}

    @variant(results, "fair-esm fp16, sorted padded 16,384-token batches", save)
    def _():
        model = reference.half()
        fair_esm_embed(model, alphabet, proteins[:50], 16384)
        fp16, seconds, peak = timed(lambda: fair_esm_embed(model, alphabet, proteins, 16384))
        similarity = cosine(fp16, fp32["embeddings"])
        return {"seconds": seconds, "residues_per_second": residues / seconds, "peak_allocated_gib": peak,
                "cosine_vs_fp32_min": float(similarity.min()), "cosine_vs_fp32_mean": float(similarity.mean())}

    del reference
    device = torch.device("cuda")
    for compile_model, token_budget in ((False, None), (True, None), (True, 32768), (True, 16384)):
        name = (f"this project: packed bf16, varlen attention{', torch.compile' if compile_model else ' (eager)'}"
                f"{f', {token_budget}-token batches' if token_budget else ''}")

        @variant(results, name, save)
        def _():
            embedder = load_embedder("esm2", checkpoint, device, compile_model)
            _, warm_seconds, _ = timed(lambda: embed_sequences(embedder, proteins[:1000], device, token_budget))
            (ours, stats), seconds, peak = timed(lambda: embed_sequences(embedder, proteins, device, token_budget))
            similarity = cosine(ours, fp32["embeddings"])
            return {"seconds": seconds, "residues_per_second": residues / seconds, "peak_allocated_gib": peak,
                    "warm_up_seconds": warm_seconds, "tokens": stats.tokens, "batches": stats.batches,
                    "token_budget": stats.token_budget, "packing_efficiency": stats.as_dict()["packing_efficiency"],
                    "data_wait_seconds": stats.wait_seconds, "compute_seconds": stats.compute_seconds,
                    "cosine_vs_fp32_min": float(similarity.min()), "cosine_vs_fp32_mean": float(similarity.mean())}


def dnabert_benchmark(work: Path, frames: list[str], reference_count: int, results: dict, save) -> None:
    from virnucpro.models.dnabert_s import load_dnabert_s
    from virnucpro.models.packing import PackedSequences

    torch.manual_seed(1)
    with torch.device("cuda"):
        model = DnabertS(DNABERT_S)
    perturb_layer_norms(model, torch.Generator().manual_seed(1))
    directory = work / "DNABERT-S-random"
    save_dnabert_s(model, REPO / "resources/models/dnabert_s_mini/tokenizer.json", directory)
    del model
    device = torch.device("cuda")
    results.update({"frames": len(frames), "mean_length_nt": float(np.mean([len(f) for f in frames])),
                    "variants": {}})
    packed = {}

    for compile_model in (False, True):
        name = f"this project: packed bf16, attention per exact-length group{', torch.compile' if compile_model else ''}"

        @variant(results, name, save)
        def _():
            embedder = load_embedder("dnabert_s", directory, device, compile_model)
            _, warm_seconds, _ = timed(lambda: embed_sequences(embedder, frames[:5000], device))
            (packed[compile_model], stats), seconds, peak = timed(lambda: embed_sequences(embedder, frames, device))
            return {"tokens": stats.tokens, "seconds": seconds, "tokens_per_second": stats.tokens / seconds,
                    "warm_up_seconds": warm_seconds, "peak_allocated_gib": peak, "token_budget": stats.token_budget,
                    "batches": stats.batches, "packing_efficiency": stats.as_dict()["packing_efficiency"],
                    "data_wait_seconds": stats.wait_seconds, "compute_seconds": stats.compute_seconds}

    @variant(results, f"reference: fp32, one sequence at a time (as VirNucPro), first {reference_count} frames", save)
    def _():
        model32, tokenizer = load_dnabert_s(directory, device, torch.float32)
        subset = frames[:reference_count]

        def one_at_a_time():
            with torch.inference_mode():
                return np.stack([model32.embed(PackedSequences.from_flat(*flat_tokens(tokenizer, [s])).to(device))[0]
                                 .cpu().numpy() for s in subset])

        one_at_a_time()
        fp32, seconds, peak = timed(one_at_a_time)
        tokens = len(tokenizer.encode(pa.array(subset)).values)
        comparison = {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds,
                      "peak_allocated_gib": peak}
        for compiled, embeddings in packed.items():
            similarity = cosine(embeddings[:reference_count], fp32)
            label = "compiled" if compiled else "eager"
            comparison[f"packed_bf16_{label}_cosine_vs_this_min"] = float(similarity.min())
            comparison[f"packed_bf16_{label}_cosine_vs_this_mean"] = float(similarity.mean())
        return comparison


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder with the shared genomes")
    parser.add_argument("--out", type=Path, required=True, help="folder for embedding_throughput.json")
    parser.add_argument("--work", type=Path, default=Path("/tmp/virnucpro-bench"), help="scratch for the models")
    parser.add_argument("--proteins", type=int, default=4000)
    parser.add_argument("--frames", type=int, default=60000)
    parser.add_argument("--reference-frames", type=int, default=1000)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    frames = realistic_frames(args.data, max(args.frames, 3 * args.proteins), seed=1)
    proteins = [p for p, _ in frames if 40 <= len(p) <= 170][: args.proteins]
    nucleotides = [n for _, n in frames if 150 <= len(n) <= 500][: args.frames]
    results = {
        "command": "python benchmarks/embedding_throughput.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "host": platform.node(),
        "esm2_3b": {}, "dnabert_s": {},
    }
    args.out.mkdir(parents=True, exist_ok=True)

    def save():
        (args.out / "embedding_throughput.json").write_text(json.dumps(results, indent=2) + "\n")

    dnabert_benchmark(args.work, nucleotides, args.reference_frames, results["dnabert_s"], save)
    esm_benchmark(args.work, proteins, results["esm2_3b"], save)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
