"""Packed batches: many sequences of different lengths laid end to end, with no padding.

The embedding models run their matrix multiplies on the packed tokens [T, E]. Attention needs to
know where each sequence starts (`cu_seqlens`, as FlashAttention's varlen kernels take it) and
where each token sits in its sequence (`positions`, for rotary embeddings and ALiBi).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class PackedSequences:
    tokens: torch.Tensor  # [T] token ids
    cu_seqlens: torch.Tensor  # [B + 1] int32 start offsets, cu_seqlens[-1] == T
    positions: torch.Tensor  # [T] position of each token in its sequence
    segments: torch.Tensor  # [T] index of each token's sequence
    max_len: int

    @classmethod
    def from_token_lists(cls, token_lists: list[np.ndarray]) -> PackedSequences:
        lengths = np.fromiter((len(t) for t in token_lists), dtype=np.int64, count=len(token_lists))
        cu_seqlens = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(lengths, out=cu_seqlens[1:])
        segments = np.repeat(np.arange(len(lengths)), lengths)
        positions = np.arange(int(cu_seqlens[-1])) - np.repeat(cu_seqlens[:-1].astype(np.int64), lengths)
        return cls(
            tokens=torch.from_numpy(np.concatenate(token_lists).astype(np.int64)),
            cu_seqlens=torch.from_numpy(cu_seqlens),
            positions=torch.from_numpy(positions),
            segments=torch.from_numpy(segments),
            max_len=int(lengths.max()),
        )

    @property
    def num_sequences(self) -> int:
        return self.cu_seqlens.numel() - 1

    @property
    def num_tokens(self) -> int:
        return self.tokens.numel()

    def lengths(self) -> torch.Tensor:
        return self.cu_seqlens[1:] - self.cu_seqlens[:-1]

    def pin_memory(self) -> PackedSequences:
        return PackedSequences(self.tokens.pin_memory(), self.cu_seqlens.pin_memory(), self.positions.pin_memory(),
                               self.segments.pin_memory(), self.max_len)

    def to(self, device: torch.device, non_blocking: bool = False) -> PackedSequences:
        return PackedSequences(
            self.tokens.to(device, non_blocking=non_blocking),
            self.cu_seqlens.to(device, non_blocking=non_blocking),
            self.positions.to(device, non_blocking=non_blocking),
            self.segments.to(device, non_blocking=non_blocking),
            self.max_len,
        )

    def split(self) -> tuple[PackedSequences, PackedSequences]:
        """Two halves by sequence count, for retrying a batch that ran out of memory."""
        half = self.num_sequences // 2
        cut = int(self.cu_seqlens[half])
        lengths = self.lengths()
        first = PackedSequences(self.tokens[:cut], self.cu_seqlens[: half + 1], self.positions[:cut],
                                self.segments[:cut], int(lengths[:half].max()))
        second = PackedSequences(self.tokens[cut:], self.cu_seqlens[half:] - cut, self.positions[cut:],
                                 self.segments[cut:] - half, int(lengths[half:].max()))
        return first, second


def packed_to_padded(x: torch.Tensor, packed: PackedSequences) -> torch.Tensor:
    """[T, ...] -> [B, max_len, ...], zeros where a sequence is shorter than max_len."""
    padded = x.new_zeros((packed.num_sequences, packed.max_len, *x.shape[1:]))
    padded[packed.segments, packed.positions] = x
    return padded


def padded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packed: PackedSequences,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of each sequence over itself, for packed q, k, v of shape [T, heads, head_dim].

    The sequences are padded to max_len for `scaled_dot_product_attention`; padded keys are masked
    out. `bias` [heads, max_len, max_len] is added to the scores (ALiBi).
    """
    q, k, v = (packed_to_padded(t, packed).transpose(1, 2) for t in (q, k, v))  # [B, heads, L, D]
    key_is_real = torch.arange(packed.max_len, device=q.device) < packed.lengths().to(q.device)[:, None]
    mask = key_is_real[:, None, None, :]
    if bias is not None:
        mask = bias[None].to(q.dtype).masked_fill(~mask, float("-inf"))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2)[packed.segments, packed.positions]


def mean_pool(hidden: torch.Tensor, packed: PackedSequences, skip_ends: bool) -> torch.Tensor:
    """Mean of each sequence's token states, in float32: [T, E] -> [B, E].

    With `skip_ends` the first and last token of each sequence (BOS and EOS) are left out.
    """
    weights = torch.ones(packed.num_tokens, device=hidden.device, dtype=torch.float32)
    if skip_ends:
        lengths = packed.lengths().to(hidden.device)
        weights[packed.cu_seqlens[:-1].to(hidden.device).long()] = 0
        weights[(packed.cu_seqlens[1:].to(hidden.device) - 1).long()] = 0
        counts = (lengths - 2).clamp(min=1).float()
    else:
        counts = packed.lengths().to(hidden.device).float()
    sums = torch.zeros(packed.num_sequences, hidden.shape[1], device=hidden.device, dtype=torch.float32)
    sums.index_add_(0, packed.segments.to(hidden.device), hidden.float() * weights[:, None])
    return sums / counts[:, None]
