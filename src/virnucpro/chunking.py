"""Stage 1: cut each input sequence into chunks of the expected length, as VirNucPro does.

A sequence of length L becomes n = ceil(L / size) chunks named `<id>_chunk_<k>` (k from 1). The
chunks overlap so that together they cover the whole sequence. VirNucPro computes the overlaps with
a rule that is reproduced here exactly, quirks included, so that chunk boundaries match the
original tool base for base:

    repeat = n * size - L        # bases that the chunks cover twice
    lower  = repeat // n         # (the original divides by n, not by the n - 1 gaps)
    extra  = repeat - (n - 1) * lower
    overlap before chunk j+1 = lower + 1 for the first `extra` gaps, `lower` after them

When `extra` exceeds n - 1 every gap gets lower + 1, the overlaps add up to less than `repeat`, and
the last chunk runs past the end of the sequence; it is then simply shorter than `size`.

A read placed on a reference (for training, where held-out genome regions must stay held out) may
say where it comes from with `origin=<sequence>:<position>` in its header (1-based position of its
leftmost base); the manifest keeps it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from virnucpro.sequence_io import InputError, atomic_output, atomic_path, read_sequences, write_fasta_record

CHUNK_FASTA_LINE_WIDTH = 60  # VirNucPro writes chunks with Biopython, which wraps at 60

READ_MANIFEST_SCHEMA = pa.schema(
    [
        ("read_index", pa.int64()),
        ("read_id", pa.string()),
        ("length", pa.int64()),
        ("ambiguous_bases", pa.int64()),
        ("chunks", pa.int32()),
        ("origin_sequence", pa.string()),
        ("origin_position", pa.int64()),
    ]
)
_ORIGIN = re.compile(r"(?:^|\s)origin=(\S+)")
_ORIGIN_VALUE = re.compile(r"(\S+):([1-9]\d*)")


def chunk_starts(length: int, size: int) -> list[int]:
    """Start positions (0-based) of the chunks of a sequence of `length` bases."""
    if size < 1:
        raise ValueError(f"chunk size must be positive, got {size}")
    if length <= 0:
        return []
    count = -(-length // size)
    repeat = count * size - length
    lower = repeat // count
    extra = repeat - (count - 1) * lower
    starts, shift = [], 0
    for index in range(count):
        starts.append(index * size - shift)
        shift += lower + 1 if index < extra else lower
    return starts


def chunk_sequence(sequence: str, size: int) -> list[str]:
    """The chunks of `sequence`, in order."""
    return [sequence[start : start + size] for start in chunk_starts(len(sequence), size)]


def parse_origin(description: str) -> tuple[str | None, int | None]:
    """`origin=<sequence>:<position>` from a header, or (None, None); raises ValueError if malformed."""
    found = _ORIGIN.search(description)
    if not found:
        return None, None
    value = _ORIGIN_VALUE.fullmatch(found.group(1))
    if not value:
        raise ValueError(f"origin must be <sequence>:<1-based position>, got '{found.group(1)}'")
    return value.group(1), int(value.group(2))


def _count_acgt(sequence: str) -> int:
    return sum(map(sequence.upper().count, "ACGT"))


def chunk_id(read_id: str, number: int) -> str:
    return f"{read_id}_chunk_{number}"


@dataclass(frozen=True)
class ChunkingResult:
    reads: int
    chunks: int
    bases: int


def chunk_reads(input_path: str | os.PathLike, chunks_path: str | os.PathLike,
                manifest_path: str | os.PathLike, size: int) -> ChunkingResult:
    """Chunk every record of `input_path`; write the chunks as FASTA and one manifest row per read.

    The manifest keeps every input read, also those that yield no chunk (empty sequences), so that
    the final table can account for each of them.
    """
    columns = {name: [] for name in READ_MANIFEST_SCHEMA.names}
    total_chunks = total_bases = 0
    with atomic_output(chunks_path) as out:
        for index, record in enumerate(read_sequences(input_path)):
            pieces = chunk_sequence(record.sequence, size)
            for number, piece in enumerate(pieces, start=1):
                write_fasta_record(out, chunk_id(record.id, number), piece, CHUNK_FASTA_LINE_WIDTH)
            columns["read_index"].append(index)
            columns["read_id"].append(record.id)
            columns["length"].append(len(record.sequence))
            columns["ambiguous_bases"].append(len(record.sequence) - _count_acgt(record.sequence))
            columns["chunks"].append(len(pieces))
            try:
                origin = parse_origin(record.description)
            except ValueError as error:
                raise InputError(input_path, str(error), record=record.id) from None
            columns["origin_sequence"].append(origin[0])
            columns["origin_position"].append(origin[1])
            total_chunks += len(pieces)
            total_bases += len(record.sequence)
    with atomic_path(manifest_path) as temporary:
        pq.write_table(pa.table(columns, schema=READ_MANIFEST_SCHEMA), temporary)
    return ChunkingResult(reads=len(columns["read_id"]), chunks=total_chunks, bases=total_bases)
