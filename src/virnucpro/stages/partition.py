"""Cutting a sample's input into parts, so that stages 1 and 2 run in parallel (`partition_input`).

The input file is read once, in order (`sequence_io.read_records`, which checks its structure),
and each record goes to the part given by its position in the file as stored: part p holds the
records read while the file position is in [p, p + 1) x size / parts. The number of parts follows
from the file's size (`part_count`), so it is known before anything runs and `snakemake -n` lists
every part's jobs; a part may be empty (when one long record spans several parts' worth of file).

A part is a table of the records' ID, header and sequence as read, in input order, with the
input index of its first record in its metadata: read indices are global, so that later stages
join parts, shards and outputs by integers.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path


from virnucpro.io.schemas import INPUT_PART_SCHEMA
from virnucpro.io.sequences import InputError, read_record_batches
from virnucpro.io.tables import TableWriter

# Rows per record batch of a part: stage 1 reads its part a batch at a time.
INPUT_BATCH_ROWS = 32768


def part_count(path: str | os.PathLike, part_mb: float) -> int:
    """Parts for an input file: one per `part_mb` MB of the file as stored, at least one."""
    path = Path(path)
    if not path.is_file():
        what = ("the input is a directory, not a FASTA or FASTQ file" if path.is_dir() else
                "the input is not a regular file but a device, a pipe or a socket: give a FASTA or FASTQ file"
                if path.exists() else "the input file does not exist")
        raise InputError(path, what)
    return max(1, math.ceil(os.path.getsize(path) / (part_mb * 2**20)))


@dataclass
class PartitionResult:
    reads: int = 0
    bases: int = 0
    reads_per_part: list[int] = field(default_factory=list)


def partition_input(input_path: str | os.PathLike, part_paths: list[str | os.PathLike]) -> PartitionResult:
    """Read `input_path` once and write its records to `part_paths` (all of them, in order)."""
    size, parts = max(1, os.path.getsize(input_path)), len(part_paths)
    batches = read_record_batches(input_path, INPUT_BATCH_ROWS // 8)
    by_part = itertools.groupby(batches, key=lambda batch: min(parts - 1, batch.position * parts // size))
    result = PartitionResult()
    next_group = next(by_part, None)
    for index, path in enumerate(part_paths):
        with TableWriter(path, INPUT_PART_SCHEMA, INPUT_BATCH_ROWS,
                         metadata={"first_read_index": result.reads, "source": os.fspath(input_path)}) as writer:
            if next_group is not None and next_group[0] == index:
                for batch in next_group[1]:
                    writer.write_columns({"id": batch.ids, "header": batch.headers, "sequence": batch.sequences})
                    result.bases += sum(map(len, batch.sequences))
                next_group = next(by_part, None)
        result.reads += writer.rows
        result.reads_per_part.append(writer.rows)
    if result.reads == 0:
        raise InputError(input_path, "the file has no sequence records")
    return result
