"""The classifier: VirNucPro's pickled `MLPClassifier` files and the project's own format."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from virnucpro.models.classifier import (ClassifierInfo, MLPClassifier, check_compatible, load_classifier,
                                         save_classifier)

INPUT_DIM = 3328


class OriginalMLPClassifier(nn.Module):
    """As defined in VirNucPro's training script, whose `__main__` the pickles name."""

    def __init__(self, input_dim, hidden_dim, num_class):
        super().__init__()
        self.hidden_layer = nn.Linear(input_dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim)
        self.output_layer = nn.Linear(hidden_dim, num_class)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        x = self.hidden_layer(x)
        x = self.bn1(x)
        x = torch.relu(x)
        x = self.dropout(x)
        return self.output_layer(x)


def make_original_model(seed: int) -> OriginalMLPClassifier:
    generator = torch.Generator().manual_seed(seed)
    model = OriginalMLPClassifier(INPUT_DIM, 512, 2)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
        # Running statistics far from the fresh 0 / 1, so that using them (eval) differs from batch stats.
        model.bn1.running_mean.copy_(torch.randn(512, generator=generator))
        model.bn1.running_var.copy_(0.5 + torch.rand(512, generator=generator))
        model.bn1.num_batches_tracked.fill_(1234)
    return model


def save_as_original(model: OriginalMLPClassifier, path) -> None:
    """torch.save the whole module as the training script did, its class living in `__main__`."""
    main = sys.modules["__main__"]
    had_name = hasattr(main, "MLPClassifier")
    previous = getattr(main, "MLPClassifier", None)
    original_qualname, original_module = OriginalMLPClassifier.__qualname__, OriginalMLPClassifier.__module__
    OriginalMLPClassifier.__module__, OriginalMLPClassifier.__qualname__ = "__main__", "MLPClassifier"
    main.MLPClassifier = OriginalMLPClassifier
    try:
        torch.save(model, path)
    finally:
        OriginalMLPClassifier.__module__, OriginalMLPClassifier.__qualname__ = original_module, original_qualname
        if had_name:
            main.MLPClassifier = previous
        else:
            del main.MLPClassifier


@pytest.fixture
def original_500(tmp_path):
    model = make_original_model(seed=3)
    model.train()  # the training script may save it in training mode; loading must give eval mode anyway
    path = tmp_path / "500_model.pth"
    save_as_original(model, path)
    return model, path


def features(rows: int, seed: int = 9) -> torch.Tensor:
    return torch.randn(rows, INPUT_DIM, generator=torch.Generator().manual_seed(seed))


def identity(kind: str, dim: int, fingerprint: str) -> dict:
    return {"kind": kind, "architecture": f"{kind}_arch", "dim": dim, "fingerprint": fingerprint, "source": "s"}


def test_fake_original_file_names_the_training_scripts_class(original_500):
    _, path = original_500
    assert "__main__.MLPClassifier" in torch.serialization.get_unsafe_globals_in_checkpoint(str(path))


