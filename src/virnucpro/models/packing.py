"""Packed batches: many sequences of different lengths laid end to end, with no padding.

The embedding models run their matrix multiplies on the packed tokens [T, E]. Attention needs to
know where each sequence starts (`cu_seqlens`, as FlashAttention's varlen kernels take it) and
where each token sits in its sequence (`positions`, for rotary embeddings and ALiBi).

On a GPU in half precision attention goes through variable-length kernels (PyTorch's for ESM-2,
`kernels.alibi_varlen_attention` for DNABERT-S). Otherwise `attention_within_sequences` makes one
`scaled_dot_product_attention` call per sequence, with no padding. On the CPU that makes a
sequence's embedding bit-for-bit the same whatever else is in its batch, and so independent of
batching and sharding: CPU kernels round differently depending on how many matrices share a call. For the same reason pooling uses a deterministic
segment reduction, and batches are topped up with one dummy sequence to a whole multiple of 64
tokens, since matrix-multiply libraries switch kernels for very few rows (the dummy's output is
dropped).
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
    lengths: torch.Tensor  # [B] tokens per sequence
    max_len: int
    padding_tokens: int = 0  # tokens of the trailing dummy sequence, if any

    @classmethod
    def from_token_lists(cls, token_lists: list[np.ndarray], pad_id: int | None = None,
                         multiple: int = 64) -> PackedSequences:
        """Pack `token_lists` (see `from_flat`)."""
        lengths = np.fromiter((len(t) for t in token_lists), dtype=np.int64, count=len(token_lists))
        tokens = np.concatenate(token_lists) if token_lists else np.empty(0, dtype=np.int64)
        return cls.from_flat(tokens, lengths, pad_id, multiple)

    @classmethod
    def from_flat(cls, tokens: np.ndarray, lengths: np.ndarray, pad_id: int | None = None,
                  multiple: int = 64) -> PackedSequences:
        """Pack sequences given end to end (`tokens`) with their `lengths`; with `pad_id`, a dummy
        sequence of it tops the batch up to a multiple of `multiple` tokens (it comes last, and
        its pooled row is to be ignored)."""
        lengths = np.asarray(lengths, dtype=np.int64)
        remainder = len(tokens) % multiple
        padding = multiple - remainder if pad_id is not None and remainder else 0
        if padding:
            tokens = np.concatenate((tokens, np.full(padding, pad_id, dtype=tokens.dtype)))
            lengths = np.append(lengths, padding)
        starts = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=starts[1:])
        return cls(
            tokens=torch.from_numpy(tokens.astype(np.int64)),
            cu_seqlens=torch.from_numpy(starts.astype(np.int32)),
            positions=torch.from_numpy(np.arange(int(starts[-1])) - np.repeat(starts[:-1], lengths)),
            segments=torch.from_numpy(np.repeat(np.arange(len(lengths)), lengths)),
            lengths=torch.from_numpy(lengths),
            max_len=int(lengths.max()) if len(lengths) else 0,
            padding_tokens=padding,
        )

    @property
    def num_sequences(self) -> int:
        return self.lengths.numel()

    @property
    def num_tokens(self) -> int:
        return self.tokens.numel()

    def _map(self, function) -> PackedSequences:
        return PackedSequences(function(self.tokens), function(self.cu_seqlens), function(self.positions),
                               function(self.segments), function(self.lengths), self.max_len,
                               self.padding_tokens)

    def pin_memory(self) -> PackedSequences:
        return self._map(torch.Tensor.pin_memory)

    def to(self, device: torch.device, non_blocking: bool = False) -> PackedSequences:
        return self._map(lambda tensor: tensor.to(device, non_blocking=non_blocking))

    def split(self) -> tuple[PackedSequences, PackedSequences]:
        """Two halves by sequence count, for retrying a batch that ran out of memory. A trailing
        dummy sequence stays last, in the second half, which keeps `padding_tokens`: the halves'
        rows, one after the other, are the rows of the whole batch."""
        tokens, lengths = self.tokens.cpu().numpy(), self.lengths.cpu().numpy()
        real = self.num_sequences - (1 if self.padding_tokens else 0)
        half = real // 2
        cut = int(lengths[:half].sum())
        first = PackedSequences.from_flat(tokens[:cut], lengths[:half])
        second = PackedSequences.from_flat(tokens[cut:], lengths[half:])
        second.padding_tokens = self.padding_tokens
        return first.to(self.tokens.device), second.to(self.tokens.device)


def attention_within_sequences(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packed: PackedSequences,
                               bias: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of each sequence over itself, for packed q, k, v of shape [T, heads, head_dim].

    `bias` [heads, L, L] (ALiBi), for L at least the longest sequence, is added to the scores.
    """
    out = torch.empty_like(q)
    bounds = packed.cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        q_s, k_s, v_s = (t[start:end].transpose(0, 1).contiguous()[None] for t in (q, k, v))  # [1, heads, L, D]
        mask = None if bias is None else bias[:, : end - start, : end - start].to(q.dtype)
        out[start:end] = F.scaled_dot_product_attention(q_s, k_s, v_s, attn_mask=mask)[0].transpose(0, 1)
    return out


def mean_pool(hidden: torch.Tensor, packed: PackedSequences, skip_ends: bool) -> torch.Tensor:
    """Mean of each sequence's token states, in float32: [T, E] -> [B, E].

    With `skip_ends` the first and last token of each sequence (BOS and EOS) are left out.
    """
    hidden = hidden.float()
    counts = packed.lengths.float()
    if skip_ends:
        weights = torch.ones(packed.num_tokens, device=hidden.device)
        weights[packed.cu_seqlens[:-1].long()] = 0
        weights[packed.cu_seqlens[1:].long() - 1] = 0
        hidden = hidden * weights[:, None]
        counts = (counts - 2).clamp(min=1)
    sums = torch.segment_reduce(hidden, "sum", lengths=packed.lengths, axis=0)
    return sums / counts[:, None]
