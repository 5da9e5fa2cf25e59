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

The translation is vectorised with NumPy over groups of equal-length chunks, which keeps this
stage fast on millions of reads.
"""

from __future__ import annotations

import itertools
import os
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from virnucpro.sequence_io import atomic_output, atomic_path, read_fasta_simple, write_fasta_record

FRAME_NAMES = ("F1", "F2", "F3", "R1", "R2", "R3")

REASON_TOO_SHORT = "too_short"
REASON_TOO_AMBIGUOUS = "too_ambiguous"
REASON_NO_STOP_FREE_FRAME = "no_stop_free_frame"

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


@dataclass(frozen=True, slots=True)
class Frame:
    name: str  # F1..F3, R1..R3
    protein: str
    nucleotide: str


@dataclass(frozen=True, slots=True)
class ChunkTranslation:
    frames: list[Frame]
    ambiguous_bases: int
    reason: str | None  # why no frame was kept, None when some were


def translate_chunks(sequences: list[str], max_ambiguous_fraction: float = 1.0) -> list[ChunkTranslation]:
    """Translate a batch of chunks (any case) in six frames; one result per chunk, in order."""
    results: list[ChunkTranslation | None] = [None] * len(sequences)
    by_length: dict[int, list[int]] = defaultdict(list)
    for index, sequence in enumerate(sequences):
        by_length[len(sequence)].append(index)
    for length, indices in by_length.items():
        group = [sequences[i].upper() for i in indices]
        for index, result in zip(indices, _translate_equal_length(group, length, max_ambiguous_fraction)):
            results[index] = result
    return results


def _translate_equal_length(group: list[str], length: int, max_ambiguous_fraction: float) -> list[ChunkTranslation]:
    if length < 3:
        ambiguous = [sum(base not in "ACGT" for base in sequence) for sequence in group]
        return [ChunkTranslation([], count, REASON_TOO_SHORT) for count in ambiguous]
    forward = np.frombuffer("".join(group).encode("ascii"), dtype=np.uint8).reshape(len(group), length)
    reverse = _COMPLEMENT_ASCII[forward[:, ::-1]]
    forward_codes, reverse_codes = _SYMBOL_CODE[forward], _SYMBOL_CODE[reverse]
    ambiguous = (forward_codes >= 4).sum(axis=1)
    too_ambiguous = ambiguous > max_ambiguous_fraction * length

    frames_of_row: list[list[Frame]] = [[] for _ in group]
    for frame_index, name in enumerate(FRAME_NAMES):
        strand, codes = (forward, forward_codes) if frame_index < 3 else (reverse, reverse_codes)
        offset = frame_index % 3
        codons = (length - offset) // 3
        if codons == 0:
            continue  # no codon, no protein: VirNucPro drops frames with an empty protein
        triplets = codes[:, offset : offset + 3 * codons].reshape(len(group), codons, 3).astype(np.int32)
        residues = _AMINO_ACID[(triplets[..., 0] * _N_SYMBOLS + triplets[..., 1]) * _N_SYMBOLS + triplets[..., 2]]
        rows = np.flatnonzero(~(residues == _STOP).any(axis=1) & ~too_ambiguous)
        if rows.size == 0:
            continue
        # Decode all kept rows of this frame at once, then cut the text into rows.
        width = min(3 * codons + 1, length - offset)
        proteins = residues[rows].tobytes().decode("ascii")
        nucleotides = strand[rows, offset : offset + width].tobytes().decode("ascii")
        for n, row in enumerate(rows.tolist()):
            frames_of_row[row].append(Frame(name, proteins[n * codons : (n + 1) * codons],
                                            nucleotides[n * width : (n + 1) * width]))

    results = []
    for frames, ambiguous_count, is_too_ambiguous in zip(frames_of_row, ambiguous.tolist(), too_ambiguous.tolist()):
        if frames:
            reason = None
        elif is_too_ambiguous:
            reason = REASON_TOO_AMBIGUOUS
        else:
            reason = REASON_NO_STOP_FREE_FRAME
        results.append(ChunkTranslation(frames, ambiguous_count, reason))
    return results


CHUNK_SUMMARY_SCHEMA = pa.schema(
    [
        ("chunk_id", pa.string()),
        ("length", pa.int32()),
        ("ambiguous_bases", pa.int32()),
        ("frames", pa.int8()),
        ("reason", pa.string()),
    ]
)


@dataclass(frozen=True)
class IdentificationResult:
    chunks: int
    frames: int


def identify_frames(chunks_path: str | os.PathLike, nucleotide_path: str | os.PathLike,
                    protein_path: str | os.PathLike, summary_path: str | os.PathLike,
                    max_ambiguous_fraction: float, batch_size: int = 100_000) -> IdentificationResult:
    """Translate every chunk of `chunks_path` and write the kept frames and a per-chunk summary.

    The nucleotide and protein files hold the same frame IDs in the same order, like VirNucPro's
    `*_identified_nucleotide.fa` and `*_identified_protein.faa`. Frame IDs cannot collide: read IDs
    are unique (checked in stage 1) and `<read>_chunk_<k><frame>` can be split back from the right.
    """
    summary = {name: [] for name in CHUNK_SUMMARY_SCHEMA.names}
    total_frames = 0
    with atomic_output(nucleotide_path) as nucleotide_out, atomic_output(protein_path) as protein_out:
        batch = []
        for record in itertools.chain(read_fasta_simple(chunks_path), [None]):
            if record is not None:
                batch.append(record)
                if len(batch) < batch_size:
                    continue
            translations = translate_chunks([r.sequence for r in batch], max_ambiguous_fraction)
            for chunk, translation in zip(batch, translations):
                for frame in translation.frames:
                    frame_id = chunk.id + frame.name
                    write_fasta_record(nucleotide_out, frame_id, frame.nucleotide)
                    write_fasta_record(protein_out, frame_id, frame.protein)
                summary["chunk_id"].append(chunk.id)
                summary["length"].append(len(chunk.sequence))
                summary["ambiguous_bases"].append(translation.ambiguous_bases)
                summary["frames"].append(len(translation.frames))
                summary["reason"].append(translation.reason)
                total_frames += len(translation.frames)
            batch = []
    with atomic_path(summary_path) as temporary:
        pq.write_table(pa.table(summary, schema=CHUNK_SUMMARY_SCHEMA), temporary)
    return IdentificationResult(chunks=len(summary["chunk_id"]), frames=total_frames)
