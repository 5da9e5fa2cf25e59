"""Shared fixtures: the original tool's reference outputs, real sequences, and small fakes of the
real model formats built through the project's own writers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# ../shared beside the checkout; VIRNUCPRO_SHARED points elsewhere (e.g. on a GPU machine)
SHARED = Path(os.environ.get("VIRNUCPRO_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference" / "virnucpro_broad_tests"
DATA = SHARED / "data"
BUILTIN_MODELS = REPO / "resources" / "models"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.skip(f"{REFERENCE} is not available")
    return REFERENCE


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"{DATA} is not available")
    return DATA


@pytest.fixture(scope="session")
def esm2_checkpoint(tmp_path_factory) -> Path:
    """A small ESM-2 (4 layers, width 64, 4 heads) in fair-esm's checkpoint format, float32."""
    from virnucpro.builtin_models import perturb_layer_norms
    from virnucpro.models.esm2 import ESM2, ESM2Config, save_fair_esm_checkpoint

    torch.manual_seed(11)
    model = ESM2(ESM2Config(num_layers=4, embed_dim=64, attention_heads=4))
    perturb_layer_norms(model, torch.Generator().manual_seed(12), scale=0.2)
    path = tmp_path_factory.mktemp("esm2") / "esm2_t4_64d.pt"
    save_fair_esm_checkpoint(model, path, dtype=torch.float32)
    return path


@pytest.fixture(scope="session")
def dnabert_s_dir(tmp_path_factory) -> Path:
    """A small DNABERT-S (2 layers, width 48, 6 heads: not a power of two, which exercises the
    ALiBi slope interleave) as a HuggingFace directory with pytorch_model.bin, like the public one."""
    from virnucpro.builtin_models import perturb_layer_norms
    from virnucpro.models.dnabert_s import DnabertS, DnabertSConfig, save_dnabert_s

    torch.manual_seed(21)
    config = DnabertSConfig(vocab_size=4096, hidden_size=48, num_hidden_layers=2, num_attention_heads=6,
                            intermediate_size=96)
    model = DnabertS(config)
    perturb_layer_norms(model, torch.Generator().manual_seed(22), scale=0.2)
    directory = tmp_path_factory.mktemp("dnabert") / "DNABERT-S"
    save_dnabert_s(model, BUILTIN_MODELS / "dnabert_s_mini" / "tokenizer.json", directory, weights="pytorch_model.bin")
    return directory
