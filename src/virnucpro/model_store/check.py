"""Before any GPU work: the run's models, checked from their files' headers.

A classifier that does not fit the run (trained for the other expected length, on features of
other embedding models, or taking another number of features) used to be refused in stage 8, after
both embedding stages: with ESM-2 3B, hours of GPU time thrown away. The `check_models` job, on
which every tokenizing and embedding job waits, finds this out in seconds: it loads the embedding
models as their jobs will, but onto PyTorch's meta device, so that only their configuration, their
tokenizer, the names and shapes of their weights and the small token-embedding table that
identifies them are read, not the weights; it loads the classifier (a few MB) and applies to it the
check that stage 8 applies to the features (`classifier.check_compatible`).
"""

from __future__ import annotations

import json
import os

import torch

from virnucpro.io.atomic import atomic_output
from virnucpro.model_store.loading import load_embedder
from virnucpro.models.classifier import check_compatible, load_classifier

# In merge order: the merged vector is the DNABERT-S embedding, then the ESM-2 one.
EMBEDDING_KINDS = ("dnabert_s", "esm2")


def describe_embedding_model(kind: str, path: str | os.PathLike) -> dict:
    """The identity that an embedding job will record for this model (kind, architecture, width,
    fingerprint, source), read from the model's headers; a ValueError if it does not load."""
    return load_embedder(kind, path, torch.device("meta")).identity()


def check_models(embedding_models: dict[str, str | os.PathLike], classifier: str | os.PathLike | None,
                 expected_length: int, classifier_expected_length: int | None, report_path) -> dict:
    """Check the embedding models (`kind -> path`) and, for a prediction run, the classifier
    against them and the run's expected length; write and return what was found."""
    models = [describe_embedding_model(kind, embedding_models[kind]) for kind in EMBEDDING_KINDS]
    report = {"embedding_models": models, "classifier": None}
    if classifier is not None:
        _, info = load_classifier(classifier, classifier_expected_length)
        check_compatible(info, expected_length, models)
        report["classifier"] = {"path": info.path, "format": info.source, "expected_length": info.expected_length,
                                "input_dim": info.input_dim, "feature_dims": info.feature_dims}
    with atomic_output(report_path) as out:
        json.dump(report, out, indent=2)
    return report
