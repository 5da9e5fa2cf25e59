"""DNABERT-S (Zhou et al. 2024), for packed batches, loaded from a local HuggingFace directory.

DNABERT-S is DNABERT-2's MosaicBERT: a BERT encoder with no position embeddings, ALiBi attention
biases instead, a gated-GELU feed-forward block and post-LayerNorm residuals. The public checkpoint
ships its own code (`bert_layers.py`, loaded with `trust_remote_code`); this module re-implements
the architecture and runs it on packed sequences. `pytorch_model.bin` or `model.safetensors` loads
directly: the checkpoint's parameter names are renamed to this module's when it is loaded (and
back when one is saved). On a GPU in half precision, attention and the element-wise work between
the matrix multiplies are Triton kernels (`ops`, `kernels`).

VirNucPro's nucleotide feature is the mean of the last hidden states over all tokens, [CLS] and
[SEP] included.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from virnucpro.io.errors import VirnucproError
from virnucpro.models import ops
from virnucpro.models.checkpoint import assign_weights, weights_fingerprint
from virnucpro.models.packing import PackedSequences, attention_within_sequences, mean_pool
from virnucpro.models.tokens import DnaTokenizer

_TOKEN_EMBEDDINGS = "embeddings.word_embeddings.weight"


@dataclass(frozen=True)
class DnabertSConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    layer_norm_eps: float = 1e-12
    type_vocab_size: int = 2

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> DnabertSConfig:
        try:
            values = json.loads(Path(path).read_text())
        except json.JSONDecodeError as error:
            raise VirnucproError(f"{path}: not a JSON file ({error})") from None
        try:
            return cls(**{name: values[name] for name in ("vocab_size", "hidden_size", "num_hidden_layers",
                                                          "num_attention_heads", "intermediate_size")},
                       layer_norm_eps=values.get("layer_norm_eps", 1e-12),
                       type_vocab_size=values.get("type_vocab_size", 2))
        except KeyError as missing:
            raise VirnucproError(f"{path}: config.json lacks {missing}") from None

    @property
    def architecture(self) -> str:
        return f"dnabert_s_l{self.num_hidden_layers}_{self.hidden_size}d_{self.num_attention_heads}h"

    def to_json(self) -> dict:
        return {"architectures": ["BertModel"], "model_type": "bert", "vocab_size": self.vocab_size,
                "hidden_size": self.hidden_size, "num_hidden_layers": self.num_hidden_layers,
                "num_attention_heads": self.num_attention_heads, "intermediate_size": self.intermediate_size,
                "layer_norm_eps": self.layer_norm_eps, "type_vocab_size": self.type_vocab_size,
                "hidden_act": "gelu", "attention_probs_dropout_prob": 0.0, "hidden_dropout_prob": 0.1,
                "alibi_starting_size": 512, "max_position_embeddings": 512, "pad_token_id": 0}


def alibi_slopes(heads: int) -> list[float]:
    """ALiBi's per-head slopes (Press et al.): a geometric series from 2^(-8/n); for a head count that
    is not a power of two, the closest power's series plus every other slope of the next one."""
    def power_of_two_slopes(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start ** (i + 1) for i in range(n)]

    if math.log2(heads).is_integer():
        return power_of_two_slopes(heads)
    closest = 2 ** math.floor(math.log2(heads))
    return power_of_two_slopes(closest) + alibi_slopes(2 * closest)[0::2][: heads - closest]


# Checkpoint names (DNABERT-S's `bert_layers.py`) and this file's, for the weights whose names
# differ; "{}" stands for a layer's index. Keys are renamed when a checkpoint is loaded or saved.
_RENAMED = (
    ("embeddings.LayerNorm.", "embeddings.norm."),
    ("encoder.layer.{}.attention.self.Wqkv.", "layers.{}.attention.Wqkv."),
    ("encoder.layer.{}.attention.output.dense.", "layers.{}.attention_out."),
    ("encoder.layer.{}.attention.output.LayerNorm.", "layers.{}.attention_norm."),
    ("encoder.layer.{}.mlp.layernorm.", "layers.{}.mlp_norm."),
    ("encoder.layer.{}.mlp.", "layers.{}.mlp."),
)


def rename_weight(key: str, to_checkpoint: bool = False) -> str:
    """A checkpoint's name for one of this module's weights as this module names it, or back."""
    for checkpoint, ours in _RENAMED:
        source, target = (ours, checkpoint) if to_checkpoint else (checkpoint, ours)
        match = re.match(re.escape(source).replace(r"\{\}", r"(\d+)"), key)
        if match:
            return target.format(*match.groups()) + key[match.end():]
    return key


