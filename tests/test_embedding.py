"""The embedding stages on the CPU with both embedding models, on frames translated from the lambda genome."""

from __future__ import annotations

import logging
import re
import time

import numpy as np
import pyarrow as pa
import pytest
import torch

from virnucpro.io.features import FeatureFile
from virnucpro.io.sequences import read_sequences
from virnucpro.io.tables import TableWriter
from virnucpro.model_store.loading import load_embedder
from virnucpro.models.packing import PackedSequences
from virnucpro.models.tokens import load_tokenizer
from virnucpro.stages.embedding import BatchTimeline, embed_sequences, embed_shard
from virnucpro.stages.sharding import Shard
from virnucpro.stages.translation import translate_chunks

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def lambda_frames(data_dir):
    """Stop-free frames of lambda chunks of assorted lengths, like stage 2 produces from reads."""
    genome = next(read_sequences(data_dir / "lambda_virus.fa.gz")).sequence
    rng = np.random.default_rng(7)
    starts = rng.integers(0, len(genome) - 400, size=24)
    lengths = rng.integers(60, 400, size=24)
    chunks = [genome[start : start + length] for start, length in zip(starts, lengths)]
    frames = translate_chunks(pa.array(chunks))
    assert len(frames.frame) >= 20
    return {"esm2": frames.protein.to_pylist()[:30], "dnabert_s": frames.nucleotide.to_pylist()[:30]}


@pytest.fixture(scope="module")
def embedders(esm2_checkpoint, dnabert_s_dir):
    return {"esm2": load_embedder("esm2", esm2_checkpoint, CPU),
            "dnabert_s": load_embedder("dnabert_s", dnabert_s_dir, CPU)}


def sequences_for(kind: str, frames) -> list[str]:
    return frames[kind]


def tokens(embedder, sequences: list[str]) -> pa.ListArray:
    return load_tokenizer(embedder.kind, embedder.source).encode(pa.array(sequences, pa.string()))


def embed_alone(embedder, sequence: str) -> np.ndarray:
    packed = PackedSequences.from_token_lists([np.asarray(tokens(embedder, [sequence])[0].as_py())])
    with torch.no_grad():
        return embedder.model.embed(packed)[0].numpy()


@pytest.mark.parametrize("kind", ["esm2", "dnabert_s"])
def test_each_row_is_the_model_on_that_sequence_alone(kind, embedders, lambda_frames):
    embedder = embedders[kind]
    sequences = sequences_for(kind, lambda_frames)
    embeddings, stats = embed_sequences(embedder, sequences, CPU, token_budget=512)
    assert embeddings.shape == (len(sequences), embedder.dim)
    assert embeddings.dtype == np.float32
    assert stats.sequences == len(sequences)
    assert stats.batches > 1
    for row, sequence in enumerate(sequences):
        np.testing.assert_allclose(embeddings[row], embed_alone(embedder, sequence), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["esm2", "dnabert_s"])
def test_result_does_not_depend_on_token_budget(kind, embedders, lambda_frames):
    embedder = embedders[kind]
    sequences = sequences_for(kind, lambda_frames)
    small, small_stats = embed_sequences(embedder, sequences, CPU, token_budget=64)
    large, large_stats = embed_sequences(embedder, sequences, CPU, token_budget=4096)
    assert small_stats.batches > large_stats.batches
    assert small_stats.token_budget == 64 and large_stats.token_budget == 4096
    np.testing.assert_allclose(small, large, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["esm2", "dnabert_s"])
def test_result_does_not_depend_on_input_order(kind, embedders, lambda_frames):
    embedder = embedders[kind]
    sequences = sequences_for(kind, lambda_frames)
    permutation = np.random.default_rng(1).permutation(len(sequences))
    in_order, _ = embed_sequences(embedder, sequences, CPU, token_budget=256)
    shuffled, _ = embed_sequences(embedder, [sequences[i] for i in permutation], CPU, token_budget=256)
    np.testing.assert_allclose(shuffled, in_order[permutation], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["esm2", "dnabert_s"])
