"""ESM-2 protein language model (Lin et al. 2023), for packed batches, loaded from fair-esm checkpoints.

The architecture is fair-esm's `ESM2`: token embedding scaled for token dropout, pre-LayerNorm
transformer layers with rotary position embeddings, and a final LayerNorm. What differs is the
execution: sequences are packed end to end with no padding, Q, K and V come from one fused matrix
multiply, attention runs through FlashAttention's variable-length kernel on a GPU, and the weights
may be bf16 while LayerNorm statistics and rotary tables stay in float32. The element-wise work
between the matrix multiplies goes through `ops` (one Triton kernel each on a GPU); each layer adds
the previous layer's feed-forward output to the residual stream in the same pass as its first
LayerNorm. On a GPU the residual stream is bf16 and fc1 applies bias and GELU in its matrix
multiply (tanh GELU); on the CPU everything is float32 with exact GELU, as in fair-esm.

VirNucPro's protein feature is the mean, over the residues only (not BOS/EOS), of the last layer's
representation after the final LayerNorm (`repr_layers=[36]` of ESM-2 3B).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import torch
from torch import nn

from virnucpro.io.errors import VirnucproError
from virnucpro.models import ops
from virnucpro.models.checkpoint import assign_weights, load_checkpoint, weights_fingerprint
from virnucpro.models.packing import PackedSequences, attention_within_sequences, mean_pool
from virnucpro.models.tokens import ALPHABET, PAD

# ESM-2 trains with token dropout: 15% of tokens are chosen, 80% of those masked, and the embeddings
# are rescaled by (1 - 0.12) / (1 - observed mask ratio). Inputs here never contain <mask>, so the
# factor is the constant 0.88.
TOKEN_DROPOUT_SCALE = 1 - 0.15 * 0.8

# Heads of the published ESM-2 sizes, by width, for checkpoints whose config cannot be read.
_HEADS_BY_WIDTH = {320: 20, 480: 20, 640: 20, 1280: 20, 2560: 40, 5120: 40}


@dataclass(frozen=True)
class ESM2Config:
    num_layers: int
    embed_dim: int
    attention_heads: int
    token_dropout: bool = True

    @property
    def architecture(self) -> str:
        return f"esm2_t{self.num_layers}_{self.embed_dim}d_{self.attention_heads}h"


def rotary_inv_freq(head_dim: int) -> torch.Tensor:
    """Rotary embedding frequencies, as fair-esm's `RotaryEmbedding` computes them."""
    return 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))


