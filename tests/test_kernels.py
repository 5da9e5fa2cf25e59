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
