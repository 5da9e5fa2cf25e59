"""GPU kernels written for this project (Triton), kept apart from the model files.

The model files call them through `virnucpro.models.ops`, which holds the plain PyTorch version of
each operation (the CPU path, and the reference the tests compare with). They are plain functions,
not `torch.library` custom ops: defining those imports torch's compiler stack, seconds of every GPU
job's start-up. A model that goes through torch.compile calls `opaque_to_torch_compile()` first.

- `alibi_varlen_attention`: DNABERT-S's attention over a packed batch in one launch. Each program
  takes a block of one sequence's queries for one head and walks over that sequence's keys only
  (FlashAttention's online softmax), adding ALiBi's -slope * |i - j| computed from the slopes: no
  padding, no mask tensor, and one launch whatever the lengths in the batch. PyTorch's own
  variable-length kernel takes no ALiBi bias, which is why this exists.
- `add_layer_norm`: a residual add and the LayerNorm after it in one pass over memory: reads the
  residual stream and the sublayer's output, writes the new stream (if asked) and its normalised
  copy in the matrix multiplies' dtype. The statistics are float32 whatever the dtypes.
- `rotary_qkv`: splits a fused QKV projection into contiguous Q, K and V and applies ESM-2's rotary
  embedding (rotate-half, float32 arithmetic) to Q and K, in one pass.
- `gated_gelu`: DNABERT-S's gated feed-forward activation, gelu(gated) * linear (exact GELU).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

BLOCK_M = 64
BLOCK_N = 64
# Head sizes the attention kernel is written for: tl.dot needs at least 16 along each side, and
# the block of queries and its accumulator must stay in registers.
ATTENTION_HEAD_DIMS = (16, 32, 64, 128)


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
    if head_dim not in ATTENTION_HEAD_DIMS:
        raise ValueError(f"alibi_varlen_attention supports head sizes {ATTENTION_HEAD_DIMS}, not {head_dim}")
    if not (q.stride() == k.stride() == v.stride() and q.stride(2) == 1):
        raise ValueError("q, k and v must share their strides and be contiguous in head_dim")
    out = torch.empty((tokens, heads, head_dim), dtype=q.dtype, device=q.device)
    grid = (cu_seqlens.numel() - 1, heads, triton.cdiv(max_len, BLOCK_M))
    _alibi_varlen_attention_kernel[grid](q, k, v, out, cu_seqlens, slopes, q.stride(0), q.stride(1),
                                         out.stride(0), out.stride(1), 1 / math.sqrt(head_dim),
                                         HEAD_DIM=head_dim, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N)
    return out



@triton.jit
def _add_layer_norm_kernel(x_ptr, update_ptr, weight_ptr, bias_ptr, x_out_ptr, normed_ptr, width, eps,
                           HAS_UPDATE: tl.constexpr, STORE_X: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    columns = tl.arange(0, BLOCK)
    inside = columns < width
    offsets = row * width + columns
    x = tl.load(x_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    if HAS_UPDATE:
        x += tl.load(update_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    if STORE_X:
        tl.store(x_out_ptr + offsets, x.to(x_out_ptr.dtype.element_ty), mask=inside)
    mean = tl.sum(x, 0) / width
    centred = tl.where(inside, x - mean, 0.0)
    variance = tl.sum(centred * centred, 0) / width
    weight = tl.load(weight_ptr + columns, mask=inside, other=0.0)
    bias = tl.load(bias_ptr + columns, mask=inside, other=0.0)
    normed = centred * tl.rsqrt(variance + eps) * weight + bias
    tl.store(normed_ptr + offsets, normed.to(normed_ptr.dtype.element_ty), mask=inside)


def add_layer_norm(x: torch.Tensor, update: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor,
                   eps: float, out_dtype: torch.dtype, stream_dtype: torch.dtype | None) -> list[torch.Tensor]:
    """[x + update, layer_norm(x + update)] for rows of x [T, E] (update: [T, E] or None).

    The sum is taken in float32; the new stream is written as `stream_dtype` (not written, and
    returned empty, when it is None), the normalised rows as `out_dtype`.
    """
    tokens, width = x.shape
    if update is not None and update.shape != x.shape:
        raise ValueError(f"update {tuple(update.shape)} does not match x {tuple(x.shape)}")
    x, update = x.contiguous(), update.contiguous() if update is not None else None
    new_x = x.new_empty(x.shape if stream_dtype is not None else (0,), dtype=stream_dtype or x.dtype)
    normed = x.new_empty(x.shape, dtype=out_dtype)
    if tokens:
        block = triton.next_power_of_2(width)
        _add_layer_norm_kernel[(tokens,)](x, update if update is not None else x, weight, bias, new_x, normed,
                                          width, eps, HAS_UPDATE=update is not None,
                                          STORE_X=stream_dtype is not None, BLOCK=block,
                                          num_warps=min(16, max(1, block // 256)))
    return [new_x, normed]



@triton.jit
def _rotary_qkv_kernel(qkv_ptr, cos_ptr, sin_ptr, out_ptr, tokens, heads,
                       HALF: tl.constexpr, BLOCK_HEADS: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    head = tl.arange(0, BLOCK_HEADS)[:, None]
    dim = tl.arange(0, HALF)[None, :]
    inside = head < heads
    width = heads * 2 * HALF
    source = qkv_ptr + token * 3 * width + head * 2 * HALF + dim  # [heads, half] of Q; K and V follow
    target = out_ptr + token * width + head * 2 * HALF + dim  # out: [3, T, heads, head_dim]
    cos = tl.load(cos_ptr + token * HALF + dim)
    sin = tl.load(sin_ptr + token * HALF + dim)
    for part in tl.static_range(2):  # Q, then K: rotate-half, x * cos + rotate_half(x) * sin
        first = tl.load(source + part * width, mask=inside, other=0.0).to(tl.float32)
        second = tl.load(source + part * width + HALF, mask=inside, other=0.0).to(tl.float32)
        tl.store(target + part * tokens * width, (first * cos - second * sin).to(out_ptr.dtype.element_ty),
                 mask=inside)
        tl.store(target + part * tokens * width + HALF,
                 (second * cos + first * sin).to(out_ptr.dtype.element_ty), mask=inside)
    for half in tl.static_range(2):  # V, copied
        tl.store(target + 2 * tokens * width + half * HALF,
                 tl.load(source + 2 * width + half * HALF, mask=inside, other=0.0), mask=inside)


def rotary_qkv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int) -> torch.Tensor:
    """Rotated Q, rotated K and V, [3, T, heads, head_dim], from a fused projection qkv [T, 3 * E];
    cos, sin: [T, head_dim / 2] float32 (the rotary tables of each token's position)."""
    tokens = qkv.shape[0]
    head_dim = qkv.shape[1] // 3 // heads
    half = head_dim // 2
    if head_dim % 2 or triton.next_power_of_2(half) != half or cos.shape != (tokens, half):
        raise ValueError(f"rotary_qkv needs a head size of twice a power of two and [T, {half}] tables")
    qkv, cos, sin = qkv.contiguous(), cos.contiguous(), sin.contiguous()
    out = qkv.new_empty((3, tokens, heads, head_dim))
    if tokens:
        _rotary_qkv_kernel[(tokens,)](qkv, cos, sin, out, tokens, heads, HALF=half,
                                      BLOCK_HEADS=triton.next_power_of_2(heads), num_warps=4)
    return out



@triton.jit
def _gated_gelu_kernel(in_ptr, out_ptr, rows, width, BLOCK: tl.constexpr):
    index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = index < rows * width
    row, column = index // width, index % width
    gated = tl.load(in_ptr + row * 2 * width + column, mask=inside, other=0.0).to(tl.float32)
    linear = tl.load(in_ptr + row * 2 * width + width + column, mask=inside, other=0.0).to(tl.float32)
    gelu = 0.5 * gated * (1.0 + tl.erf(gated * 0.7071067811865476))
    tl.store(out_ptr + index, (gelu * linear).to(out_ptr.dtype.element_ty), mask=inside)


def gated_gelu(x: torch.Tensor) -> torch.Tensor:
    """gelu(x[:, :I]) * x[:, I:] (exact GELU, float32 arithmetic) for x [T, 2I]."""
    x = x.contiguous()
    rows, width = x.shape[0], x.shape[1] // 2
    out = x.new_empty((rows, width))
    if rows:
        block = 2048
        _gated_gelu_kernel[(triton.cdiv(rows * width, block),)](x, out, rows, width, BLOCK=block, num_warps=8)
    return out


def opaque_to_torch_compile() -> None:
    """Have torch.compile call the kernels as they are (a graph break around each) instead of
    tracing into them; for `compile_layers`."""
    global alibi_varlen_attention, add_layer_norm, rotary_qkv, gated_gelu
    alibi_varlen_attention, add_layer_norm, rotary_qkv, gated_gelu = (
        torch.compiler.disable(function) if not hasattr(function, "_torchdynamo_disable") else function
        for function in (alibi_varlen_attention, add_layer_norm, rotary_qkv, gated_gelu))
