"""Stage 7: the merge of nucleotide and protein embeddings, frame by frame (see `virnucpro.io.features`)."""

from __future__ import annotations

import json
import os

from virnucpro.io.atomic import atomic_output
from virnucpro.io.features import VIEW_FORMAT, FeatureFile, FeatureWriter, MergedFeatures

def merge_features(nucleotide_path: str | os.PathLike, protein_path: str | os.PathLike,
                   view_path: str | os.PathLike, merged_path: str | os.PathLike | None = None) -> int:
    """Stage 7: check the two feature files of a shard against each other and write the merged
    view (and, with `merged_path`, the merged vectors themselves). Returns the number of frames."""
    nucleotide, protein = FeatureFile(nucleotide_path), FeatureFile(protein_path)
    if (nucleotide.row_start, nucleotide.row_end) != (protein.row_start, protein.row_end):
        raise ValueError(f"{nucleotide.path} covers rows {nucleotide.row_start}-{nucleotide.row_end} but "
                         f"{protein.path} rows {protein.row_start}-{protein.row_end}: they are not the same shard")
    view = {"format": VIEW_FORMAT, "row_start": nucleotide.row_start, "row_end": nucleotide.row_end,
            "dim": nucleotide.dim + protein.dim, "models": nucleotide.models + protein.models,
            "files": [nucleotide.path, protein.path], "merged": os.fspath(merged_path) if merged_path else None}
    if merged_path:
        with FeatureWriter(merged_path, view["dim"], view["models"], view["row_start"], view["row_end"],
                           column="features") as out:
            for first, vectors in MergedFeatures(view).blocks():
                out.write_vectors(first, vectors)
    with atomic_output(view_path) as out:
        json.dump(view, out, indent=2)
    return nucleotide.row_end - nucleotide.row_start
