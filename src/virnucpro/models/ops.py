"""The element-wise work of the embedding models between their matrix multiplies, in one place.

On a GPU, in half precision, each operation is one Triton kernel (`virnucpro.models.kernels`): one
pass over memory where PyTorch's operators would take several. Elsewhere (the CPU, or a float32
model) each is the plain PyTorch expression written next to it, which is also the reference the
kernels are tested against; the CPU path computes exactly what it computed before the kernels
existed, so its results stay bit-for-bit the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HALF_DTYPES = (torch.float16, torch.bfloat16)


def fused(tensor: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether the Triton kernels run: on a GPU, for a model computing in half precision."""
    return tensor.is_cuda and dtype in HALF_DTYPES


def add_layer_norm(x: torch.Tensor, update: torch.Tensor | None, norm: nn.LayerNorm, out_dtype: torch.dtype,
                   stream_dtype: torch.dtype | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(x + update, norm(x + update)): the residual stream after a sublayer and its normalised copy
    as `out_dtype`. On a GPU the new stream is written as `stream_dtype`, and not at all when that
    is None (a post-LayerNorm model keeps only the normalised copy); `update` may be None."""
    if fused(x, x.dtype) or fused(x, out_dtype):
        from virnucpro.models import kernels

        new_x, normed = kernels.add_layer_norm(x, update, norm.weight, norm.bias, norm.eps, out_dtype, stream_dtype)
        return (new_x if stream_dtype is not None else None), normed
    if update is not None:
        x = x + update.to(x.dtype)
    return x, F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps).to(out_dtype)


def rotary_tables(positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of each token's rotary angles: [T, head_dim / 2] for the kernel, else
    [T, 1, head_dim] as rotate-half applies them."""
    angles = positions.float()[:, None] * inv_freq[None, :]
    half = inv_freq.numel()
    if not (fused(positions, dtype) and half & (half - 1) == 0):
        angles = torch.cat((angles, angles), dim=-1)[:, None, :]
    return angles.cos(), angles.sin()


def rotary_qkv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q and K with the rotary embedding applied, and V, each [T, heads, head_dim], from a fused
    projection [T, 3 * E] (see `rotary_tables` for cos and sin)."""
    half = qkv.shape[1] // 6 // heads
    if fused(qkv, qkv.dtype) and half & (half - 1) == 0:  # the kernel takes power-of-two half head sizes
        from virnucpro.models import kernels

        return kernels.rotary_qkv(qkv, cos, sin, heads).unbind(0)
    q, k, v = qkv.view(qkv.shape[0], 3, heads, -1).unbind(1)
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding as fair-esm applies it (rotate-half), computed in float32."""
    x32 = x.float()
    first, second = x32.chunk(2, dim=-1)
    return (x32 * cos + torch.cat((-second, first), dim=-1) * sin).to(x.dtype)


def linear_gelu(x: torch.Tensor, linear: nn.Linear, tanh_epilogue: bool = False) -> torch.Tensor:
    """gelu(linear(x)), exact GELU; with `tanh_epilogue` on a GPU, cuBLASLt's GELU epilogue, which
    applies bias and the tanh approximation of GELU inside the matrix multiply."""
    if tanh_epilogue and fused(x, x.dtype):
        return torch._addmm_activation(linear.bias, x, linear.weight.t(), use_gelu=True)
    return F.gelu(linear(x))


def gated_gelu(x: torch.Tensor) -> torch.Tensor:
    """gelu(gated) * linear for x = [gated | linear] of shape [T, 2I] (exact GELU)."""
    if fused(x, x.dtype):
        from virnucpro.models import kernels

        return kernels.gated_gelu(x)
    gated, linear = x.split(x.shape[-1] // 2, dim=-1)
    return F.gelu(gated) * linear