def test_a_repeated_sequence_gets_the_same_embedding_in_every_batch(kind, embedders, lambda_frames):
    embedder = embedders[kind]
    distinct = sequences_for(kind, lambda_frames)[:10]
    sequences = distinct + distinct[::2] + [distinct[0]] * 3
    embeddings, stats = embed_sequences(embedder, sequences, CPU, token_budget=256)
    assert stats.sequences == len(sequences) and stats.batches > 1
    for row, sequence in enumerate(sequences):
        assert np.array_equal(embeddings[row], embeddings[sequences.index(sequence)])


def test_no_sequences_give_an_empty_table(embedders):
    embeddings, stats = embed_sequences(embedders["esm2"], [], CPU)
    assert embeddings.shape == (0, embedders["esm2"].dim)
    assert stats.sequences == stats.batches == 0


@pytest.mark.parametrize("kind", ["esm2", "dnabert_s"])
def test_a_shard_is_embedded_into_its_feature_file_in_row_order(kind, embedders, lambda_frames, tmp_path):
    embedder = embedders[kind]
    sequences = sequences_for(kind, lambda_frames)
    shard = Shard("003", 1000, 1000 + len(sequences), 0)
    tokenizer = load_tokenizer(kind, embedder.source)
    with TableWriter(tmp_path / "tokens.arrow", pa.schema([("tokens", pa.list_(pa.uint16()))]), 7, metadata={
            "kind": kind, "tokenizer": tokenizer.identity, "shard": shard.__dict__}) as table:
        table.write_columns({"tokens": tokens(embedder, sequences)})

    stats = embed_shard(embedder, tmp_path / "tokens.arrow", tmp_path / "features.arrow", CPU, token_budget=300)

    features = FeatureFile(tmp_path / "features.arrow")
    assert (features.row_start, features.row_end) == (1000, 1000 + len(sequences))
    assert features.models == [embedder.identity()]
    expected, _ = embed_sequences(embedder, sequences, CPU, token_budget=300)
    assert np.array_equal(features.vectors(1000, 1000 + len(sequences)), expected)
    assert stats.sequences == len(sequences) and stats.batches > 1


def test_tokens_made_for_another_model_are_refused(embedders, tmp_path):
    with TableWriter(tmp_path / "tokens.arrow", pa.schema([("tokens", pa.list_(pa.uint16()))]), 7, metadata={
            "kind": "dnabert_s", "tokenizer": "tokenizer.json sha256 0000", "shard": Shard("000", 0, 0, 0).__dict__}):
        pass
    with pytest.raises(ValueError, match="not for this esm2"):
        embed_shard(embedders["esm2"], tmp_path / "tokens.arrow", tmp_path / "features.arrow", CPU)
    assert not (tmp_path / "features.arrow").exists()


def test_identity_describes_the_loaded_model(embedders, esm2_checkpoint, dnabert_s_dir):
    esm2_identity = embedders["esm2"].identity()
    dnabert_identity = embedders["dnabert_s"].identity()
    assert esm2_identity["kind"] == "esm2" and esm2_identity["dim"] == 64
    assert esm2_identity["architecture"] == "esm2_t4_64d_4h"
    assert esm2_identity["source"] == str(esm2_checkpoint)
    assert dnabert_identity["kind"] == "dnabert_s" and dnabert_identity["dim"] == 48
    assert dnabert_identity["architecture"] == "dnabert_s_l2_48d_6h"
    assert dnabert_identity["source"] == str(dnabert_s_dir)
    assert len(esm2_identity["fingerprint"]) == 16
    assert esm2_identity["fingerprint"] != dnabert_identity["fingerprint"]


def test_unknown_model_kind_is_refused(esm2_checkpoint):
    with pytest.raises(ValueError, match="unknown embedding model kind"):
        load_embedder("prot_t5", esm2_checkpoint, CPU)


