"""Stage 7 (merging feature tables) against the original tool's files, and stage 8 (prediction)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from virnucpro.features import FeatureTable, merge_feature_files, merged_row_order, read_features, write_features
from virnucpro.models.classifier import MLPClassifier
from virnucpro.prediction import frame_probabilities, predict_frames

DNABERT_IDENTITY = {"kind": "dnabert_s", "architecture": "x", "dim": 768, "fingerprint": "f", "source": "s"}
ESM2_IDENTITY = {"kind": "esm2", "architecture": "y", "dim": 2560, "fingerprint": "g", "source": "t"}


def original_nucleotide_table(reference_dir) -> FeatureTable:
    data = torch.load(reference_dir / "output_1_DNABERT_S.pt", weights_only=False)
    assert [entry["label"] for entry in data["data"]] == data["nucleotide"]
    vectors = np.array([entry["mean_representation"] for entry in data["data"]], dtype=np.float32)
    return FeatureTable(list(data["nucleotide"]), vectors, [DNABERT_IDENTITY])


def original_protein_table(reference_dir) -> FeatureTable:
    data = torch.load(reference_dir / "output_1_ESM.pt", weights_only=False)
    vectors = torch.stack(data["data"]).numpy()
    return FeatureTable(list(data["proteins"]), vectors, [ESM2_IDENTITY])


def test_merge_reproduces_the_original_merged_features(reference_dir, tmp_path):
    nucleotide, protein = original_nucleotide_table(reference_dir), original_protein_table(reference_dir)
    assert nucleotide.ids != protein.ids  # the original wrote them in different orders
    write_features(tmp_path / "nucleotide.arrow", nucleotide)
    write_features(tmp_path / "protein.arrow", protein)

    rows = merge_feature_files(tmp_path / "nucleotide.arrow", tmp_path / "protein.arrow",
                               tmp_path / "merged.arrow")

    merged = read_features(tmp_path / "merged.arrow")
    original = torch.load(reference_dir / "output_1_merged.pt", weights_only=False)
    assert rows == len(original["ids"]) == 4
    assert merged.ids == list(original["ids"])
    assert merged.vectors.dtype == np.float32
    assert merged.vectors.shape == (4, 3328)
    assert np.array_equal(merged.vectors, original["data"].numpy())
    assert merged.models == [DNABERT_IDENTITY, ESM2_IDENTITY]
    assert pa.ipc.open_file(str(tmp_path / "merged.arrow")).schema.names == ["id", "features"]


def test_write_and_read_features_round_trip(tmp_path):
    vectors = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    table = FeatureTable(["a", "b", "c", "d", "e"], vectors, [DNABERT_IDENTITY])
    write_features(tmp_path / "t.arrow", table)
    back = read_features(tmp_path / "t.arrow")
    assert back.ids == table.ids
    assert np.array_equal(back.vectors, vectors)
    assert back.models == [DNABERT_IDENTITY]


def test_empty_feature_table_round_trip(tmp_path):
    write_features(tmp_path / "empty.arrow", FeatureTable([], np.empty((0, 7), dtype=np.float32), [ESM2_IDENTITY]))
    back = read_features(tmp_path / "empty.arrow")
    assert back.ids == []
    assert back.vectors.shape == (0, 7)


def test_frame_on_one_side_only_is_an_error_with_counts(reference_dir):
    nucleotide, protein = original_nucleotide_table(reference_dir), original_protein_table(reference_dir)
    missing_protein = FeatureTable(protein.ids[1:], protein.vectors[1:], protein.models)
    with pytest.raises(ValueError, match=r"1 only in the nucleotide features.*0 only in the protein features"):
        merged_row_order(nucleotide.ids, missing_protein.ids)
    extra_protein = FeatureTable(protein.ids + ["stray_chunk_1F1"], np.vstack([protein.vectors, protein.vectors[:1]]),
                                 protein.models)
    with pytest.raises(ValueError, match=r"0 only in the nucleotide features.*1 only in the protein features"):
        merged_row_order(nucleotide.ids, extra_protein.ids)


def test_duplicate_frame_ids_are_an_error(reference_dir):
    nucleotide, protein = original_nucleotide_table(reference_dir), original_protein_table(reference_dir)
    doubled = FeatureTable(nucleotide.ids + nucleotide.ids[:1], np.vstack([nucleotide.vectors, nucleotide.vectors[:1]]),
                           nucleotide.models)
    with pytest.raises(ValueError, match="duplicate"):
        merged_row_order(doubled.ids, protein.ids)


def merged_original_features(reference_dir, tmp_path) -> FeatureTable:
    """The original tool's features merged by stage 7, written to merged.arrow and read back."""
    write_features(tmp_path / "nucleotide.arrow", original_nucleotide_table(reference_dir))
    write_features(tmp_path / "protein.arrow", original_protein_table(reference_dir))
    merge_feature_files(tmp_path / "nucleotide.arrow", tmp_path / "protein.arrow", tmp_path / "merged.arrow")
    return read_features(tmp_path / "merged.arrow")


def trained_looking_classifier(input_dim: int, seed: int) -> MLPClassifier:
    torch.manual_seed(seed)
    model = MLPClassifier(input_dim)
    with torch.no_grad():
        model.bn1.running_mean.normal_()
        model.bn1.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_frame_probabilities_are_the_softmax_of_the_logits():
    model = trained_looking_classifier(3328, seed=1)
    features = np.random.default_rng(2).standard_normal((10, 3328)).astype(np.float32)
    probabilities = frame_probabilities(model, features, batch_size=3)
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(features)), dim=1).numpy()
    assert probabilities.shape == (10, 2) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, expected, atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)


def test_frame_probabilities_refuse_features_of_the_wrong_size():
    model = trained_looking_classifier(3328, seed=1)
    with pytest.raises(ValueError, match="3328"):
        frame_probabilities(model, np.zeros((2, 3000), dtype=np.float32))


def test_predict_frames_writes_scores_per_frame(reference_dir, tmp_path):
    merged = merged_original_features(reference_dir, tmp_path)
    model = trained_looking_classifier(3328, seed=5)
    seen_models = []

    rows = predict_frames(model, tmp_path / "merged.arrow", tmp_path / "frames.arrow", seen_models.append)

    assert rows == 4
    assert seen_models == [[DNABERT_IDENTITY, ESM2_IDENTITY]]
    table = pq.read_table(tmp_path / "frames.arrow")
    assert table.column_names == ["id", "score_others", "score_virus"]
    assert table.column("id").to_pylist() == merged.ids
    with torch.no_grad():
        expected = torch.softmax(model(torch.tensor(merged.vectors)), dim=1).numpy()
    np.testing.assert_allclose(table.column("score_others").to_numpy(), expected[:, 0], atol=1e-6)
    np.testing.assert_allclose(table.column("score_virus").to_numpy(), expected[:, 1], atol=1e-6)


def test_predict_frames_stops_when_the_models_are_refused(reference_dir, tmp_path):
    merged_original_features(reference_dir, tmp_path)

    def refuse(models):
        raise ValueError("features from other models")

    with pytest.raises(ValueError, match="other models"):
        predict_frames(trained_looking_classifier(3328, seed=5), tmp_path / "merged.arrow",
                       tmp_path / "frames.arrow", refuse)
    assert not (tmp_path / "frames.arrow").exists()