class DnabertSEmbeddings(nn.Module):
    def __init__(self, config: DnabertSConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, tokens: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        x = self.word_embeddings(tokens).float() + self.token_type_embeddings.weight[0].float()
        return ops.add_layer_norm(x, None, self.norm, out_dtype)[1]


class AlibiSelfAttention(nn.Module):
    def __init__(self, config: DnabertSConfig):
        super().__init__()
        self.heads = config.num_attention_heads
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)

    def forward(self, x: torch.Tensor, packed: PackedSequences, slopes: torch.Tensor) -> torch.Tensor:
        q, k, v = self.Wqkv(x).view(x.shape[0], 3, self.heads, -1).unbind(1)
        return alibi_attention(q, k, v, packed, slopes).reshape(x.shape[0], -1)


class GatedMLP(nn.Module):
    def __init__(self, config: DnabertSConfig):
        super().__init__()
        self.gated_layers = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.wo = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wo(ops.gated_gelu(self.gated_layers(x)))


class DnabertSLayer(nn.Module):
    """Post-LayerNorm: x = norm(x + attention(x)), then x = norm(x + mlp(x))."""

    def __init__(self, config: DnabertSConfig):
        super().__init__()
        self.attention = AlibiSelfAttention(config)
        self.attention_out = nn.Linear(config.hidden_size, config.hidden_size)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = GatedMLP(config)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, packed: PackedSequences, slopes: torch.Tensor) -> torch.Tensor:
        dtype = self.attention.Wqkv.weight.dtype
        update = self.attention_out(self.attention(x.to(dtype), packed, slopes))
        x = ops.add_layer_norm(x, update, self.attention_norm, x.dtype)[1]
        return ops.add_layer_norm(x, self.mlp(x.to(dtype)), self.mlp_norm, x.dtype)[1]


def alibi_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packed: PackedSequences,
                    slopes: torch.Tensor) -> torch.Tensor:
    """Attention within each packed sequence with ALiBi's symmetric bias -slope * |i - j|."""
    if _triton_attention(q):
        from virnucpro.models.kernels import alibi_varlen_attention

        return alibi_varlen_attention(q, k, v, packed.cu_seqlens, packed.max_len, slopes)
    position = torch.arange(packed.max_len, device=q.device)
    bias = -slopes[:, None, None] * (position[None, :] - position[:, None]).abs()[None]
    return attention_within_sequences(q, k, v, packed, bias)


def _triton_attention(q: torch.Tensor) -> bool:
    if not ops.fused(q, q.dtype):
        return False
    from virnucpro.models.kernels import ATTENTION_HEAD_DIMS

    return q.shape[-1] in ATTENTION_HEAD_DIMS


