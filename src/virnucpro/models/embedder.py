"""An embedding model (DNABERT-S or ESM-2) loaded for a device, with the identity of its tokens.

`load_embedder` is what both the embedding jobs and the model check (on the meta device) load, so
that the identity the check reports is the one the jobs record.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from virnucpro.models.tokens import load_tokenizer

MODEL_KINDS = ("dnabert_s", "esm2")


@dataclass


class Embedder:
    """A loaded embedding model and the identity of the tokens it takes."""

    kind: str
    model: torch.nn.Module
    pad_id: int
    tokenizer: str  # identity of its tokenizer, which the token files carry
    source: str
    files: list[dict] | None = None  # name, size and SHA-256 of its files, when virnucpro.model_store.download fetched it

    @property
    def dim(self) -> int:
        return self.model.embedding_dim

    def identity(self) -> dict:
        return {"kind": self.kind, "architecture": self.model.config.architecture, "dim": self.dim,
                "fingerprint": self.model.fingerprint, "source": self.source,
                **({"files": self.files} if self.files is not None else {})}


def load_embedder(kind: str, path: str | os.PathLike, device: torch.device, compile_model: bool = False,
                  files: list[dict] | None = None) -> Embedder:
    """Load a model for `device`: bf16 weights on a GPU, float32 on the CPU.

    `compile_model` applies torch.compile to the model's layers on a GPU (`compile_layers`).
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown embedding model kind '{kind}', expected one of {MODEL_KINDS}")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tokenizer = load_tokenizer(kind, path)
    if kind == "dnabert_s":
        from virnucpro.models.dnabert_s import load_dnabert_s

        model, _ = load_dnabert_s(path, device, dtype)
    else:
        from virnucpro.models.esm2 import load_esm2

        model = load_esm2(path, device, dtype)
    if compile_model and device.type == "cuda":
        from torch._inductor import config as inductor_config

        # Compile in this process: a pool of compile workers costs seconds when every GPU job
        # starts and exits, and with the node's compile cache warm there is little to compile.
        inductor_config.compile_threads = 1
        model.compile_layers()
    return Embedder(kind, model, tokenizer.pad_id, tokenizer.identity, os.fspath(path), files)
