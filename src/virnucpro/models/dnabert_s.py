"""DNABERT-S (Zhou et al. 2024), for packed batches, loaded from a local HuggingFace directory.

DNABERT-S is DNABERT-2's MosaicBERT: a BERT encoder with no position embeddings, ALiBi attention
biases instead, a gated-GELU feed-forward block and post-LayerNorm residuals. The public checkpoint
ships its own code (`bert_layers.py`, loaded with `trust_remote_code`); this module re-implements
the architecture under the checkpoint's parameter names, so that `pytorch_model.bin` or
`model.safetensors` loads directly, and runs it on packed sequences.

VirNucPro's nucleotide feature is the mean of the last hidden states over all tokens, [CLS] and
[SEP] included.
"""

from __future__ import annotations

import json
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from virnucpro.io.errors import VirnucproError
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


# Modules named like DNABERT-S's `bert_layers.py`, so that state-dict keys match the checkpoint.

class BertEmbeddings(nn.Module):
    def __init__(self, config: DnabertSConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class BertSelfAttention(nn.Module):
    def __init__(self, config: DnabertSConfig):
        super().__init__()
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)


class BertSelfOutput(nn.Module):
    def __init__(self, config: DnabertSConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class BertAttention(nn.Module):
    def __init__(self, config: DnabertSConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)


class BertGatedLinearUnitMLP(nn.Module):
    def __init__(self, config: DnabertSConfig):
        super().__init__()
        self.gated_layers = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.wo = nn.Linear(config.intermediate_size, config.hidden_size)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class BertLayer(nn.Module):
    def __init__(self, config: DnabertSConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.mlp = BertGatedLinearUnitMLP(config)
        self.heads = config.num_attention_heads
        self.intermediate_size = config.intermediate_size
        self.attention_function = alibi_attention

    def forward(self, x: torch.Tensor, packed: PackedSequences, slopes: torch.Tensor) -> torch.Tensor:
        dtype = self.attention.self.Wqkv.weight.dtype
        q, k, v = self.attention.self.Wqkv(x.to(dtype)).view(x.shape[0], 3, self.heads, -1).unbind(1)
        context = self.attention_function(q, k, v, packed, slopes).reshape(x.shape[0], -1)
        out = self.attention.output
        x = F.layer_norm(x + out.dense(context).float(), x.shape[-1:], out.LayerNorm.weight, out.LayerNorm.bias,
                         out.LayerNorm.eps)
        mlp = self.mlp
        gated, linear = mlp.gated_layers(x.to(dtype)).split(self.intermediate_size, dim=-1)
        hidden = mlp.wo(F.gelu(gated) * linear).float()
        return F.layer_norm(x + hidden, x.shape[-1:], mlp.layernorm.weight, mlp.layernorm.bias, mlp.layernorm.eps)


def alibi_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packed: PackedSequences,
                    slopes: torch.Tensor) -> torch.Tensor:
    """Attention within each packed sequence with ALiBi's symmetric bias -slope * |i - j|."""
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        from virnucpro.models.kernels import alibi_varlen_attention

        return alibi_varlen_attention(q, k, v, packed.cu_seqlens, packed.max_len, slopes)
    position = torch.arange(packed.max_len, device=q.device)
    bias = -slopes[:, None, None] * (position[None, :] - position[:, None]).abs()[None]
    return attention_within_sequences(q, k, v, packed, bias)


class BertEncoder(nn.Module):
    def __init__(self, config: DnabertSConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))


class DnabertS(nn.Module):
    def __init__(self, config: DnabertSConfig):
        super().__init__()
        self.config = config
        self.fingerprint: str | None = None  # set by load_dnabert_s, from the checkpoint's weights
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.register_buffer("slopes", torch.tensor(alibi_slopes(config.num_attention_heads)), persistent=False)

    @property
    def embedding_dim(self) -> int:
        return self.config.hidden_size

    def compile_layers(self) -> None:
        """torch.compile every layer but its attention, for dynamic token counts: it fuses the
        LayerNorms, gated GELU and residual adds around the matrix multiplies (worth it on a GPU).
        Attention stays eager: it is one kernel launch already."""
        eager_attention = torch.compiler.disable(alibi_attention)
        for layer in self.encoder.layer:
            layer.attention_function = eager_attention
            layer.compile(dynamic=True)

    def forward(self, packed: PackedSequences) -> torch.Tensor:
        """Last hidden states [T, H] in float32 for a packed batch of [CLS] ... [SEP] tokens."""
        embeddings = self.embeddings
        x = embeddings.word_embeddings(packed.tokens).float() + embeddings.token_type_embeddings.weight[0].float()
        x = F.layer_norm(x, x.shape[-1:], embeddings.LayerNorm.weight, embeddings.LayerNorm.bias,
                         embeddings.LayerNorm.eps)
        for layer in self.encoder.layer:
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
    assign_weights(model, state, device, dtype, directory)
    model.fingerprint = weights_fingerprint(state[_TOKEN_EMBEDDINGS])
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
    state = {key: value.detach().to("cpu", dtype).contiguous() for key, value in model.state_dict().items()}
    if weights == "model.safetensors":
        save_file(state, directory / weights)
    else:
        torch.save(state, directory / weights)
