"""An embedding model (DNABERT-S or ESM-2) loaded for a device, with the identity of its tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch

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
