"""Loading an embedding model for a device, as the embedding jobs and the model check do.

`load_embedder` is what both the embedding jobs and the model check (on the meta device) load, so
that the identity the check reports is the one the jobs record. On a GPU the weights come from the
model's prepared copy (`virnucpro.model_store.prepared`), written by the first job that loads it.
"""

from __future__ import annotations

import os

import torch

from virnucpro.model_store.cache import model_files
from virnucpro.model_store.prepared import load_model
from virnucpro.models.embedder import MODEL_KINDS, Embedder
from virnucpro.models.tokens import load_tokenizer


def load_embedder(kind: str, path: str | os.PathLike, device: torch.device, compile_model: bool = False,
                  prepared: bool = True) -> Embedder:
    """Load a model for `device`: bf16 weights on a GPU, float32 on the CPU.

    On a GPU, with `prepared`, the model comes from its prepared copy. `compile_model` applies
    torch.compile to the model's layers on a GPU (`compile_layers`).
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown embedding model kind '{kind}', expected one of {MODEL_KINDS}")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tokenizer = load_tokenizer(kind, path)
    model = load_model(kind, path, device, dtype, use_prepared=prepared and device.type == "cuda")
    if compile_model and device.type == "cuda":
        from torch._inductor import config as inductor_config

        # Compile in this process: a pool of compile workers costs seconds when every GPU job
        # starts and exits, and with the node's compile cache warm there is little to compile.
        inductor_config.compile_threads = 1
        model.compile_layers()
    return Embedder(kind, model, tokenizer.pad_id, tokenizer.identity, os.fspath(path), model_files(path))
