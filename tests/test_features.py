"""Stage 7 (merging feature files) against the original tool's files, and stage 8 (prediction)."""

from __future__ import annotations


import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from virnucpro.io.features import FeatureFile, FeatureWriter, MergedFeatures
from virnucpro.io.ids import FRAME_NAMES
from virnucpro.io.schemas import READ_SCHEMA
from virnucpro.io.schemas import FRAME_SCHEMA
from virnucpro.io.tables import TableWriter
from virnucpro.models.classifier import MLPClassifier
from virnucpro.stages.merge import merge_features
from virnucpro.stages.prediction import frame_probabilities, predict_shard

DNABERT_IDENTITY = {"kind": "dnabert_s", "architecture": "x", "dim": 768, "fingerprint": "f", "source": "s"}
ESM2_IDENTITY = {"kind": "esm2", "architecture": "y", "dim": 2560, "fingerprint": "g", "source": "t"}


def original_features(reference_dir) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The original's frame IDs (in its merged file's order) with their DNABERT-S and ESM-2
    vectors, joined here by ID: the original wrote its two feature files in different orders."""
    nucleotide = torch.load(reference_dir / "output_1_DNABERT_S.pt", weights_only=False)
    protein = torch.load(reference_dir / "output_1_ESM.pt", weights_only=False)
    ids = list(torch.load(reference_dir / "output_1_merged.pt", weights_only=False)["ids"])
    assert [entry["label"] for entry in nucleotide["data"]] == nucleotide["nucleotide"]
    assert list(protein["proteins"]) != ids
    by_id_nucleotide = dict(zip(nucleotide["nucleotide"], (e["mean_representation"] for e in nucleotide["data"])))
    by_id_protein = dict(zip(protein["proteins"], protein["data"]))
    return (ids, np.array([by_id_nucleotide[i] for i in ids], dtype=np.float32),
            torch.stack([by_id_protein[i] for i in ids]).numpy())


def write_feature_files(directory, nucleotide: np.ndarray, protein: np.ndarray, first_row: int = 0):
    paths = directory / "nucleotide.arrow", directory / "protein.arrow"
    for path, vectors, identity in zip(paths, (nucleotide, protein), (DNABERT_IDENTITY, ESM2_IDENTITY)):
        with FeatureWriter(path, vectors.shape[1], [identity], first_row, first_row + len(vectors)) as out:
            for start in range(0, len(vectors), 3):  # in batches, as the embedding jobs write them
                out.write_vectors(first_row + start, vectors[start : start + 3])
    return paths


def test_merge_reproduces_the_original_merged_features(reference_dir, tmp_path):
    ids, nucleotide, protein = original_features(reference_dir)
    paths = write_feature_files(tmp_path, nucleotide, protein)

    frames = merge_features(*paths, tmp_path / "merged.arrow")

    original = torch.load(reference_dir / "output_1_merged.pt", weights_only=False)
    merged = FeatureFile(tmp_path / "merged.arrow")
    assert frames == len(original["ids"]) == 4
    assert merged.dim == 3328 and merged.models == [DNABERT_IDENTITY, ESM2_IDENTITY]
    assert np.array_equal(merged.vectors(0, 4), original["data"].numpy())
    [(first, through_view)] = list(MergedFeatures(*paths).blocks())
    assert first == 0 and np.array_equal(through_view, original["data"].numpy())
    assert [file.path for file in MergedFeatures(*paths).files] == [str(p) for p in paths]


def test_feature_file_round_trip_over_batches(tmp_path):
    vectors = np.random.default_rng(0).standard_normal((10_000, 7)).astype(np.float32)
    with FeatureWriter(tmp_path / "t.arrow", 7, [DNABERT_IDENTITY], 500, 10_500) as out:
        for start in range(0, 10_000, 1234):
            out.write_vectors(500 + start, vectors[start : start + 1234])
    back = FeatureFile(tmp_path / "t.arrow")
    assert (back.row_start, back.row_end, back.models) == (500, 10_500, [DNABERT_IDENTITY])
    assert np.array_equal(back.vectors(500, 10_500), vectors)
    assert np.array_equal(back.vectors(4_600, 9_000), vectors[4_100:8_500])  # across record batches


def test_an_incomplete_or_disordered_feature_file_is_never_written(tmp_path):
    vectors = np.ones((4, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="embeddings end at row 2, the shard at 4"):
        with FeatureWriter(tmp_path / "short.arrow", 3, [ESM2_IDENTITY], 0, 4) as out:
            out.write_vectors(0, vectors[:2])
    with pytest.raises(ValueError, match="embeddings of row 3 written where row 2 was due"):
        with FeatureWriter(tmp_path / "gap.arrow", 3, [ESM2_IDENTITY], 0, 4) as out:
            out.write_vectors(0, vectors[:2])
            out.write_vectors(3, vectors[:1])
    assert list(tmp_path.iterdir()) == []


def test_features_of_different_shards_are_not_merged(tmp_path):
    vectors = np.ones((4, 3), dtype=np.float32)
    nucleotide, _ = write_feature_files(tmp_path, vectors, vectors)
    (tmp_path / "other").mkdir()
    _, protein = write_feature_files(tmp_path / "other", vectors, vectors, first_row=4)
    with pytest.raises(ValueError, match="not the same shard"):
        merge_features(nucleotide, protein, tmp_path / "merged.arrow")
    assert not (tmp_path / "merged.arrow").exists()
    with pytest.raises(ValueError, match="not the same shard"):  # as prediction and training read them
        MergedFeatures(nucleotide, protein)


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
    probabilities = frame_probabilities(model, features)
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(features)), dim=1).numpy()
    assert probabilities.shape == (10, 2) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, expected, atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)


def test_a_frames_scores_do_not_depend_on_where_its_shard_starts_or_ends():
    model = trained_looking_classifier(3328, seed=3)
    features = np.random.default_rng(4).standard_normal((3000, 3328)).astype(np.float32)
    whole = frame_probabilities(model, features)
    for cuts in ([0, 8, 17, 24, 1030, 2047, 2049, 3000], [0, 1, 2, 3000], [0, 999, 1001, 3000]):
        pieces = [frame_probabilities(model, features[a:b], first_row=a) for a, b in zip(cuts, cuts[1:])]
        assert np.array_equal(np.concatenate(pieces), whole)


def test_frame_probabilities_refuse_features_of_the_wrong_size():
    model = trained_looking_classifier(3328, seed=1)
    with pytest.raises(ValueError, match="3328"):
        frame_probabilities(model, np.zeros((2, 3000), dtype=np.float32))


def original_shard(reference_dir, directory):
    """The original's four frames as one shard: feature files (nucleotide.arrow, protein.arrow), frames
    and reads tables."""
    ids, nucleotide, protein = original_features(reference_dir)
    write_feature_files(directory, nucleotide, protein)
    read_ids = list(dict.fromkeys(i[:-2].rsplit("_chunk_", 1)[0] for i in ids))
    with TableWriter(directory / "reads.arrow", READ_SCHEMA, 2) as reads:
        reads.write_columns({"read_index": range(len(read_ids)), "read_id": read_ids, "length": [500] * len(read_ids),
                             "ambiguous_bases": [0] * len(read_ids), "chunks": [1] * len(read_ids),
                             "origin_sequence": [None] * len(read_ids), "origin_position": [None] * len(read_ids)})
    with TableWriter(directory / "frames.arrow", FRAME_SCHEMA, 2) as frames:
        frames.write_columns({"read_index": [read_ids.index(i[:-2].rsplit("_chunk_", 1)[0]) for i in ids],
                              "chunk": [int(i[:-2].rsplit("_chunk_", 1)[1]) for i in ids],
                              "frame": [FRAME_NAMES.index(i[-2:]) for i in ids],
                              "protein": [""] * len(ids), "nucleotide": [""] * len(ids)})
    return ids, np.concatenate((nucleotide, protein), axis=1)


def test_predict_shard_writes_scores_and_virnucpro_rows(reference_dir, tmp_path):
    ids, vectors = original_shard(reference_dir, tmp_path)
    model = trained_looking_classifier(3328, seed=5)
    seen_models = []

    rows = predict_shard(model, tmp_path / "nucleotide.arrow", tmp_path / "protein.arrow", [tmp_path / "frames.arrow"],
                         [tmp_path / "reads.arrow"], tmp_path / "scores.parquet", tmp_path / "lines.txt",
                         seen_models.append)

    assert rows == 4
    assert seen_models == [[DNABERT_IDENTITY, ESM2_IDENTITY]]
    table = pq.read_table(tmp_path / "scores.parquet")
    assert table.column_names == ["row", "score_others", "score_virus"]
    assert table.column("row").to_pylist() == [0, 1, 2, 3]
    with torch.no_grad():
        expected = torch.softmax(model(torch.tensor(vectors)), dim=1).numpy()
    np.testing.assert_allclose(table.column("score_others").to_numpy(), expected[:, 0], atol=1e-6)
    np.testing.assert_allclose(table.column("score_virus").to_numpy(), expected[:, 1], atol=1e-6)
    lines = (tmp_path / "lines.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == ids
    assert [line.split("\t")[2] for line in lines] == table.column("score_others").to_numpy().astype(str).tolist()


def test_predict_shard_stops_when_the_models_are_refused(reference_dir, tmp_path):
    original_shard(reference_dir, tmp_path)

    def refuse(models):
        raise ValueError("features from other models")

    with pytest.raises(ValueError, match="other models"):
        predict_shard(trained_looking_classifier(3328, seed=5), tmp_path / "nucleotide.arrow",
                      tmp_path / "protein.arrow", [tmp_path / "frames.arrow"], [tmp_path / "reads.arrow"],
                      tmp_path / "scores.parquet", tmp_path / "lines.txt", refuse)
    assert not (tmp_path / "scores.parquet").exists() and not (tmp_path / "lines.txt").exists()
