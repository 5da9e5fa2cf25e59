"""The GPU path (packed bf16, varlen attention) against fp32 references. Skipped without a GPU.

Realistic inputs: the stop-free frames of random 150-500 nt chunks of the lambda and Klebsiella
genomes. Thresholds from the project's contract: cosine >= 0.999 for every sequence and >= 0.9999
on average between the fast path and the fp32 reference on the same weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def prepared_copies_in_tmp(tmp_path, monkeypatch):
    """GPU loads write prepared copies of the models (virnucpro.model_store.prepared): not into the
    user's cache during tests."""
    monkeypatch.setenv("VIRNUCPRO_PREPARED_DIR", str(tmp_path / "prepared"))


@pytest.fixture(scope="module")
def frames(data_dir):
    """(protein, nucleotide) of each stop-free frame."""
    import pyarrow as pa

    from virnucpro.io.sequences import read_sequences
    from virnucpro.stages.translation import translate_chunks

    genomes = [r.sequence.upper() for name in ("lambda_virus.fa.gz", "Klebs_HS11286.fna.xz")
               for r in read_sequences(data_dir / name)]
    rng = np.random.default_rng(5)
    chunks = []
    for _ in range(800):
        genome = genomes[int(rng.integers(len(genomes)))]
        length = int(rng.integers(150, 501))
        start = int(rng.integers(0, len(genome) - length))
        chunks.append(genome[start : start + length])
    translated = translate_chunks(pa.array(chunks))
    return list(zip(translated.protein.to_pylist(), translated.nucleotide.to_pylist()))


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def assert_equivalent(fast: np.ndarray, reference: np.ndarray) -> None:
    similarity = cosine(fast, reference)
    assert similarity.min() >= 0.999, f"worst cosine {similarity.min():.6f}"
    assert similarity.mean() >= 0.9999, f"mean cosine {similarity.mean():.6f}"


@pytest.fixture(scope="module")
def esm2_150m_shaped(tmp_path_factory):
    """An ESM-2 with the 150M model's width and heads (fewer layers), random weights, fp16 file."""
    from virnucpro.model_store.builtin import perturb_layer_norms
    from virnucpro.models.esm2 import ESM2, ESM2Config, save_fair_esm_checkpoint

    torch.manual_seed(3)
    model = ESM2(ESM2Config(num_layers=12, embed_dim=640, attention_heads=20))
    perturb_layer_norms(model, torch.Generator().manual_seed(3))
    path = tmp_path_factory.mktemp("esm") / "esm2_t12_640d.pt"
    save_fair_esm_checkpoint(model, path, dtype=torch.float16)
    return path


@pytest.mark.parametrize("compile_model", [False, True], ids=["eager", "compiled"])
def test_esm2_packed_bf16_matches_fair_esm_fp32(esm2_150m_shaped, frames, compile_model):
    import esm

    from virnucpro.model_store.loading import load_embedder
    from virnucpro.stages.embedding import embed_sequences

    proteins = [protein for protein, _ in frames if 40 <= len(protein) <= 170][:600]
    data = torch.load(esm2_150m_shaped, map_location="cpu", weights_only=False)
    reference, alphabet = esm.pretrained.load_model_and_alphabet_core("esm2_t12_640d", data, None)
    reference = reference.cuda().eval()
    converter = alphabet.get_batch_converter()
    expected = []
    with torch.no_grad():
        for start in range(0, len(proteins), 32):
            batch = proteins[start : start + 32]
            _, _, tokens = converter([(str(i), p) for i, p in enumerate(batch)])
            layers = reference.num_layers
            states = reference(tokens.cuda(), repr_layers=[layers])["representations"][layers]
            expected += [states[i, 1 : len(p) + 1].mean(0).cpu().numpy() for i, p in enumerate(batch)]
    embedder = load_embedder("esm2", esm2_150m_shaped, torch.device("cuda"), compile_model)
    assert next(embedder.model.parameters()).dtype == torch.bfloat16
    fast, stats = embed_sequences(embedder, proteins, torch.device("cuda"), token_budget=8192)
    assert stats.batches > 1
    assert_equivalent(fast, np.stack(expected))


def test_dnabert_s_packed_bf16_matches_fp32_one_sequence_at_a_time(tmp_path, frames):
    from virnucpro.model_store.builtin import perturb_layer_norms
    from virnucpro.model_store.loading import load_embedder
    from virnucpro.models.dnabert_s import DnabertS, DnabertSConfig, load_dnabert_s, save_dnabert_s
    from virnucpro.models.packing import PackedSequences
    from virnucpro.stages.embedding import embed_sequences

    from conftest import BUILTIN_MODELS, token_lists

    torch.manual_seed(4)
    config = DnabertSConfig(vocab_size=4096, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                            intermediate_size=3072)
    model = DnabertS(config)
    perturb_layer_norms(model, torch.Generator().manual_seed(4))
    save_dnabert_s(model, BUILTIN_MODELS / "dnabert_s_mini" / "tokenizer.json", tmp_path / "dnabert")
    nucleotides = [nucleotide for _, nucleotide in frames if 150 <= len(nucleotide) <= 500][:400]

    model32, tokenizer = load_dnabert_s(tmp_path / "dnabert", "cuda", torch.float32)
    with torch.inference_mode():
        expected = np.stack([model32.embed(PackedSequences.from_token_lists(token_lists(tokenizer, [s])).to("cuda"))[0]
                             .cpu().numpy() for s in nucleotides])
    embedder = load_embedder("dnabert_s", tmp_path / "dnabert", torch.device("cuda"))
    fast, stats = embed_sequences(embedder, nucleotides, torch.device("cuda"), token_budget=8192)
    assert stats.batches > 1
    assert_equivalent(fast, expected)
