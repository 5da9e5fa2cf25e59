"""Stage 2: six-frame translation of each chunk, keeping the frames with no stop codon.

For every chunk, frames F1..F3 read the chunk from offsets 0..2 and R1..R3 read its reverse
complement from offsets 0..2, translating every complete codon with the standard genetic code. A
frame is kept when it has at least one codon and none of them is a stop. Each kept frame yields
two records named `<chunk id><frame>`: its protein, and the nucleotide slice VirNucPro pairs with
it, which starts at the frame offset and is one base longer than the codons (when the chunk has
that base).

Ambiguous bases. VirNucPro looks each codon up in a table of the 64 ACGT codons and silently drops
any other codon, so a single N shortens the protein and shifts it against its nucleotide slice.
Here every codon is kept in register: a codon with IUPAC codes translates to the amino acid that
all its possible readings agree on (GCN is A, TRA is a stop), and to X when they disagree (NNN, or
TAN, which could be Y or a stop). An X is not a stop, so it never removes a frame. On ACGT input
this is exactly VirNucPro's translation. Chunks in which more than `max_ambiguous_fraction` of the
bases are ambiguous are not translated at all and are reported as `too_ambiguous`.

The translation is vectorised with NumPy over groups of equal-length chunks and written as Arrow
columns, which keeps this stage fast on millions of reads. One job per part of the input; its
frames table (read index, chunk, frame, protein, nucleotide slice) is what every later stage reads.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from virnucpro.io.atomic import atomic_output
from virnucpro.io.ids import FRAME_NAMES, frame_id
from virnucpro.io.schemas import (CHUNK_SUMMARY_SCHEMA, FRAME_SCHEMA, REASON_NO_STOP_FREE_FRAME, REASON_TOO_AMBIGUOUS,
                                   REASON_TOO_SHORT, TABLE_BATCH_ROWS)
from virnucpro.io.sequences import IS_ACGT, fasta_text
from virnucpro.io.tables import TableReader, TableWriter, string_bytes


_STANDARD_CODE = {
    "TTT": "F", "TTC": "F", "TTA": "L", "TTG": "L", "CTT": "L", "CTC": "L", "CTA": "L", "CTG": "L",
    "ATT": "I", "ATC": "I", "ATA": "I", "ATG": "M", "GTT": "V", "GTC": "V", "GTA": "V", "GTG": "V",
    "TCT": "S", "TCC": "S", "TCA": "S", "TCG": "S", "CCT": "P", "CCC": "P", "CCA": "P", "CCG": "P",
    "ACT": "T", "ACC": "T", "ACA": "T", "ACG": "T", "GCT": "A", "GCC": "A", "GCA": "A", "GCG": "A",
    "TAT": "Y", "TAC": "Y", "TAA": "*", "TAG": "*", "CAT": "H", "CAC": "H", "CAA": "Q", "CAG": "Q",
    "AAT": "N", "AAC": "N", "AAA": "K", "AAG": "K", "GAT": "D", "GAC": "D", "GAA": "E", "GAG": "E",
    "TGT": "C", "TGC": "C", "TGA": "*", "TGG": "W", "CGT": "R", "CGC": "R", "CGA": "R", "CGG": "R",
    "AGT": "S", "AGC": "S", "AGA": "R", "AGG": "R", "GGT": "G", "GGC": "G", "GGA": "G", "GGG": "G",
}

# The four bases first, so that a code >= 4 marks an ambiguous base.
_IUPAC = {
    "A": "A", "C": "C", "G": "G", "T": "T",
    "N": "ACGT", "R": "AG", "Y": "CT", "S": "CG", "W": "AT", "K": "GT", "M": "AC",
    "B": "CGT", "D": "AGT", "H": "ACT", "V": "ACG",
}
_SYMBOLS = list(_IUPAC)
_N_SYMBOLS = len(_SYMBOLS)
_COMPLEMENT = str.maketrans("ACGTNRYSWKMBDHV", "TGCANYRSWMKVHDB")


def reverse_complement(sequence: str) -> str:
    """The reverse complement of an upper-case sequence, IUPAC codes included."""
    return sequence.translate(_COMPLEMENT)[::-1]


def _build_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    symbol_code = np.full(256, 255, dtype=np.uint8)
    for code, symbol in enumerate(_SYMBOLS):
        symbol_code[ord(symbol)] = code
    complement_ascii = np.arange(256, dtype=np.uint8)
    for symbol in _SYMBOLS:
        complement_ascii[ord(symbol)] = ord(symbol.translate(_COMPLEMENT))
    amino_acid = np.empty(_N_SYMBOLS**3, dtype=np.uint8)
    for first, second, third in itertools.product(range(_N_SYMBOLS), repeat=3):
        readings = {
            _STANDARD_CODE[a + b + c]
            for a in _IUPAC[_SYMBOLS[first]]
            for b in _IUPAC[_SYMBOLS[second]]
            for c in _IUPAC[_SYMBOLS[third]]
        }
        residue = readings.pop() if len(readings) == 1 else "X"
        amino_acid[(first * _N_SYMBOLS + second) * _N_SYMBOLS + third] = ord(residue)
    return symbol_code, complement_ascii, amino_acid


_SYMBOL_CODE, _COMPLEMENT_ASCII, _AMINO_ACID = _build_tables()
_STOP = ord("*")


_UPPER = np.arange(256, dtype=np.uint8)
_UPPER[ord("a") : ord("z") + 1] -= 32


@dataclass
class TranslatedChunks:
    """The kept frames of a batch of chunks, in chunk order and F1..R3 within a chunk, and what
    each chunk gave."""

    frame_chunk: np.ndarray  # the chunk (index in the batch) of each frame
    frame: np.ndarray  # 0..5 for F1..R3
    protein: pa.StringArray
    nucleotide: pa.StringArray  # the slice VirNucPro pairs with the protein, upper case
    ambiguous_bases: np.ndarray  # per chunk
    frames: np.ndarray  # per chunk: frames kept
    reason: list[str | None]  # per chunk: why no frame was kept, None when some were


def translate_chunks(sequences: pa.Array, max_ambiguous_fraction: float = 1.0) -> TranslatedChunks:
    """Translate a batch of chunks (any case) in six frames, with NumPy over equal-length groups."""
    offsets, data = string_bytes(sequences)
    data = _UPPER[data]
    lengths = np.diff(offsets)
    ambiguous = lengths - np.diff(np.r_[0, np.cumsum(IS_ACGT[data])][offsets])
    too_ambiguous = ambiguous > max_ambiguous_fraction * lengths
    pieces = []  # (chunks, frame, residues [n, codons], nucleotides [n, width]) per length and frame
    for length in np.unique(lengths[lengths >= 3]).tolist():
        rows = np.flatnonzero((lengths == length) & ~too_ambiguous)
        forward = data[offsets[rows, None] + np.arange(length)]
        reverse = _COMPLEMENT_ASCII[forward[:, ::-1]]
        for frame_index in range(len(FRAME_NAMES)):
            strand = forward if frame_index < 3 else reverse
            offset = frame_index % 3
            codons = (length - offset) // 3
            if codons == 0:
                continue  # no codon, no protein: VirNucPro drops frames with an empty protein
            triplets = _SYMBOL_CODE[strand[:, offset : offset + 3 * codons]].reshape(len(rows), codons, 3)
            residues = _AMINO_ACID[(triplets[..., 0].astype(np.int32) * _N_SYMBOLS + triplets[..., 1]) * _N_SYMBOLS
                                   + triplets[..., 2]]
            kept = ~(residues == _STOP).any(axis=1)
            width = min(3 * codons + 1, length - offset)
            pieces.append((rows[kept], frame_index, residues[kept], strand[kept, offset : offset + width]))

    frame_chunk = np.concatenate([p[0] for p in pieces] or [np.empty(0, np.int64)])
    frame = np.concatenate([np.full(len(p[0]), p[1], dtype=np.int8) for p in pieces] or [np.empty(0, np.int8)])
    order = np.lexsort((frame, frame_chunk))
    frames = np.bincount(frame_chunk, minlength=len(lengths))
    reason = [None if kept else REASON_TOO_SHORT if length < 3 else REASON_TOO_AMBIGUOUS if ambiguous_chunk
              else REASON_NO_STOP_FREE_FRAME
              for kept, length, ambiguous_chunk in zip(frames.tolist(), lengths.tolist(), too_ambiguous.tolist())]
    return TranslatedChunks(frame_chunk[order], frame[order], _strings([p[2] for p in pieces]).take(order),
                            _strings([p[3] for p in pieces]).take(order), ambiguous, frames, reason)


def _strings(blocks: list[np.ndarray]) -> pa.StringArray:
    """The rows of 2-D byte blocks as one string array."""
    lengths = np.concatenate([np.full(len(block), block.shape[1]) for block in blocks] or [np.empty(0, np.int64)])
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int32)
    data = np.concatenate([block.ravel() for block in blocks] or [np.empty(0, np.uint8)])
    return pa.StringArray.from_buffers(len(lengths), pa.py_buffer(offsets), pa.py_buffer(data))


# Chunks translated at once. The vectorised translation makes arrays of several KB per chunk, and
# larger blocks fragment the heap: a part of 1,000,000 reads peaked at 517 MB with blocks of 65,536
# chunks and 305 MB with 16,384, in the same time.
TRANSLATION_BATCH_CHUNKS = 16384


@dataclass(frozen=True)
class IdentificationResult:
    chunks: int
    frames: int


def identify_frames(chunks_path: str | os.PathLike, reads_path: str | os.PathLike, frames_path: str | os.PathLike,
                    summary_path: str | os.PathLike, max_ambiguous_fraction: float,
                    fasta_paths: tuple[str | os.PathLike, str | os.PathLike] | None = None) -> IdentificationResult:
    """Stage 2 for one part: translate its chunks, write its frames table and chunk summary, and,
    for people, its share of VirNucPro's `identified_nucleotide.fa` and `identified_protein.faa`
    (`fasta_paths`), which list the same frames in the same order."""
    chunks, reads = TableReader(chunks_path), TableReader(reads_path)
    first_read = reads.read(0, 1).column("read_index")[0].as_py() if reads.num_rows else 0
    total_chunks = total_frames = 0
    with contextlib.ExitStack() as outputs:
        frame_table = outputs.enter_context(TableWriter(frames_path, FRAME_SCHEMA, TABLE_BATCH_ROWS,
                                                        compression="zstd"))
        summary_table = outputs.enter_context(TableWriter(summary_path, CHUNK_SUMMARY_SCHEMA, TABLE_BATCH_ROWS))
        fasta = [outputs.enter_context(atomic_output(path)) for path in fasta_paths] if fasta_paths else None
        for block in (chunks.read(start, start + TRANSLATION_BATCH_CHUNKS)
                      for start in range(0, chunks.num_rows, TRANSLATION_BATCH_CHUNKS)):
            translated = translate_chunks(block.column("sequence"), max_ambiguous_fraction)
            read_index = block.column("read_index").to_numpy()
            chunk_number = block.column("chunk").to_numpy()
            frame_table.write_columns({
                "read_index": read_index[translated.frame_chunk], "chunk": chunk_number[translated.frame_chunk],
                "frame": translated.frame, "protein": translated.protein, "nucleotide": translated.nucleotide})
            summary_table.write_columns({
                "read_index": read_index, "chunk": chunk_number, "start": block.column("start"),
                "length": pc.utf8_length(block.column("sequence")).cast(pa.int32()),
                "ambiguous_bases": translated.ambiguous_bases.astype(np.int32),
                "frames": translated.frames.astype(np.int8), "reason": pa.array(translated.reason, pa.string())})
            if fasta is not None and block.num_rows:
                # the IDs of this block's reads only, so that memory does not grow with the part
                block_first = int(read_index[0]) - first_read
                read_ids = reads.read(block_first, int(read_index[-1]) - first_read + 1).column("read_id").to_pylist()
                ids = [frame_id(read_ids[r - first_read - block_first], c, f) for r, c, f in zip(
                    read_index[translated.frame_chunk].tolist(), chunk_number[translated.frame_chunk].tolist(),
                    translated.frame.tolist())]
                fasta[0].write(fasta_text(ids, translated.nucleotide.to_pylist()))
                fasta[1].write(fasta_text(ids, translated.protein.to_pylist()))
            total_chunks, total_frames = total_chunks + block.num_rows, total_frames + len(translated.frame)
    return IdentificationResult(chunks=total_chunks, frames=total_frames)