class DnabertS(nn.Module):
    def __init__(self, config: DnabertSConfig):
        super().__init__()
        self.config = config
        self.fingerprint: str | None = None  # set by load_dnabert_s, from the checkpoint's weights
        # The hidden states' dtype between layers on a GPU in half precision: bf16 halves their
        # memory traffic (float32 elsewhere).
        self.gpu_residual_dtype = torch.bfloat16
        self.embeddings = DnabertSEmbeddings(config)
        self.layers = nn.ModuleList(DnabertSLayer(config) for _ in range(config.num_hidden_layers))
        self.register_buffer("slopes", torch.tensor(alibi_slopes(config.num_attention_heads)), persistent=False)

    @property
    def embedding_dim(self) -> int:
        return self.config.hidden_size

    def attention_path(self, device: torch.device) -> str:
        """Which attention implementation runs on `device` with this model's dtype."""
        probe = torch.empty((0, 1, self.config.hidden_size // self.config.num_attention_heads), device=device,
                            dtype=self.layers[0].attention.Wqkv.weight.dtype)
        if _triton_attention(probe):
            return "Triton ALiBi varlen attention kernel (kernels.alibi_varlen_attention)"
        return "scaled_dot_product_attention per sequence with an ALiBi bias"

    def compile_layers(self) -> None:
        """torch.compile every layer, for dynamic token counts. On a GPU the element-wise work and
        attention are already Triton kernels, which stay outside the compiled graphs; measured on an
        H100, compiling gains nothing (benchmarks/results/README.md)."""
        from virnucpro.models import kernels

        kernels.opaque_to_torch_compile()
        for layer in self.layers:
            layer.compile(dynamic=True)

    def forward(self, packed: PackedSequences) -> torch.Tensor:
        """Last hidden states [T, H] for a packed batch of [CLS] ... [SEP] tokens."""
        fused = ops.fused(packed.tokens, self.layers[0].attention.Wqkv.weight.dtype)
        x = self.embeddings(packed.tokens, self.gpu_residual_dtype if fused else torch.float32)
        for layer in self.layers:
            x = layer(x, packed, self.slopes)
        return x

    def embed(self, packed: PackedSequences) -> torch.Tensor:
        """VirNucPro's nucleotide feature: mean over all tokens, [CLS] and [SEP] included, [B, H]."""
        return mean_pool(self(packed), packed, skip_ends=False)


def load_dnabert_s(directory: str | os.PathLike, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32) -> tuple[DnabertS, DnaTokenizer]:
    """Load a DNABERT-S directory (config.json, model.safetensors or pytorch_model.bin, tokenizer.json).

    The pooler and any masked-LM head in the checkpoint are not used and are skipped; a `bert.`
    prefix (checkpoints saved from BertForMaskedLM) is removed. On the meta device nothing but the
    files' headers and the token-embedding table (for the fingerprint) is read: a check of the
    model before any GPU work.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise VirnucproError(f"{directory}: DNABERT-S model must be a directory with config.json and weights")
    if not (directory / "config.json").is_file():
        raise VirnucproError(f"{directory}: DNABERT-S model directory has no config.json")
    config = DnabertSConfig.from_json(directory / "config.json")
    tokenizer = DnaTokenizer(directory / "tokenizer.json")
    if tokenizer.vocab_size > config.vocab_size:
        raise VirnucproError(f"{directory}: tokenizer has {tokenizer.vocab_size} tokens, model only {config.vocab_size}")
    state = _read_weights(directory, header_only=torch.device(device).type == "meta")
    state = {key.removeprefix("bert."): value for key, value in state.items()}
    state = {key: value for key, value in state.items() if key.startswith(("embeddings.", "encoder."))}
    state.pop("embeddings.position_ids", None)
    with torch.device("meta"):
        model = DnabertS(config)
    fingerprint = weights_fingerprint(state[_TOKEN_EMBEDDINGS])
    assign_weights(model, {rename_weight(key): value for key, value in state.items()}, device, dtype, directory,
                   describe=lambda key: rename_weight(key, to_checkpoint=True))
    model.fingerprint = fingerprint
    model.slopes = torch.tensor(alibi_slopes(config.num_attention_heads), device=device)
    return model.eval(), tokenizer


def _read_weights(directory: Path, header_only: bool = False) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors; with `header_only`, meta tensors of the right shapes but for the
    token-embedding table (a pytorch_model.bin is memory-mapped, so it is read only where used)."""
    if (directory / "model.safetensors").exists():
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(directory / "model.safetensors", framework="pt") as weights:
                return {key: (torch.empty(weights.get_slice(key).get_shape(), device="meta")
                              if header_only and not key.endswith(_TOKEN_EMBEDDINGS) else weights.get_tensor(key))
                        for key in weights.keys()}
        except SafetensorError as error:
            raise VirnucproError(f"{directory / 'model.safetensors'}: not a readable safetensors file ({error})") from None
    if (directory / "pytorch_model.bin").exists():
        try:
            return torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True, mmap=True)
        except (RuntimeError, pickle.UnpicklingError) as error:
            raise VirnucproError(f"{directory / 'pytorch_model.bin'}: not a readable PyTorch checkpoint "
                             f"({error})") from None
    raise VirnucproError(f"{directory}: no model.safetensors or pytorch_model.bin")


def save_dnabert_s(model: DnabertS, tokenizer_json: str | os.PathLike, directory: str | os.PathLike,
                   weights: str = "model.safetensors", dtype: torch.dtype = torch.float32) -> None:
    """Write `model` as a HuggingFace-style DNABERT-S directory (the built-in model and test fakes)."""
    import shutil

    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(model.config.to_json(), indent=2) + "\n")
    shutil.copyfile(tokenizer_json, directory / "tokenizer.json")
    state = {rename_weight(key, to_checkpoint=True): value.detach().to("cpu", dtype).contiguous()
             for key, value in model.state_dict().items()}
    if weights == "model.safetensors":
        save_file(state, directory / weights)
    else:
        torch.save(state, directory / weights)