def test_original_pickle_gives_the_same_outputs_in_eval_mode(original_500):
    original, path = original_500
    loaded, info = load_classifier(path)
    assert isinstance(loaded, MLPClassifier)
    assert not loaded.training
    x = features(16)
    with torch.no_grad():
        expected = original.eval()(x)
        got = loaded(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(loaded.bn1.running_var, original.bn1.running_var)
    assert info.source == "original-pickle"
    assert info.expected_length == 500
    assert info.input_dim == INPUT_DIM
    assert info.feature_dims == {"dnabert_s": 768, "esm2": 2560}
    assert info.embedding_models is None


def test_original_pickle_is_loaded_in_eval_mode_repeatably(original_500):
    _, path = original_500
    loaded, _ = load_classifier(path)
    x = features(4)
    with torch.no_grad():
        assert torch.equal(loaded(x), loaded(x))  # dropout off, running statistics used


def test_original_pickle_with_another_name_needs_expected_length(original_500, tmp_path):
    original, _ = original_500
    path = tmp_path / "my_model.pth"
    save_as_original(original, path)
    with pytest.raises(ValueError, match="expected length"):
        load_classifier(path)
    _, info = load_classifier(path, expected_length=300)
    assert info.expected_length == 300


def test_original_pickle_name_contradicting_expected_length_is_refused(original_500):
    _, path = original_500
    with pytest.raises(ValueError, match="500"):
        load_classifier(path, expected_length=300)
    _, info = load_classifier(path, expected_length=500)
    assert info.expected_length == 500


def test_own_format_round_trip_keeps_weights_and_metadata(tmp_path):
    torch.manual_seed(4)
    model = MLPClassifier(INPUT_DIM)
    with torch.no_grad():
        model.bn1.running_mean.normal_()
        model.bn1.running_var.uniform_(0.5, 1.5)
    model.eval()
    models = [identity("dnabert_s", 768, "aaaa"), identity("esm2", 2560, "bbbb")]
    metadata = {"expected_length": 300, "feature_dims": {"dnabert_s": 768, "esm2": 2560},
                "embedding_models": models, "metrics": {"accuracy": 0.93}}
    path = tmp_path / "classifier.pt"
    save_classifier(model, path, metadata)

    loaded, info = load_classifier(path)
    assert not loaded.training
    x = features(8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert info.source == "virnucpro"
    assert info.expected_length == 300
    assert info.input_dim == INPUT_DIM
    assert list(info.feature_dims.items()) == [("dnabert_s", 768), ("esm2", 2560)]
    assert info.embedding_models == models
    assert info.metadata["metrics"] == {"accuracy": 0.93}
    # The own format is plain tensors and containers: it loads with weights_only=True.
    torch.load(path, weights_only=True)


def test_save_classifier_requires_length_and_feature_dims(tmp_path):
    with pytest.raises(ValueError, match="expected_length"):
        save_classifier(MLPClassifier(8), tmp_path / "c.pt", {"feature_dims": {"dnabert_s": 8}})


def test_a_file_that_is_no_classifier_is_refused(tmp_path):
    path = tmp_path / "500_model.pth"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="neither a classifier"):
        load_classifier(path)


def own_info(embedding_models) -> ClassifierInfo:
    return ClassifierInfo(path="c.pt", source="virnucpro", expected_length=500, input_dim=3328,
                          feature_dims={"dnabert_s": 768, "esm2": 2560}, embedding_models=embedding_models)


def test_check_compatible_accepts_matching_features():
    models = [identity("dnabert_s", 768, "aaaa"), identity("esm2", 2560, "bbbb")]
    check_compatible(own_info(models), 500, models)
    # The source path is not part of a model's identity.
    moved = [{**model, "source": "elsewhere"} for model in models]
    check_compatible(own_info(models), 500, moved)
    # An original pickle records no embedding models: only length and dims are checked.
    check_compatible(own_info(None), 500, [identity("dnabert_s", 768, "x"), identity("esm2", 2560, "y")])


def test_check_compatible_refuses_wrong_expected_length():
    models = [identity("dnabert_s", 768, "aaaa"), identity("esm2", 2560, "bbbb")]
    with pytest.raises(ValueError, match="expected length 500"):
        check_compatible(own_info(models), 300, models)


def test_check_compatible_refuses_wrong_feature_dims():
    models = [identity("dnabert_s", 768, "aaaa"), identity("esm2", 2560, "bbbb")]
    with pytest.raises(ValueError, match="expects features"):
        check_compatible(own_info(models), 500, [identity("dnabert_s", 768, "aaaa"), identity("esm2", 1280, "bbbb")])
    with pytest.raises(ValueError, match="expects features"):
        check_compatible(own_info(None), 500, [identity("esm2", 2560, "bbbb"), identity("dnabert_s", 768, "aaaa")])


def test_check_compatible_refuses_other_embedding_models():
    models = [identity("dnabert_s", 768, "aaaa"), identity("esm2", 2560, "bbbb")]
    other = [identity("dnabert_s", 768, "aaaa"), identity("esm2", 2560, "cccc")]
    with pytest.raises(ValueError, match="trained on features from"):
        check_compatible(own_info(models), 500, other)
