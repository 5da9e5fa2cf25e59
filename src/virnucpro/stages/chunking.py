"""Stage 1: cut each input sequence into chunks of the expected length, as VirNucPro does.

A sequence of length L becomes n = ceil(L / size) chunks named `<id>_chunk_<k>` (k from 1). The
chunks overlap so that together they cover the whole sequence. VirNucPro computes the overlaps with
a rule that is reproduced here exactly, quirks included, so that chunk boundaries match the
original tool base for base:

    repeat = n * size - L        # bases that the chunks cover twice
    lower  = repeat // n         # (the original divides by n, not by the n - 1 gaps)
    extra  = repeat - (n - 1) * lower
    overlap before chunk j+1 = lower + 1 for the first `extra` gaps, `lower` after them

so chunk j (from 0) starts at j * size - j * lower - min(j, extra). When `extra` exceeds n - 1
every gap gets lower + 1, the overlaps add up to less than `repeat`, and the last chunk runs past
the end of the sequence; it is then simply shorter than `size`.

One job per part of the input (see `virnucpro.stages.partition`): it checks the letters of every read,
chunks all of them at once with NumPy, and writes the part's reads (the manifest every later
stage joins to by read index), its chunks, the hashes of its read IDs (for the duplicate check
over the whole sample, `virnucpro.io.read_ids`) and, for people, its share of VirNucPro's chunk file.

A read placed on a reference (for training, where held-out genome regions must stay held out) may
say where it comes from with `origin=<sequence>:<position>` in its header (1-based position of its
leftmost base); the manifest keeps it. Only training inputs are read for it (`read_origins`), and
there a malformed one is an error: elsewhere `origin=` is free text of the header (public FASTA
files use it for e.g. `origin=environmental`) and is left alone.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from virnucpro.io.atomic import atomic_output
from virnucpro.io.ids import chunk_id, parse_origin
from virnucpro.io.read_ids import id_hashes, write_id_hashes
from virnucpro.io.schemas import CHUNK_SCHEMA, READ_SCHEMA, TABLE_BATCH_ROWS
from virnucpro.io.sequences import (IS_ACGT, PROTEIN_LIKE_CODE_FRACTION, InputError, check_nucleotides, fasta_text,
                                   protein_like)
from virnucpro.io.tables import TableReader, TableWriter, string_bytes

CHUNK_FASTA_LINE_WIDTH = 60  # VirNucPro writes chunks with Biopython, which wraps at 60


@dataclass(frozen=True)
class ChunkLayout:
    """Chunks of several sequences, in order: their sequence, number (from 1), start and length."""

    sequence: np.ndarray
    number: np.ndarray
    start: np.ndarray
    length: np.ndarray


def chunk_layout(lengths: np.ndarray, size: int) -> ChunkLayout:
    """Where the chunks of sequences of `lengths` bases lie, by VirNucPro's rule."""
    _check_size(size)
    lengths = np.asarray(lengths, dtype=np.int64)
    counts = -(-lengths // size)
    sequence = np.repeat(np.arange(len(lengths)), counts)
    number = np.arange(len(sequence)) - (np.cumsum(counts) - counts)[sequence] + 1
    start = chunk_start(lengths[sequence], number, size)
    return ChunkLayout(sequence, number, start, np.minimum(size, lengths[sequence] - start))


def chunk_start(lengths: np.ndarray, numbers: np.ndarray, size: int) -> np.ndarray:
    """Start (0-based) of chunk number `numbers` (from 1) of sequences of `lengths` bases."""
    _check_size(size)
    lengths, index = np.asarray(lengths, dtype=np.int64), np.asarray(numbers, dtype=np.int64) - 1
    counts = -(-lengths // size)
    repeat = counts * size - lengths
    lower = np.floor_divide(repeat, counts, out=np.zeros_like(repeat), where=counts > 0)
    extra = repeat - (counts - 1) * lower
    return index * size - index * lower - np.minimum(index, extra)


def _check_size(size: int) -> None:
    if size < 1:
        raise ValueError(f"chunk size must be positive, got {size}")


def gather_slices(sequences: pa.Array, rows: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> pa.LargeStringArray:
    """sequences[rows[i]][starts[i] : starts[i] + lengths[i]] for every i, as one string array."""
    offsets, data = string_bytes(sequences)
    new_offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    source = np.repeat(offsets[rows] + starts - new_offsets[:-1], lengths) + np.arange(new_offsets[-1])
    return pa.LargeStringArray.from_buffers(len(rows), pa.py_buffer(new_offsets), pa.py_buffer(data[source]))


@dataclass(frozen=True)
class ChunkingResult:
    reads: int
    chunks: int
    bases: int
    warnings: list[str] = field(default_factory=list)  # for the user: reads that look like protein


def _protein_warning(source, reads: int, protein_reads: int, first: str) -> str:
    return (f"{source}: {protein_reads} of {reads} reads of this part look like protein, not DNA (more than "
            f"{PROTEIN_LIKE_CODE_FRACTION:.0%} of their letters are IUPAC codes for two or more bases; the first is "
            f"'{first}'). VirNucPro classifies DNA or RNA: they will mostly come out 'too_ambiguous'. Is this the "
            "right input file?")


def chunk_part(part_path: str | os.PathLike, size: int, reads_path: str | os.PathLike, chunks_path: str | os.PathLike,
               read_ids_path: str | os.PathLike, fasta_path: str | os.PathLike | None = None,
               read_origins: bool = False) -> ChunkingResult:
    """Stage 1 for one part of the input (see the module's description); `read_origins` for a
    training input."""
    part = TableReader(part_path)
    source, first_read = part.metadata("source"), part.metadata("first_read_index")
    reads = chunks = bases = protein_reads = 0
    first_protein_read = None
    hashes = []
    with contextlib.ExitStack() as outputs:
        read_table = outputs.enter_context(TableWriter(reads_path, READ_SCHEMA, TABLE_BATCH_ROWS))
        chunk_table = outputs.enter_context(TableWriter(chunks_path, CHUNK_SCHEMA, TABLE_BATCH_ROWS))
        fasta = outputs.enter_context(atomic_output(fasta_path)) if fasta_path else None
        for batch in part.batches():
            ids = batch.column("id").to_pylist()
            sequences = check_nucleotides(source, ids, batch.column("sequence"))
            looks_like_protein = np.flatnonzero(protein_like(sequences))
            if len(looks_like_protein):
                protein_reads += len(looks_like_protein)
                first_protein_read = first_protein_read or ids[looks_like_protein[0]]
            offsets, data = string_bytes(sequences)
            lengths = np.diff(offsets)
            acgt = np.r_[0, np.cumsum(IS_ACGT[data])][offsets]
            read_index = np.arange(first_read + reads, first_read + reads + len(ids))
            layout = chunk_layout(lengths, size)
            origin_sequence, origin_position = (_origins(source, ids, batch.column("header")) if read_origins
                                                else ([None] * len(ids), [None] * len(ids)))
            read_table.write_columns({
                "read_index": read_index, "read_id": ids, "length": lengths, "ambiguous_bases": lengths - np.diff(acgt),
                "chunks": np.bincount(layout.sequence, minlength=len(ids)).astype(np.int32),
                "origin_sequence": origin_sequence, "origin_position": origin_position,
            })
            chunk_sequences = gather_slices(sequences, layout.sequence, layout.start, layout.length)
            chunk_table.write_columns({"read_index": read_index[layout.sequence], "chunk": layout.number.astype(np.int32),
                                       "start": layout.start, "sequence": chunk_sequences})
            if fasta is not None:
                chunk_ids = [chunk_id(ids[r], n) for r, n in zip(layout.sequence.tolist(), layout.number.tolist())]
                fasta.write(fasta_text(chunk_ids, chunk_sequences.to_pylist(), CHUNK_FASTA_LINE_WIDTH))
            hashes.append(id_hashes(ids))
            reads, chunks, bases = reads + len(ids), chunks + len(layout.start), bases + int(lengths.sum())
        write_id_hashes(read_ids_path, np.concatenate(hashes) if hashes else np.empty(0, np.uint64), first_read)
    warnings = [_protein_warning(source, reads, protein_reads, first_protein_read)] if protein_reads else []
    return ChunkingResult(reads=reads, chunks=chunks, bases=bases, warnings=warnings)


def _origins(source, ids: list[str], headers: pa.Array) -> tuple[list, list]:
    """The declared origin of each read (None where there is none)."""
    names, positions = [None] * len(ids), [None] * len(ids)
    for row in np.flatnonzero(pc.match_substring(headers, "origin=").to_numpy(zero_copy_only=False)):
        try:
            names[row], positions[row] = parse_origin(headers[row].as_py())
        except ValueError as error:
            raise InputError(source, str(error), record=ids[row]) from None
    return names, positions