@pytest.mark.parametrize("kind", ["esm2", "dnabert_s"])
def test_token_counts_and_packing_efficiency_count_real_tokens_only(kind, embedders, lambda_frames):
    embedder = embedders[kind]
    sequences = sequences_for(kind, lambda_frames)
    real_tokens = len(tokens(embedder, sequences).values)
    _, stats = embed_sequences(embedder, sequences, CPU, token_budget=600)
    assert stats.tokens == real_tokens
    assert 0 <= stats.padding_tokens < 64 * stats.batches
    assert (stats.tokens + stats.padding_tokens) % 64 == 0  # every batch rounded up to 64 tokens
    # no frame is longer than the budget, so the mean fill of the batches is real tokens / budget
    assert stats.as_dict()["packing_efficiency"] == pytest.approx(real_tokens / (stats.batches * stats.token_budget))
    timeline = stats.as_dict()["batch_timeline"]
    assert sum(timeline["batches"]) == stats.batches and sum(timeline["sequences"]) == len(sequences)
    assert sum(timeline["tokens"]) == real_tokens and sum(timeline["padding_tokens"]) == stats.padding_tokens
    assert sum(timeline["compute_seconds"]) == pytest.approx(stats.compute_seconds)
    assert timeline["end_unix"] == sorted(timeline["end_unix"]) and time.time() - 60 < timeline["end_unix"][0]


def test_a_batch_that_runs_out_of_memory_is_split_and_the_job_goes_on(embedders, lambda_frames, monkeypatch):
    embedder = embedders["esm2"]
    sequences = sequences_for("esm2", lambda_frames)
    expected, _ = embed_sequences(embedder, sequences, CPU, token_budget=4096)
    original_embed = embedder.model.embed

    def embed_with_small_memory(packed):
        if packed.num_tokens > 700:
            raise torch.OutOfMemoryError("simulated: batch too large")
        return original_embed(packed)

    monkeypatch.setattr(embedder.model, "embed", embed_with_small_memory)
    embeddings, stats = embed_sequences(embedder, sequences, CPU, token_budget=4096)
    assert stats.oom_splits >= 1
    np.testing.assert_allclose(embeddings, expected, atol=1e-5, rtol=1e-5)


def test_the_batch_timeline_stays_bounded_and_keeps_every_batch():
    timeline = BatchTimeline(max_entries=4)
    for batch in range(11):
        timeline.add(100.0 + batch, sequences=2, tokens=10 * batch, padding_tokens=1, compute_seconds=0.5)
    entries = timeline.as_dict()
    # 11 batches in entries of 4 (after two halvings): 4, 4, 3
    assert entries["batches"] == [4, 4, 3] and entries["end_unix"] == [103.0, 107.0, 110.0]
    assert entries["tokens"] == [60, 220, 270] and entries["sequences"] == [8, 8, 6]
    assert entries["padding_tokens"] == [4, 4, 3] and entries["compute_seconds"] == [2.0, 2.0, 1.5]


def test_embedding_logs_its_progress_with_the_time_left(embedders, lambda_frames, caplog):
    sequences = sequences_for("esm2", lambda_frames)
    with caplog.at_level(logging.INFO, logger="virnucpro.stages.embedding"):
        embed_sequences(embedders["esm2"], sequences, CPU, token_budget=600)
    lines = [record.getMessage() for record in caplog.records if "tokens/s" in record.getMessage()]
    assert not lines  # nothing within the first 30 s

    from virnucpro.stages.embedding import embed_token_blocks

    tokens_per_sequence = tokens(embedders["esm2"], sequences)
    with caplog.at_level(logging.INFO, logger="virnucpro.stages.embedding"):
        embed_token_blocks(embedders["esm2"], [tokens_per_sequence], CPU, lambda row, vectors: None, 600,
                           total_sequences=len(sequences), progress_seconds=0)
    lines = [record.getMessage() for record in caplog.records if "tokens/s" in record.getMessage()]
    assert len(lines) >= 2
    assert re.fullmatch(rf"esm2: [\d,]+ of {len(sequences)} sequences \([\d.]+%\), [\d,]+ tokens in \d+ s, "
                        r"[\d,]+ tokens/s, [\d,]+ sequences/s, about \d+ s left", lines[0]), lines[0]
    assert lines[-1].startswith(f"esm2: {len(sequences)} of {len(sequences)} sequences (100.0%)")
