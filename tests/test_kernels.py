"""The project's Triton kernels against PyTorch. On a GPU they run for real (bf16); on a CPU with
Triton installed, in Triton's interpreter (float32); without Triton the tests are skipped."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

if importlib.util.find_spec("triton") is None:
    pytest.skip("Triton is not installed", allow_module_level=True)
if not torch.cuda.is_available():  # conftest.py sets TRITON_INTERPRET before Triton is first imported
    assert os.environ.get("TRITON_INTERPRET") == "1"

from virnucpro.models.dnabert_s import alibi_slopes  # noqa: E402
from virnucpro.models.kernels import alibi_varlen_attention  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32


@pytest.mark.parametrize("lengths", [[5, 64, 65, 130, 1, 33], [200], [3] * 40])
def test_alibi_varlen_attention_is_alibi_attention_per_sequence(lengths):
    generator = torch.Generator().manual_seed(len(lengths))
    heads, head_dim = 12, 64
    qkv = torch.randn(sum(lengths), 3, heads, head_dim, generator=generator).to(DEVICE, DTYPE)
    q, k, v = qkv.unbind(1)  # views of one fused projection, as DNABERT-S makes them
    cu_seqlens = torch.tensor(np.r_[0, np.cumsum(lengths)], dtype=torch.int32, device=DEVICE)
    slopes = torch.tensor(alibi_slopes(heads), device=DEVICE)

    out = alibi_varlen_attention(q, k, v, cu_seqlens, max(lengths), slopes)

    for start, end in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
        position = torch.arange(end - start, device=DEVICE)
        bias = -slopes[:, None, None] * (position[None, :] - position[:, None]).abs()[None]
        q_s, k_s, v_s = (t[start:end].transpose(0, 1).float()[None] for t in (q, k, v))
        expected = F.scaled_dot_product_attention(q_s, k_s, v_s, attn_mask=bias)[0].transpose(0, 1)
        tolerance = 2e-2 if DTYPE == torch.bfloat16 else 1e-5
        torch.testing.assert_close(out[start:end].float(), expected, atol=tolerance, rtol=tolerance)


def test_q_k_and_v_must_share_their_strides():
    q = torch.zeros(4, 2, 64, device=DEVICE, dtype=DTYPE)
    with pytest.raises(ValueError, match="strides"):
        alibi_varlen_attention(q, q.clone(), torch.zeros(4, 64, 2, device=DEVICE, dtype=DTYPE).transpose(1, 2),
                               torch.tensor([0, 4], dtype=torch.int32, device=DEVICE), 4, torch.ones(2, device=DEVICE))


@pytest.mark.parametrize("with_update", [True, False])
def test_add_layer_norm_is_residual_add_then_layer_norm(with_update):
    from virnucpro.models import kernels, ops

    generator = torch.Generator().manual_seed(3)
    tokens, width = 37, 160  # a width that is not a power of two
    x = torch.randn(tokens, width, generator=generator).to(DEVICE, DTYPE)
    update = torch.randn(tokens, width, generator=generator).to(DEVICE, DTYPE) if with_update else None
    norm = torch.nn.LayerNorm(width, eps=1e-5).to(DEVICE)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(width, generator=generator))
        norm.bias.copy_(0.1 * torch.randn(width, generator=generator))
        new_x, normed = kernels.add_layer_norm(x, update, norm.weight, norm.bias, norm.eps, DTYPE, torch.float32)
        expected_x = x.float() + (update.float() if with_update else 0)
        expected = F.layer_norm(expected_x, (width,), norm.weight, norm.bias, norm.eps)
        only_normed = kernels.add_layer_norm(x, update, norm.weight, norm.bias, norm.eps, DTYPE, None)
        reference_x, reference = ops.add_layer_norm(x.float().cpu(), None if update is None else update.float().cpu(),
                                                    norm.cpu(), torch.float32)
    tolerance = 1e-5 if DTYPE == torch.float32 else 2e-2
    torch.testing.assert_close(new_x, expected_x, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(normed.float(), expected, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(reference.to(DEVICE), expected, atol=1e-5, rtol=1e-5)
    assert only_normed[0].numel() == 0 and torch.equal(only_normed[1], normed)


def test_rotary_qkv_is_rotate_half_of_q_and_k_and_copies_v():
    from virnucpro.models import kernels, ops
    from virnucpro.models.esm2 import rotary_inv_freq

    generator = torch.Generator().manual_seed(4)
    tokens, heads, head_dim = 29, 5, 16  # a head count that is not a power of two
    qkv = torch.randn(tokens, 3 * heads * head_dim, generator=generator).to(DEVICE, DTYPE)
    positions = torch.randint(0, 200, (tokens,), generator=generator).to(DEVICE)
    inv_freq = rotary_inv_freq(head_dim).to(DEVICE)
    angles = positions.float()[:, None] * inv_freq[None, :]
    q, k, v = kernels.rotary_qkv(qkv, angles.cos(), angles.sin(), heads).unbind(0)
    cos, sin = ops.rotary_tables(positions.cpu(), inv_freq.cpu(), torch.float32)  # the CPU path's tables
    expected = ops.rotary_qkv(qkv.float().cpu(), cos, sin, heads)
    tolerance = 1e-5 if DTYPE == torch.float32 else 2e-2
    for got, want in zip((q, k, v), expected):
        assert got.is_contiguous()
        torch.testing.assert_close(got.float().cpu(), want, atol=tolerance, rtol=tolerance)


def test_gated_gelu_is_gelu_of_the_first_half_times_the_second():
    from virnucpro.models import kernels

    generator = torch.Generator().manual_seed(5)
    x = torch.randn(33, 2 * 96, generator=generator).to(DEVICE, DTYPE)
    gated, linear = x.float().split(96, dim=-1)
    tolerance = 1e-5 if DTYPE == torch.float32 else 2e-2
    torch.testing.assert_close(kernels.gated_gelu(x).float(), F.gelu(gated) * linear, atol=tolerance, rtol=tolerance)


def test_attention_refuses_a_head_size_it_does_not_support():
    q = torch.zeros(4, 2, 24, device=DEVICE, dtype=DTYPE)
    with pytest.raises(ValueError, match="head sizes"):
        alibi_varlen_attention(q, q, q, torch.tensor([0, 4], dtype=torch.int32, device=DEVICE), 4,
                               torch.ones(2, device=DEVICE))


@pytest.mark.parametrize("kind", ["esm2", "dnabert_s"])
def test_models_compute_the_same_through_the_kernels(kind, esm2_checkpoint, dnabert_s_dir, monkeypatch):
    """The whole model with every element-wise step through the Triton kernels (forced on here, in
    float32: in the interpreter on a CPU) against the plain PyTorch path."""
    from conftest import token_lists

    from virnucpro.models import dnabert_s, esm2, ops
    from virnucpro.models.packing import PackedSequences
    from virnucpro.models.tokens import ProteinTokenizer

    if kind == "esm2":
        model = esm2.load_esm2(esm2_checkpoint, DEVICE, DTYPE)
        sequences = token_lists(ProteinTokenizer, ["MKTAYIAKQRQISFVKSHFSRQ", "MVLSPADKTNVKAAW", "GG"])
    else:
        model, tokenizer = dnabert_s.load_dnabert_s(dnabert_s_dir, DEVICE, DTYPE)
        sequences = token_lists(tokenizer, ["ACGTTGCAAGGCTTAACCGGTACGATCGAT" * 3, "GATTACA", "TTTTGGGGCCCCAAAA"])
    packed = PackedSequences.from_token_lists(sequences).to(DEVICE)
    model.gpu_residual_dtype = torch.float32  # the plain path's, so that only the kernels differ
    with torch.no_grad():
        plain = model.embed(packed)
        monkeypatch.setattr(ops, "fused", lambda tensor, dtype: True)
        monkeypatch.setattr(esm2, "attention", lambda q, k, v, packed: esm2.attention_within_sequences(q, k, v, packed))
        monkeypatch.setattr(dnabert_s, "_triton_attention", lambda q: False)
        if DEVICE == "cpu":
            monkeypatch.setattr(ops, "linear_gelu", lambda x, linear, tanh=False: F.gelu(linear(x)))
        kernels = model.embed(packed)
    tolerance = 1e-4 if DTYPE == torch.float32 else 2e-2
    torch.testing.assert_close(kernels, plain, atol=tolerance, rtol=tolerance)
