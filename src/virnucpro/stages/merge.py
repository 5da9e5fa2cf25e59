"""Stage 7 (when `outputs.merged_features` asks for it): the merged vectors of a shard, written out
(see `virnucpro.io.features`)."""

from __future__ import annotations

import os

from virnucpro.io.features import FeatureWriter, MergedFeatures


def merge_features(nucleotide_path: str | os.PathLike, protein_path: str | os.PathLike,
                   merged_path: str | os.PathLike) -> int:
    """Write the merged vectors of a shard's two feature files, checked against each other, to
    `merged_path`. Returns the number of frames."""
    features = MergedFeatures(nucleotide_path, protein_path)
    with FeatureWriter(merged_path, features.dim, features.models, features.row_start, features.row_end,
                       column="features") as out:
        for first, vectors in features.blocks():
            out.write_vectors(first, vectors)
    return features.row_end - features.row_start