class ESM2Layer(nn.Module):
    def __init__(self, config: ESM2Config):
        super().__init__()
        dim = config.embed_dim
        self.heads = config.attention_heads
        self.head_dim = dim // self.heads
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        # On a GPU: fc1's bias and GELU inside the matrix multiply (cuBLASLt's epilogue, which takes
        # the tanh approximation of GELU; see ops.linear_gelu). Elsewhere exact GELU.
        self.gelu_tanh_epilogue = True

    def forward(self, x: torch.Tensor, update: torch.Tensor | None, packed: PackedSequences, cos: torch.Tensor,
                sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`x + update` is the residual stream entering the layer (`update`, the previous layer's
        feed-forward output, is added in the pass of the first LayerNorm). Returns the stream after
        attention and this layer's feed-forward output, for the next layer to add."""
        dtype = self.qkv.weight.dtype
        x, h = ops.add_layer_norm(x, update, self.self_attn_layer_norm, dtype, x.dtype)
        q, k, v = ops.rotary_qkv(self.qkv(h), cos, sin, self.heads)
        update = self.out_proj(attention(q, k, v, packed).reshape(-1, self.heads * self.head_dim))
        x, h = ops.add_layer_norm(x, update, self.final_layer_norm, dtype, x.dtype)
        return x, self.fc2(ops.linear_gelu(h, self.fc1, self.gelu_tanh_epilogue))


class ESM2(nn.Module):
    def __init__(self, config: ESM2Config):
        super().__init__()
        self.config = config
        self.fingerprint: str | None = None  # set by load_esm2, from the checkpoint's weights
        # The residual stream's dtype on a GPU in half precision: bf16 halves its memory traffic
        # (float32 elsewhere).
        self.gpu_residual_dtype = torch.bfloat16
        self.embed_tokens = nn.Embedding(len(ALPHABET), config.embed_dim, padding_idx=PAD)
        self.layers = nn.ModuleList(ESM2Layer(config) for _ in range(config.num_layers))
        self.emb_layer_norm_after = nn.LayerNorm(config.embed_dim)
        head_dim = config.embed_dim // config.attention_heads
        self.register_buffer("inv_freq", rotary_inv_freq(head_dim), persistent=False)

    @property
    def embedding_dim(self) -> int:
        return self.config.embed_dim

    def attention_path(self, device: torch.device) -> str:
        """Which attention implementation runs on `device` with this model's dtype."""
        if ops.fused(torch.empty(0, device=device), self.layers[0].qkv.weight.dtype):
            return "varlen FlashAttention (aten._flash_attention_forward, as torch.nn.attention.varlen)"
        return "scaled_dot_product_attention per sequence"

    def compile_layers(self) -> None:
        """torch.compile every layer, for dynamic token counts. On a GPU the element-wise work is
        already fused by the Triton kernels, which stay outside the compiled graphs; measured on an
        H100, compiling gains nothing (benchmarks/results/README.md)."""
        from virnucpro.models import kernels

        kernels.opaque_to_torch_compile()
        for layer in self.layers:
            layer.compile(dynamic=True)

    def forward(self, packed: PackedSequences) -> torch.Tensor:
        """Final-layer states [T, E] in float32 for a packed batch of <cls> protein <eos> tokens."""
        x = self.embed_tokens(packed.tokens).float()
        if self.config.token_dropout:
            x = x * TOKEN_DROPOUT_SCALE
        dtype = self.layers[0].qkv.weight.dtype
        x = x.to(self.gpu_residual_dtype if ops.fused(x, dtype) else torch.float32)
        cos, sin = ops.rotary_tables(packed.positions, self.inv_freq, dtype)
        update = None
        for layer in self.layers:
            x, update = layer(x, update, packed, cos, sin)
        return ops.add_layer_norm(x, update, self.emb_layer_norm_after, torch.float32)[1]

    def embed(self, packed: PackedSequences) -> torch.Tensor:
        """VirNucPro's protein feature: mean over residues of the final states, [B, E] float32."""
        return mean_pool(self(packed), packed, skip_ends=True)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packed: PackedSequences) -> torch.Tensor:
    """Softmax(QK^T / sqrt(d)) V within each packed sequence; [T, heads, head_dim] in and out."""
    if ops.fused(q, q.dtype):
        return flash_attention_varlen(q, k, v.contiguous(), packed.cu_seqlens, packed.max_len)
    return attention_within_sequences(q, k, v, packed)


def flash_attention_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                           max_len: int) -> torch.Tensor:
    """FlashAttention's variable-length kernel, through the ATen op that
    `torch.nn.attention.varlen.varlen_attn` calls: importing that module (a torch.library custom op)
    imports torch's compiler stack, seconds of every job's start-up. Falls back to it if the op
    is missing or takes other arguments in this PyTorch."""
    try:
        return torch.ops.aten._flash_attention_forward(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len,
                                                       0.0, False, False)[0]
    except torch.OutOfMemoryError:
        raise
    except (AttributeError, RuntimeError, TypeError):
        from torch.nn.attention.varlen import varlen_attn  # imported here: CPU-only machines need not have it

        return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len)


# ---------------------------------------------------------------------------------------------
# fair-esm checkpoint format: {"model": state dict with "encoder.sentence_encoder." (and
# "encoder.") prefixes and separate q/k/v projections, "cfg": {"model": Namespace(...)}}


def _read_config(checkpoint: dict, state: dict[str, torch.Tensor], path) -> ESM2Config:
    layers = 1 + max((int(m.group(1)) for m in map(re.compile(r"layers\.(\d+)\.").match, state) if m), default=-1)
    if "embed_tokens.weight" not in state or layers == 0:
        raise VirnucproError(f"{path}: not an ESM-2 checkpoint (no embed_tokens or transformer layers)")
    width = state["embed_tokens.weight"].shape[1]
    model_cfg = checkpoint.get("cfg", {}).get("model") if isinstance(checkpoint.get("cfg"), dict) else None
    heads = getattr(model_cfg, "encoder_attention_heads", None) or _HEADS_BY_WIDTH.get(width)
    if heads is None:
        raise VirnucproError(f"{path}: cannot tell the number of attention heads of a {width}-wide ESM-2 model")
    token_dropout = getattr(model_cfg, "token_dropout", True)
    return ESM2Config(num_layers=layers, embed_dim=width, attention_heads=int(heads), token_dropout=bool(token_dropout))


