"""VirNucPro's classifier: an MLP from the merged features to two classes (0 = others, 1 = virus).

    Linear(features -> 512) -> BatchNorm1d -> ReLU -> Dropout(0.5) -> Linear(512 -> 2)

Two file formats load:
- the project's own: `torch.save` of a dict with the weights and metadata (expected chunk length,
  feature sizes, the embedding models that made the features, training metrics), read with
  `weights_only=True`;
- VirNucPro's `300_model.pth` / `500_model.pth`: a whole pickled `MLPClassifier` module from its
  training script, read without running its code (see `checkpoint.load_checkpoint`). Their expected
  length comes from the file name or from configuration.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from virnucpro.io.errors import VirnucproError
from virnucpro.models.checkpoint import PickledObject, load_checkpoint, module_state_dict

FORMAT = "virnucpro-classifier"
FORMAT_VERSION = 1
HIDDEN_DIM = 512
# What VirNucPro's published classifiers were trained on.
ORIGINAL_FEATURE_DIMS = {"dnabert_s": 768, "esm2": 2560}


class MLPClassifier(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int = HIDDEN_DIM, num_classes: int = 2, dropout: float = 0.5):
        super().__init__()
        self.hidden_layer = nn.Linear(input_dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim)
        self.output_layer = nn.Linear(hidden_dim, num_classes)
        self.dropout = nn.Dropout(dropout)
        nn.init.xavier_uniform_(self.hidden_layer.weight)
        nn.init.xavier_uniform_(self.output_layer.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.dropout(F.relu(self.bn1(self.hidden_layer(x)))))


@dataclass
class ClassifierInfo:
    path: str
    source: str  # "virnucpro" or "original-pickle"
    expected_length: int
    input_dim: int
    feature_dims: dict[str, int]  # per embedding kind, in merge order
    embedding_models: list[dict] | None  # identities of the models its features came from, if known
    metadata: dict = field(default_factory=dict)


def load_classifier(path: str | os.PathLike, expected_length: int | None = None) -> tuple[MLPClassifier, ClassifierInfo]:
    """Load a classifier in eval mode. `expected_length` is needed only for an original `.pth`
    whose name does not say it (`<length>_model.pth`)."""
    checkpoint = load_checkpoint(path)
    if isinstance(checkpoint, dict) and checkpoint.get("format") == FORMAT:
        return _load_own(path, checkpoint)
    if isinstance(checkpoint, PickledObject) and hasattr(checkpoint, "_modules"):
        return _load_original(path, checkpoint, expected_length)
    raise VirnucproError(f"{path}: neither a classifier saved by this pipeline nor a pickled VirNucPro MLPClassifier")


def _build(path, state: dict[str, torch.Tensor]) -> MLPClassifier:
    try:
        hidden_dim, input_dim = state["hidden_layer.weight"].shape
        model = MLPClassifier(input_dim, hidden_dim, state["output_layer.weight"].shape[0])
        model.load_state_dict(state)
    except (KeyError, RuntimeError) as error:
        raise VirnucproError(f"{path}: classifier weights do not match VirNucPro's MLP ({error})") from None
    return model.eval()


def _load_own(path, checkpoint: dict) -> tuple[MLPClassifier, ClassifierInfo]:
    if checkpoint.get("version") != FORMAT_VERSION:
        raise VirnucproError(f"{path}: classifier format version {checkpoint.get('version')} is not supported")
    metadata = checkpoint["metadata"]
    model = _build(path, checkpoint["state_dict"])
    info = ClassifierInfo(
        path=os.fspath(path), source="virnucpro", expected_length=int(metadata["expected_length"]),
        input_dim=model.hidden_layer.in_features, feature_dims=dict(metadata["feature_dims"]),
        embedding_models=metadata.get("embedding_models"), metadata=metadata)
    return model, info


def _load_original(path, pickled: PickledObject, expected_length: int | None) -> tuple[MLPClassifier, ClassifierInfo]:
    model = _build(path, dict(module_state_dict(pickled)))
    named = re.fullmatch(r"(\d+)_model\.pth", Path(path).name)
    if named and expected_length is not None and int(named.group(1)) != expected_length:
        raise VirnucproError(f"{path}: the file name says expected length {named.group(1)}, "
                         f"but models.classifier_expected_length is {expected_length}")
    length = int(named.group(1)) if named else expected_length
    if length is None:
        raise VirnucproError(f"{path}: cannot tell which expected length this VirNucPro classifier was trained for; "
                         "name it <length>_model.pth or set models.classifier_expected_length")
    info = ClassifierInfo(path=os.fspath(path), source="original-pickle", expected_length=length,
                          input_dim=model.hidden_layer.in_features, feature_dims=dict(ORIGINAL_FEATURE_DIMS),
                          embedding_models=None)
    return model, info


def save_classifier(model: MLPClassifier, path: str | os.PathLike, metadata: dict) -> None:
    """Save in the project's format; `metadata` must hold expected_length and feature_dims."""
    missing = {"expected_length", "feature_dims"} - set(metadata)
    if missing:
        raise VirnucproError(f"classifier metadata lacks {sorted(missing)}")
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    torch.save({"format": FORMAT, "version": FORMAT_VERSION, "state_dict": state, "metadata": metadata}, path)


def check_compatible(info: ClassifierInfo, expected_length: int, feature_models: list[dict]) -> None:
    """Refuse a classifier trained for another chunk length or on features from other models."""
    if info.expected_length != expected_length:
        raise VirnucproError(f"{info.path}: classifier was trained for expected length {info.expected_length}, "
                         f"but this run chunks to {expected_length}; use a matching classifier or expected_length")
    feature_dims = {model["kind"]: model["dim"] for model in feature_models}
    if list(feature_dims.items()) != list(info.feature_dims.items()):
        raise VirnucproError(f"{info.path}: classifier expects features {info.feature_dims}, "
                         f"but this run's embedding models give {feature_dims}")
    if info.input_dim != sum(feature_dims.values()):
        raise VirnucproError(f"{info.path}: classifier takes {info.input_dim} features, but this run's embedding models "
                         f"give {' + '.join(map(str, feature_dims.values()))} = {sum(feature_dims.values())}")
    if info.embedding_models is not None:
        trained = [(m["kind"], m["architecture"], m["fingerprint"]) for m in info.embedding_models]
        used = [(m["kind"], m["architecture"], m["fingerprint"]) for m in feature_models]
        if trained != used:
            raise VirnucproError(f"{info.path}: classifier was trained on features from {trained}, "
                             f"but this run's features come from {used}")
