"""Training: region-grouped split, class balance, the MLP recipe, metrics, the saved classifier."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from virnucpro.io.features import FeatureWriter
from virnucpro.io.schemas import READ_SCHEMA
from virnucpro.io.schemas import FRAME_SCHEMA
from virnucpro.io.tables import TableWriter
from virnucpro.models.classifier import check_compatible, load_classifier
from virnucpro.stages.training import (
    Hyperparameters,
    balanced,
    binary_metrics,
    frame_regions,
    roc_curve,
    run_training,
    split_by_group,
    train_mlp,
)


def test_auc_counts_ties_as_half():
    labels = np.array([1, 0, 1, 0])
    scores = np.array([0.9, 0.8, 0.8, 0.1])
    fpr, tpr = roc_curve(labels, scores)
    assert np.trapezoid(tpr, fpr) == pytest.approx(3.5 / 4)  # pairs: 1 + 1 + 0.5 + 1 of 4
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)


def test_binary_metrics_of_a_known_confusion_matrix():
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    predicted = np.array([1, 1, 0, 1, 0, 0, 0, 0])  # tp 2, fn 1, fp 1, tn 4
    metrics = binary_metrics(labels, predicted, predicted.astype(float))
    assert metrics["accuracy"] == pytest.approx(6 / 8)
    assert metrics["precision"] == pytest.approx(2 / 3)
    assert metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["f1"] == pytest.approx(2 / 3)


def test_split_keeps_every_group_on_one_side_per_label_and_is_seeded():
    rng = np.random.default_rng(0)
    groups = [f"g{rng.integers(40)}" for _ in range(2000)]
    labels = np.array([int(g[1:]) % 2 for g in groups])
    held_out = split_by_group(groups, labels, 0.25, seed=3)
    for group in set(groups):
        sides = {bool(held_out[i]) for i, g in enumerate(groups) if g == group}
        assert len(sides) == 1
    for label in (0, 1):
        share = held_out[labels == label].mean()
        assert 0.1 < share <= 0.35
    assert np.array_equal(held_out, split_by_group(groups, labels, 0.25, seed=3))
    assert not np.array_equal(held_out, split_by_group(groups, labels, 0.25, seed=4))


def test_a_groups_side_does_not_depend_on_the_other_groups():
    """Chunking at 300 or 500 bp covers slightly different regions; the held-out ones must agree."""
    groups = [f"chromosome:{i}" for i in range(300)]
    labels = np.zeros(300, dtype=np.int64)
    all_regions = split_by_group(groups, labels, 0.2, seed=42)
    some_regions = split_by_group(groups[::3], labels[::3], 0.2, seed=42)
    assert np.array_equal(all_regions[::3], some_regions)


def test_balanced_subsamples_the_larger_class():
    labels = np.array([0] * 90 + [1] * 10)
    chosen = balanced(np.arange(100), labels, seed=1)
    assert (labels[chosen] == 0).sum() == (labels[chosen] == 1).sum() == 10
    assert set(np.flatnonzero(labels == 1)) <= set(chosen)


READ_COLUMNS = ["read_index", "read_id", "length", "ambiguous_bases", "chunks", "origin_sequence", "origin_position"]


def manifest(rows):
    return pa.table({c: [r[i] for r in rows] for i, c in enumerate(READ_COLUMNS)}, schema=READ_SCHEMA)


def test_regions_come_from_chunk_positions_or_a_reads_declared_origin():
    reads = manifest([
        (0, "genome", 25_000, 0, 84, None, None),
        (1, "read", 150, 0, 1, "genome", 12_001),
    ])
    read_index, chunk = np.array([0, 0, 0, 1]), np.array([1, 40, 84, 1])
    # chunk 40 starts near 39 * 300 - overlaps = 11,6xx, its middle in region 1 of 10,000
    assert frame_regions(reads, read_index, chunk, 300, 10_000) == ["genome:0", "genome:1", "genome:2", "genome:1"]


def test_the_recipe_learns_a_separable_problem_and_keeps_its_best_epoch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 16)).astype(np.float32)
    y = (x[:, 0] + 0.3 * x[:, 1] > 0).astype(np.int64)
    hyper = Hyperparameters(hidden_dim=32, learning_rate=0.05, batch_size=32, max_epochs=40, patience=4)
    model, history = train_mlp(x[:400], y[:400], x[400:], y[400:], hyper, seed=0)
    with torch.no_grad():
        accuracy = (model(torch.from_numpy(x[400:])).argmax(1).numpy() == y[400:]).mean()
    assert accuracy > 0.9
    best = min(h["validation_loss"] for h in history)
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x[400:])), torch.from_numpy(y[400:])).item()
    assert loss == pytest.approx(best, rel=1e-5)  # the best epoch's weights, not the last ones


IDENTITIES = [{"kind": "dnabert_s", "architecture": "a", "dim": 6, "fingerprint": "f1", "source": "x"},
              {"kind": "esm2", "architecture": "b", "dim": 10, "fingerprint": "f2", "source": "y"}]


def synthetic_input(tmp_path, name: str, label: int, genomes: int, rng) -> dict:
    """Stage 1-7 files of `genomes` 30-kb sequences with one frame per chunk, viral ones shifted on one axis."""
    directory = tmp_path / name
    with TableWriter(directory / "reads.arrow", READ_SCHEMA, 4) as reads:
        reads.write_columns({column: values for column, values in zip(READ_COLUMNS, zip(
            *[(g, f"{name}{g}", 30_000, 0, 100, None, None) for g in range(genomes)]))})
    with TableWriter(directory / "frames.arrow", FRAME_SCHEMA, 64) as frames:
        frames.write_columns({"read_index": np.repeat(np.arange(genomes), 100), "chunk": np.tile(np.arange(1, 101), genomes),
                              "frame": np.zeros(100 * genomes, dtype=np.int8), "protein": [""] * 100 * genomes,
                              "nucleotide": [""] * 100 * genomes})
    vectors = rng.standard_normal((100 * genomes, 16)).astype(np.float32)
    vectors[:, 0] += 2.0 * label
    features = {"dnabert_s": [], "esm2": []}
    for shard, (start, stop) in enumerate(((0, 50 * genomes), (50 * genomes, 100 * genomes))):  # two shards
        for kind, columns, identity in (("dnabert_s", slice(0, 6), IDENTITIES[0]), ("esm2", slice(6, 16), IDENTITIES[1])):
            features[kind].append(directory / f"{kind}.{shard}.arrow")
            with FeatureWriter(features[kind][-1], columns.stop - columns.start, [identity], start, stop) as out:
                out.write_vectors(start, vectors[start:stop, columns])
    return {"name": name, "label": "viral" if label else "host", "path": f"{name}.fa",
            "reads": [directory / "reads.arrow"], "frames": [directory / "frames.arrow"], **features}


def test_run_training_writes_a_classifier_bound_to_its_embedding_models(tmp_path):
    rng = np.random.default_rng(1)
    inputs = [synthetic_input(tmp_path, "virus", 1, 3, rng), synthetic_input(tmp_path, "host", 0, 6, rng)]
    outputs = {name: tmp_path / f"out.{name}" for name in ("model", "metrics", "report", "roc", "curve", "holdout")}
    hyper = Hyperparameters(hidden_dim=16, learning_rate=0.05, max_epochs=15, patience=3)
    summary = run_training(inputs, 300, 10_000, 0.2, 0.1, 42, hyper, outputs)

    assert summary["metrics"]["frames"]["roc_auc"] > 0.9
    held_out = outputs["holdout"].read_text().splitlines()[1:]
    assert {line.split("\t")[1] for line in held_out} == {"viral", "host"}
    assert json.loads(outputs["metrics"].read_text())["history"]
    assert outputs["roc"].read_bytes()[:4] == b"\x89PNG" and outputs["curve"].read_bytes()[:4] == b"\x89PNG"
    assert "ROC AUC" in outputs["report"].read_text()

    model, info = load_classifier(outputs["model"])
    assert info.expected_length == 300 and info.feature_dims == {"dnabert_s": 6, "esm2": 10}
    check_compatible(info, 300, IDENTITIES)
    other = [dict(IDENTITIES[0]), dict(IDENTITIES[1], fingerprint="other")]
    with pytest.raises(ValueError, match="trained on features from"):
        check_compatible(info, 300, other)
    with pytest.raises(ValueError, match="expected length 300"):
        check_compatible(info, 500, IDENTITIES)


def test_too_few_regions_to_hold_out_is_a_clear_error(tmp_path):
    rng = np.random.default_rng(2)
    inputs = [synthetic_input(tmp_path, "virus", 1, 1, rng), synthetic_input(tmp_path, "host", 0, 4, rng)]
    outputs = {name: tmp_path / f"out.{name}" for name in ("model", "metrics", "report", "roc", "curve", "holdout")}
    with pytest.raises(ValueError, match="too few source regions"):
        run_training(inputs, 300, 100_000, 0.2, 0.1, 42, Hyperparameters(max_epochs=2), outputs)


def test_a_training_table_with_a_bad_label_header_or_name_is_refused(tmp_path):
    from conftest import REPO
    from virnucpro.run.config import read_training_inputs

    schema = str(REPO / "workflow/schemas/training_inputs.schema.yaml")
    table = tmp_path / "t.tsv"
    table.write_text("name\tpath\tlabel\nphage\tp.fa\tviral\nhost\th.fa\tvirus\n")
    with pytest.raises(ValueError, match=r"t.tsv, line 3: label: 'virus' is not one of \['viral', 'host'\]"):
        read_training_inputs(str(table), schema)
    table.write_text("name,path,label\nphage,p.fa,viral\n")
    with pytest.raises(ValueError, match="t.tsv: not a tab-separated table with a header line"):
        read_training_inputs(str(table), schema)
    table.write_text("name\tpath\nphage\tp.fa\n")
    with pytest.raises(ValueError, match="t.tsv, line 2: 'label' is a required property"):
        read_training_inputs(str(table), schema)
    table.write_text("name\tpath\tlabel\nphage\tp.fa\tviral\nphage\tq.fa\thost\n")
    with pytest.raises(ValueError, match="t.tsv, line 3: name 'phage' is also on line 2"):
        read_training_inputs(str(table), schema)
    table.write_text("name\tpath\tlabel\nphage\tp.fa\tviral\n")
    assert read_training_inputs(str(table), schema) == [{"name": "phage", "path": "p.fa", "label": "viral"}]
