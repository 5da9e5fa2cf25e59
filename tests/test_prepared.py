"""Prepared copies of the embedding models: written once, loaded instead of the source while they
match it, and never taken for complete when their preparation was cut short."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from virnucpro.model_store import prepared
from virnucpro.models.packing import PackedSequences


@pytest.fixture(autouse=True)
def prepared_root(tmp_path, monkeypatch):
    monkeypatch.setenv("VIRNUCPRO_PREPARED_DIR", str(tmp_path / "prepared"))
    return tmp_path / "prepared"


def same_model(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    state_a, state_b = a.state_dict(), b.state_dict()
    return state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)


@pytest.mark.parametrize("kind", ["esm2", "dnabert_s"])
def test_the_prepared_copy_is_the_model_and_is_used_while_the_source_is_unchanged(kind, esm2_checkpoint,
                                                                                  dnabert_s_dir, tmp_path):
    source = tmp_path / "source"
    if kind == "esm2":
        shutil.copyfile(esm2_checkpoint, source)
    else:
        shutil.copytree(dnabert_s_dir, source)
    cpu = torch.device("cpu")
    assert prepared.load_prepared(kind, source, cpu, torch.float32) is None  # nothing prepared yet
    original = prepared.load_model(kind, source, cpu, torch.float32)  # loads the source, then prepares
    copy = prepared.load_prepared(kind, source, cpu, torch.float32)
    assert copy is not None and same_model(copy, original) and copy.fingerprint == original.fingerprint
    buffer = "inv_freq" if kind == "esm2" else "slopes"
    assert torch.equal(getattr(copy, buffer), getattr(original, buffer))
    tokens = [torch.tensor([0, 5, 6, 7, 2]).numpy(), torch.tensor([0, 9, 8, 2]).numpy()]
    with torch.no_grad():
        packed = PackedSequences.from_token_lists(tokens)
        assert torch.equal(copy.embed(packed), original.embed(packed))

    changed = source if kind == "esm2" else source / "config.json"
    os.utime(changed, ns=(0, 0))  # the source changed: the copy is not used any more
    assert prepared.load_prepared(kind, source, cpu, torch.float32) is None
    prepared.load_model(kind, source, cpu, torch.float32)  # and is prepared again
    assert prepared.load_prepared(kind, source, cpu, torch.float32) is not None


def test_a_preparation_cut_short_leaves_nothing_that_looks_complete(esm2_checkpoint, tmp_path, monkeypatch):
    cpu = torch.device("cpu")
    model = prepared.load_model("esm2", esm2_checkpoint, cpu, torch.float32, use_prepared=False)

    def killed(path, tensors):
        path.write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(prepared, "write_safetensors", killed)
    with pytest.raises(KeyboardInterrupt):
        prepared.prepare("esm2", esm2_checkpoint, model, torch.float32)
    directory = prepared.prepared_dir("esm2", esm2_checkpoint, torch.float32)
    assert not (directory / prepared.MANIFEST).exists() and not (directory / prepared.WEIGHTS).exists()
    assert prepared.load_prepared("esm2", esm2_checkpoint, cpu, torch.float32) is None
    monkeypatch.undo()
    monkeypatch.setenv("VIRNUCPRO_PREPARED_DIR", str(tmp_path / "prepared"))
    prepared.prepare("esm2", esm2_checkpoint, model, torch.float32)  # the next one removes the leftover
    assert sorted(path.name for path in directory.iterdir()) == sorted([prepared.MANIFEST, prepared.WEIGHTS])


def test_a_truncated_weights_file_is_not_used(esm2_checkpoint):
    cpu = torch.device("cpu")
    prepared.load_model("esm2", esm2_checkpoint, cpu, torch.float32)
    weights = prepared.prepared_dir("esm2", esm2_checkpoint, torch.float32) / prepared.WEIGHTS
    with open(weights, "r+b") as file:
        file.truncate(weights.stat().st_size - 4)
    assert prepared.load_prepared("esm2", esm2_checkpoint, cpu, torch.float32) is None
