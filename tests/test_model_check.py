"""The model check before any GPU work: the embedding models are read from their headers (not
their weights) into the identity their jobs will record, and a classifier that does not fit the
run is refused with both sides named."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import BUILTIN_MODELS
from test_dnabert_s import copy_model_directory, load_state
from virnucpro.model_store.check import check_models, describe_embedding_model
from virnucpro.model_store.loading import load_embedder
from virnucpro.models.classifier import MLPClassifier, save_classifier

BUILTIN = {"dnabert_s": BUILTIN_MODELS / "dnabert_s_mini", "esm2": BUILTIN_MODELS / "esm2_mini.pt"}


@pytest.mark.parametrize("kind", ["dnabert_s", "esm2"])
def test_the_identity_from_the_headers_is_the_one_the_job_records(kind, dnabert_s_dir, esm2_checkpoint):
    for path in (BUILTIN[kind], {"dnabert_s": dnabert_s_dir, "esm2": esm2_checkpoint}[kind]):
        assert describe_embedding_model(kind, path) == load_embedder(kind, path, torch.device("cpu")).identity()


def test_only_the_token_embedding_table_is_read(monkeypatch):
    from safetensors import safe_open

    read = []
    with safe_open(BUILTIN["dnabert_s"] / "model.safetensors", framework="pt") as weights:
        handle_type = type(weights)
    real_get_tensor = handle_type.get_tensor
    monkeypatch.setattr(handle_type, "get_tensor", lambda self, key: read.append(key) or real_get_tensor(self, key),
                        raising=False)
    describe_embedding_model("dnabert_s", BUILTIN["dnabert_s"])
    assert read == ["embeddings.word_embeddings.weight"]


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_broken_weights_are_found_from_the_headers(dnabert_s_dir, tmp_path, weights):
    state = load_state(dnabert_s_dir)
    state["encoder.layer.0.mlp.wo.weight"] = state["encoder.layer.0.mlp.wo.weight"][:, :-1].contiguous()
    del state["encoder.layer.1.attention.self.Wqkv.bias"]
    directory = copy_model_directory(dnabert_s_dir, tmp_path / "broken", state, weights)
    with pytest.raises(ValueError, match=r"broken: weights do not match the architecture \(missing "
                                         r"\['encoder.layer.1.attention.self.Wqkv.bias'\].*wrong shape "
                                         r"\['encoder.layer.0.mlp.wo.weight'\]"):
        describe_embedding_model("dnabert_s", directory)


def test_an_incomplete_esm2_checkpoint_is_found_from_the_headers(esm2_checkpoint, tmp_path):
    checkpoint = torch.load(esm2_checkpoint, weights_only=False)
    del checkpoint["model"]["encoder.sentence_encoder.layers.2.fc1.weight"]
    torch.save(checkpoint, tmp_path / "incomplete.pt")
    with pytest.raises(ValueError, match="incomplete.pt: not a complete ESM-2 checkpoint: it has no weights "
                                         "'layers.2.fc1.weight'"):
        describe_embedding_model("esm2", tmp_path / "incomplete.pt")


@pytest.mark.parametrize("damage", ["config.json", "tokenizer.json", "model.safetensors"])
def test_a_damaged_dnabert_s_directory_is_named(tmp_path, damage):
    import shutil

    directory = tmp_path / "DNABERT-S"
    shutil.copytree(BUILTIN["dnabert_s"], directory)
    if damage == "model.safetensors":
        (directory / damage).write_bytes((directory / damage).read_bytes()[:1000])
        problem = "model.safetensors: not a readable safetensors file"
    else:
        (directory / damage).unlink()
        problem = f"DNABERT-S model directory has no {damage}"
    with pytest.raises(ValueError, match=problem):
        describe_embedding_model("dnabert_s", directory)


def test_a_matching_classifier_passes_and_the_check_is_written(tmp_path):
    report = check_models(BUILTIN, BUILTIN_MODELS / "classifier_300.pt", 300, None, tmp_path / "models.json")
    assert [model["kind"] for model in report["embedding_models"]] == ["dnabert_s", "esm2"]
    assert report["classifier"]["expected_length"] == 300
    assert json.loads((tmp_path / "models.json").read_text()) == json.loads(json.dumps(report))
    assert check_models(BUILTIN, None, 500, None, tmp_path / "train.json")["classifier"] is None  # training


def test_a_classifier_for_the_other_length_is_refused(tmp_path):
    with pytest.raises(ValueError, match="classifier_300.pt: classifier was trained for expected length 300, but "
                                         "this run chunks to 500"):
        check_models(BUILTIN, BUILTIN_MODELS / "classifier_300.pt", 500, None, tmp_path / "models.json")
    assert not (tmp_path / "models.json").exists()


def test_a_classifier_of_other_embedding_models_is_refused(dnabert_s_dir, esm2_checkpoint, tmp_path):
    with pytest.raises(ValueError, match=r"classifier expects features \{'dnabert_s': 128, 'esm2': 160\}, but "
                                         r"this run's embedding models give \{'dnabert_s': 48, 'esm2': 64\}"):
        check_models({"dnabert_s": dnabert_s_dir, "esm2": esm2_checkpoint}, BUILTIN_MODELS / "classifier_300.pt",
                     300, None, tmp_path / "models.json")


def test_a_classifier_taking_another_number_of_features_is_refused(tmp_path):
    models = [describe_embedding_model(kind, path) for kind, path in BUILTIN.items()]
    path = tmp_path / "classifier.pt"
    save_classifier(MLPClassifier(300), path, {"expected_length": 300, "feature_dims": {"dnabert_s": 128, "esm2": 160},
                                               "embedding_models": models})
    with pytest.raises(ValueError, match="classifier.pt: classifier takes 300 features, but this run's embedding "
                                         "models give 128 [+] 160 = 288"):
        check_models(BUILTIN, path, 300, None, tmp_path / "models.json")