def checkpoint_keys(config: ESM2Config) -> dict[str, list[str]]:
    """Each of this model's weights and the fair-esm weights it is made of (their names without the
    `encoder.sentence_encoder.` prefix): the same, but for Q, K and V, which are concatenated."""
    keys = {"embed_tokens.weight": ["embed_tokens.weight"]}
    for index in range(config.num_layers):
        prefix = f"layers.{index}."
        for name in ("weight", "bias"):
            keys[f"{prefix}qkv.{name}"] = [f"{prefix}self_attn.{p}_proj.{name}" for p in ("q", "k", "v")]
            keys[f"{prefix}out_proj.{name}"] = [f"{prefix}self_attn.out_proj.{name}"]
            for module in ("self_attn_layer_norm", "final_layer_norm", "fc1", "fc2"):
                keys[f"{prefix}{module}.{name}"] = [f"{prefix}{module}.{name}"]
    for name in ("weight", "bias"):
        keys[f"emb_layer_norm_after.{name}"] = [f"emb_layer_norm_after.{name}"]
    return keys


def load_esm2(path: str | os.PathLike, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32) -> ESM2:
    """Load a fair-esm ESM-2 checkpoint (e.g. `esm2_t36_3B_UR50D.pt`) onto `device`.

    Matrix weights become `dtype`; LayerNorms and the rotary frequencies stay float32. The weights go
    straight from the memory-mapped file to the device, so a 3B model needs no second copy in RAM;
    on the meta device they are not read at all (but for the small token-embedding table, for the
    fingerprint): a check of the checkpoint before any GPU work.
    """
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise VirnucproError(f"{path}: not a fair-esm checkpoint (expected a dict with a 'model' state dict)")
    state = {re.sub(r"^(encoder\.sentence_encoder\.|encoder\.)", "", key): value
             for key, value in checkpoint["model"].items()}
    config = _read_config(checkpoint, state, path)
    with torch.device("meta"):
        model = ESM2(config)
    try:
        converted = {ours: (torch.cat([state[key].to(device) for key in theirs]) if len(theirs) > 1
                            else state[theirs[0]])
                     for ours, theirs in checkpoint_keys(config).items()}
    except KeyError as missing:
        raise VirnucproError(f"{path}: not a complete ESM-2 checkpoint: it has no weights {missing}") from None
    assign_weights(model, converted, device, dtype, path)
    model.fingerprint = weights_fingerprint(state["embed_tokens.weight"])
    # fair-esm loads the rotary frequencies stored in the checkpoint (possibly rounded to fp16) over
    # the ones it computes; use the stored ones too, so that positions rotate exactly as there.
    stored_frequencies = state.get("layers.0.self_attn.rot_emb.inv_freq")
    model.inv_freq = (stored_frequencies.float() if stored_frequencies is not None
                      else rotary_inv_freq(config.embed_dim // config.attention_heads)).to(device)
    return model.eval()


def save_fair_esm_checkpoint(model: ESM2, path: str | os.PathLike, dtype: torch.dtype = torch.float16) -> None:
    """Write `model` in fair-esm's checkpoint layout, loadable by `esm.pretrained` and `load_esm2`.

    Used to make the built-in default model and the small fakes the tests load; the LM head, which
    VirNucPro does not use, is written with fresh weights so that fair-esm finds every key it expects.
    """
    from argparse import Namespace

    config, body = model.config, {}
    width = config.embed_dim
    state = model.state_dict()
    for ours, theirs in checkpoint_keys(config).items():
        body.update(zip(theirs, state[ours].chunk(len(theirs))))
    for index in range(config.num_layers):
        body[f"layers.{index}.self_attn.rot_emb.inv_freq"] = model.inv_freq.float()
    generator = torch.Generator().manual_seed(0)
    lm_head = {
        "lm_head.weight": model.embed_tokens.weight,
        "lm_head.bias": torch.zeros(len(ALPHABET)),
        "lm_head.dense.weight": torch.randn(width, width, generator=generator) / math.sqrt(width),
        "lm_head.dense.bias": torch.zeros(width),
        "lm_head.layer_norm.weight": torch.ones(width),
        "lm_head.layer_norm.bias": torch.zeros(width),
    }
    state = {f"encoder.sentence_encoder.{key}": value for key, value in body.items()}
    state.update({f"encoder.{key}": value for key, value in lm_head.items()})
    state = {key: value.detach().to("cpu", torch.float32 if key.endswith("inv_freq") else dtype).contiguous()
             for key, value in state.items()}
    cfg = Namespace(encoder_layers=config.num_layers, encoder_embed_dim=width,
                    encoder_ffn_embed_dim=4 * width, encoder_attention_heads=config.attention_heads,
                    token_dropout=config.token_dropout, arch="ESM-2")
    torch.save({"model": state, "cfg": {"model": cfg}}, path)
