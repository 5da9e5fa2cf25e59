"""Packed batches, pooling and batch planning, on the CPU."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import token_lists
from virnucpro.models.dnabert_s import load_dnabert_s
from virnucpro.models.esm2 import load_esm2
from virnucpro.models.packing import PackedSequences, attention_within_sequences, mean_pool
from virnucpro.models.tokens import ProteinTokenizer
from virnucpro.stages.embedding import plan_batches

PROTEINS = ["MKTAYIAKQRQISFVKSHFSRQ", "MSE", "GLSDGEWQQVLNVWGKVEADIAGHGQEVLIRLF", "MXXAKLWR", "PEPTIDE",
            "ACDEFGHIKLMNPQRSTVWYACDEFGHIKLMNPQRSTVWY", "MM"]
DNA = ["ACGTACGGTTAGCATCGATCGATCGATGCATGCA", "TTGACCA", "GGGCCCAAATTTGGGCCCAAATTTACGTAGCTAGCTAGCTAGGATCCA" * 3,
       "ATGCGT", "CCCCGGGGAAAATTTTCCCCGGGGAAAATTTT", "ACGT"]


def test_from_token_lists_lays_sequences_end_to_end():
    packed = PackedSequences.from_token_lists([np.array([7, 8, 9]), np.array([5]), np.array([1, 2, 3, 4])])
    assert packed.tokens.tolist() == [7, 8, 9, 5, 1, 2, 3, 4]
    assert packed.tokens.dtype == torch.int64
    assert packed.cu_seqlens.tolist() == [0, 3, 4, 8]
    assert packed.cu_seqlens.dtype == torch.int32
    assert packed.positions.tolist() == [0, 1, 2, 0, 0, 1, 2, 3]
    assert packed.segments.tolist() == [0, 0, 0, 1, 2, 2, 2, 2]
    assert packed.lengths.tolist() == [3, 1, 4]
    assert packed.max_len == 4
    assert packed.num_sequences == 3
    assert packed.num_tokens == 8


def test_pad_id_tops_the_batch_up_with_one_trailing_dummy_sequence():
    token_lists = [np.array([7, 8, 9]), np.array([5, 6])]
    padded = PackedSequences.from_token_lists(token_lists, pad_id=0, multiple=8)
    assert padded.num_tokens == 8
    assert padded.lengths.tolist() == [3, 2, 3]
    assert padded.tokens.tolist() == [7, 8, 9, 5, 6, 0, 0, 0]
    exact = PackedSequences.from_token_lists(token_lists + [np.array([1, 2, 3])], pad_id=0, multiple=8)
    assert exact.lengths.tolist() == [3, 2, 3]  # already a multiple: no dummy
    assert PackedSequences.from_token_lists(token_lists).num_tokens == 5  # no pad_id: no dummy


@pytest.mark.parametrize("count", [2, 5, 6])
def test_split_gives_two_consistent_halves(count):
    token_lists = [np.arange(10 * i, 10 * i + length) for i, length in enumerate([3, 1, 4, 2, 6, 5][:count])]
    packed = PackedSequences.from_token_lists(token_lists)
    first, second = packed.split()
    for part, lists in ((first, token_lists[: count // 2]), (second, token_lists[count // 2 :])):
        expected = PackedSequences.from_token_lists(lists)
        assert part.tokens.tolist() == expected.tokens.tolist()
        assert part.cu_seqlens.tolist() == expected.cu_seqlens.tolist()
        assert part.positions.tolist() == expected.positions.tolist()
        assert part.segments.tolist() == expected.segments.tolist()
        assert part.max_len == expected.max_len


def test_split_keeps_the_dummy_sequence_last_and_its_padding():
    token_lists = [np.full(length, 5 + i) for i, length in enumerate([30, 20, 25, 10, 7])]
    packed = PackedSequences.from_token_lists(token_lists, pad_id=0)
    assert packed.padding_tokens == 128 - 92
    first, second = packed.split()
    assert first.lengths.tolist() == [30, 20] and first.padding_tokens == 0
    assert second.lengths.tolist() == [25, 10, 7, 36] and second.padding_tokens == 36
    assert torch.cat((first.tokens, second.tokens)).tolist() == packed.tokens.tolist()


def test_split_halves_embed_like_the_whole_batch_esm2(esm2_checkpoint):
    model = load_esm2(esm2_checkpoint)
    packed = PackedSequences.from_token_lists(token_lists(ProteinTokenizer, PROTEINS))
    first, second = packed.split()
    with torch.no_grad():
        whole = model.embed(packed)
        halves = torch.cat((model.embed(first), model.embed(second)))
    torch.testing.assert_close(halves, whole, atol=1e-5, rtol=1e-5)


def test_split_halves_embed_like_the_whole_batch_dnabert_s(dnabert_s_dir):
    model, tokenizer = load_dnabert_s(dnabert_s_dir)
    packed = PackedSequences.from_token_lists(token_lists(tokenizer, DNA))
    first, second = packed.split()
    with torch.no_grad():
        whole = model.embed(packed)
        halves = torch.cat((model.embed(first), model.embed(second)))
    torch.testing.assert_close(halves, whole, atol=1e-5, rtol=1e-5)


@pytest.fixture
def random_packed():
    lengths = [5, 3, 9, 4, 12]
    packed = PackedSequences.from_token_lists([np.zeros(n, dtype=np.int64) for n in lengths])
    hidden = torch.randn(packed.num_tokens, 6, generator=torch.Generator().manual_seed(2))
    return packed, hidden, lengths


def test_mean_pool_over_all_tokens(random_packed):
    packed, hidden, lengths = random_packed
    pooled = mean_pool(hidden, packed, skip_ends=False)
    starts = np.cumsum([0] + lengths)
    expected = torch.stack([hidden[starts[i] : starts[i + 1]].mean(0) for i in range(len(lengths))])
    torch.testing.assert_close(pooled, expected, atol=1e-6, rtol=1e-6)


def test_mean_pool_skipping_first_and_last_token(random_packed):
    packed, hidden, lengths = random_packed
    pooled = mean_pool(hidden, packed, skip_ends=True)
    starts = np.cumsum([0] + lengths)
    expected = torch.stack([hidden[starts[i] + 1 : starts[i + 1] - 1].mean(0) for i in range(len(lengths))])
    torch.testing.assert_close(pooled, expected, atol=1e-6, rtol=1e-6)


def test_mean_pool_returns_float32_for_low_precision_states(random_packed):
    packed, hidden, _ = random_packed
    pooled = mean_pool(hidden.to(torch.bfloat16), packed, skip_ends=False)
    assert pooled.dtype == torch.float32


def test_attention_within_sequences_matches_per_sequence_attention():
    generator = torch.Generator().manual_seed(3)
    lengths, heads, head_dim = [4, 1, 7, 3, 4], 2, 5
    packed = PackedSequences.from_token_lists([np.zeros(n, dtype=np.int64) for n in lengths])
    q, k, v = (torch.randn(packed.num_tokens, heads, head_dim, generator=generator) for _ in range(3))
    bias = torch.randn(heads, packed.max_len, packed.max_len, generator=generator)
    for with_bias in (False, True):
        out = attention_within_sequences(q, k, v, packed, bias=bias if with_bias else None)
        starts = np.cumsum([0] + lengths)
        for i, n in enumerate(lengths):
            rows = slice(starts[i], starts[i + 1])
            qi, ki, vi = (t[rows].transpose(0, 1) for t in (q, k, v))  # [heads, n, head_dim]
            scores = qi @ ki.transpose(1, 2) / math.sqrt(head_dim)
            if with_bias:
                scores = scores + bias[:, :n, :n]
            expected = (torch.softmax(scores, dim=-1) @ vi).transpose(0, 1)
            torch.testing.assert_close(out[rows], expected, atol=1e-5, rtol=1e-5)


def check_plan(counts: np.ndarray, budget: int, batches: list[np.ndarray]) -> None:
    covered = np.concatenate(batches) if batches else np.array([], dtype=np.int64)
    assert covered.tolist() == list(range(len(counts)))  # every index once, in order
    for batch in batches:
        assert len(batch) > 0
        assert np.all(np.diff(batch) == 1)
        if len(batch) > 1:
            assert counts[batch].sum() <= budget
    # Batches are greedy: the next sequence would not have fitted in the previous batch.
    for previous, following in zip(batches, batches[1:]):
        assert counts[previous].sum() + counts[following[0]] > budget


@pytest.mark.parametrize("seed", range(5))
def test_plan_batches_respects_budget_order_and_coverage(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 150, size=60)
    counts[rng.integers(0, 60, size=3)] = 400  # longer than the budget
    budget = 256
    batches = plan_batches(counts, budget)
    check_plan(counts, budget, batches)
    for index in np.flatnonzero(counts > budget):
        assert any(batch.tolist() == [index] for batch in batches)


def test_plan_batches_edge_cases():
    assert plan_batches(np.array([], dtype=np.int64), 10) == []
    assert [b.tolist() for b in plan_batches(np.array([5, 5, 5]), 10)] == [[0, 1], [2]]
    assert [b.tolist() for b in plan_batches(np.array([30]), 10)] == [[0]]
    assert [b.tolist() for b in plan_batches(np.array([3, 30, 3]), 10)] == [[0], [1], [2]]
    assert [b.tolist() for b in plan_batches(np.array([10, 10]), 10)] == [[0], [1]]
