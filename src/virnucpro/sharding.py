"""Stages 3 and 4: split the identified nucleotide and protein records into shards.

Shard k of n receives the records with index in [k * N // n, (k + 1) * N // n), N being the number
of records. The nucleotide and protein files list the same frames in the same order, so the same
rule gives shards that pair up frame for frame. Concatenating the shards in order gives back the
input, which is why no result depends on the number of shards.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from virnucpro.sequence_io import atomic_output, read_fasta_simple, write_fasta_record


def shard_names(count: int) -> list[str]:
    """Names of `count` shards: zero-padded numbers that sort in shard order."""
    if count < 1:
        raise ValueError(f"the number of shards must be at least 1, got {count}")
    width = max(3, len(str(count - 1)))
    return [f"{index:0{width}d}" for index in range(count)]


def shard_bounds(records: int, shards: int) -> list[tuple[int, int]]:
    """[start, stop) record ranges of each shard, as even as possible, in order."""
    return [(k * records // shards, (k + 1) * records // shards) for k in range(shards)]


def count_fasta_records(path: str | os.PathLike) -> int:
    with open(path) as handle:
        return sum(1 for line in handle if line.startswith(">"))


def split_fasta(input_path: str | os.PathLike, shard_paths: Sequence[str | os.PathLike]) -> list[int]:
    """Write the records of `input_path` into `shard_paths` by `shard_bounds`; return the counts."""
    bounds = shard_bounds(count_fasta_records(input_path), len(shard_paths))
    records = read_fasta_simple(input_path)
    counts = []
    for path, (start, stop) in zip(shard_paths, bounds):
        with atomic_output(path) as out:
            for _ in range(stop - start):
                record = next(records)
                write_fasta_record(out, record.id, record.sequence)
        counts.append(stop - start)
    return counts
