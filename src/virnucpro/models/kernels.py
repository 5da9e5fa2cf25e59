"""GPU kernels written for this project (Triton), kept apart from the model files.

`alibi_varlen_attention`: DNABERT-S's attention over a packed batch in one launch. Each program
takes a block of one sequence's queries for one head and walks over that sequence's keys only
(FlashAttention's online softmax), adding ALiBi's -slope * |i - j| computed from the slopes: no
padding, no mask tensor, and one launch whatever the lengths in the batch. PyTorch's own
variable-length kernel takes no ALiBi bias, which is why this exists.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

BLOCK_M = 64
BLOCK_N = 64


@triton.jit
def _alibi_varlen_attention_kernel(q_ptr, k_ptr, v_ptr, out_ptr, cu_seqlens_ptr, slopes_ptr, stride_token,
                                   stride_head, out_stride_token, out_stride_head, scale,
                                   HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    sequence, head, block = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start = tl.load(cu_seqlens_ptr + sequence)
    length = tl.load(cu_seqlens_ptr + sequence + 1) - start
    if block * BLOCK_M >= length:
        return
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, HEAD_DIM)
    row_in = rows < length
    q = tl.load(q_ptr + (start + rows)[:, None] * stride_token + head * stride_head + dims[None, :],
                mask=row_in[:, None], other=0.0)
    slope = tl.load(slopes_ptr + head)
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for first_key in range(0, length, BLOCK_N):
        keys = first_key + tl.arange(0, BLOCK_N)
        key_in = keys < length
        offsets = (start + keys)[:, None] * stride_token + head * stride_head + dims[None, :]
        k = tl.load(k_ptr + offsets, mask=key_in[:, None], other=0.0)
        v = tl.load(v_ptr + offsets, mask=key_in[:, None], other=0.0)
        distance = tl.abs(rows[:, None] - keys[None, :]).to(tl.float32)
        scores = tl.dot(q, tl.trans(k)).to(tl.float32) * scale - slope * distance
        scores = tl.where(key_in[None, :], scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, 1))
        rescale = tl.exp(row_max - new_max)
        weights = tl.exp(scores - new_max[:, None])
        row_sum = row_sum * rescale + tl.sum(weights, 1)
        acc = acc * rescale[:, None] + tl.dot(weights.to(v.dtype), v).to(tl.float32)
        row_max = new_max
    out = acc / row_sum[:, None]
    tl.store(out_ptr + (start + rows)[:, None] * out_stride_token + head * out_stride_head + dims[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_in[:, None])


def alibi_varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                           max_len: int, slopes: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d) - slope * |i - j|) V within each packed sequence.

    q, k, v: [T, heads, head_dim] with the same strides (e.g. views of one fused QKV projection);
    cu_seqlens: [B + 1] int32 sequence starts; slopes: [heads] float32. Returns [T, heads, head_dim].
    """
    tokens, heads, head_dim = q.shape
    if not (q.stride() == k.stride() == v.stride() and q.stride(2) == 1):
        raise ValueError("q, k and v must share their strides and be contiguous in head_dim")
    out = torch.empty((tokens, heads, head_dim), dtype=q.dtype, device=q.device)
    grid = (cu_seqlens.numel() - 1, heads, triton.cdiv(max_len, BLOCK_M))
    _alibi_varlen_attention_kernel[grid](q, k, v, out, cu_seqlens, slopes, q.stride(0), q.stride(1),
                                         out.stride(0), out.stride(1), 1 / math.sqrt(head_dim),
                                         HEAD_DIM=head_dim, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N)
    return out
